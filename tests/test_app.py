"""Explorer tests on the tiny random model: handlers called directly, then the named endpoints through
gradio_client against a launched app."""
from __future__ import annotations

import json
import socket

import gradio as gr
import numpy as np
import pytest
import torch
from PIL import Image

from app import analysis, controls, permalink
from app.compare import Compare, divergence
from app.engine import Engine
from app.unmask import Unmasking

MODELS = ["test-tiny", "test-tiny-fakecfg"]
STEP_FIELDS = controls.SAMPLER_FIELDS + controls.GUIDANCE_FIELDS


def run_values(**over):
    values = {"model": "test-tiny", "class_name": "Sneaker",
              **{k: controls.DEFAULTS[k] for k in controls.RUN_FIELDS if k in controls.DEFAULTS}}
    values.update(num_steps=8, head_steps=2)
    values.update(over)
    return values


def step_values(values):
    return {k: values[k] for k in STEP_FIELDS}


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
    return run_outputs[-1][6]


# ----------------------------------------------------------------------------- handlers


def test_run_streams_one_frame_per_step(run_outputs, traj):
    live, final = run_outputs[:-1], run_outputs[-1]
    assert len(live) == 8 == len(traj.frames)
    for k, out in enumerate(live, start=1):
        assert out[0].dtype == np.uint8 and out[0].ndim == 3
        assert f"step {k} of 8" in out[1]
    fig, doc = final[2], final[5]
    slider = fig.layout.sliders[0]
    assert [s.label for s in slider.steps] == [str(k) for k in range(1, 9)] and slider.active == 7
    assert slider.currentvalue.suffix == " of 8"
    assert "step 1 of 8" in slider.steps[0].args[1]["title.text"]
    assert [b.label for b in fig.layout.updatemenus[0].buttons] == ["▶ play", "❚❚ pause"]
    assert not fig.frames  # gr.Plot drops frames: play passes them inline
    assert doc["complete"] and doc["steps_done"] == 8 and doc["total_passes"] == traj.last.passes
    assert [s["label"] for s in doc["steps"]] == [f"step {k} of 8" for k in range(1, 9)]


def test_when_map_covers_every_token_once(traj):
    revealed = torch.stack([f.state.revealed[0] for f in traj.frames]).int()
    assert revealed.sum(0).eq(1).all()
    when = traj.when_map()[0]
    assert when.min() == 1 and when.max() == 8
    for f in traj.frames:
        assert (when.reshape(-1)[f.state.revealed[0].numpy()] == f.state.step + 1).all()


def test_stopped_run_shows_what_was_sampled(engine, unmasking):
    sampler, guidance = controls.split_run_values(run_values())
    stream = engine.stream("test-tiny", [1], [5], sampler, guidance)
    partial = [next(stream) for _ in range(3)][-1]
    live, status, fig, timing, pick, doc, state, branch = unmasking.stopped(partial)
    assert "Stopped at step 3 of 8" in status and "stopped early" in timing
    assert len(fig.layout.sliders[0].steps) == 3 and not doc["complete"] and doc["nfe"] is None
    assert sum(x == 0 for row in doc["when"] for x in row) == int(partial.last.mask_after.sum())
    resumed = list(unmasking.branch(partial, 3, **step_values(run_values())))[-1][6]
    assert resumed.complete and resumed.frames[:3] == partial.frames


def test_canvas_marks_masked_tokens_grey(traj):
    from app import render
    f = traj.frames[2]
    arr = render.canvas(f.image[0], f.state.mask_after[0].numpy(), f.state.revealed[0].numpy(), traj.grid, 4)
    cell = arr.shape[0] // traj.grid
    for i in np.flatnonzero(f.state.mask_after[0].numpy()):
        r, c = divmod(int(i), traj.grid)
        assert (arr[r * cell:(r + 1) * cell, c * cell:(c + 1) * cell] == render.GREY).all()


