"""Explorer tests on tiny random models: handlers called directly, then the named endpoints through
gradio_client against a launched app."""
from __future__ import annotations

import json
import logging
import socket
from dataclasses import replace

import gradio as gr
import numpy as np
import pytest
import torch
from PIL import Image

from app import analysis, claims, controls, permalink, stepper
from app.catalogue import preset_config
from app.compare import Compare
from app.engine import Engine
from app.shared import divergence
from app.unmask import Unmasking
from emigm.sample.capabilities import check_capabilities

MODELS = ["test-tiny", "test-tiny-fakecfg"]
STEP = controls.STEP_CONTROLS


def run_values(**over):
    values = {"model": "test-tiny", "class_name": "Sneaker", **controls.DEFAULTS, "num_steps": 8, "head_steps": 2}
    values.update(over)
    return values


def step_values(values):
    return {k: values[k] for k in STEP}


def compare_values(**over):
    values = {"model": "test-tiny", "class_name": "Bag", "seed": 3, "num_seeds": 2, "axis": "guidance",
              **controls.DEFAULTS,
              "num_steps": 8, "head_steps": 2, "cfg_interval_hi": 0.5, "panel_a": "none", "panel_b": "interval"}
    values.update(over)
    from app.compare import CONTROLS
    return {k: values[k] for k in CONTROLS}


def make_export(folder, cfg, smoother: bool = False, seed: int = 1):
    """A random-weight export of `cfg` (with a self-guidance smoother when asked)."""
    import emigm.io.exports as ckpt
    from emigm.nn.model import MaskedGenerator
    from emigm.nn.smoother import SMOOTHER_DIR, Smoother, base_record, config_for, save_smoother

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MaskedGenerator(cfg)
        ckpt.save_export(model, cfg, folder)
        if smoother:
            save_smoother(Smoother(config_for(model)), folder / SMOOTHER_DIR, base_record(model))
    return folder


def tiny_maskgit():
    """fmnist-maskgit (VQ codes of the shipped fmnist-vq, categorical head) on a tiny backbone."""
    base = preset_config("fmnist-maskgit")
    tiny = preset_config("test-tiny").backbone
    return replace(base, name="tiny-maskgit", backbone=replace(tiny, mae=False))


@pytest.fixture(scope="module")
def engine():
    return Engine(MODELS, num_threads=1)


@pytest.fixture(scope="module")
def unmasking(engine):
    return Unmasking(engine)


@pytest.fixture(scope="module")
def run_outputs(unmasking):
    return list(unmasking.run(**run_values()))


@pytest.fixture(scope="module")
def traj(run_outputs):
    return run_outputs[-1][4]


# ----------------------------------------------------------------------------- controls


def test_controls_come_from_the_option_fields():
    from emigm.core.fields import field_names
    from emigm.core.guidance import GuidanceConfig
    from emigm.sample.sampler import SamplerConfig
    assert controls.SAMPLER_FIELDS + controls.GUIDANCE_FIELDS == field_names(SamplerConfig, GuidanceConfig)
    assert "cfg_interval_lo" in STEP and "sg_interval_hi" in STEP and "cfg_interval" not in STEP
    w = controls.widget("schedule")
    assert [v for _, v in w.choices] == list(controls.SPECS["schedule"][2].names())
    sampler, guidance = controls.configs(run_values(num_steps=8.0, cfg_interval_lo=0.2, cfg_interval_hi=0.4))
    assert sampler.num_steps == 8 and isinstance(sampler.num_steps, int) and guidance.cfg_interval == (0.2, 0.4)


def test_controls_show_what_the_model_can_do(engine, unmasking):
    view = unmasking.view("test-tiny")
    order = controls.widget("order", view)
    labels = dict((v, label) for label, v in order.choices)
    assert controls.UNAVAILABLE in labels["confidence"] and controls.UNAVAILABLE not in labels["random"]
    assert "needs token probabilities" in order.info
    steps = controls.widget("num_steps", view)
    assert steps.maximum == engine.load("test-tiny").model.num_tokens == 16 and "16 tokens" in steps.info
    sg = controls.widget("sg_scale", view)
    assert not sg.interactive and not sg.visible and "self-guidance smoother" in sg.info
    mode = dict((v, label) for label, v in controls.widget("cfg_mode", view).choices)
    assert controls.UNAVAILABLE in mode["fake"] and controls.UNAVAILABLE not in mode["mask"]


def test_handlers_take_keyword_values(unmasking):
    import inspect
    assert list(inspect.signature(unmasking.run).parameters) == list(controls.RUN_FIELDS) + ["request"]
    assert list(inspect.signature(unmasking.branch).parameters)[:2] == ["trajectory", "branch_step"]


# ----------------------------------------------------------------------------- handlers


def test_run_streams_frames(unmasking, monkeypatch):
    import app.unmask as um
    monkeypatch.setattr(um, "LIVE_EVERY_S", 0.0)  # every step live (the page gets at most ~8 per second)
    run_outputs = list(unmasking.run(**run_values()))
    live, final = run_outputs[:-1], run_outputs[-1]
    traj = final[4]
    assert len(live) == 7 and len(traj.frames) == 8  # steps 1..7 live, step 8 with every view
    for k, out in enumerate(live, start=1):
        assert out[0]["phase"] == "running" and f"step {k} of 8" in out[0]["text"]
        assert out[1]["live"] and out[1]["n"] == k and out[1]["first"] == k - 1
    status, player, timing, doc = final[:4]
    assert status["phase"] == "done" and "step 8 of 8" in status["text"] and status["run"] == player["run"]
    assert player["n"] == player["N"] == 8 and not player["live"] and player["first"] == 0
    assert len(player["steps"]) == 8 and sum(s["revealed"] for s in player["steps"]) == 16
    with Image.open(__import__("io").BytesIO(__import__("base64").b64decode(player["sprite"].split(",")[1]))) as im:
        assert im.size == (8, 8 * 8)  # one column, one 8x8 frame per step at the image's own size
    assert doc["complete"] and doc["steps_done"] == 8 and doc["total_passes"] == traj.last.passes
    assert [s["label"] for s in doc["steps"]] == [f"step {k} of 8" for k in range(1, 9)]


