"""The adaptive samplers, registry entries of the adaptive kind, on any categorical model: the confidence
threshold (Fast-dLLM) and EB-Sampler (arXiv 2505.24857) decide how many tokens a step reveals, so the
number of steps varies per image; ReMDM-conf remasking chooses which committed tokens to revise by their
confidence at commit. Counts are checked against the rules recomputed here from each step's recorded
guided logits."""
from __future__ import annotations

import json
import math

import pytest
import torch
from test_fast_path import make

from emigm.cli.main import main as cli
from emigm.core.guidance import GuidanceConfig
from emigm.sample.options import AnatomyOptions, SamplerConfig
from emigm.sample.orders import ORDERS
from emigm.sample.sampler import sample, sample_steps
from emigm.sample.trace import trace_dict


@pytest.fixture(scope="module")
def maskgit():
    return make("test-tiny-vq", mae=False)


@pytest.fixture(scope="module")
def maskgit_mae():
    return make("test-tiny-vq")


def _run(model, cfg, labels=(1, 4, 7), seeds=(3, 8, 11), guidance=GuidanceConfig(), anatomy=None):
    return list(sample_steps(model, list(labels), list(seeds), cfg, guidance, anatomy=anatomy))


def _logp(state) -> torch.Tensor:
    return torch.log_softmax(state.anatomy.raw["combined"].double(), -1)


# ----------------------------------------------------------------------------- the rules, by hand


def test_both_are_adaptive_registry_entries_that_need_probabilities():
    for name in ("threshold", "eb"):
        assert ORDERS[name].kind == "adaptive" and ORDERS[name].needs == "token probabilities"


@pytest.mark.parametrize("tau", [0.05, 0.2, 0.5, 1.0])
def test_threshold_reveals_every_token_at_or_above_tau_and_at_least_one(maskgit, tau):
    cfg = SamplerConfig(num_steps=16, order="threshold", threshold_tau=tau)
    states = _run(maskgit, cfg, anatomy=AnatomyOptions())
    for st in states:
        top = _logp(st).exp().amax(-1)
        for b in range(3):
            masked = st.mask_before[b]
            if not bool(masked.any()):
                assert not bool(st.revealed[b].any())
                continue
            revealed = st.revealed[b]
            n = int(revealed.sum())
            if st.step == cfg.num_steps - 1:
                assert torch.equal(revealed, masked)
                continue
            above = masked & (top[b] >= tau - 1e-6)
            if bool(above.any()):
                assert n == int(above.sum()) and torch.equal(revealed, above)
            else:  # none at or above tau: the single most confident one
                assert n == 1 and float(top[b][revealed]) == pytest.approx(float(top[b][masked].max()), abs=1e-6)
    assert states[-1].done


@pytest.mark.parametrize("gamma", [0.0, 0.3, 1.5, 6.0])
def test_eb_reveals_the_longest_low_entropy_prefix_within_gamma(maskgit, gamma):
    cfg = SamplerConfig(num_steps=16, order="eb", eb_gamma=gamma)
    for st in _run(maskgit, cfg, anatomy=AnatomyOptions()):
        lp = _logp(st)
        entropy = -(lp.exp() * lp).sum(-1)
        for b in range(3):
            masked = st.mask_before[b].nonzero().flatten()
            if len(masked) == 0 or st.step == cfg.num_steps - 1:
                continue
            h = entropy[b, masked].sort().values.tolist()
            want = 1
            while want < len(h) and sum(h[:want + 1]) - h[want] <= gamma + 1e-6:
                want += 1
            n = int(st.revealed[b].sum())
            assert n == want, (st.step, b, n, want)
            chosen = entropy[b][st.revealed[b]]
            others = entropy[b][st.mask_before[b] & ~st.revealed[b]]
            if len(others):
                assert float(chosen.max()) <= float(others.min()) + 1e-6


def test_gamma_zero_reveals_one_token_per_step(maskgit):
    L = maskgit.num_tokens
    states = _run(maskgit, SamplerConfig(num_steps=L, order="eb", eb_gamma=0.0))
    assert len(states) == L
    assert all(st.revealed.sum(1).tolist() == [1, 1, 1] for st in states)


def test_steps_vary_per_image_and_the_ledger_counts_them(maskgit):
    L = maskgit.num_tokens
    cfg = SamplerConfig(num_steps=L, order="threshold", threshold_tau=0.15)
    g = GuidanceConfig(cfg_scale=2.0)
    states = _run(maskgit, cfg, labels=range(6), seeds=range(6), guidance=g)
    last = states[-1]
    taken = torch.stack([st.mask_before.any(1) for st in states]).sum(0)
    assert last.done and len(states) == int(taken.max()) < L
    assert last.image_steps.tolist() == taken.tolist()
    assert len(set(taken.tolist())) > 1, "these seeds should finish after different step counts"
    for st in states:  # at least one token per step from every image with a masked token, none from the others
        active = st.mask_before.any(1)
        assert bool((st.revealed.sum(1)[active] >= 1).all()) and not bool(st.revealed[~active].any())
    per_step = [st.passes - (states[i - 1].passes if i else 0) for i, st in enumerate(states)]
    want = [sum(p for p, st in zip(per_step, states) if bool(st.mask_before[b].any())) for b in range(6)]
    assert last.image_passes.tolist() == want and last.passes == sum(per_step)
    trace = trace_dict(states, "tiny")
    assert trace["steps_per_image"] == taken.tolist() and trace["passes_per_image"] == want
    assert json.loads(json.dumps(trace))["steps"][-1]["active"] == last.mask_before.any(1).tolist()


