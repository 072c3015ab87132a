"""The explorer shows a measured number only for the weights it was measured on, and its Schedules tab
shows what the sampler plans (and the Unmasking run's reveals beside it)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from app import analysis, claims, controls
from app.engine import Engine
from emigm.core.fileio import ASSETS_DIR
from emigm.core.guidance import GuidanceConfig
from emigm.eval.claims import ClaimsFile, shipped_fingerprint
from emigm.io.loading import load_pipeline
from emigm.sample.options import SamplerConfig
from emigm.sample.plan import plan_steps

SETTING = (SamplerConfig(num_steps=16, schedule="exp", draft=False), GuidanceConfig(cfg_scale=3.0,
                                                                                     cfg_interval=(0.1, 0.3)))


def swapped_copy(tmp_path: Path, name: str = "fmnist-emigm") -> Path:
    """assets/NAME copied with other weights (every float tensor scaled by 1.01): it loads, but it is not
    what was measured."""
    from safetensors.torch import load_file, save_file

    copy = tmp_path / "swapped" / name
    shutil.copytree(ASSETS_DIR / name, copy)
    state = load_file(str(copy / "model.safetensors"))
    state = {k: (v * 1.01 if v.is_floating_point() else v) for k, v in state.items()}
    save_file(state, str(copy / "model.safetensors"))
    (copy / "checksums.json").unlink(missing_ok=True)  # a hand-made export: no record of what was written
    return copy


def claims_doc(fp: dict, ddpm_fd: float = 137.0) -> dict:
    """A current-format claims file of fmnist-emigm measured on `fp`: the default setting, DPM-Solver++ 14
    and DDPM-100 (head solver points)."""
    from emigm.core.config import to_dict

    def point(label, sampler, guidance, fd):
        return {"group": "solver", "label": label, "model": "fmnist-emigm", "nfe": 16, "fd": fd, "fd_sd": 0.2,
                "seed_sets": [[0, 999], [1000, 1999], [2000, 2999]], "fingerprint": fp,
                "sampler": to_dict(sampler), "guidance": to_dict(guidance)}
    base, g = SETTING
    pts = [point("default", base, g, 10.47), point("dpm head=14", SamplerConfig(head_steps=14, draft=False),
                                                   GuidanceConfig(), 11.7),
           point("ddpm head=100", SamplerConfig(head_solver="ddpm", head_steps=100, draft=False), GuidanceConfig(),
                 ddpm_fd)]
    return {"version": 3, "fingerprints": {"fmnist-emigm": fp}, "points": pts, "claims": []}


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """The shipped fmnist-emigm and a copy of it with swapped weights, loaded."""
    tmp = tmp_path_factory.mktemp("weights")
    return load_pipeline("fmnist-emigm"), load_pipeline(swapped_copy(tmp))


def test_compare_caption_and_ddpm_warning_only_for_the_measured_weights(loaded, tmp_path):
    shipped, swapped = loaded
    fp_shipped, fp_swapped = claims.weights_of(shipped), claims.weights_of(swapped)
    assert fp_shipped == shipped_fingerprint("fmnist-emigm") and fp_swapped["network"] != fp_shipped["network"]
    path = tmp_path / "claims.json"
    path.write_text(json.dumps(claims_doc(fp_shipped)))
    m = claims.measured_fd("fmnist-emigm", *SETTING, fp_shipped, path)
    assert m["fd"] == 10.47 and m["text"].startswith("measured FD 10.5 ± 0.2 (sd over 3 seed sets) on these weights")
    other = claims.measured_fd("fmnist-emigm", *SETTING, fp_swapped, path)  # same name, other weights
    assert other["fd"] is None and other["text"] == "measured FD: not measured on these weights"
    assert claims.measured_fd("fmnist-emigm", SETTING[0], GuidanceConfig(), fp_shipped, path) is None  # not measured
    warn = claims.measured_warnings("fmnist-emigm", fp_shipped, path)
    assert list(warn["head_solver"]) == ["ddpm"] and "measured FD 137 on these weights" in warn["head_solver"]["ddpm"]
    assert claims.measured_warnings("fmnist-emigm", fp_swapped, path) == {}
    path.write_text(json.dumps(claims_doc(fp_shipped, ddpm_fd=11.8)))  # DDPM works on these weights
    assert claims.measured_warnings("fmnist-emigm", fp_shipped, path) == {}


def test_todays_model_has_no_ddpm_warning_and_no_number_of_other_weights():
    """On the shipped model and the shipped claims file: no DDPM warning unless measured on these weights,
    and any caption's number is one measured on them."""
    engine = Engine(["fmnist-emigm"], num_threads=1)
    gen = engine.load("fmnist-emigm")
    view = controls.ModelView(gen.model, gen.smoother, claims.measured_warnings("fmnist-emigm", claims.weights_of(gen)))
    cf = ClaimsFile.read()
    measured = cf.measured("fmnist-emigm", claims.weights_of(gen), SamplerConfig(head_solver="ddpm", head_steps=100,
                                                                                  draft=False), GuidanceConfig())
    if measured is None or measured["fd"] < 3 * 11.0:
        assert "ddpm" not in view.warnings.get("head_solver", {})
    m = claims.measured_fd("fmnist-emigm", *SETTING, claims.weights_of(gen))
    if m is not None and m["fd"] is not None:
        p = cf.measured("fmnist-emigm", claims.weights_of(gen), *SETTING)
        assert p is not None and p["fingerprint"]["network"] == claims.weights_of(gen)["network"]