def test_when_map_covers_every_token_once(traj):
    revealed = torch.stack([f.state.revealed[0] for f in traj.frames]).int()
    assert revealed.sum(0).eq(1).all()
    when = traj.when_map()[0]
    assert when.min() == 1 and when.max() == 8
    for f in traj.frames:
        assert (when.reshape(-1)[f.state.revealed[0].numpy()] == f.state.step + 1).all()


def test_stop_ends_the_run_after_the_step_in_progress(engine, unmasking):
    import threading
    sampler, guidance = controls.configs(run_values())
    stop = threading.Event()
    frames = []
    for traj in engine.stream("test-tiny", [1], [5], sampler, guidance, stop=stop):
        frames.append(traj)
        if len(frames) == 3:
            stop.set()
    partial = frames[-1]
    assert len(frames) == 4 and partial.stopped and not partial.complete and len(partial.frames) == 4
    status, player, timing, doc, state = unmasking.stopped(partial)
    assert status["phase"] == "stopped" and "Stopped at step 4 of 8" in status["text"] and "stopped early" in timing
    assert player["n"] == 4 and not player["live"] and not doc["complete"] and doc["nfe"] is None
    assert sum(x == 0 for row in doc["when"] for x in row) == int(partial.last.mask_after.sum())
    resumed = list(unmasking.branch(partial, 4, **step_values(run_values())))[-1][4]
    assert resumed.complete and resumed.frames[:4] == partial.frames


def test_canvas_marks_masked_tokens_grey(traj):
    from app import render
    f = traj.frames[2]
    arr = render.canvas(f.draft[0], f.state.mask_after[0].numpy(), f.state.revealed[0].numpy(), traj.grid, 4)
    cell = arr.shape[0] // traj.grid
    for i in np.flatnonzero(f.state.mask_after[0].numpy()):
        r, c = divmod(int(i), traj.grid)
        assert (arr[r * cell:(r + 1) * cell, c * cell:(c + 1) * cell] == render.GREY).all()


def test_patch_canvas_is_the_committed_image(engine, traj):
    """For pixel patches the draft's committed tokens decode to the committed image exactly."""
    from emigm.io.imaging import to_uint8
    tok = engine.load("test-tiny").tokenizer
    f = traj.frames[3]
    committed = to_uint8(tok.decode(f.state.tokens))[0]
    keep = ~f.state.mask_after[0].numpy().reshape(traj.grid, traj.grid).repeat(2, 0).repeat(2, 1)
    assert (committed[keep] == f.draft[0][keep]).all()


def test_branch_reproduces_prefix(unmasking, traj):
    values = run_values()
    same = list(unmasking.branch(traj, 3, **step_values(values)))[-1][4]
    assert same.branched_from == 3 and same.frames[:3] == traj.frames[:3]
    # counter-based randomness: the same settings reproduce the rest of the run too
    for a, b in zip(traj.frames, same.frames):
        assert torch.equal(a.state.tokens, b.state.tokens) and torch.equal(a.state.revealed, b.state.revealed)
    other = list(unmasking.branch(traj, 3, **step_values(run_values(cfg_scale=6.0, cfg_interval_lo=0.0,
                                                                    cfg_interval_hi=1.0))))[-1][4]
    assert all(torch.equal(a.state.tokens, b.state.tokens) for a, b in zip(traj.frames[:3], other.frames[:3]))
    assert not torch.equal(traj.last.tokens, other.last.tokens)
    assert other.last.passes > traj.last.passes


def test_token_history_ends_at_commit(unmasking, traj):
    doc = unmasking.token_history(traj, 1, 2)
    when = int(traj.when_map()[0, 1, 2])
    assert doc["revealed_at_step"] == when and len(doc["history"]) == when
    assert [h["committed"] for h in doc["history"]] == [False] * (when - 1) + [True]
    assert doc["history"][-1]["value"] == pytest.approx(traj.last.tokens[0, 1 * traj.grid + 2].tolist(), abs=1e-4)


def test_exports(unmasking, traj):
    gif, png, trace = unmasking.export(traj)
    with Image.open(gif) as im:
        assert im.n_frames == 8
    with Image.open(png) as im:
        assert im.format == "PNG"
    doc = json.loads(open(trace).read())
    assert doc["sampler"]["num_steps"] == 8 and doc["guidance"]["cfg_interval"] == [0.1, 0.3]
    assert doc["model"] == "test-tiny" and len(doc["steps"]) == 8
    assert gif.rsplit("/", 1)[1] == "test-tiny-sneaker-seed0-8of8.gif"