@pytest.mark.parametrize("order,knob", [("threshold", {"threshold_tau": 0.3}), ("eb", {"eb_gamma": 0.5})])
def test_deterministic_per_seed_and_batch_size_one_equals_four(maskgit, maskgit_mae, order, knob):
    for model in (maskgit, maskgit_mae):
        cfg = SamplerConfig(num_steps=model.num_tokens, order=order, **knob)
        four = sample(model, [1, 4, 7, 2], [3, 8, 11, 5], cfg)
        again = sample(model, [1, 4, 7, 2], [3, 8, 11, 5], cfg)
        assert torch.equal(four.tokens, again.tokens)
        for b, (label, seed) in enumerate(zip([1, 4, 7, 2], [3, 8, 11, 5])):
            one = sample(model, [label], [seed], cfg)
            assert torch.equal(one.tokens[0], four.tokens[b])
            assert one.image_steps.tolist() == [int(four.image_steps[b])]
        steps = list(sample_steps(model, [1, 4, 7, 2], [3, 8, 11, 5], cfg))
        assert torch.equal(steps[-1].tokens, four.tokens)  # the generator equals the fast path


def test_graph_replay_with_padded_shapes_equals_the_eager_fast_path(maskgit_mae):
    """The CPU replay of the CUDA-graph path (static buffers, bucket-padded rows) on an adaptive order whose
    shapes change every step."""
    cfg = SamplerConfig(num_steps=maskgit_mae.num_tokens, order="threshold", threshold_tau=0.2, remask="off")
    eager = sample(maskgit_mae, [1, 4, 7], [3, 8, 11], cfg, GuidanceConfig(cfg_scale=2.0))
    replay = sample(maskgit_mae, [1, 4, 7], [3, 8, 11], cfg, GuidanceConfig(cfg_scale=2.0), graphs=True)
    assert torch.equal(eager.tokens, replay.tokens) and torch.equal(eager.image_steps, replay.image_steps)


def test_a_cap_on_the_steps_reveals_the_rest_at_the_last_step(maskgit):
    states = _run(maskgit, SamplerConfig(num_steps=3, order="eb", eb_gamma=0.0))
    assert len(states) == 3 and states[-1].done
    assert states[0].revealed.sum(1).tolist() == [1, 1, 1] and states[1].revealed.sum(1).tolist() == [1, 1, 1]


def test_rescoring_a_step_as_an_adaptive_order_equals_running_it(maskgit):
    """An opened confidence-order step re-scored as threshold / eb (no network pass) is the first step of
    a run with that order branched from the step before."""
    from dataclasses import replace

    from emigm.sample.rescore import rescore

    cfg = SamplerConfig(num_steps=8, order="confidence", count_rule="exact")
    states = _run(maskgit, cfg, anatomy=AnatomyOptions(rescore=True))
    for new in (replace(cfg, order="threshold", threshold_tau=0.15), replace(cfg, order="eb", eb_gamma=5.0)):
        got = rescore(maskgit, states[3], new)
        ran = next(iter(sample_steps(maskgit, [1, 4, 7], [3, 8, 11], new, init=states[2])))
        assert torch.equal(got.revealed, ran.revealed) and torch.equal(got.tokens, ran.tokens)
        assert int(got.revealed.sum()) > 3


# ----------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("kwargs,match", [
    ({"threshold_tau": 0.0}, "threshold_tau"), ({"threshold_tau": 1.5}, "threshold_tau"),
    ({"threshold_tau": float("nan")}, "threshold_tau"), ({"eb_gamma": -0.1}, "eb_gamma"),
    ({"order": "eb", "remask": "cap"}, "remask"),
])
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplerConfig(**kwargs)


def test_tau_one_is_allowed_and_reveals_one_or_the_certain_ones(maskgit):
    SamplerConfig(threshold_tau=1.0)  # the closed end of (0, 1]


def test_a_diffusion_head_refuses_them():
    emigm_like = make("test-tiny")
    for order in ("threshold", "eb"):
        with pytest.raises(ValueError, match=f"the {order} order needs token probabilities"):
            sample(emigm_like, [1], [0], SamplerConfig(num_steps=4, order=order))
    with pytest.raises(ValueError, match="remask 'conf' is not available"):
        sample(emigm_like, [1], [0], SamplerConfig(num_steps=4, remask="conf"))


