"""Pure functions pinned by value: mask schedules, the sampler's count planning and annealing, training
masks, step arithmetic, the diffusion tables and solvers' pure pieces, the categorical head's sampling
rule and the tokenizer seam ratio.

Every expected value is written out by hand or computed here from the formula in the spec
(shared/spec/emigm-reference.md, self-guidance-reference.md), never by calling the function under test,
and boundaries are checked as well as interior points: a one-line change to a number or a comparison
in these functions should fail a test here (benchmarks/mutants.py measures that).
"""
from __future__ import annotations

import math
from statistics import NormalDist

import pytest
import torch

from emigm.core import rng
from emigm.core.config import MaskingConfig
from emigm.core.schedules import SCHEDULES, get_schedule, time_grid

F64 = torch.float64

# The spec's schedules (sec. 2), written out independently of emigm.core.schedules.
GAMMA = {
    "linear": lambda t: t,
    "cosine": lambda t: math.cos(math.pi / 2 * (1 - t)),
    "exp": lambda t: 1 - math.exp(-5 * t),
}
DGAMMA = {
    "linear": lambda t: 1.0,
    "cosine": lambda t: math.pi / 2 * math.sin(math.pi / 2 * (1 - t)),
    "exp": lambda t: 5 * math.exp(-5 * t),
}


def _t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=F64)


# ============================================================================= schedules


@pytest.mark.parametrize("name,t,value", [
    ("linear", 0.0, 0.0), ("linear", 0.3, 0.3), ("linear", 1.0, 1.0),
    ("cosine", 0.0, 0.0), ("cosine", 0.25, 0.38268343236508984), ("cosine", 0.5, math.sqrt(0.5)),
    ("cosine", 1.0, 1.0),
    ("exp", 0.0, 0.0), ("exp", 0.5, 0.9179150013761012), ("exp", 1.0, 0.9932620530009145),
])
def test_gamma_values(name, t, value):
    assert float(get_schedule(name).gamma(_t(t))) == pytest.approx(value, abs=1e-15)