def test_compare_panels_share_reveal_order(engine, monkeypatch):
    import app.compare as cm
    monkeypatch.setattr(cm, "LIVE_EVERY_S", 0.0)  # every round live
    monkeypatch.setattr(cm, "DIFF_EVERY_S", 0.0)  # with its difference
    outs = list(Compare(engine).compare(**compare_values()))
    status, player, doc, cmp, diff_fig, diff_doc = outs[-1]
    # the panels stream together: after round k every panel shows its step k, with the difference so far
    live = outs[:-1]
    assert [o[1]["n"] for o in live] == list(range(1, 8)) and all(o[1]["live"] for o in live)
    assert all(o[0]["phase"] == "running" and len(o[1]["panels"]) == 5 for o in live)
    assert [len(o[5]["mean_abs_diff_per_step"]) for o in live] == list(range(1, 8))
    assert all(not p["cols"] or p["steps"][-1]["nfe"] > 0 for p in live[0][1]["panels"])
    assert status["phase"] == "done" and doc["same_reveal_order"]
    live = [p for p in cmp.panels if p.traj is not None]
    assert [p.key for p in live] == ["none", "fake", "mask", "interval"]
    for p in live[1:]:
        for a, b in zip(live[0].traj.frames, p.traj.frames):
            assert torch.equal(a.state.revealed, b.state.revealed)
    unavailable = [p for p in doc["panels"] if not p["available"]]
    assert [p["key"] for p in unavailable] == ["self"] and "self-guidance smoother" in unavailable[0]["note"]
    nfe = {p["key"]: p["nfe"] for p in doc["panels"]}
    assert nfe["none"] == 8 and nfe["mask"] == 16 and 8 < nfe["interval"] < 16
    first_cfg = next(f.state.step + 1 for f in cmp.panel("interval").traj.frames if f.state.cfg_active)
    assert diff_doc["diverge_step"] == first_cfg
    # the headline is read off the chart's own series: no difference before the step it names
    per_step = diff_doc["tokens_differ_per_step"]
    assert all(x == 0 for x in per_step[:first_cfg - 1]) and per_step[first_cfg - 1] > 0
    assert f"identical through step {first_cfg - 1}" in diff_doc["headline"]
    assert diff_doc["headline"] in diff_fig.layout.title.text
    same = divergence(cmp.panel("none").traj, cmp.panel("none").traj)
    assert same.step is None and same.image_step is None and not any(same.image)
    assert player["n"] == 8 and [len(p["cols"]) for p in player["panels"]] == [2, 2, 2, 2, 0]
    assert all(f"NFE {nfe[k]}" in p["title"] for k, p in zip(nfe, player["panels"]) if nfe[k])
    assert player["view"] >= stepper.MIN_PX


def test_compare_categorical_model_with_self_guidance(tmp_path):
    """A MaskGIT-style export given by path, with a self-guidance smoother: its five panels, confidence order."""
    make_export(tmp_path / "tiny-maskgit", tiny_maskgit(), smoother=True)
    engine = Engine([str(tmp_path / "tiny-maskgit")], num_threads=1)
    assert engine.names == ["tiny-maskgit"] and engine.load("tiny-maskgit").smoother is not None
    values = compare_values(model="tiny-maskgit", num_seeds=1, num_steps=4, order="confidence",
                            cfg_interval_lo=0.0, cfg_interval_hi=0.6, sg_scale=1.0, panel_b="self")
    status, player, doc, cmp, diff_fig, diff_doc = list(Compare(engine).compare(**values))[-1]
    assert [p["key"] for p in doc["panels"]] == ["none", "cfg", "interval", "self", "both"]
    assert all(p["available"] for p in doc["panels"])
    nfe = {p["key"]: p["nfe"] for p in doc["panels"]}
    assert nfe["none"] == 4 and nfe["cfg"] == 8 and nfe["self"] == 8 and nfe["both"] == nfe["interval"] + 4
    view = Unmasking(engine).view("tiny-maskgit")
    assert not view.reasons.get("order") and controls.widget("sg_scale", view).visible
    assert not controls.widget("head_solver", view).visible  # a categorical head has no solver


def test_each_model_opens_with_the_rule_it_was_trained_for(tmp_path):
    """A categorical model gets MaskGIT's rule (its cosine schedule, exact counts, most confident first)
    in the opening run, the controls and a bare permalink; choosing an eMIGM model goes back to eMIGM's."""
    from app.permalink import decode
    from app.ui import initial_run
    from emigm.sample.capabilities import suggested_settings

    make_export(tmp_path / "tiny-maskgit", tiny_maskgit())
    make_export(tmp_path / "tiny", preset_config("test-tiny"))
    engine = Engine([str(tmp_path / "tiny-maskgit"), str(tmp_path / "tiny")], num_threads=1)
    mg = {"schedule": "cosine", "count_rule": "exact", "order": "confidence"}
    cfg = {"cfg_scale": 3.0, "cfg_interval_lo": 0.1, "cfg_interval_hi": 0.3}  # suggested_guidance, as controls
    assert suggested_settings(engine.load("tiny-maskgit").model) == mg
    assert engine.suggested("tiny-maskgit") == {**mg, **cfg}
    assert engine.suggested("tiny") == {"schedule": preset_config("test-tiny").masking.schedule,
                                        "count_rule": "binomial", "order": "random", **cfg}
    seen, run = [], engine.run
    engine.run = lambda model, labels, seeds, sampler, guidance, **kw: seen.append(sampler) or run(
        model, labels, seeds, sampler, guidance, **kw)
    assert initial_run(engine, Unmasking(engine))["traj"].complete
    assert (seen[0].schedule, seen[0].count_rule, seen[0].order) == ("cosine", "exact", "confidence")
    values, problems = decode({}, engine.names, engine.class_names, None, engine.suggested)
    assert problems == [] and {k: values[k] for k in mg} == mg
    values, _ = decode({"order": "random"}, engine.names, engine.class_names, None, engine.suggested)
    assert values["order"] == "random" and values["count_rule"] == "exact"  # the link's own value wins
    assert engine.suggested("no-such-model") == {}


def test_a_broken_partner_breaks_only_its_panel(tmp_path, caplog):
    make_export(tmp_path / "tiny", preset_config("test-tiny"))
    broken = make_export(tmp_path / "tiny-fakecfg", preset_config("test-tiny-fakecfg"))
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    engine = Engine([str(tmp_path / "tiny"), str(broken)], num_threads=1)
    doc = list(Compare(engine).compare(**compare_values(model="tiny", num_seeds=1)))[-1][2]
    panels = {p["key"]: p for p in doc["panels"]}
    assert panels["none"]["available"] and panels["mask"]["available"] and not panels["fake"]["available"]
    with pytest.raises(gr.Error) as e:
        list(Unmasking(engine).run(**run_values(model="tiny-fakecfg")))
    assert "tiny-fakecfg" in str(e.value) and str(tmp_path) not in str(e.value)