@pytest.mark.parametrize("flags,match", [
    (["--threshold-tau", "0"], "--threshold-tau must be in (0, 1]"),
    (["--threshold-tau", "1.01"], "--threshold-tau must be in (0, 1]"), (["--eb-gamma", "-1"], "--eb-gamma must be"),
])
def test_cli_refuses_bad_tau_and_gamma_in_one_line(tmp_path, capsys, flags, match):
    out = tmp_path / "x.png"
    code = cli(["sample", "--preset", "test-tiny-vq", "--random-init", "--order", "eb", *flags, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and match in err, err
    assert not out.exists()


def test_cli_samples_with_an_adaptive_order_and_writes_per_image_steps(tmp_path, capsys):
    out, trace = tmp_path / "x.png", tmp_path / "x.json"
    code = cli(["sample", "--checkpoint", "fmnist-maskgit", "--order", "threshold", "--threshold-tau", "0.5",
                "--steps", "49", "--class", "1", "--num-images", "3", "--seed", "3", "--device", "cpu", "--out",
                str(out), "--trace", str(trace)])
    printed = capsys.readouterr()
    assert code in (0, None), printed.err
    doc = json.loads(trace.read_text())
    assert out.is_file() and doc["sampler"]["order"] == "threshold" and doc["sampler"]["threshold_tau"] == 0.5
    steps = doc["steps_per_image"]
    assert len(steps) == 3 and all(1 <= n <= 49 for n in steps) and len(doc["steps"]) == max(steps)
    assert [sum(st["active"][b] for st in doc["steps"]) for b in range(3)] == steps
    if len(set(steps)) > 1:
        assert f"steps per image: {', '.join(map(str, steps))}" in printed.out


# ----------------------------------------------------------------------------- ReMDM-conf


def test_remdm_conf_remasks_the_planned_count_chosen_by_one_minus_confidence(maskgit):
    """The same counts as ReMDM-cap (the plan), the committed tokens chosen by remask_keys on the "where"
    stream's uniforms and each token's probability when it was committed, recomputed here from the step
    that committed it (its guided logits)."""
    from emigm.core import rng
    from emigm.sample.orders import KEY_REMASK_POS, remask_keys, smallest

    kw = dict(num_steps=8, order="confidence", count_rule="exact", remask_eta=0.3, schedule="linear")
    seeds = list(range(6))
    conf_states = _run(maskgit, SamplerConfig(remask="conf", **kw), labels=seeds, seeds=seeds,
                       anatomy=AnatomyOptions())
    cap_states = _run(maskgit, SamplerConfig(remask="cap", **kw), labels=seeds, seeds=seeds)
    assert [st.remasked.sum(1).tolist() for st in conf_states] == [st.remasked.sum(1).tolist() for st in cap_states]
    assert sum(int(st.remasked.sum()) for st in conf_states) > 5
    confidence = torch.zeros(6, maskgit.num_tokens)
    for st in conf_states:
        committed = ~st.mask_before
        u = rng.uniform(st.seeds, rng.STREAM_WHERE, st.step, KEY_REMASK_POS, tail=(maskgit.num_tokens,))
        keys = remask_keys(u, confidence)
        want = smallest(torch.where(committed, keys, math.inf), st.remasked.sum(1)) & committed
        assert torch.equal(st.remasked, want)
        p = torch.softmax(st.anatomy.raw["combined"].double(), -1).gather(2, st.tokens.clamp(min=0)[..., None])[..., 0]
        confidence = torch.where(st.revealed, p.float(), confidence).masked_fill(st.remasked, 0.0)
        torch.testing.assert_close(st.confidence, confidence, rtol=1e-5, atol=1e-6)
    assert conf_states[-1].done


def test_remdm_conf_keys_are_efraimidis_spirakis_on_one_minus_confidence():
    """Which committed tokens are re-masked: the `count` smallest of -log(u) / (1 - confidence), i.e.
    weighted sampling without replacement with weights 1 - confidence; a token committed at probability 1
    has weight 0 and comes last. The first pick of one in three is token i with probability w_i / sum w."""
    from emigm.core import rng
    from emigm.sample.orders import remask_keys, smallest

    u = torch.tensor([[0.5, 0.5, 0.5, 0.25]])
    keys = remask_keys(u, torch.tensor([[0.9, 0.2, 1.0, 0.6]]))
    assert keys[0, [0, 1, 3]].tolist() == pytest.approx([math.log(2) / 0.1, math.log(2) / 0.8, math.log(4) / 0.4],
                                                         rel=1e-5)
    assert math.isinf(keys[0, 2].item())
    n = 20000
    u = rng.uniform(torch.arange(n), rng.STREAM_WHERE, 0, 4, tail=(3,))
    picked = smallest(remask_keys(u, torch.tensor([0.1, 0.5, 0.9]).expand(n, 3)), torch.ones(n, dtype=torch.long))
    freq = picked.float().mean(0)
    want = torch.tensor([0.9, 0.5, 0.1]) / 1.5
    assert torch.all((freq - want).abs() <= 4 * (want * (1 - want) / n).sqrt()), freq
