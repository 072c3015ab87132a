"""Re-scoring an opened step without a network pass: at the run's own settings it is the step, bit for
bit; at another setting it is the step of a run made with that setting from the same visible tokens;
what needs a new run is refused with the reason."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from emigm.core.guidance import GuidanceConfig
from emigm.io.loading import load_pipeline
from emigm.sample.options import AnatomyOptions
from emigm.sample.rescore import needs_new_run, rescore
from emigm.sample.sampler import SamplerConfig, sample_steps

OPEN = AnatomyOptions(rescore=True)
LABELS, SEEDS = [3, 8], [11, 12]


@pytest.fixture(scope="module")
def pipes():
    return {n: load_pipeline(n) for n in ("fmnist-maskgit", "fmnist-emigm")}


def _run(pipe, sampler, guidance, init=None, n=None):
    out = []
    for st in sample_steps(pipe, LABELS, SEEDS, sampler, guidance, init=init, anatomy=OPEN):
        out.append(st)
        if n is not None and len(out) == n:
            break
    return out


def _same_step(r, st) -> None:
    assert torch.equal(r.revealed, st.revealed)
    assert torch.equal(r.tokens, st.tokens)
    assert torch.equal(r.draft, st.draft)


CATEGORICAL = [dict(temperature=0.5), dict(temperature=0.0), dict(cfg_scale=3.5), dict(sg_scale=0.0),
               dict(sg_scale=1.5), dict(cfg_scale=1.0), dict(order="margin", order_temperature=0.0),
               dict(order="entropy"), dict(order_temperature=1.0), dict(order_anneal="compound"),
               dict(order="random"), dict(order="halton"), dict(cfg_schedule="linear")]
CONTINUOUS = [dict(temperature=0.5), dict(cfg_scale=1.0), dict(cfg_scale=5.0), dict(order="halton"),
              dict(order="raster"), dict(cfg_schedule="linear")]


def _split(change: dict) -> tuple[dict, dict]:
    g = {k: v for k, v in change.items() if k in ("cfg_scale", "cfg_schedule", "sg_scale")}
    return {k: v for k, v in change.items() if k not in g}, g


@pytest.mark.parametrize("name, base_sampler, base_guidance, changes", [
    ("fmnist-maskgit", dict(schedule="cosine", count_rule="exact", order="confidence"),
     dict(cfg_scale=2.0, sg_scale=0.5), CATEGORICAL),
    ("fmnist-emigm", dict(schedule="exp", count_rule="binomial", order="random", head_solver="ddpm", head_steps=10),
     dict(cfg_scale=3.0), CONTINUOUS),
])
def test_rescoring_is_the_step_and_the_step_of_a_run_with_the_new_setting(pipes, name, base_sampler, base_guidance,
                                                                          changes) -> None:
    pipe = pipes[name]
    sampler, guidance = SamplerConfig(num_steps=6, **base_sampler), GuidanceConfig(**base_guidance)
    run = _run(pipe, sampler, guidance, n=3)
    for k in (0, 2):
        _same_step(rescore(pipe, run[k]), run[k])
        assert not rescore(pipe, run[k]).later_changed
    differed = 0
    for change in changes:
        s_change, g_change = _split(change)
        s2, g2 = dataclasses.replace(sampler, **s_change), dataclasses.replace(guidance, **g_change)
        got = rescore(pipe, run[2], s2, g2)
        want = _run(pipe, s2, g2, init=run[1], n=1)[0]
        _same_step(got, want)
        assert got.later_changed == (not torch.equal(want.tokens, run[2].tokens))
        differed += got.later_changed
        if pipe.model.head.discrete:
            masked = run[2].mask_before
            assert torch.allclose(got.probs[masked].sum(-1), torch.ones(int(masked.sum())), atol=1e-5)
    assert differed >= len(changes) - 2  # the settings do change the step (not a vacuous comparison)


def test_what_needs_a_new_run_is_refused_with_the_reason(pipes) -> None:
    pipe = pipes["fmnist-emigm"]
    sampler = SamplerConfig(num_steps=6)
    guidance = GuidanceConfig(cfg_scale=3.0, cfg_interval=(0.5, 1.0))
    run = _run(pipe, sampler, guidance, n=6)
    late = next(st for st in run if not st.cfg_active)
    with pytest.raises(ValueError, match="cfg did not run at step .* never computed"):
        rescore(pipe, dataclasses.replace(late), sampler, dataclasses.replace(guidance, cfg_interval=(0.0, 1.0)))
    reasons = needs_new_run(run[0], dataclasses.replace(sampler, num_steps=8, remask="cap"), guidance, False)
    assert any(r.startswith("num_steps") for r in reasons) and any(r.startswith("remask ") for r in reasons)
    assert needs_new_run(run[0], sampler, dataclasses.replace(guidance, cfg_scale=4.0), False) == []
    with pytest.raises(ValueError, match="confidence order needs a categorical head"):
        rescore(pipe, run[0], dataclasses.replace(sampler, order="confidence"))
    plain = next(iter(sample_steps(pipe, LABELS, SEEDS, sampler, guidance, anatomy=AnatomyOptions())))
    with pytest.raises(ValueError, match="not opened for re-scoring"):
        rescore(pipe, plain)