@pytest.mark.parametrize("over, match", [
    ({"num_steps": 0}, "num_steps"),
    ({"num_steps": 1000}, "at most 16 steps"),
    ({"num_steps": 2.5}, "whole number"),
    ({"cfg_scale": -1}, "cfg_scale"),
    ({"cfg_scale": "lots"}, "number"),
    ({"cfg_interval_lo": 0.6, "cfg_interval_hi": 0.2}, "t_lo < t_hi"),
    ({"model": "nope"}, "unknown model"),
    ({"class_name": "Giraffe"}, "unknown class"),
    ({"schedule": "quadratic"}, "unknown schedule"),
    ({"order": "confidence"}, "needs token probabilities"),
    ({"cfg_mode": "fake"}, "null mode"),
    ({"sg_scale": 1.0}, "self-guidance smoother"),
    ({"seed": -3}, "seed"),
    ({"seed": 1.5}, "seed must be a whole number"),
])
def test_bad_input_is_a_gr_error_and_keeps_the_views(unmasking, over, match):
    gen = unmasking.run(**run_values(**over))
    first = next(gen)  # the status says what is wrong; every other view is skipped
    assert first[0]["phase"] == "error" and all(x is gr.skip() or x == gr.skip() for x in first[1:])
    with pytest.raises(gr.Error, match=match):
        next(gen)


def test_user_errors_log_no_traceback(unmasking, caplog):
    with caplog.at_level(logging.INFO, logger="emigm.app"):
        with pytest.raises(gr.Error, match="Run the sampler first"):
            unmasking.token_history(None, 0, 0)
    assert all(r.exc_info is None for r in caplog.records)


def test_randomise_seed_covers_the_seed_range(unmasking, monkeypatch):
    """The dice draws from randrange(0, 2**31) (both ends reachable; numbers a browser holds exactly),
    inside the seed range every door accepts, [0, 2**63 - 1], and the largest seed it can draw is one a
    run accepts."""
    import random
    lo, hi = 0, controls.DICE_MAX_SEED
    assert (lo, hi) == (0, 2**31 - 1) and controls.APP_SPECS["seed"][1].high == 2**63 - 1
    calls = []

    def fake(self, start, stop):
        calls.append((start, stop))
        return stop - 1 if len(calls) == 1 else start
    monkeypatch.setattr(random.SystemRandom, "randrange", fake)
    top, bottom = unmasking.randomise_seed(), unmasking.randomise_seed()
    assert calls == [(0, 2**31)] * 2 and (top, bottom) == (hi, lo)
    monkeypatch.undo()
    final = list(unmasking.run(**run_values(seed=top, num_steps=2)))[-1]
    assert final[1]["complete"], final[1]  # the largest seed runs
    draws = {unmasking.randomise_seed() for _ in range(20)}
    assert len(draws) > 1 and all(isinstance(x, int) and lo <= x <= hi for x in draws)


def test_bad_input_elsewhere_is_a_gr_error(unmasking, engine, traj):
    with pytest.raises(gr.Error, match="Run the sampler first"):
        list(unmasking.branch(None, 3, **step_values(run_values())))
    with pytest.raises(gr.Error, match="branch_step"):
        list(unmasking.branch(traj, 8, **step_values(run_values())))
    with pytest.raises(gr.Error, match="row"):
        unmasking.token_history(traj, 99, 0)
    with pytest.raises(gr.Error, match="row must be a whole number"):
        unmasking.token_history(traj, 1.5, 0)
    with pytest.raises(gr.Error, match="num_tokens"):
        analysis.schedules(0, 16, "exp", "binomial", 3.0, 0.1, 0.3)
    # a bad difference panel is refused before any panel runs
    gen = Compare(engine).compare(**compare_values(panel_b="sideways"))
    assert next(gen)[0]["phase"] == "error"
    with pytest.raises(gr.Error, match="unknown panel"):
        next(gen)


def test_missing_asset_is_a_gr_error():
    with pytest.raises(ValueError, match="unknown model"):
        Engine(["no-such-model"])
    # a VQ model needs tokenizer weights that are not shipped
    h = Unmasking(Engine(["test-tiny-vq"], num_threads=1))
    with pytest.raises(gr.Error, match="cannot be loaded"):
        list(h.run(**run_values(model="test-tiny-vq")))


def test_a_shipped_model_just_shows_up(tmp_path, monkeypatch):
    import app.catalogue as cat
    import emigm.io.exports as ckpt
    import emigm.nn.oracle as oracle
    make_export(tmp_path / "tiny-trained", preset_config("test-tiny"))
    (tmp_path / "some-tokenizer").mkdir()  # not a generator export: skipped
    monkeypatch.setattr(ckpt, "ASSETS_DIR", tmp_path)
    monkeypatch.setattr(oracle, "ASSETS_DIR", tmp_path)  # the shipped oracles are offered too
    engine = Engine(num_threads=1)
    assert engine.names == ["tiny-trained"] and engine.is_shipped("tiny-trained")
    assert "Random weights" not in engine.banner("tiny-trained") and "export" in engine.banner("tiny-trained")
    final = list(Unmasking(engine).run(**run_values(model="tiny-trained", num_steps=3)))[-1]
    assert final[3]["model"] == "tiny-trained" and not final[3]["random_init"]
    make_export(tmp_path / cat.PREFERRED, preset_config("test-tiny"))
    assert cat.generator_exports()[0] == cat.PREFERRED  # the preferred default comes first


def test_measured_warning_for_a_solver(tmp_path):
    """A solver warning comes from the claims file, for the weights it was measured on only."""
    fp = {"network": "a" * 64, "tokenizer": None, "self_guidance": None, "classifier": "c" * 64}
    path = tmp_path / "claims.json"
    path.write_text(json.dumps({"version": 3, "fingerprints": {"m": fp}, "claims": [], "points": [
        {"model": "m", "fd": 20.0, "sampler": {"head_solver": "dpm"}, "label": "dpm", "fingerprint": fp},
        {"model": "m", "fd": 300.0, "sampler": {"head_solver": "ddpm"}, "label": "ddpm head=100",
         "fingerprint": fp}]}))
    warn = claims.measured_warnings("m", fp, path)
    assert list(warn["head_solver"]) == ["ddpm"] and "FD 300 on these weights" in warn["head_solver"]["ddpm"]
    assert claims.measured_warnings("other", fp, path) == {}
    assert claims.measured_warnings("m", {**fp, "network": "b" * 64}, path) == {}  # other weights: no warning
    assert claims.measured_warnings("m", None, path) == {}