def test_results_tab_with_a_damaged_or_older_file_is_one_line(tmp_path, monkeypatch):
    path = tmp_path / "claims.json"
    monkeypatch.setattr(claims, "CLAIMS_PATH", path)
    for text, want in (("{", "is damaged"), (json.dumps({"points": [], "claims": [{"claim": "c", "verdict": "holds"}],
                                                          "version": 2}), "older format")):
        path.write_text(text)
        msg, fig, table, points, res = analysis.results()
        assert want in msg and "\n" not in msg.strip("*") and res["available"] is False
        if want == "older format":
            assert table["value"] == [["c", "not measured on these weights", ""]]


def _tiny_run(engine, sampler):
    return engine.run("test-tiny", [0, 1, 2], [5, 6, 7], sampler, GuidanceConfig())


def test_schedules_tab_shows_the_plan_and_the_unmasking_run(monkeypatch):
    """The tab's numbers are plan_steps' (mean over 4000 seeds within 4 standard errors, at least one per
    step); the Unmasking run's reveals appear beside them when its settings match, not otherwise."""
    L, S = 16, 6
    values = dict(num_tokens=L, num_steps=S, schedule="cosine", count_rule="binomial", cfg_scale=1.0,
                  cfg_interval_lo=0.1, cfg_interval_hi=0.3)
    engine = Engine(["test-tiny"], num_threads=1)
    sampler = SamplerConfig(num_steps=S, schedule="cosine")
    traj = _tiny_run(engine, sampler)
    out = list(analysis.schedules_view(traj, *values.values()))[-1]
    fig, rows, doc, summary = out[1], out[2], out[3], out[4]
    emp = plan_steps(torch.arange(4000), L, sampler).revealed.double()
    for k, row in enumerate(rows):
        sd = float(emp[k].std())
        assert abs(row[3] - float(emp[k].mean())) <= 4 * sd / 4000 ** 0.5 + 0.005, k  # rounded to 0.01
        assert int(str(row[4]).split("-")[0]) >= 1
    assert doc["run"]["counts"] == [[int(f.state.revealed[b].sum()) for f in traj.frames] for b in range(3)]
    crosses = [t for t in fig.data if t.name and t.name.startswith("the Unmasking run")]
    assert len(crosses) == 1 and sorted(crosses[0].y) == sorted(c for r in doc["run"]["counts"] for c in r)
    assert any(t.name and "L x Δγ" in t.name for t in fig.data) and "Unmasking run" in summary
    other = _tiny_run(engine, SamplerConfig(num_steps=S, schedule="exp"))  # another schedule: not overlaid
    out = list(analysis.schedules_view(other, *values.values()))[-1]
    assert out[3]["run"] is None and not any(t.name and t.name.startswith("the Unmasking run") for t in out[1].data)
