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

from emigm.cli import main as cli
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
    cfg = SamplerConfig(num_steps=L, order="threshold", threshold_tau=0.12)
    g = GuidanceConfig(cfg_scale=2.0)
    states = _run(maskgit, cfg, labels=range(6), seeds=range(6), guidance=g)
    last = states[-1]
    taken = torch.stack([st.mask_before.any(1) for st in states]).sum(0)
    assert last.done and len(states) == int(taken.max()) < L
    assert last.image_steps.tolist() == taken.tolist()
    assert len(set(taken.tolist())) > 1, "these seeds should finish after different step counts"
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


def test_a_cap_on_the_steps_reveals_the_rest_at_the_last_step(maskgit):
    states = _run(maskgit, SamplerConfig(num_steps=3, order="eb", eb_gamma=0.0))
    assert len(states) == 3 and states[-1].done
    assert states[0].revealed.sum(1).tolist() == [1, 1, 1] and states[1].revealed.sum(1).tolist() == [1, 1, 1]


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
    (["--threshold-tau", "0"], "threshold_tau"), (["--threshold-tau", "1.01"], "threshold_tau"),
    (["--eb-gamma", "-1"], "eb_gamma"),
])
def test_cli_refuses_bad_tau_and_gamma_in_one_line(tmp_path, capsys, flags, match):
    out = tmp_path / "x.png"
    with pytest.raises(SystemExit) as e:
        cli(["sample", "--preset", "test-tiny-vq", "--random-init", "--order", "eb", *flags, "--out", str(out)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err, err
    assert not out.exists()


def test_cli_samples_with_an_adaptive_order_and_writes_per_image_steps(tmp_path):
    out, trace = tmp_path / "x.png", tmp_path / "x.json"
    cli(["sample", "--preset", "test-tiny-vq", "--random-init", "--order", "threshold", "--threshold-tau", "0.2",
         "--steps", "16", "--labels", "1", "4", "--seed", "3", "--out", str(out), "--trace", str(trace)])
    doc = json.loads(trace.read_text())
    assert out.is_file() and doc["sampler"]["order"] == "threshold" and doc["sampler"]["threshold_tau"] == 0.2
    assert len(doc["steps_per_image"]) == 2 and all(1 <= n <= 16 for n in doc["steps_per_image"])
    assert len(doc["steps"]) == max(doc["steps_per_image"])


# ----------------------------------------------------------------------------- ReMDM-conf


def test_remdm_conf_remasks_the_planned_count_weighted_by_one_minus_confidence(maskgit):
    """The same counts as ReMDM-cap (the plan), but which committed tokens are revised follows 1 -
    confidence at commit: over many seeds the re-masked tokens were committed with lower confidence than
    the committed tokens on average, and the tokens committed at probability 1 are never re-masked."""
    cfg = SamplerConfig(num_steps=8, order="confidence", count_rule="exact", remask="conf", remask_eta=0.3,
                        schedule="linear")
    cap = SamplerConfig(num_steps=8, order="confidence", count_rule="exact", remask="cap", remask_eta=0.3,
                        schedule="linear")
    seeds = list(range(24))
    conf_states = _run(maskgit, cfg, labels=[s % 10 for s in seeds], seeds=seeds)
    cap_states = _run(maskgit, cap, labels=[s % 10 for s in seeds], seeds=seeds)
    assert [st.remasked.sum(1).tolist() for st in conf_states] == [st.remasked.sum(1).tolist() for st in cap_states]
    remasked_conf, committed_conf = [], []
    for st in conf_states:
        committed = ~st.mask_before
        c = st.confidence_before
        assert bool((c[committed] > 0).all() and (c[committed] <= 1).all())
        remasked_conf += c[st.remasked].tolist()
        committed_conf += c[committed].tolist()
    assert len(remasked_conf) > 20
    assert sum(remasked_conf) / len(remasked_conf) < sum(committed_conf) / len(committed_conf) - 0.02
    assert conf_states[-1].done


def test_remdm_conf_keys_are_efraimidis_spirakis_on_one_minus_confidence():
    """Which committed tokens are re-masked: the `count` smallest of -log(u) / (1 - confidence), i.e.
    weighted sampling without replacement with weights 1 - confidence (normalised over the committed
    tokens); a token committed at probability 1 has weight 0 and comes last."""
    from emigm.sample.orders import remask_keys

    u = torch.tensor([[0.5, 0.5, 0.5, 0.25]])
    conf = torch.tensor([[0.9, 0.2, 1.0, 0.6]])
    keys = remask_keys(u, conf)
    want = [-math.log(0.5) / 0.1, -math.log(0.5) / 0.8, math.inf, -math.log(0.25) / 0.4]
    assert keys[0, :2].tolist() == pytest.approx(want[:2]) and keys[0, 3].item() == pytest.approx(want[3])
    assert math.isinf(keys[0, 2].item())