def test_schedules_arithmetic():
    gamma, steps, rows, doc, summary = analysis.schedules(256, 16, "exp", "binomial", 3.0, 0.1, 0.3)
    assert doc["exp"]["passes"] == 19 and doc["exp"]["cfg_steps"] == 3 and "16 x 1.19 = 19" in summary
    assert [r[0] for r in rows] == list(range(1, 17)) and rows[-1][-1] == 19
    assert sum(r[3] for r in rows) == pytest.approx(256, abs=0.1)
    assert analysis.schedules(49, 8, "linear", "exact", 1.0, 0.1, 0.3)[3]["linear"]["passes"] == 8


def test_results_reader(tmp_path, monkeypatch):
    """A file from before fingerprints: one line saying so, its claims named, none of its numbers; the same
    claims measured on the files in use: their numbers, tests and panels."""
    from emigm.eval.claims import ClaimsFile
    assert claims.read_claims(tmp_path / "missing.json") is None
    path = tmp_path / "claims.json"
    series = lambda name, xs, ys: {"name": name, "x": xs, "y": ys, "sd": [0.1] * len(ys),  # noqa: E731
                                   "labels": [f"{name} {x}" for x in xs], "line": True}
    path.write_text(json.dumps({
        "num_samples": 100, "seed_sets": [[0, 99], [100, 199], [200, 299]], "note": "n",
        "verdict_rule": "rule", "points": [
            {"group": "solver", "label": "dpm head=4", "model": "m", "nfe": 16, "fd": 20.0, "fd_sd": 0.1,
             "class_accuracy": 0.5, "class_accuracy_sd": 0.01},
            {"group": "solver", "label": "ddpm head=100", "model": "m", "nfe": 16, "fd": 300.0, "fd_sd": None}],
        "claims": [
            {"claim": "DDPM agrees with DPM", "short": "DDPM vs DPM", "verdict": "does not hold",
             "evidence": "dpm head=4 20.00 ± 0.1 · ddpm head=100 300.00",
             "tests": [{"test": "ddpm below 1.1 x dpm", "margin": -278.0, "sd": 0.1,
                        "text": "ddpm below 1.1 x dpm: margin -278 vs 2 sd 0.2 (does not hold)"}],
             "plot": {"x": "head steps", "x_log": True, "y": "FD",
                      "series": [series("DPM-Solver++", [4, 8], [20.0, 19.0]), series("DDPM", [100], [300.0])]}},
            {"claim": "more steps", "short": "steps", "verdict": "undecided", "evidence": "a 1.00 ± 0.1",
             "tests": [], "plot": {"x": "sampling steps S", "series": [series("exp", [8, 16, 32], [1.0, 1.1, 1.2])]}},
            {"claim": "old style", "holds": True, "numbers": {"every": [18.2, 32], "interval": [20.6, 19]}},
            {"claim": "x", "evidence": "{\"a\": 1.5}"}]}))
    doc = claims.read_claims(path)
    assert doc["points"] == [] and doc["claim_docs"] == [] and "older format" in doc["problem"]
    assert doc["claims"][0] == ["DDPM agrees with DPM", "not measured on these weights", ""]
    assert [row[1] for row in doc["claims"]] == ["not measured on these weights"] * 4 and "300" not in str(doc)
    raw = json.loads(path.read_text())
    fp = {"network": "a" * 64, "tokenizer": None, "self_guidance": None, "classifier": None}
    for p in raw["points"]:
        p["fingerprint"] = fp
    raw["claims"] = raw["claims"][:2]  # the two of the current format, resting on model "m"
    for c in raw["claims"]:
        c["models"] = ["m"]
    path.write_text(json.dumps({**raw, "version": 3, "fingerprints": {"m": fp}}))
    monkeypatch.setattr(ClaimsFile, "current_fingerprints", lambda self: {"m": fp})
    doc = claims.read_claims(path)
    assert doc["problem"] == "" and [p["fd"] for p in doc["points"]] == [20.0, 300.0]
    assert doc["claims"][0] == ["DDPM agrees with DPM", "does not hold", "dpm head=4 20.00 ± 0.1 · ddpm head=100 300.00"
                                " · ddpm below 1.1 x dpm: margin -278 vs 2 sd 0.2 (does not hold)"]
    assert analysis.point_rows(doc["points"])[0][4:6] == ["20.00 ± 0.1", "0.500 ± 0.01"]
    assert analysis.point_rows(doc["points"])[1][4] == "300.00"
    from app.charts import results_figure
    fig = results_figure([c for c in doc["claim_docs"] if c.get("plot")])
    assert [a.text for a in fig.layout.annotations] == ["DDPM vs DPM: <b>does not hold</b>", "steps: <b>undecided</b>"]
    assert fig.layout.yaxis.type == "log" and fig.layout.yaxis2.type == "linear"  # the outlier's panel is log
    assert fig.layout.xaxis.type == "log" and list(fig.layout.xaxis2.tickvals) == [8, 16, 32]
    dpm = fig.data[0]
    assert list(dpm.x) == [4, 8] and list(dpm.error_y.array) == [0.1, 0.1]  # mean +- sd
    assert [t.name for t in fig.data] == ["DPM-Solver++", "DDPM", "exp"]