def test_branch_reproduces_prefix(unmasking, traj):
    values = run_values()
    same = list(unmasking.branch(traj, 3, **step_values(values)))[-1][6]
    assert same.branched_from == 3 and same.frames[:3] == traj.frames[:3]
    # counter-based randomness: the same settings reproduce the rest of the run too
    for a, b in zip(traj.frames, same.frames):
        assert torch.equal(a.state.tokens, b.state.tokens) and torch.equal(a.state.revealed, b.state.revealed)
    other = list(unmasking.branch(traj, 3, **step_values(run_values(cfg_scale=6.0, cfg_interval_lo=0.0,
                                                                    cfg_interval_hi=1.0))))[-1][6]
    assert all(torch.equal(a.state.tokens, b.state.tokens) for a, b in zip(traj.frames[:3], other.frames[:3]))
    assert not torch.equal(traj.last.tokens, other.last.tokens)
    assert other.last.passes > traj.last.passes


def test_token_history_ends_at_commit(unmasking, traj):
    gallery, doc, pick = unmasking.token_history(traj, 1, 2)
    when = int(traj.when_map()[0, 1, 2])
    assert doc["revealed_at_step"] == when and len(gallery) == len(doc["history"]) == when
    assert [h["committed"] for h in doc["history"]] == [False] * (when - 1) + [True]
    assert doc["history"][-1]["value"] == pytest.approx(traj.last.tokens[0, 1 * traj.grid + 2].tolist(), abs=1e-4)
    assert pick.shape[0] == pick.shape[1]


def test_exports(unmasking, traj):
    gif, png, trace = unmasking.export(traj)
    with Image.open(gif) as im:
        assert im.n_frames == 8
    with Image.open(png) as im:
        assert im.format == "PNG"
    doc = json.loads(open(trace).read())
    assert doc["sampler"]["num_steps"] == 8 and doc["guidance"]["cfg_interval"] == [0.1, 0.3]
    assert doc["model"] == "test-tiny" and len(doc["steps"]) == 8


def test_compare_panels_share_reveal_order(engine):
    outs = list(Compare(engine).compare("test-tiny", "Bag", 3, 2, 8, "exp", "binomial", 1.0, "dpm", 2, 3.0, 0.1,
                                        0.5, "constant", "none", "interval"))
    status, fig, doc, cmp, diff_fig, diff_doc = outs[-1]
    assert doc["same_reveal_order"]
    live = [p for p in cmp.panels if p.traj is not None]
    assert [p.key for p in live] == ["none", "fake", "mask", "interval"]
    for p in live[1:]:
        for a, b in zip(live[0].traj.frames, p.traj.frames):
            assert torch.equal(a.state.revealed, b.state.revealed)
    unavailable = [p for p in doc["panels"] if not p["available"]]
    assert [p["key"] for p in unavailable] == ["self"]
    nfe = {p["key"]: p["nfe"] for p in doc["panels"]}
    assert nfe["none"] == 8 and nfe["mask"] == 16 and 8 < nfe["interval"] < 16
    # none vs interval: identical until the first CFG step
    first_cfg = next(f.state.step + 1 for f in cmp.panel("interval").traj.frames if f.state.cfg_active)
    assert diff_doc["diverge_step"] == first_cfg
    assert divergence(cmp.panel("none").traj, cmp.panel("none").traj)[1] is None
    assert len(fig.layout.sliders[0].steps) == 8


@pytest.mark.parametrize("over, match", [
    ({"num_steps": 0}, "num_steps"),
    ({"num_steps": 1000}, "num_steps"),
    ({"num_steps": 2.5}, "whole number"),
    ({"cfg_scale": -1}, "cfg_scale"),
    ({"cfg_scale": "lots"}, "number"),
    ({"cfg_interval_lo": 0.6, "cfg_interval_hi": 0.2}, "t_lo < t_hi"),
    ({"model": "nope"}, "unknown model"),
    ({"class_name": "Giraffe"}, "unknown class"),
    ({"schedule": "quadratic"}, "unknown schedule"),
    ({"order": "confidence"}, "needs token probabilities"),
    ({"seed": -3}, "seed"),
])
def test_bad_input_is_a_gr_error(unmasking, over, match):
    with pytest.raises(gr.Error, match=match):
        list(unmasking.run(**run_values(**over)))