@pytest.mark.parametrize("name", list(GAMMA))
def test_gamma_and_dgamma_match_the_spec_formulas(name):
    s = get_schedule(name)
    ts = [0.0, 1e-3, 0.1, 0.37, 0.5, 0.9, 1.0]
    got, dgot = s.gamma(_t(*ts)), s.dgamma(_t(*ts))
    for i, t in enumerate(ts):
        assert float(got[i]) == pytest.approx(GAMMA[name](t), rel=1e-12, abs=1e-15)
        assert float(dgot[i]) == pytest.approx(DGAMMA[name](t), rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("name,t,slope", [
    ("linear", 0.0, 1.0), ("linear", 1.0, 1.0),
    ("cosine", 0.0, math.pi / 2), ("cosine", 1.0, 0.0),
    ("exp", 0.0, 5.0), ("exp", 1.0, 5 * math.exp(-5)),
])
def test_dgamma_at_the_ends(name, t, slope):
    assert float(get_schedule(name).dgamma(_t(t))) == pytest.approx(slope, abs=1e-15)


@pytest.mark.parametrize("name", list(GAMMA))
def test_dgamma_matches_one_sided_differences_at_the_ends(name):
    s, h = get_schedule(name), 1e-7
    fd0 = (s.gamma(_t(h)) - s.gamma(_t(0.0))) / h
    fd1 = (s.gamma(_t(1.0)) - s.gamma(_t(1.0 - h))) / h
    assert float(s.dgamma(_t(0.0))) == pytest.approx(float(fd0), rel=1e-5, abs=1e-6)
    assert float(s.dgamma(_t(1.0))) == pytest.approx(float(fd1), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("name", list(GAMMA))
def test_mdm_weight_values(name):
    s = get_schedule(name)
    for t in (0.05, 0.3, 0.8, 1.0):
        assert float(s.mdm_weight(_t(t))) == pytest.approx(DGAMMA[name](t) / GAMMA[name](t), rel=1e-12)
    assert torch.equal(s.mask_ratio(_t(0.1, 0.7)), s.gamma(_t(0.1, 0.7)))


def test_mdm_weight_hand_values():
    assert float(get_schedule("linear").mdm_weight(_t(0.25))) == pytest.approx(4.0)
    assert float(get_schedule("cosine").mdm_weight(_t(0.5))) == pytest.approx(math.pi / 2)  # (pi/2) tan(pi/4)
    assert float(get_schedule("cosine").mdm_weight(_t(1.0))) == pytest.approx(0.0, abs=1e-15)
    assert float(get_schedule("exp").mdm_weight(_t(0.2))) == pytest.approx(5 * math.exp(-1) / (1 - math.exp(-1)))


@pytest.mark.parametrize("name", list(GAMMA))
def test_transfer_prob_values(name):
    s = get_schedule(name)
    for t, u in ((1.0, 0.9375), (0.5, 0.25), (0.3, 0.1), (0.0625, 1e-5)):
        expected = 1 - GAMMA[name](u) / GAMMA[name](t)
        assert float(s.transfer_prob(_t(t), _t(u))) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_transfer_prob_hand_values_and_clamps():
    lin, cos = get_schedule("linear"), get_schedule("cosine")
    assert float(lin.transfer_prob(_t(0.5), _t(0.25))) == pytest.approx(0.5)
    assert float(cos.transfer_prob(_t(0.5), _t(0.25))) == pytest.approx(1 - 0.38268343236508984 / math.sqrt(0.5))
    assert float(lin.transfer_prob(_t(0.4), _t(0.0))) == 1.0  # everything left is revealed by s = 0
    assert float(lin.transfer_prob(_t(0.4), _t(0.4))) == 0.0  # no time passes: nothing revealed
    assert float(lin.transfer_prob(_t(0.4), _t(0.6))) == 0.0  # clamped below at 0 (s > t)
    assert float(lin.transfer_prob(_t(0.5), _t(-0.5))) == 1.0  # clamped above at 1 (1 - (-1) = 2)


def test_time_grid_values():
    g = time_grid(4)
    assert g.dtype == F64 and g.shape == (5,)
    step = (1 - 1e-5) / 4
    torch.testing.assert_close(g, _t(1.0, 1 - step, 1 - 2 * step, 1 - 3 * step, 1e-5), rtol=0, atol=1e-15)
    assert float(g[0]) == 1.0 and float(g[-1]) == 1e-5
    one = time_grid(1)
    assert one.tolist() == [1.0, 1e-5]
    assert time_grid(16, t_end=0.5).tolist()[-1] == 0.5 and len(time_grid(128)) == 129
    with pytest.raises(ValueError, match="num_steps must be >= 1, got 0"):
        time_grid(0)


def test_schedule_registry():
    assert list(SCHEDULES) == ["linear", "cosine", "exp"]
    assert get_schedule(SCHEDULES["exp"]) is SCHEDULES["exp"]
    assert SCHEDULES["exp"].formula == "gamma(t) = 1 - exp(-5 t)"


# ============================================================================= sampler: annealing


def _cfg(**kw):
    from emigm.sample.sampler import SamplerConfig
    return SamplerConfig(**kw)


def test_anneal_linear_exact():
    from emigm.sample.sampler import anneal
    cfg = _cfg(num_steps=4, order_temperature=2.0, order_anneal="linear")
    # tau0 (1 - (k + 1) / S)
    assert [anneal(cfg, k) for k in range(4)] == [1.5, 1.0, 0.5, 0.0]


def test_anneal_compound_exact():
    from emigm.sample.sampler import anneal
    cfg = _cfg(num_steps=4, order_temperature=2.0, order_anneal="compound")
    # tau0 prod_{j=1}^{k+1} (1 - j / S)
    expected = [2 * (3 / 4), 2 * (3 / 4) * (2 / 4), 2 * (3 / 4) * (2 / 4) * (1 / 4), 0.0]
    assert [anneal(cfg, k) for k in range(4)] == pytest.approx(expected, abs=1e-15)
    assert expected == [1.5, 0.75, 0.1875, 0.0]


def test_anneal_self_guidance_setting():
    """tau0 = 25, T = 18 (Hur et al.): the compounding rule falls far faster than the linear one."""
    from emigm.sample.sampler import anneal
    lin = _cfg(num_steps=18, order_temperature=25.0, order_anneal="linear")
    comp = _cfg(num_steps=18, order_temperature=25.0, order_anneal="compound")
    for k in range(18):
        assert anneal(lin, k) == pytest.approx(25 * (1 - (k + 1) / 18))
        assert anneal(comp, k) == pytest.approx(25 * math.prod(1 - j / 18 for j in range(1, k + 2)))
    assert anneal(comp, 9) == pytest.approx(0.49414332859406424) and anneal(lin, 9) == pytest.approx(25 * 8 / 18)
    assert anneal(comp, 11) < 0.1 < 8 < anneal(lin, 11)


# ============================================================================= sampler: counts


def _exact_counts(L: int, S: int, name: str) -> list[int]:
    """MaskGIT / MAR rule: floor(L gamma(1 - (k+1)/S) / gamma(1)) stay masked after step k, clamped so
    that each step reveals at least one and leaves at least one; the last step reveals the rest."""
    g1, n, out = GAMMA[name](1.0), L, []
    for k in range(S):
        if k == S - 1:
            c = n
        elif n <= 1:
            c = n
        else:
            keep = math.floor(L * GAMMA[name](1 - (k + 1) / S) / g1)
            c = n - max(1, min(keep, n - 1))
        out.append(c)
        n -= c
    return out


@pytest.mark.parametrize("L,S,name,expected", [
    (10, 4, "linear", [3, 2, 3, 2]),  # keep 7, 5, 2 (floor 7.5, 5, 2.5), then the rest
    (10, 4, "exp", [1, 1, 1, 7]),  # keep floor(9.83) = 9, floor(9.24) = 9 -> 8, floor(7.18) = 7
    (5, 4, "cosine", [1, 1, 2, 1]),  # keep floor(4.62) = 4, floor(3.54) = 3, floor(1.91) = 1
    (4, 4, "linear", [1, 1, 1, 1]),
    (3, 1, "cosine", [3]),
    (2, 2, "linear", [1, 1]),  # two left before a middle step: keep one
])
def test_plan_counts_exact_hand_values(L, S, name, expected):
    from emigm.sample.sampler import plan_counts
    counts = plan_counts(torch.arange(3), L, _cfg(num_steps=S, schedule=name, count_rule="exact"))
    assert counts.shape == (S, 3) and counts.dtype == torch.long
    for b in range(3):
        assert counts[:, b].tolist() == expected
    assert _exact_counts(L, S, name) == expected


@pytest.mark.parametrize("name", list(GAMMA))
@pytest.mark.parametrize("L,S", [(256, 16), (256, 8), (49, 12), (16, 16), (7, 3), (100, 64)])
def test_plan_counts_exact_formula(name, L, S):
    from emigm.sample.sampler import plan_counts
    counts = plan_counts(torch.tensor([0]), L, _cfg(num_steps=S, schedule=name, count_rule="exact"))
    assert counts[:, 0].tolist() == _exact_counts(L, S, name)


def test_plan_counts_exact_clamps_to_one_per_step_and_leaves_one():
    """With the exp schedule gamma(u) / gamma(1) stays near 1 early, so the n - 1 clamp decides."""
    from emigm.sample.sampler import plan_counts
    counts = plan_counts(torch.tensor([0]), 8, _cfg(num_steps=8, schedule="exp", count_rule="exact"))[:, 0]
    assert counts.tolist() == [1] * 8
    counts = plan_counts(torch.tensor([0]), 3, _cfg(num_steps=2, schedule="linear", count_rule="exact"))[:, 0]
    assert counts.tolist() == [2, 1]  # keep floor(1.5) = 1, then the last step reveals it


def test_plan_counts_exact_from_a_branch():
    from emigm.sample.sampler import plan_counts
    cfg = _cfg(num_steps=4, schedule="linear", count_rule="exact")
    # from step 2 with (5, 1) masked: keep min(floor(10 * 0.25) = 2, n - 1) -> reveal 3 / the last one
    counts = plan_counts(torch.arange(2), 10, cfg, masked=torch.tensor([5, 1]), start=2)
    assert counts.tolist() == [[3, 1], [2, 0]]


def _binomial_counts(seed: int, L: int, S: int, name: str, t_end: float = 1e-5) -> list[int]:
    """eMIGM rule: of the n still masked, each of the first n addressed uniforms u_j < p counts, with
    p = 1 - gamma(s)/gamma(t); at least one, at most n, and at most n - (steps left) so that no later step
    is left with nothing to reveal; the last step reveals the rest. The uniforms are the sampler's
    addressed "where" stream, sub-key 1 (counts) at step k."""
    grid = [1.0 - i * (1.0 - t_end) / S for i in range(S + 1)]
    n, out = L, []
    for k in range(S):
        if k == S - 1:
            c = n
        else:
            p = min(1.0, max(0.0, 1 - GAMMA[name](grid[k + 1]) / GAMMA[name](grid[k])))
            u = rng.uniform(torch.tensor([seed]), rng.STREAM_WHERE, k, 1, tail=(L,))[0]
            c = min(max(min(int((u[:n] < p).sum()), n - (S - k - 1)), 1), n)
        out.append(c)
        n -= c
    return out


@pytest.mark.parametrize("rule", ["binomial", "exact"])
@pytest.mark.parametrize("name", list(GAMMA))
def test_every_step_reveals_a_token_at_as_many_steps_as_tokens(rule, name):
    """S = L: every step reveals exactly one token (the reference's binomial rule could empty the mask
    early and leave steps that reveal nothing but still cost a pass)."""
    from emigm.sample.plan import plan_counts
    counts = plan_counts(torch.arange(64), 49, _cfg(num_steps=49, schedule=name, count_rule=rule))
    assert bool((counts == 1).all())


@pytest.mark.parametrize("name", list(GAMMA))
@pytest.mark.parametrize("L,S", [(256, 16), (64, 8), (16, 16), (49, 5)])
def test_plan_counts_binomial_rule(name, L, S):
    from emigm.sample.sampler import plan_counts
    seeds = torch.tensor([0, 1, 7, 123456789])
    counts = plan_counts(seeds, L, _cfg(num_steps=S, schedule=name))
    for b, seed in enumerate(seeds.tolist()):
        assert counts[:, b].tolist() == _binomial_counts(seed, L, S, name)


@pytest.mark.parametrize("name", list(GAMMA))
def test_plan_counts_binomial_invariants(name):
    from emigm.sample.sampler import plan_counts
    S, L = 16, 40
    counts = plan_counts(torch.arange(300), L, _cfg(num_steps=S, schedule=name))
    assert torch.all(counts.sum(0) == L)
    masked_before = L - torch.cat([torch.zeros(1, 300, dtype=torch.long), counts.cumsum(0)[:-1]])
    assert torch.all(counts[masked_before > 0] >= 1)  # at least one while tokens remain
    assert torch.all(counts <= masked_before)
    assert torch.equal(counts[-1], masked_before[-1])  # the last step reveals the rest
    if name == "exp":  # few reveals early: nothing runs out before the last step
        assert torch.all(counts >= 1)


def test_plan_counts_binomial_t_end_matters():
    """p of the next-to-last step depends on the grid's end t_end (gamma(s)/gamma(t) there)."""
    from emigm.sample.sampler import plan_counts
    seeds = torch.arange(64)
    a = plan_counts(seeds, 64, _cfg(num_steps=4, schedule="linear"))
    b = plan_counts(seeds, 64, _cfg(num_steps=4, schedule="linear", t_end=0.2))
    for i, seed in enumerate(seeds.tolist()[:8]):
        assert b[:, i].tolist() == _binomial_counts(seed, 64, 4, "linear", t_end=0.2)
    assert not torch.equal(a, b)


def test_plan_counts_binomial_expected_value():
    """Mean over many seeds of step k's count = E[masked before] p_k (spec sec. 4, N = 256, S = 16,
    exp: ... 10.6, 14.5, 19.8, 27.1, 37.0, 50.6 for steps 10..15)."""
    from emigm.sample.sampler import plan_counts
    counts = plan_counts(torch.arange(4000), 256, _cfg(num_steps=16)).double().mean(1)
    spec = [10.6, 14.5, 19.8, 27.1, 37.0, 50.6, 69.2]
    for k, expected in zip(range(9, 16), spec):
        assert float(counts[k]) == pytest.approx(expected, rel=0.03, abs=0.1)


def test_plan_counts_binomial_from_a_branch():
    from emigm.sample.sampler import plan_counts
    cfg = _cfg(num_steps=6, schedule="cosine")
    seeds = torch.tensor([3, 4])
    whole = plan_counts(seeds, 30, cfg)
    masked = 30 - whole[:2].sum(0)
    assert torch.equal(plan_counts(seeds, 30, cfg, masked=masked, start=2), whole[2:])
    assert plan_counts(seeds, 30, cfg, start=6).shape == (0, 2)
    # one token left before a middle step: it is revealed there, later steps reveal none
    tail = plan_counts(seeds, 30, cfg, masked=torch.tensor([1, 0]), start=3)
    assert tail.tolist() == [[1, 0], [0, 0], [0, 0]]


def test_smallest_selects_the_lowest_keys():
    from emigm.sample.orders import smallest as _smallest
    keys = torch.tensor([[0.3, 0.1, 0.2, 0.4], [0.5, 0.5, 0.1, 0.5], [0.9, 0.8, 0.7, 0.6]])
    sel = _smallest(keys, torch.tensor([2, 2, 0]))
    assert sel.tolist() == [[False, True, True, False], [True, False, True, False], [False] * 4]
    assert _smallest(keys, torch.tensor([4, 1, 3])).tolist() == [
        [True] * 4, [False, False, True, False], [False, True, True, True]]


def test_flat_select_row_major():
    from emigm.sample.orders import flat_select as _flat_select
    sel = torch.tensor([[False, True, False], [True, False, True]])
    rows, cols = _flat_select(sel, 3)
    assert rows.tolist() == [0, 1, 1] and cols.tolist() == [1, 0, 2]
    rows, cols = _flat_select(sel, 0)
    assert rows.numel() == 0


def test_as_seeds():
    from emigm.sample.plan import as_seeds as _as_seeds
    assert _as_seeds(5, 3, "cpu").tolist() == [5, 6, 7]
    assert _as_seeds(5, None, "cpu").tolist() == [5]
    assert _as_seeds([9, 2], 2, "cpu").tolist() == [9, 2]


def test_sampler_config_t_end_bounds():
    for bad in (0.0, 1.0, -0.1, 1):
        with pytest.raises(ValueError, match=r"t_end must be in \(0, 1\)"):
            _cfg(t_end=bad)
    assert _cfg(t_end=0.999).t_end == 0.999 and _cfg(t_end=1e-9).t_end == 1e-9


# ============================================================================= sampler: the loop's numbers


@pytest.fixture(scope="module")
def tiny():
    from emigm.core.presets import get_preset
    from emigm.nn.model import MaskedGenerator
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return MaskedGenerator(get_preset("test-tiny")).eval()


def test_loop_linear_cfg_scale_and_costs(tiny):
    """Each step's CFG scale is 1 + (w - 1) x (fraction revealed after the step) where CFG runs, 1
    elsewhere; passes add 1 + [CFG]; head evaluations add head_steps x (1 + guides)."""
    from emigm.core.guidance import GuidanceConfig
    from emigm.sample.sampler import sample_steps
    g = GuidanceConfig(cfg_scale=3.0, cfg_schedule="linear", cfg_interval=(0.3, 1.0))
    states = list(sample_steps(tiny, [1, 2], [0, 1], _cfg(num_steps=4, head_steps=2), g))
    L = tiny.num_tokens
    assert [st.s for st in states] == pytest.approx([0.75, 0.5, 0.25, 1e-5], abs=1e-5)
    assert [st.cfg_active for st in states] == [True, True, False, False]
    for st in states:
        frac = 1.0 - st.mask_after.sum(1).double() / L
        expected = 1.0 + 2.0 * frac if st.cfg_active else torch.ones(2, dtype=F64)
        torch.testing.assert_close(st.cfg_scale.double(), expected, rtol=0, atol=1e-6)
    assert [st.passes for st in states] == [2, 4, 5, 6]
    assert [st.head_evals for st in states] == [4, 8, 10, 12]
    assert [st.step for st in states] == [0, 1, 2, 3] and states[-1].done and not states[-2].done


def test_loop_constant_cfg_scale(tiny):
    from emigm.core.guidance import GuidanceConfig
    from emigm.sample.sampler import sample_steps
    g = GuidanceConfig(cfg_scale=2.5, cfg_interval=(0.4, 0.8))
    states = list(sample_steps(tiny, [1], [0], _cfg(num_steps=4, head_steps=1), g))
    assert [st.cfg_scale.tolist() for st in states] == [[2.5], [2.5], [1.0], [1.0]]


def _record_head(model, monkeypatch) -> list:
    """Wrap model.head.sample: every call's guides and output are recorded."""
    calls, original = [], model.head.sample

    def recording(z, noise, **kw):
        out = original(z, noise, **kw)
        calls.append((list(kw.get("guides", ())), out))
        return out
    monkeypatch.setattr(model.head, "sample", recording)
    return calls


def _perturbed(preset: str):
    from emigm.core.presets import get_preset
    from emigm.nn.model import MaskedGenerator
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        model = MaskedGenerator(get_preset(preset)).eval()
        with torch.no_grad():  # zero-initialised output layers would make every prediction the same
            for p in model.parameters():
                p.add_(0.1 * torch.randn_like(p))
    return model


def test_random_order_replayed(monkeypatch):
    """Random order: step k reveals, among the masked tokens, the `count` ones with the smallest
    addressed uniforms ("where" stream, sub-key 2). CFG's guide weight is w - 1 on every row."""
    from emigm.core.guidance import GuidanceConfig
    from emigm.sample.sampler import sample_steps
    model = _perturbed("test-tiny")
    calls = _record_head(model, monkeypatch)
    seeds = torch.tensor([4, 9])
    g = GuidanceConfig(cfg_scale=2.5, cfg_interval=(0.4, 1.0))
    # without drafts the head runs once per step, on the revealed tokens
    states = list(sample_steps(model, [1, 2], seeds, _cfg(num_steps=5, head_steps=1, draft=False), g))
    L = model.num_tokens
    assert len(calls) == len(states)
    for st, (guides, _) in zip(states, calls):
        keys = rng.uniform(seeds, rng.STREAM_WHERE, st.step, 2, tail=(L,))
        for b in range(2):
            masked = st.mask_before[b].nonzero().flatten()
            chosen = masked[keys[b, masked].argsort()[:int(st.revealed[b].sum())]]
            assert sorted(chosen.tolist()) == st.revealed[b].nonzero().flatten().tolist()
        rows = st.revealed.nonzero()[:, 0]
        if st.cfg_active:
            assert [t.name for t in guides] == ["cfg"]
            torch.testing.assert_close(guides[0].weight, torch.full((len(rows),), 1.5))
        else:
            assert guides == []
    assert [st.cfg_active for st in states] == [True, True, True, False, False]


@pytest.mark.parametrize("anneal_rule", ["linear", "compound"])
def test_confidence_order_replayed(monkeypatch, anneal_rule):
    """Confidence order (MaskGIT): score = log p(sampled token) + tau_k Gumbel ("where" stream, sub-key
    2), tau_k from the annealing rule; step k reveals the `count` masked tokens with the highest
    scores. The log p are those the head returned for the masked tokens, row-major."""
    from emigm.sample.sampler import sample_steps
    model = _perturbed("test-tiny-vq")
    calls = _record_head(model, monkeypatch)
    S, tau0, L = 4, 3.0, model.num_tokens
    tau = {"linear": [tau0 * (1 - (k + 1) / S) for k in range(S)],
           "compound": [tau0 * math.prod(1 - j / S for j in range(1, k + 2)) for k in range(S)]}[anneal_rule]
    seeds = torch.tensor([3, 8])
    cfg = _cfg(num_steps=S, order="confidence", order_temperature=tau0, order_anneal=anneal_rule)
    states = list(sample_steps(model, [0, 5], seeds, cfg))
    for st, (_, (values, logp, *_)) in zip(states, calls):
        rows, cols = st.mask_before.nonzero().unbind(1)
        score = torch.full((2, L), float("-inf"))
        score[rows, cols] = logp + tau[st.step] * rng.gumbel(seeds, rng.STREAM_WHERE, st.step, 2, tail=(L,))[rows, cols]
        for b in range(2):
            kept = st.mask_after[b]
            if kept.any():
                assert score[b][st.revealed[b]].min() > score[b][kept].max(), (st.step, b)
        assert torch.equal(st.tokens[rows, cols][st.revealed[rows, cols]], values[st.revealed[rows, cols]])
    nodraft = list(sample_steps(model, [0, 5], seeds, _cfg(num_steps=S, order="confidence", order_temperature=tau0,
                                                           order_anneal=anneal_rule, draft=False)))
    for a, b in zip(states, nodraft):
        assert torch.equal(a.revealed, b.revealed) and torch.equal(a.tokens, b.tokens) and b.draft is None


def test_branch_past_the_end_is_refused(tiny):
    from emigm.sample.sampler import sample, sample_steps
    states = list(sample_steps(tiny, [1], [0], _cfg(num_steps=3, head_steps=1)))
    with pytest.raises(ValueError, match="cannot branch after step 3"):
        list(sample_steps(tiny, [1], [0], _cfg(num_steps=3, head_steps=1), init=states[2]))
    assert len(list(sample_steps(tiny, [1], [0], _cfg(num_steps=3, head_steps=1), init=states[1]))) == 1
    with pytest.raises(ValueError, match="already complete|cannot branch"):
        sample(tiny, [1], [0], _cfg(num_steps=3, head_steps=1), init=states[2])


def test_class_id_range(tiny):
    from emigm.sample.sampler import sample
    sample(tiny, [0, tiny.num_classes - 1], [0, 1], _cfg(num_steps=2, head_steps=1))
    for bad in ([-1], [tiny.num_classes], [3, -1], [0, tiny.num_classes]):  # alone and beside a valid id
        with pytest.raises(ValueError, match=r"class ids must be in \[0, 9\]"):
            sample(tiny, bad, list(range(len(bad))), _cfg(num_steps=2, head_steps=1))


# ============================================================================= training masks


def _gamma_f32(name: str, p: torch.Tensor) -> torch.Tensor:
    """The spec's schedules in float32 torch arithmetic (the masks compare uniforms against them)."""
    if name == "linear":
        return p
    if name == "cosine":
        return torch.cos(0.5 * math.pi * (1.0 - p))
    return 1.0 - torch.exp(-5.0 * p)


def _ranks(keys: torch.Tensor) -> torch.Tensor:
    return keys.argsort(dim=1).argsort(dim=1)


@pytest.mark.parametrize("name", list(GAMMA))
@pytest.mark.parametrize("t_min", [0.0, 0.2, 0.5])
def test_exact_masks_replayed(name, t_min):
    """exact: per-sample t ~ U(0,1) clamped at t_min, p = 0.999 t + 0.001, exactly ceil(L gamma(p))
    tokens masked, the ones with the smallest keys. Replayed from the same generator."""
    from emigm.core.masking import draw_mask
    B, L = 64, 49
    d = draw_mask(MaskingConfig(distribution="exact", schedule=name, t_min=t_min), B, L,
                  torch.Generator().manual_seed(11))
    g = torch.Generator().manual_seed(11)
    t = torch.rand(B, generator=g).clamp(min=t_min)
    keys = torch.rand(B, L, generator=g)
    count = torch.ceil(L * _gamma_f32(name, 0.999 * t + 0.001)).long().clamp(1, L)
    assert torch.equal(d.t, t)
    assert torch.equal(d.mask.sum(1), count)
    assert torch.equal(d.mask, _ranks(keys) < count[:, None])
    assert torch.equal(d.weight, torch.ones(B))
    if t_min > 0:
        assert float(d.t.min()) == float(torch.tensor(t_min))  # a clamp: t = t_min exactly for the draws below it


def test_exact_count_hand_values():
    """ceil(L gamma(p)) at hand-picked t (via t_min: every U(0,1) draw below t_min becomes t_min)."""
    from emigm.core.masking import draw_mask
    cases = [("linear", 0.5, 49, math.ceil(49 * (0.999 * 0.5 + 0.001))),  # ceil(24.5) = 25
             ("linear", 0.999999, 10, 10),
             ("cosine", 0.5, 16, math.ceil(16 * math.cos(math.pi / 2 * (1 - 0.5)))),  # ceil(11.31) = 12
             ("exp", 0.2, 100, math.ceil(100 * (1 - math.exp(-5 * (0.999 * 0.2 + 0.001)))))]  # ceil(63.27)
    assert [c[3] for c in cases] == [25, 10, 12, 64]
    for name, t_min, L, expected in cases:
        d = draw_mask(MaskingConfig(distribution="exact", schedule=name, t_min=t_min), 400, L,
                      torch.Generator().manual_seed(3))
        at_min = d.t == t_min
        assert at_min.any()
        assert torch.all(d.mask.sum(1)[at_min] == expected)


def test_exact_masks_at_least_one():
    from emigm.core.masking import draw_mask
    d = draw_mask(MaskingConfig(distribution="exact", schedule="linear", t_min=0.0), 2000, 4,
                  torch.Generator().manual_seed(5))
    counts = d.mask.sum(1)
    assert int(counts.min()) == 1 and int(counts.max()) == 4  # ceil(4 p) covers 1..4


@pytest.mark.parametrize("name", list(GAMMA))
def test_bernoulli_independent_masks_replayed(name):
    """bernoulli without a shared count: each token masked when its key < gamma(p); the smallest key is
    masked in any case (at least one per row)."""
    from emigm.core.masking import draw_mask
    B, L = 200, 16
    d = draw_mask(MaskingConfig(distribution="bernoulli", shared_count=False, schedule=name, t_min=0.0,
                                weighting="mdm"), B, L, torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(2)
    t = torch.rand(B, generator=g)
    keys = torch.rand(B, L, generator=g)
    p = 0.999 * t + 0.001
    expected = (keys < _gamma_f32(name, p)[:, None]) | (_ranks(keys) < 1)
    assert torch.equal(d.t, t) and torch.equal(d.mask, expected)
    assert torch.all(d.mask.sum(1) >= 1)
    for i in range(0, B, 37):  # the MDM weight gamma'(p) / gamma(p)
        pi = float(p[i])
        assert float(d.weight[i]) == pytest.approx(DGAMMA[name](pi) / GAMMA[name](pi), rel=1e-5)


@pytest.mark.parametrize("t_min,L", [(0.2, 16), (0.0, 4), (0.0, 2), (0.6, 8)])
def test_bernoulli_shared_count_replayed(t_min, L):
    """Shared count (the reference): 32 candidate (t, K) draws, t ~ U(0,1) clamped at t_min and
    K = #(uniform < gamma(p)) over L tokens; the first candidate with K >= 2 gives the batch its t and
    count; positions differ per sample. Replayed from the same generator (pins the draw layout, and
    so training reproducibility for a seed)."""
    from emigm.core.masking import draw_mask
    B = 6
    for seed in range(12):
        d = draw_mask(MaskingConfig(distribution="bernoulli", shared_count=True, schedule="exp", t_min=t_min),
                      B, L, torch.Generator().manual_seed(seed))
        g = torch.Generator().manual_seed(seed)
        t = torch.rand(32, generator=g).clamp(min=t_min)
        counts = (torch.rand(32, L, generator=g) < _gamma_f32("exp", 0.999 * t + 0.001)[:, None]).sum(1)
        first = next((i for i in range(32) if counts[i] >= 2), 31)
        keys = torch.rand(B, L, generator=g)
        count = max(int(counts[first]), 2)
        assert torch.all(d.t == t[first]), seed
        assert torch.equal(d.mask, _ranks(keys) < count), seed
        assert torch.all(d.mask.sum(1) >= 2)


def test_bernoulli_shared_count_is_at_least_two():
    """Small L and t near 0: most candidates have K < 2; the drawn count is still >= 2 (never clamped
    from a lower draw when a candidate qualifies), and one token when L = 1."""
    from emigm.core.masking import draw_mask
    cfg = MaskingConfig(distribution="bernoulli", shared_count=True, schedule="linear", t_min=0.0)
    seen = set()
    for seed in range(200):
        c = draw_mask(cfg, 3, 3, torch.Generator().manual_seed(seed)).mask.sum(1)
        assert torch.all(c == c[0]) and int(c[0]) >= 2
        seen.add(int(c[0]))
    assert seen == {2, 3}
    assert draw_mask(cfg, 2, 1, torch.Generator().manual_seed(0)).mask.all()


def test_bernoulli_shared_count_fallback(monkeypatch):
    """When no candidate has K >= 2 the last candidate's t is used and its count raised to 2. Three
    candidates (patched) make that common enough to test: L = 2 tokens, linear schedule."""
    from emigm.core import masking
    monkeypatch.setattr(masking, "REDRAWS", 3)
    cfg = MaskingConfig(distribution="bernoulli", shared_count=True, schedule="linear", t_min=0.0)
    fallbacks = 0
    for seed in range(30):
        d = masking.draw_mask(cfg, 4, 2, torch.Generator().manual_seed(seed))
        g = torch.Generator().manual_seed(seed)
        t = torch.rand(3, generator=g)
        counts = (torch.rand(3, 2, generator=g) < (0.999 * t + 0.001)[:, None]).sum(1)
        ok = [i for i in range(3) if counts[i] >= 2]
        fallbacks += not ok
        assert torch.all(d.t == t[ok[0] if ok else 2]) and d.mask.all(), seed
    assert fallbacks >= 3


def test_mar_ratio_replayed():
    """MAR: r = 1 + 0.25 Phi^-1(u), u uniform between Phi((0.7 - 1) / 0.25) and Phi(0): a normal with
    mode 1 and scale 0.25 truncated to [0.7, 1] (spec sec. 3)."""
    from emigm.core.masking import truncated_normal_ratio
    r = truncated_normal_ratio(2000, torch.Generator().manual_seed(4), None)
    v = torch.rand(2000, generator=torch.Generator().manual_seed(4)).double()
    nd = NormalDist(1.0, 0.25)
    lo, hi = nd.cdf(0.7), nd.cdf(1.0)
    expected = torch.tensor([nd.inv_cdf(lo + (hi - lo) * float(x)) for x in v], dtype=F64)
    torch.testing.assert_close(r.double(), expected, rtol=0, atol=1e-6)
    assert r.dtype == torch.float32 and 0.7 <= float(r.min()) and float(r.max()) <= 1.0
    # the CDF at 0.85 of that truncated normal: (Phi(-0.6) - Phi(-1.2)) / (Phi(0) - Phi(-1.2)) = 0.4135
    many = truncated_normal_ratio(20000, torch.Generator().manual_seed(0), None)
    assert float((many <= 0.85).double().mean()) == pytest.approx(0.4135, abs=0.012)


def test_mar_masks_replayed():
    """mar: one ratio per batch (reported as t), exactly ceil(L r) tokens masked in every sample."""
    from emigm.core.masking import draw_mask
    B, L = 5, 100
    d = draw_mask(MaskingConfig(distribution="mar"), B, L, torch.Generator().manual_seed(9))
    g = torch.Generator().manual_seed(9)
    torch.rand(1, generator=g)  # t: drawn, unused by MAR
    keys = torch.rand(B, L, generator=g)
    nd = NormalDist(1.0, 0.25)
    lo, hi = nd.cdf(0.7), nd.cdf(1.0)
    r = nd.inv_cdf(lo + (hi - lo) * float(torch.rand(1, generator=g).double()))
    count = math.ceil(L * r)
    assert torch.allclose(d.t.double(), torch.full((B,), r, dtype=F64), atol=1e-6)
    assert torch.all(d.mask.sum(1) == count) and 70 <= count <= 100
    assert torch.equal(d.mask, _ranks(keys) < count)


def test_masking_defaults_follow_the_spec():
    m = MaskingConfig()
    assert (m.schedule, m.distribution, m.shared_count, m.t_min, m.weighting, m.label_drop) == \
        ("exp", "bernoulli", True, 0.2, "one", 0.1)


def test_masked_mean_values():
    from emigm.core.masking import masked_mean
    loss = torch.tensor([[1.0, 2.0, 4.0], [3.0, 5.0, 7.0]])
    mask = torch.tensor([[True, False, True], [False, True, False]])
    assert float(masked_mean(loss, mask)) == pytest.approx((1 + 4 + 5) / 3)
    # per-sample weights multiply; the divisor stays the number of masked tokens
    assert float(masked_mean(loss, mask, torch.tensor([2.0, 0.5]))) == pytest.approx((2 * 5 + 0.5 * 5) / 3)
    assert float(masked_mean(loss, torch.zeros(2, 3, dtype=torch.bool))) == 0.0  # nothing masked: 0, not nan
    one = torch.zeros(2, 3, dtype=torch.bool)
    one[1, 2] = True
    assert float(masked_mean(loss, one)) == 7.0


# ============================================================================= step arithmetic


def test_step_table_binomial_expected_reveals_match_the_spec():
    from emigm.core.guidance import GuidanceConfig
    from emigm.sample.steps import step_table
    rows = step_table(_cfg(num_steps=16), GuidanceConfig(), 256).rows
    spec = [0.6, 0.9, 1.2, 1.6, 2.2, 3.0, 4.2, 5.7, 7.8, 10.6, 14.5, 19.8, 27.1, 37.0, 50.6, 69.2]
    assert [r.expected_revealed for r in rows] == pytest.approx(spec, abs=0.051)
    assert rows[-1].expected_masked_after == 0.0
    s15 = 1 - 15 * (1 - 1e-5) / 16
    assert rows[-2].expected_masked_after == pytest.approx(256 * GAMMA["exp"](s15) / GAMMA["exp"](1.0), rel=1e-12)
    assert [r.step for r in rows] == list(range(1, 17))
    assert rows[0].t == 1.0 and rows[-1].s == 1e-5 and rows[3].t == rows[2].s


def test_step_table_linear_and_exact():
    from emigm.core.guidance import GuidanceConfig
    from emigm.sample.steps import step_table
    lin = step_table(_cfg(num_steps=16, schedule="linear"), GuidanceConfig(), 256)
    # 256 (t - s) = 256 (1 - 1e-5) / 16 per step; the last reveals the 256 s_15 left
    expected = [256 * (1 - 1e-5) / 16] * 15 + [256 * (1 - 15 * (1 - 1e-5) / 16)]
    assert [r.expected_revealed for r in lin.rows] == pytest.approx(expected, rel=1e-9)
    ex = step_table(_cfg(num_steps=4, schedule="linear", count_rule="exact"), GuidanceConfig(), 10)
    assert [r.expected_revealed for r in ex.rows] == [3, 2, 3, 2]
    assert [r.expected_masked_after for r in ex.rows] == [7, 5, 2, 0]
    d = ex.as_dict()
    assert (d["num_tokens"], d["num_steps"], d["passes"], d["nfe"]) == (10, 4, 4, "4 x 1")


def test_step_table_limits():
    from emigm.core.guidance import GuidanceConfig
    from emigm.sample.steps import step_table
    assert len(step_table(_cfg(num_steps=16), GuidanceConfig(), 16).rows) == 16  # S == L is fine
    with pytest.raises(ValueError, match="num_steps 17 exceeds the 16 tokens"):
        step_table(_cfg(num_steps=17), GuidanceConfig(), 16)
    with pytest.raises(ValueError, match="num_tokens must be >= 1, got 0"):
        step_table(_cfg(num_steps=1), GuidanceConfig(), 0)
    assert len(step_table(_cfg(num_steps=1), GuidanceConfig(), 1).rows) == 1


# ============================================================================= diffusion


def _alpha_bar(u: float) -> float:
    return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2


def test_cosine_alpha_bar_values():
    from emigm.nn.diffusion import cosine_alpha_bar
    assert cosine_alpha_bar(0.0) == pytest.approx(0.9998445910004082, rel=1e-14)
    assert cosine_alpha_bar(0.5) == pytest.approx(0.49376684270229254, rel=1e-14)
    assert cosine_alpha_bar(1.0) == pytest.approx(0.0, abs=1e-30)
    for u in (0.1, 0.25, 0.9):
        assert cosine_alpha_bar(u) == pytest.approx(_alpha_bar(u), rel=1e-14)


def test_cosine_betas_values_and_clip():
    from emigm.nn.diffusion import cosine_betas
    b = cosine_betas(1000)
    for i in (0, 1, 500, 998):
        expected = min(1 - _alpha_bar((i + 1) / 1000) / _alpha_bar(i / 1000), 0.999)
        assert float(b[i]) == pytest.approx(expected, rel=1e-12)
    assert float(b[999]) == 0.999 and int((b == 0.999).sum()) == 1  # only the last step is clipped
    short = cosine_betas(10, max_beta=0.5)
    assert float(short.max()) == 0.5 and float(short[0]) == pytest.approx(1 - _alpha_bar(0.1) / _alpha_bar(0.0))


def _small_diffusion():
    from emigm.nn.diffusion import GaussianDiffusion
    return GaussianDiffusion(torch.tensor([0.1, 0.2, 0.3], dtype=F64), torch.arange(3))


def test_diffusion_tables_by_hand():
    d = _small_diffusion()
    ab = [0.9, 0.72, 0.504]  # cumprod of 1 - beta
    torch.testing.assert_close(d.alpha_bar, _t(*ab))
    torch.testing.assert_close(d.sqrt_ab, _t(*ab).sqrt())
    torch.testing.assert_close(d.sqrt_1m_ab, _t(0.1, 0.28, 0.496).sqrt())
    torch.testing.assert_close(d.sqrt_recip_ab, 1 / _t(*ab).sqrt())
    torch.testing.assert_close(d.sqrt_recipm1_ab, (1 / _t(*ab) - 1).sqrt())
    # posterior q(x_{t-1} | x_t, x0): coefficients beta sqrt(ab_prev) / (1 - ab) and
    # (1 - ab_prev) sqrt(1 - beta) / (1 - ab); variance beta (1 - ab_prev) / (1 - ab)
    torch.testing.assert_close(d.post_coef_x0, _t(1.0, 0.2 * math.sqrt(0.9) / 0.28, 0.3 * math.sqrt(0.72) / 0.496))
    torch.testing.assert_close(d.post_coef_xt, _t(0.0, 0.1 * math.sqrt(0.8) / 0.28, 0.28 * math.sqrt(0.7) / 0.496))
    var1, var2 = 0.2 * 0.1 / 0.28, 0.3 * 0.28 / 0.496
    torch.testing.assert_close(d.post_logvar, _t(math.log(var1), math.log(var1), math.log(var2)))  # step 0 clipped
    torch.testing.assert_close(d.log_betas, _t(0.1, 0.2, 0.3).log())
    assert d.num_steps == 3 and d.logsnr.num_steps == 3


def test_diffusion_rejects_bad_betas():
    from emigm.nn.diffusion import GaussianDiffusion
    for bad in ([0.1, 0.0], [0.1, 1.0], [0.5, -0.1]):
        with pytest.raises(ValueError, match=r"values in \(0, 1\)"):
            GaussianDiffusion(torch.tensor(bad, dtype=F64), torch.arange(2))
    GaussianDiffusion(torch.tensor([1e-9, 0.999999], dtype=F64), torch.arange(2))
    with pytest.raises(ValueError, match="timesteps shape"):
        GaussianDiffusion(torch.tensor([0.1, 0.2], dtype=F64), torch.arange(3))
    with pytest.raises(ValueError, match="num_timesteps must be >= 2, got 1"):
        GaussianDiffusion.cosine(1)
    assert GaussianDiffusion.cosine(2).num_steps == 2


def test_p_mean_logvar_by_hand():
    d = _small_diffusion()
    xt, eps = torch.tensor([[1.0, -2.0]], dtype=F64), torch.tensor([[0.5, 0.25]], dtype=F64)
    for t, ab, c0, c1 in ((1, 0.72, 0.2 * math.sqrt(0.9) / 0.28, 0.1 * math.sqrt(0.8) / 0.28),
                          (2, 0.504, 0.3 * math.sqrt(0.72) / 0.496, 0.28 * math.sqrt(0.7) / 0.496)):
        x0 = (xt - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
        for v, frac in ((-1.0, 0.0), (0.0, 0.5), (1.0, 1.0)):
            mean, logvar = d.p_mean_logvar(eps, torch.full_like(xt, v), xt, torch.tensor([t]))
            torch.testing.assert_close(mean, c0 * x0 + c1 * xt)
            # learned range: frac = (v + 1) / 2 between the clipped posterior variance and beta
            expected = frac * float(d.log_betas[t]) + (1 - frac) * float(d.post_logvar[t])
            torch.testing.assert_close(logvar, torch.full_like(xt, expected))
        mean_int, _ = d.p_mean_logvar(eps, torch.zeros_like(xt), xt, t)  # an int t gives the same
        torch.testing.assert_close(mean_int, c0 * x0 + c1 * xt)


@pytest.mark.parametrize("v", [-1.0, 0.5])
def test_training_loss_by_hand(v):
    """eps off by delta, variance output v (log-variance frac = (v + 1) / 2 of the way from the clipped
    posterior one to log beta): loss = delta^2 + vb / ln 2, where vb is the Gaussian KL to the true
    posterior, KL = 0.5 (-1 + log(s2 / s1) + s1 / s2 + err^2 / s2) with s1, s2 the true and the model
    variance and err = c0 sqrt((1 - ab) / ab) delta the mean error; at t = 0 the Gaussian NLL of x0."""
    d = _small_diffusion()
    x0 = torch.tensor([[0.5, -1.0], [2.0, 0.0], [1.0, 1.0]], dtype=F64)
    noise = torch.tensor([[0.3, 0.1], [-0.7, 1.2], [0.0, -0.4]], dtype=F64)
    t, delta, seen = torch.tensor([0, 1, 2]), 0.2, []

    def model(x, lab):
        seen.append(lab.tolist())
        return torch.cat([noise + delta, torch.full_like(x, v)], dim=-1)

    loss = d.training_loss(model, x0, t, noise)
    assert seen == [[0.0, 1.0, 2.0]]
    ab, beta = [0.9, 0.72, 0.504], [0.1, 0.2, 0.3]
    c0 = [1.0, 0.2 * math.sqrt(0.9) / 0.28, 0.3 * math.sqrt(0.72) / 0.496]
    true_var = [0.2 * 0.1 / 0.28, 0.2 * 0.1 / 0.28, 0.3 * 0.28 / 0.496]  # step 0: clipped to step 1's
    frac = (v + 1) / 2
    expected = []
    for i in range(3):
        var = math.exp(frac * math.log(beta[i]) + (1 - frac) * math.log(true_var[i]))
        err = c0[i] * math.sqrt((1 - ab[i]) / ab[i]) * delta  # |mean_model - mean_true|, every element
        if i == 0:
            vb = 0.5 * (math.log(2 * math.pi) + math.log(var) + err**2 / var)
        else:
            vb = 0.5 * (-1 + math.log(var / true_var[i]) + true_var[i] / var + err**2 / var)
        expected.append(delta**2 + vb / math.log(2))
    torch.testing.assert_close(loss, _t(*expected))


def test_space_timesteps_values():
    from emigm.nn.diffusion import space_timesteps

    def accumulate(T, n):
        stride, cur, out = (T - 1) / (n - 1) if n > 1 else 1.0, 0.0, []
        for _ in range(n):
            out.append(round(cur))
            cur += stride
        return out

    assert space_timesteps(10, 4) == [0, 3, 6, 9]
    assert space_timesteps(10, 3) == [0, 4, 9]  # 4.5 rounds half to even
    assert space_timesteps(1000, 1) == [0] and space_timesteps(1000, 2) == [0, 999]
    assert space_timesteps(1000, 1000) == list(range(1000))
    keep = space_timesteps(1000, 100)
    assert keep == accumulate(1000, 100) and keep[:4] == [0, 10, 20, 30] and keep[50] == 505 and keep[-1] == 999
    for bad in (0, 1001):
        with pytest.raises(ValueError, match=r"steps must be in \[1, 1000\]"):
            space_timesteps(1000, bad)


def test_respace_betas():
    from emigm.nn.diffusion import GaussianDiffusion
    base = GaussianDiffusion.cosine(100)
    d = base.respace(4)  # steps 0, 33, 66, 99
    assert d.timesteps.tolist() == [0, 33, 66, 99]
    ab = base.alpha_bar[[0, 33, 66, 99]]
    torch.testing.assert_close(d.betas, torch.cat([1 - ab[:1], 1 - ab[1:] / ab[:-1]]))
    torch.testing.assert_close(d.alpha_bar, ab)


def _half_logsnr(ab: float) -> float:
    return 0.5 * math.log(ab / (1 - ab))


def test_logsnr_clip_and_range():
    """DPM-Solver keeps the steps with half-logSNR >= -5.1: 996 of the 1000 cosine steps (spec sec. 5).
    Without the (last-step-only) beta clip, alpha_bar_i = f((i + 1) / T) / f(0)."""
    from emigm.nn.diffusion import LOGSNR_CLIP, GaussianDiffusion
    assert LOGSNR_CLIP == -5.1
    d = GaussianDiffusion.cosine(1000)
    ab = [_alpha_bar((i + 1) / 1000) / _alpha_bar(0.0) for i in range(999)]
    lam = [_half_logsnr(a) for a in ab]
    kept = sum(x >= -5.1 for x in lam)
    assert kept == 996 == d.logsnr.num_steps
    lam_T, lam_0 = d.logsnr.lambda_range()
    assert lam_0 == pytest.approx(lam[0], rel=1e-9) and lam_T == pytest.approx(lam[995], rel=1e-9)
    assert lam[995] >= -5.1 > lam[996]


def test_logsnr_label_maps_back_to_steps():
    from emigm.nn.diffusion import GaussianDiffusion
    d = GaussianDiffusion.cosine(1000)
    for n in (0, 10, 500, 995):
        lam = _half_logsnr(float(d.alpha_bar[n]))
        assert d.logsnr.label(lam) == pytest.approx(n, abs=1e-6)
    r = d.respace(100)  # labels are the original steps
    lam = _half_logsnr(float(r.alpha_bar[50]))
    assert r.logsnr.label(lam) == pytest.approx(505, abs=1e-6)


def test_dpm_orders_follow_the_spec_rule():
    from emigm.nn.diffusion import dpm_orders

    def spec(n):
        K = n // 3 + 1
        return {0: [3] * (K - 2) + [2, 1], 1: [3] * (K - 1) + [1], 2: [3] * (K - 1) + [2]}[n % 3]

    assert dpm_orders(1) == [1] and dpm_orders(2) == [2] and dpm_orders(3) == [2, 1]
    assert dpm_orders(8) == [3, 3, 2] and dpm_orders(14) == [3, 3, 3, 3, 2]
    for n in range(1, 40):
        assert dpm_orders(n) == spec(n) and sum(dpm_orders(n)) == n
    with pytest.raises(ValueError, match="steps must be >= 1, got 0"):
        dpm_orders(0)


def test_ddpm_recursion_and_temperature_by_hand():
    """Ancestral sampling with a zero network (eps = 0, v = 0: log-variance halfway between the clipped
    posterior one and log beta) on the 3-step diffusion, written out: noise(k) enters at k = 1, 2 scaled
    by the temperature; the last step adds none."""
    from emigm.nn.diffusion import ddpm_sample
    d = _small_diffusion()
    xT = torch.tensor([[1.0, -0.5]], dtype=F64)
    draws = {1: torch.tensor([[0.3, -1.1]], dtype=F64), 2: torch.tensor([[-0.6, 0.4]], dtype=F64)}
    labels = []

    def model(x, lab):
        labels.append(float(lab[0]))
        return torch.zeros(x.shape[0], 4, dtype=F64)

    ab, ab_prev, beta = [0.9, 0.72, 0.504], [1.0, 0.9, 0.72], [0.1, 0.2, 0.3]
    var1 = 0.2 * 0.1 / 0.28
    post_var = [var1, var1, 0.3 * 0.28 / 0.496]
    for temp in (0.0, 0.5, 1.0):
        labels.clear()
        x = xT.clone()
        for k, i in ((1, 2), (2, 1), (3, 0)):
            x0 = x / math.sqrt(ab[i])
            mean = (beta[i] * math.sqrt(ab_prev[i]) * x0 + (1 - ab_prev[i]) * math.sqrt(1 - beta[i]) * x) / (1 - ab[i])
            std = math.exp(0.25 * (math.log(beta[i]) + math.log(post_var[i])))
            x = mean + temp * std * draws[k] if i > 0 else mean
        got = ddpm_sample(d, model, xT, lambda k: draws[k], steps=3, temperature=temp)
        torch.testing.assert_close(got, x)
        assert labels == [2.0, 1.0, 0.0]
    default = ddpm_sample(d, model, xT, lambda k: draws[k], steps=3)
    torch.testing.assert_close(default, ddpm_sample(d, model, xT, lambda k: draws[k], steps=3, temperature=1.0))
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        ddpm_sample(d, model, xT, lambda k: draws[k], steps=3, temperature=-1e-9)
    with pytest.raises(ValueError, match="steps must be >= 1, got 0"):
        ddpm_sample(d, model, xT, lambda k: draws[k], steps=0)


def test_dpm_solvers_ignore_temperature_and_noise():
    from emigm.nn.diffusion import GaussianDiffusion, dpm2m_sample, dpm_sample
    d = GaussianDiffusion.cosine(1000)
    x = torch.tensor([[0.2, -1.0]], dtype=F64)

    def model(xx, lab):
        return torch.cat([0.5 * xx, torch.zeros_like(xx)], dim=-1)

    for solver in (dpm_sample, dpm2m_sample):
        a = solver(d, model, x, None, steps=5)
        b = solver(d, model, x, lambda i: torch.ones_like(x), steps=5, temperature=0.0)
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_solver_evals():
    from emigm.nn.diffusion import solver_evals
    assert [solver_evals(s, 7) for s in ("ddpm", "dpm", "dpm2m")] == [7, 7, 7]
    assert solver_evals("dpm", 1) == 1
    with pytest.raises(ValueError, match="steps must be >= 1, got 0"):
        solver_evals("dpm", 0)


# ============================================================================= categorical head


def _logits_147() -> torch.Tensor:
    """Logits of the distribution (1/7, 2/7, 4/7)."""
    return torch.tensor([[0.0, math.log(2.0), math.log(4.0)]])


def _uniforms_for_gumbel(g: list[float]):
    """uniform(0) such that -log(-log(u)) = g exactly (up to rounding)."""
    u = torch.tensor([[math.exp(-math.exp(-x)) for x in g]])

    def uniform(i: int) -> torch.Tensor:
        assert i == 0, "a categorical token takes one draw, index 0"
        return u
    return uniform


def test_sample_logits_temperature_zero_is_argmax():
    from emigm.nn.categorical_head import CategoricalHead
    head = CategoricalHead(4, 3)
    codes, logp = head.sample_logits(_logits_147(), _uniforms_for_gumbel([5.0, 0.0, 0.0]), temperature=0.0)
    assert codes.tolist() == [2] and float(logp) == pytest.approx(math.log(4 / 7))


def test_sample_logits_temperature_divides_log_probs():
    """codes = argmax(log p / temperature + Gumbel). With Gumbel noise (3, 0, 0) and log p =
    log(1/7, 2/7, 4/7): temperature 1 picks code 0 (1.05 > -0.56); temperature 0.25 picks code 2
    (-2.24 > -4.78); the confidence is log p of the code under the untempered distribution."""
    from emigm.nn.categorical_head import CategoricalHead
    head = CategoricalHead(4, 3)
    noise = _uniforms_for_gumbel([3.0, 0.0, 0.0])
    codes, logp = head.sample_logits(_logits_147(), noise, temperature=1.0)
    assert codes.tolist() == [0] and float(logp) == pytest.approx(math.log(1 / 7))
    codes, logp = head.sample_logits(_logits_147(), noise, temperature=0.25)
    assert codes.tolist() == [2] and float(logp) == pytest.approx(math.log(4 / 7))
    # temperature 4: log p / 4 = (-0.49, -0.31, -0.14) + (3, 0, 0): code 0 again
    codes, _ = head.sample_logits(_logits_147(), noise, temperature=4.0)
    assert codes.tolist() == [0]
    # Gumbel (0, 1.2, 0): at temperature 1, -1.25 + 1.2 = -0.05 beats -0.56; at 2, -0.63 + 1.2 > -0.28
    codes, logp = head.sample_logits(_logits_147(), _uniforms_for_gumbel([0.0, 1.2, 0.0]), temperature=1.0)
    assert codes.tolist() == [1] and float(logp) == pytest.approx(math.log(2 / 7))


def _fixed_logits_head():
    """A head whose logits are log(1/7, 2/7, 4/7) + const for any z (zero weights, bias only)."""
    from emigm.nn.categorical_head import CategoricalHead
    head = CategoricalHead(4, 3)
    with torch.no_grad():
        head.proj.weight.zero_()
        head.proj.bias.copy_(_logits_147()[0])
    return head


def test_default_temperature_is_one():
    """Gumbel (1.32, 0, 0): log p_0 / T + 1.32 vs log p_2 / T: code 2 at T = 1 (-0.066), code 0 at
    T = 1.1 (+0.06); Gumbel (3, 0, 0): code 0 at T = 1, code 2 at T = 0."""
    head = _fixed_logits_head()
    near, far = _uniforms_for_gumbel([1.32, 0.0, 0.0]), _uniforms_for_gumbel([3.0, 0.0, 0.0])
    assert head.sample_logits(_logits_147(), near, 1.1)[0].tolist() == [0]
    for noise, code in ((near, 2), (far, 0)):
        assert head.sample_logits(_logits_147(), noise)[0].tolist() == [code]
        assert head.sample_logits(_logits_147(), noise, 1.0)[0].tolist() == [code]
        assert head.sample(torch.randn(1, 4), noise)[0].tolist() == [code]
    assert head.sample(torch.randn(1, 4), far, temperature=0.0)[0].tolist() == [2]
    assert head.norm.eps == 1e-6 and head.codebook_size == 3 and head.discrete


def test_sample_logits_shifted_logits_same_result():
    from emigm.nn.categorical_head import CategoricalHead
    head = CategoricalHead(4, 3)
    noise = _uniforms_for_gumbel([3.0, 0.0, 0.0])
    a = head.sample_logits(_logits_147(), noise, 0.25)
    b = head.sample_logits(_logits_147() + 10.0, noise, 0.25)
    assert a[0].tolist() == b[0].tolist() and float(a[1]) == pytest.approx(float(b[1]), abs=1e-6)


def test_head_guided_sampling_uses_the_guided_distribution():
    from emigm.core.guidance import Term
    from emigm.nn.categorical_head import CategoricalHead
    torch.manual_seed(0)
    head = CategoricalHead(4, 5)
    z, zr = torch.randn(3, 4), torch.randn(3, 4)
    w = torch.tensor([0.0, 1.0, 2.5])
    cond, ref = head.logits(z), head.logits(zr)
    guided = cond + w[:, None] * (cond - ref)
    torch.testing.assert_close(head.guided_logits(z, [Term("cfg", zr, w)]), guided)
    torch.testing.assert_close(head.guided_logits(z), cond)
    codes, logp, log_p = head.sample(z, _uniforms_for_gumbel([0.0] * 5), guides=[Term("cfg", zr, w)], temperature=0.0)
    assert codes.tolist() == guided.argmax(1).tolist()
    torch.testing.assert_close(logp, torch.log_softmax(guided, 1).gather(1, codes[:, None])[:, 0])
    assert torch.equal(log_p, logp)  # the default score is the code's log-probability, also returned third
    assert head.evals() == 1 and head.evals("dpm", 14) == 1


def test_head_loss_label_smoothing():
    from emigm.nn.categorical_head import CategoricalHead
    torch.manual_seed(1)
    head = CategoricalHead(4, 6)
    assert head.label_smoothing == 0.1
    z, y = torch.randn(5, 4), torch.tensor([0, 5, 2, 2, 1])
    logp = torch.log_softmax(head.logits(z), 1)
    # (1 - eps) (-log p_y) + eps mean_k(-log p_k)
    expected = -(0.9 * logp.gather(1, y[:, None])[:, 0] + 0.1 * logp.mean(1))
    torch.testing.assert_close(head.loss(z, y), expected)
    with pytest.raises(ValueError, match="codebook_size must be >= 2, got 1"):
        CategoricalHead(4, 1)
    CategoricalHead(4, 2)


# ============================================================================= tokenizer seam ratio


def _ramp_blocks(size: int = 8) -> torch.Tensor:
    """Rows 0 1 2 3 10 11 12 13 (a ramp inside each 4-pixel token, a jump of 7 across the border)."""
    row = torch.tensor([0.0, 1, 2, 3, 10, 11, 12, 13])[:size]
    return row.expand(size, size).reshape(1, 1, size, size).clone()


def test_seam_ratio_hand_example():
    """Horizontal steps: 1 inside, 7 across the border (8 rows); vertical steps: 0. Across: (8 x 7 +
    8 x 0) / 16 = 3.5; inside: (48 x 1 + 48 x 0) / 96 = 0.5; ratio 7."""
    from emigm.eval.evaluation import seam_ratio
    assert seam_ratio(_ramp_blocks()) == pytest.approx(7.0)
    # period 2: borders after columns 1, 3, 5 (steps 1, 7, 1): across (8 x 9) / 48 = 1.5, inside
    # (8 x 4 x 1) / 64 = 0.5: ratio 3
    assert seam_ratio(_ramp_blocks(), period=2) == pytest.approx(3.0)
    # transposed: the same by symmetry
    assert seam_ratio(_ramp_blocks().transpose(-1, -2)) == pytest.approx(7.0)


def test_seam_ratio_smooth_and_blocky():
    from emigm.eval.evaluation import seam_ratio
    i = torch.arange(8.0)
    smooth = (i[:, None] + 2 * i[None, :]).reshape(1, 1, 8, 8)
    assert seam_ratio(smooth) == pytest.approx(1.0)  # every step the same: no seams
    g = torch.Generator().manual_seed(0)
    noise = torch.rand(4, 3, 16, 16, generator=g)
    assert seam_ratio(noise) == pytest.approx(1.0, abs=0.1)
    blocks = torch.rand(4, 3, 4, 4, generator=g).repeat_interleave(4, -1).repeat_interleave(4, -2)
    assert seam_ratio(blocks + 0.01 * noise) > 5.0
    # constant 4 x 4 blocks (checkerboard 0 / 1): across 1, inside 0, clamped to 1e-12
    check = ((torch.arange(8)[:, None] // 4 + torch.arange(8)[None, :] // 4) % 2).float().reshape(1, 1, 8, 8)
    assert seam_ratio(check) == pytest.approx(1e12, rel=1e-6)


def test_seam_ratio_non_square():
    """A 4 x 16 image, rows 0 1 2 3 10 11 12 13 twice: horizontal border steps 7, 13, 7 (mean 9), inside
    steps 1 (48 of them) and the 48 vertical steps 0 (no row border in 4 rows): 9 / 0.5 = 18."""
    from emigm.eval.evaluation import seam_ratio
    img = _ramp_blocks().repeat(1, 1, 1, 2)[..., :4, :]  # 4 x 16
    assert seam_ratio(img) == pytest.approx(18.0)