def test_results_tab_shows_exactly_the_claims_of_claims_json():
    """The Results tab and README come from the one file: the same claims, in its order, with its verdicts,
    a panel each."""
    if not claims.CLAIMS_PATH.is_file():
        pytest.skip("no assets/results/claims.json")
    raw = json.loads(claims.CLAIMS_PATH.read_text())
    msg, fig, table, points, doc = analysis.results()
    cf = claims.claims_file()
    shown = [ok for _, ok in cf.claims(cf.current_fingerprints())] if cf.doc else [False] * len(raw["claims"])
    assert [row[:2] for row in table["value"][:len(raw["claims"])]] == [[c["claim"], c["verdict"] if ok else "not measured on these weights"]
                                                  for c, ok in zip(raw["claims"], shown)]
    readme = (claims.CLAIMS_PATH.parents[2] / "README.md").read_text()
    for c, ok in zip(raw["claims"], shown):
        verdict = f"**{c['verdict']}**" if ok else "not measured on these weights"
        assert f"| {c['claim']} | {verdict} |" in readme
    if any(shown):
        assert f"{len(raw['claims'])} claims" in msg
        titles = [a.text for a in fig.layout.annotations if ": <b>" in a.text]
        assert titles == [f"{c['short']}: <b>{c['verdict']}</b>" for c, ok in zip(raw["claims"], shown) if ok]


def test_permalink_round_trip(unmasking):
    names = lambda m: ["T-shirt/top", "Trouser", "Bag"]  # noqa: E731
    values = run_values(seed=42, schedule="cosine", cfg_scale=2.5, class_name="Bag")
    query = dict(x.split("=") for x in permalink.encode(values).split("&"))
    from urllib.parse import unquote_plus
    back, problems = permalink.decode({k: unquote_plus(v) for k, v in query.items()}, MODELS, names)
    assert not problems and {k: back[k] for k in values} == values
    back, problems = permalink.decode({"num_steps": "9999", "model": "nope", "class_name": "Cat",
                                       "cfg_interval_lo": "0.9"}, MODELS, names)
    assert back["num_steps"] == controls.DEFAULTS["num_steps"] and back["model"] == MODELS[0]
    assert back["cfg_interval_lo"] == controls.DEFAULTS["cfg_interval_lo"]
    assert len(problems) == 4
    # what the model cannot take falls back, with its reason
    back, problems = permalink.decode({"order": "confidence", "num_steps": "40"}, MODELS, names, unmasking.view)
    assert back["order"] == "random" and back["num_steps"] == 16 and len(problems) == 2  # capped at 16 tokens


# ----------------------------------------------------------------------------- through the client


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def client(engine):
    from gradio_client import Client

    from app.ui import build_demo, launch_kwargs
    demo = build_demo(engine)
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=_free_port(), prevent_thread_lock=True,
                            quiet=True, **launch_kwargs())
    try:
        yield Client(url, verbose=False)
    finally:
        demo.close()


ENDPOINTS = {"/run", "/branch", "/stop", "/stopped", "/export", "/token_history", "/pick_token", "/randomise_seed",
             "/model_info", "/permalink", "/restore", "/preset_run", "/schedules", "/compare", "/diff", "/results"}


def test_named_endpoints(client):
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert ENDPOINTS <= set(api)
    assert [p["parameter_name"] for p in api["/run"]["parameters"]] == list(controls.RUN_FIELDS)


def test_client_run_branch_token(client):
    v = run_values(num_steps=6)
    out = client.predict(**{k: v[k] for k in controls.RUN_FIELDS}, api_name="/run")
    status, player, doc = out[0], out[1], out[3]
    assert status["phase"] == "done" and player["n"] == 6
    assert doc["num_steps"] == 6 and doc["complete"] and doc["model"] == "test-tiny"
    assert sorted(x for row in doc["when"] for x in row)[0] == 1
    # the same client session holds the trajectory: token history and branch need no re-run
    tok = client.predict(row=0, col=0, api_name="/token_history")
    assert tok["token"] == [0, 0] and len(tok["history"]) == tok["revealed_at_step"]
    out = client.predict(branch_step=2, **step_values(v), api_name="/branch")
    assert out[3]["branched_from_step"] == 2
    assert [s["revealed"] for s in out[3]["steps"][:2]] == [s["revealed"] for s in doc["steps"][:2]]
    files = client.predict(api_name="/export")
    assert files[0].endswith(".gif") and files[2].endswith(".json")


def _library_message(engine, **over) -> str:
    """The one-line error the library gives for a setting."""
    gen = engine.load("test-tiny")
    sampler, guidance = controls.configs(run_values(**{k: v for k, v in over.items() if k in STEP}))
    with pytest.raises(ValueError) as e:
        check_capabilities(gen.model, sampler, guidance, gen.smoother)
    return str(e.value)


def test_a_disabled_choice_gets_the_library_error_through_the_api(client, engine):
    v = {k: run_values()[k] for k in controls.RUN_FIELDS}
    for over in ({"order": "confidence"}, {"num_steps": 40}, {"cfg_mode": "fake"}):
        expected = _library_message(engine, **over)
        with pytest.raises(Exception) as e:
            client.predict(**{**v, **over}, api_name="/run")
        assert expected in str(e.value)


def test_client_bad_input_and_still_serving(client):
    v = {k: run_values()[k] for k in controls.RUN_FIELDS}
    for over, match in (({"num_steps": 500}, "num_steps 500 is not available"), ({"model": "nope"}, "unknown model"),
                        ({"cfg_interval_lo": 0.9}, "t_lo < t_hi"), ({"cfg_scale": "lots"}, "cfg_scale must be a number"),
                        ({"seed": 1.5}, "seed must be a whole number")):
        with pytest.raises(Exception, match=match):
            client.predict(**{**v, **over}, api_name="/run")
    fresh = type(client)(client.src, verbose=False)
    # a new session starts with the opening run (sampled once at start-up): its tokens are there at once
    assert fresh.predict(row=0, col=0, api_name="/token_history")["num_steps"] == controls.DEFAULTS["num_steps"]
    # ... and the opening comparison: the Compare tab opens with its panels and difference
    fig, diff = fresh.predict("none", "mask", api_name="/diff")
    assert diff["a"] == "none" and diff["b"] == "mask" and diff["steps_compared"] == controls.DEFAULTS["num_steps"]
    out = client.predict(256, 16, "exp", "binomial", 3.0, 0.1, 0.3, api_name="/schedules")
    assert out[3]["exp"]["passes"] == 19