def test_randomise_seed_covers_the_seed_range(unmasking, monkeypatch):
    """The dice draws from the whole seed control range, randrange(0, 2**31) (both ends reachable), and
    the largest seed it can draw is one a run accepts."""
    import random
    lo, hi = controls.RANGES["seed"]
    assert (lo, hi) == (0, 2**31 - 1)
    calls = []

    def fake(self, start, stop):
        calls.append((start, stop))
        return stop - 1 if len(calls) == 1 else start
    monkeypatch.setattr(random.SystemRandom, "randrange", fake)
    top, bottom = unmasking.randomise_seed(), unmasking.randomise_seed()
    assert calls == [(0, 2**31)] * 2 and (top, bottom) == (hi, lo)
    monkeypatch.undo()
    final = list(unmasking.run(**run_values(seed=top, num_steps=2)))[-1]
    assert f"seed {hi}" in final[1]
    draws = {unmasking.randomise_seed() for _ in range(20)}
    assert len(draws) > 1 and all(isinstance(x, int) and lo <= x <= hi for x in draws)


def test_bad_input_elsewhere_is_a_gr_error(unmasking, engine, traj):
    with pytest.raises(gr.Error, match="Run the sampler first"):
        list(unmasking.branch(None, 3, **step_values(run_values())))
    with pytest.raises(gr.Error, match="branch_step"):
        list(unmasking.branch(traj, 8, **step_values(run_values())))
    with pytest.raises(gr.Error, match="row"):
        unmasking.token_history(traj, 99, 0)
    with pytest.raises(gr.Error, match="num_tokens"):
        analysis.schedules(0, 16, "exp", "binomial", 3.0, 0.1, 0.3)
    with pytest.raises(gr.Error, match="unknown panel"):
        Compare(engine).diff(list(Compare(engine).compare(
            "test-tiny", "Bag", 0, 1, 2, "exp", "binomial", 1.0, "dpm", 1, 3.0, 0.1, 0.5, "constant", "none",
            "mask"))[-1][3], "none", "sideways")


def test_missing_asset_is_a_gr_error():
    with pytest.raises(ValueError, match="unknown model"):
        Engine(["no-such-model"])
    # a VQ model needs tokenizer weights that are not shipped
    h = Unmasking(Engine(["test-tiny-vq"], num_threads=1))
    with pytest.raises(gr.Error):
        list(h.run(**run_values(model="test-tiny-vq")))


def test_a_shipped_model_just_shows_up(tmp_path, monkeypatch):
    import emigm.checkpoint as ckpt
    from app.engine import preset_config
    from emigm.model import MaskedGenerator
    cfg = preset_config("test-tiny")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        ckpt.save_export(MaskedGenerator(cfg), cfg, tmp_path / "tiny-trained")
    (tmp_path / "some-tokenizer").mkdir()  # not a generator export: skipped
    monkeypatch.setattr(ckpt, "ASSETS_DIR", tmp_path)
    engine = Engine(num_threads=1)
    assert engine.names == ["tiny-trained"] and engine.is_shipped("tiny-trained")
    h = Unmasking(engine)
    _, banner = h.model_info("tiny-trained")
    assert "Random weights" not in banner and "shipped" in banner
    final = list(h.run(**run_values(model="tiny-trained", num_steps=3)))[-1]
    assert final[5]["model"] == "tiny-trained" and not final[5]["random_init"]


def test_schedules_arithmetic():
    gamma, steps, rows, doc, summary = analysis.schedules(256, 16, "exp", "binomial", 3.0, 0.1, 0.3)
    assert doc["exp"]["passes"] == 19 and doc["exp"]["cfg_steps"] == 3 and "16 x 1.19 = 19" in summary
    assert [r[0] for r in rows] == list(range(1, 17)) and rows[-1][-1] == 19
    assert sum(r[3] for r in rows) == pytest.approx(256, abs=0.1)
    assert analysis.schedules(49, 8, "linear", "exact", 1.0, 0.1, 0.3)[3]["linear"]["passes"] == 8


def test_results_reader(tmp_path):
    assert analysis.read_claims(tmp_path / "missing.json") is None
    path = tmp_path / "claims.json"
    path.write_text(json.dumps({"points": [{"setting": "interval", "nfe": 19, "fd": 3.0}],
                                "claims": [{"claim": "interval CFG saves passes", "holds": True}, {"claim": "x"}]}))
    doc = analysis.read_claims(path)
    assert doc["points"] == [{"setting": "interval", "nfe": 19.0, "fd": 3.0}]
    assert [c[1] for c in doc["claims"]] == ["holds", "not measured"]
    from app.charts import results_figure
    assert results_figure(doc["points"]).data[0].name == "interval"