def test_client_compare_and_results(client):
    out = client.predict(**compare_values(num_seeds=1, num_steps=4, panel_b="mask"), api_name="/compare")
    doc, diff = out[2], out[4]  # gr.State outputs are not returned to clients
    assert doc["same_reveal_order"] and diff["a"] == "none" and diff["b"] == "mask"
    msg, _, _, _, res = client.predict(api_name="/results")
    assert res["available"] == claims.CLAIMS_PATH.is_file()
    seeds = [client.predict(api_name="/randomise_seed") for _ in range(3)]
    lo, hi = 0, int(controls.APP_SPECS["seed"][1].high)
    assert all(float(x).is_integer() and lo <= x <= hi for x in seeds) and len(set(seeds)) > 1, seeds


def test_official_checkpoint_in_the_app(tmp_path):
    """An official ImageNet checkpoint is offered by path; without its VAE it fails alone, in one line
    naming what to add; loaded, its banner says a GPU is needed and its classes are ImageNet names."""
    from types import SimpleNamespace

    from test_official import small_official

    from app import text
    from emigm.core.labels import class_names
    path = tmp_path / "eMIGM_small_test.pth"
    torch.save(small_official("mask").state_dict(), path)
    engine = Engine(["test-tiny", str(path)], num_threads=1)
    assert engine.names == ["test-tiny", "eMIGM_small_test"]
    with pytest.raises(ValueError, match="--vae") as e:
        engine.load("eMIGM_small_test")
    assert str(tmp_path) not in str(e.value) and "⚠" in engine.banner("eMIGM_small_test")
    engine.load("test-tiny")  # the other model is unaffected
    cfg = replace(preset_config("in256-b"))
    gen = SimpleNamespace(cfg=cfg, smoother=None, source="official", meta={})
    banner = text.model_banner("eMIGM_base", gen, "cpu")
    assert "GPU" in banner and "official" in banner
    assert class_names(cfg)[:2] == ["tench", "goldfish"] and len(class_names(cfg)) == 1000


def test_client_model_change_narrows_the_controls(client):
    v = run_values(cfg_mode="mask")
    out = client.predict(**{**{k: v[k] for k in ("model", "class_name") + STEP}, "model": "test-tiny-fakecfg"},
                         api_name="/model_info")
    cls, banner, *updates = out
    update = dict(zip(STEP, updates))
    labels = {value: label for label, value in update["cfg_mode"]["choices"]}
    assert controls.UNAVAILABLE in labels["mask"] and controls.UNAVAILABLE not in labels["fake"]
    assert update["cfg_mode"]["value"] == "" and update["num_steps"]["maximum"] == 16
    assert "test-tiny-fakecfg" in banner and cls["value"] == "Sneaker"


# ----------------------------------------------------------------------------- issue 20: what a new user noticed


def test_a_hidden_control_is_fitted_to_the_model(tmp_path):
    """Item 2: self-guidance 1 on a model with a smoother, then a model without one: the hidden control
    is narrowed to 0 (what that model accepts), so the run it makes starts; a link asking for it falls
    back with a note."""
    make_export(tmp_path / "tiny-maskgit", tiny_maskgit(), smoother=True)
    engine = Engine([str(tmp_path / "tiny-maskgit"), "test-tiny"], num_threads=1)
    h = Unmasking(engine)
    with_sg, without = h.view("tiny-maskgit"), h.view("test-tiny")
    values = run_values(model="tiny-maskgit", class_name="Bag", sg_scale=1.0)
    assert controls.problems(values, with_sg) == {}
    updates = dict(zip(STEP, controls.narrowed(STEP, without, values)))
    assert updates["sg_scale"]["value"] == 0.0 and updates["sg_scale"]["visible"] is False
    shown = {**values, "model": "test-tiny", **{k: u["value"] for k, u in updates.items() if "value" in u}}
    assert controls.problems(shown, without) == {}
    assert list(h.run(**shown))[-1][0]["phase"] == "done"
    back, problems = permalink.decode({"model": "test-tiny", "sg_scale": "1"}, engine.names, engine.class_names,
                                      h.view, engine.suggested)
    assert back["sg_scale"] == 0.0 and any(p.startswith("sg_scale: self-guidance") for p in problems)


def test_refused_values_are_named_by_control(unmasking):
    """Bad input: every value a run would refuse gets the library's one line, keyed by the control that
    holds it (the page puts it next to that control); a run refused names it in its status too."""
    notes = unmasking.check(**run_values(head_steps=300, cfg_interval_lo=0.6, cfg_interval_hi=0.2, seed=-1))
    assert notes["head_steps"] == "head_steps must be in [1, 250], got 300"
    assert notes["seed"].startswith("seed must be in") and "cfg_interval_hi" not in notes  # first the values alone
    notes = unmasking.check(**run_values(cfg_interval_lo=0.6, cfg_interval_hi=0.2))
    assert notes == {"cfg_interval_hi": "cfg_interval needs t_lo < t_hi, got (0.6, 0.2)"}
    assert unmasking.check(**run_values(num_steps=40)) == {
        "num_steps": "num_steps 40 is not available: at most 16 steps: this model has 16 tokens and a step reveals "
                     "at least one while any is masked"}
    assert unmasking.check(**run_values(order="confidence"))["order"].startswith("order 'confidence' is not available")
    assert unmasking.check(**run_values()) == {}
    first = next(unmasking.run(**run_values(head_steps=300)))[0]
    assert first["phase"] == "error" and first["notes"] == {"head_steps": "head_steps must be in [1, 250], got 300"}


def test_sliders_reach_what_the_library_accepts(unmasking):
    """Item 11: no display cap below the library's range (DDPM-100 is a setting the warnings cite)."""
    view = unmasking.view("test-tiny")
    for name in ("head_steps", "cfg_scale", "temperature", "order_temperature"):
        assert controls.widget(name, view).maximum == controls.SPECS[name][2].high
    assert controls.widget("num_steps", view).maximum == 16  # the model's own cap
    assert controls.widget("head_steps", view, 100).value == 100


def test_schedules_refuse_next_to_the_box_and_follow_the_tokens():
    """Item 5: steps past the token count are refused with a note for num_steps, the plots kept (the
    summary says so); the steps slider's top follows num_tokens without moving its value."""
    gen = analysis.schedules_view(None, 49, 64, "exp", "binomial", 3.0, 0.1, 0.3)
    out = next(gen)
    assert all(x is gr.skip() or x == gr.skip() for x in out[:4]) and "Not redrawn" in out[4]
    assert "num_steps 64 is not available: at most 49 steps" in out[5]["num_steps"]
    with pytest.raises(gr.Error):
        next(gen)
    ok = list(analysis.schedules_view(None, 49, 16, "exp", "binomial", 3.0, 0.1, 0.3))[-1]
    assert ok[5] == {} and "16 x 1.19 = 19" in ok[4]
    cap = analysis.steps_cap(10)
    assert cap["maximum"] == 10 and "value" not in cap


def test_compare_check_and_defaults(engine):
    h = Compare(engine)
    assert h.check(**compare_values()) == {}
    notes = h.check(**compare_values(num_steps=40, num_seeds=9, panel_b="sideways"))
    assert set(notes) == {"num_steps", "num_seeds", "panel_b"}
    assert h.defaults("test-tiny")["sg_scale"] == 0.0  # no smoother: the self-guidance panel says why


def test_the_finished_frame_is_clean(traj):
    """Item 9: the GIF's last frame (the finished image) has no outlines; the ones before do."""
    from app import render
    first, last = (render.frame_pair(traj.frames[i], traj.grid, 8, finished=i == len(traj.frames) - 1)
                   for i in (3, len(traj.frames) - 1))
    orange = lambda a: int((a == render.ORANGE).all(-1).sum())  # noqa: E731
    assert orange(first) > 0 and orange(last) == 0
    with Image.open(__import__("io").BytesIO(render.gif_bytes(traj, 4))) as im:
        im.seek(im.n_frames - 1)
        frame = np.asarray(im.convert("RGB"))
    assert orange(frame) == 0


def test_same_seed_same_image_in_the_cli_and_the_app(tmp_path, capsys):
    """Item 14: a new user's defaults, through the app's API (the values /restore gives a plain visit,
    then /run) and through `python -m emigm sample` with only the model, class and seed: the same
    settings, the same reveal order, the same passes and the same image."""
    from gradio_client import Client

    from app.ui import build_demo, launch_kwargs
    from emigm.cli.main import main

    folder = make_export(tmp_path / "tiny", preset_config("test-tiny"))
    demo = build_demo(Engine([str(folder)], num_threads=1))
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=_free_port(), prevent_thread_lock=True,
                            quiet=True, **launch_kwargs())
    try:
        client = Client(url, verbose=False)
        restored = client.predict(api_name="/restore")
        values = dict(zip(controls.RUN_FIELDS, [v["value"] if isinstance(v, dict) else v for v in restored]))
        out = client.predict(**{k: values[k] for k in controls.RUN_FIELDS}, api_name="/run")
    finally:
        demo.close()
    app_doc, player = out[3], out[1]
    out_png, trace = tmp_path / "cli.png", tmp_path / "cli.json"
    code = main(["sample", "--checkpoint", str(folder), "--class", values["class_name"], "--seed", str(values["seed"]),
                 "--num-images", "1", "--device", "cpu", "--out", str(out_png), "--trace", str(trace)])
    assert code == 0, capsys.readouterr().err
    cli_doc = json.loads(trace.read_text())
    for key in ("sampler", "guidance"):
        cli = {k: v for k, v in cli_doc[key].items() if k != "draft"}
        assert cli == {k: v for k, v in app_doc[key].items() if k != "draft"}, key
    assert cli_doc["guidance"]["cfg_scale"] == 3.0 and cli_doc["guidance"]["cfg_interval"] == [0.1, 0.3]
    assert cli_doc["total_passes"] == app_doc["total_passes"] == 19
    assert [s["revealed"] for s in cli_doc["steps"]] == [s["revealed"] for s in app_doc["steps"]]
    import base64
    import io
    with Image.open(io.BytesIO(base64.b64decode(player["sprite"].split(",")[1]))) as im:
        sprite = np.asarray(im)
    px = player["px"]
    app_image = sprite[-px:, :px]
    with Image.open(out_png) as im:
        cli_grid = np.asarray(im.convert("L"))
    pad, scale = 2, 4  # emigm.io.imaging.save_grid: a 2-pixel white border, then upscaled 4x
    cli_image = cli_grid[::scale, ::scale][pad:pad + px, pad:pad + px]
    assert np.array_equal(cli_image, app_image)


def test_a_run_never_waits_for_another_models_load(tmp_path, monkeypatch):
    """Item 12: the only lock a run takes is its own model's, while that model loads (once): a slow
    load of one model does not hold up a run of another, and a run of a model not loaded yet says so
    before it starts."""
    import threading
    import time

    import app.engine as eng
    engine = Engine(["test-tiny", "test-tiny-fakecfg"], num_threads=1)
    h = Unmasking(engine)
    list(h.run(**run_values(num_steps=2)))  # test-tiny loaded
    real, started = eng.Engine._load, threading.Event()

    def slow(self, src):
        if src.name == "test-tiny-fakecfg":
            started.set()
            time.sleep(3)
        return real(self, src)

    monkeypatch.setattr(eng.Engine, "_load", slow)
    loading = threading.Thread(target=lambda: list(h.run(**run_values(model="test-tiny-fakecfg", num_steps=2))))
    loading.start()
    assert started.wait(10)
    t0 = time.perf_counter()
    assert list(h.run(**run_values(num_steps=2)))[-1][0]["phase"] == "done"
    assert time.perf_counter() - t0 < 2.5  # not behind the other model's 3 s load
    loading.join()
    first = next(Unmasking(Engine(["test-tiny"], num_threads=1)).run(**run_values(num_steps=2)))
    assert first[0]["phase"] == "running" and "Loading test-tiny" in first[0]["text"]