def test_permalink_round_trip(engine):
    names = lambda m: ["T-shirt/top", "Trouser", "Bag"]  # noqa: E731
    values = run_values(seed=42, schedule="cosine", cfg_scale=2.5, class_name="Bag")
    query = dict(x.split("=") for x in permalink.encode(values).split("&"))
    from urllib.parse import unquote_plus
    back, problems = permalink.decode({k: unquote_plus(v) for k, v in query.items()}, MODELS, names)
    assert not problems and {k: back[k] for k in values} == values
    back, problems = permalink.decode({"num_steps": "9999", "model": "nope", "class_name": "Cat"}, MODELS, names)
    assert back["num_steps"] == controls.DEFAULTS["num_steps"] and back["model"] == MODELS[0]
    assert len(problems) == 3


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


ENDPOINTS = {"/run", "/branch", "/stopped", "/export", "/token_history", "/pick_token", "/randomise_seed",
             "/model_info", "/permalink", "/restore", "/preset_run", "/schedules", "/compare", "/diff", "/results"}


def test_named_endpoints(client):
    names = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert ENDPOINTS <= names


def test_client_run_branch_token(client):
    v = run_values(num_steps=6)
    out = client.predict(**{k: v[k] for k in controls.RUN_FIELDS}, api_name="/run")
    doc = out[5]
    assert doc["num_steps"] == 6 and doc["complete"] and doc["model"] == "test-tiny"
    assert sorted(x for row in doc["when"] for x in row)[0] == 1
    # the same client session holds the trajectory: token history and branch need no re-run
    gallery, tok, _ = client.predict(row=0, col=0, api_name="/token_history")
    assert tok["token"] == [0, 0] and len(tok["history"]) == tok["revealed_at_step"]
    out = client.predict(branch_step=2, **step_values(v), api_name="/branch")
    assert out[5]["branched_from_step"] == 2
    assert [s["revealed"] for s in out[5]["steps"][:2]] == [s["revealed"] for s in doc["steps"][:2]]
    files = client.predict(api_name="/export")
    assert files[0].endswith(".gif") and files[2].endswith(".json")


def test_client_bad_input_and_still_serving(client):
    v = run_values()
    with pytest.raises(Exception, match="maximum value 64|num_steps must be in"):
        client.predict(**{**{k: v[k] for k in controls.RUN_FIELDS}, "num_steps": 500}, api_name="/run")
    with pytest.raises(Exception, match="not in the list of choices|unknown model"):
        client.predict(**{**{k: v[k] for k in controls.RUN_FIELDS}, "model": "nope"}, api_name="/run")
    with pytest.raises(Exception, match="t_lo < t_hi"):
        client.predict(**{**{k: v[k] for k in controls.RUN_FIELDS}, "cfg_interval_lo": 0.9}, api_name="/run")
    with pytest.raises(Exception, match="Run the sampler first"):
        fresh = type(client)(client.src, verbose=False)
        fresh.predict(row=0, col=0, api_name="/token_history")
    out = client.predict(256, 16, "exp", "binomial", 3.0, 0.1, 0.3, api_name="/schedules")
    assert out[3]["exp"]["passes"] == 19


def test_client_compare_and_results(client):
    out = client.predict("test-tiny", "Bag", 1, 1, 4, "exp", "binomial", 1.0, "dpm", 1, 3.0, 0.0, 0.5, "constant",
                         "none", "mask", api_name="/compare")
    doc, diff = out[2], out[4]  # gr.State outputs are not returned to clients
    assert doc["same_reveal_order"] and diff["a"] == "none" and diff["b"] == "mask"
    msg, _, _, res = client.predict(api_name="/results")
    assert res["available"] == analysis.CLAIMS_PATH.is_file()
    seeds = [client.predict(api_name="/randomise_seed") for _ in range(3)]
    lo, hi = controls.RANGES["seed"]
    assert all(float(x).is_integer() and lo <= x <= hi for x in seeds) and len(set(seeds)) > 1, seeds
