"""The sampler laboratory: the Halton, raster, margin and entropy orders, revocable tokens (remasking), and
each step's anatomy, against independent constructions and hand-computed values."""
from __future__ import annotations

from dataclasses import replace
from fractions import Fraction

import pytest
import torch
from test_fast_path import EMIGM, MASKGIT, assert_tokens_close, make, smoother_for

from emigm.core.guidance import GuidanceConfig, combine
from emigm.nn.categorical_head import margin_score, neg_entropy
from emigm.nn.diffusion import dpm_orders
from emigm.sample.options import AnatomyOptions
from emigm.sample.orders import fixed_priority, halton_order, radical_inverse
from emigm.sample.passes import Networks
from emigm.sample.plan import plan_steps
from emigm.sample.sampler import SamplerConfig, sample, sample_steps


@pytest.fixture(scope="module")
def emigm_like():
    return make("test-tiny")


@pytest.fixture(scope="module")
def maskgit():
    model = make("test-tiny-vq", mae=False)
    return Networks(model, smoother_for(model))


# ----------------------------------------------------------------------------- Halton


def _halton_by_fractions(rows: int, cols: int, count: int) -> list[int]:
    """An independent construction with exact rational arithmetic: digit reversal of i in base 2 (row)
    and base 3 (column) from i = 1, first visits only."""
    def inverse(i: int, b: int) -> Fraction:
        digits = []
        while i:
            i, d = divmod(i, b)
            digits.append(d)
        return sum((Fraction(d, b ** (n + 1)) for n, d in enumerate(digits)), Fraction(0))
    order, i = [], 1
    while len(order) < count:
        cell = int(inverse(i, 2) * rows) * cols + int(inverse(i, 3) * cols)
        if cell not in order:
            order.append(cell)
        i += 1
    return order


def test_radical_inverse_values():
    assert [radical_inverse(i, 2) for i in (1, 2, 3, 4, 5)] == [0.5, 0.25, 0.75, 0.125, 0.625]
    assert [radical_inverse(i, 3) for i in (1, 2, 3, 4)] == pytest.approx([1 / 3, 2 / 3, 1 / 9, 4 / 9])


@pytest.mark.parametrize("side", [2, 3, 7, 16])
def test_halton_order_matches_an_exact_construction(side):
    got = halton_order(side, side)
    assert sorted(got) == list(range(side * side))  # every cell once
    assert got == _halton_by_fractions(side, side, side * side)
    if side == 7:  # (1/2, 1/3), (1/4, 2/3), (3/4, 1/9): cells (3, 2), (1, 4), (5, 0)
        assert got[:3] == [3 * 7 + 2, 1 * 7 + 4, 5 * 7 + 0]


def test_halton_coverage_point_counts():
    """The grids of the fact sheet are covered after 685 (16 x 16) and 2201 (24 x 24) points."""
    for side, points in ((16, 685), (24, 2201)):
        cells = {int(radical_inverse(i, 2) * side) * side + int(radical_inverse(i, 3) * side) for i in range(1, points + 1)}
        assert len(cells) == side * side
        fewer = {int(radical_inverse(i, 2) * side) * side + int(radical_inverse(i, 3) * side) for i in range(1, points)}
        assert len(fewer) == side * side - 1


def test_fixed_priorities():
    halton = fixed_priority("halton", 16, None, "cpu")
    assert halton[torch.tensor(halton_order(4, 4))].tolist() == list(range(16))
    assert fixed_priority("raster", 5, None, "cpu").tolist() == [0, 1, 2, 3, 4]
    assert fixed_priority("fixed", 3, torch.tensor([2, 0, 1]), "cpu").tolist() == [2, 0, 1]


@pytest.mark.parametrize("order", ["halton", "raster"])
@pytest.mark.parametrize("rule", ["binomial", "exact"])
def test_fixed_orders_reveal_by_priority(emigm_like, order, rule):
    """Each step reveals the masked tokens of lowest priority; with one seed two guidance settings reveal
    the same positions; the result does not depend on the batch."""
    cfg = SamplerConfig(num_steps=5, order=order, count_rule=rule, head_steps=2)
    prio = fixed_priority(order, emigm_like.num_tokens, None, "cpu")
    states = list(sample_steps(emigm_like, [1, 4], [3, 8], cfg))
    for st in states:
        for b in range(2):
            masked = st.mask_before[b].nonzero().flatten()
            want = masked[prio[masked].argsort()[:int(st.revealed[b].sum())]]
            assert sorted(want.tolist()) == st.revealed[b].nonzero().flatten().tolist()
    guided = list(sample_steps(emigm_like, [1, 4], [3, 8], cfg, GuidanceConfig(cfg_scale=3.0)))
    assert all(torch.equal(a.revealed, b.revealed) for a, b in zip(states, guided))
    one = sample(emigm_like, [4], [8], cfg)
    both = sample(emigm_like, [1, 4], [3, 8], cfg)
    assert torch.equal(one.mask_before[0], both.mask_before[1])
    assert_tokens_close(one.tokens[0], both.tokens[1])


# ----------------------------------------------------------------------------- margin / entropy


def test_margin_and_entropy_scores_by_hand():
    p = torch.tensor([[0.5, 0.3, 0.2], [0.9, 0.05, 0.05], [1 / 3, 1 / 3, 1 / 3]])
    logp = p.log()
    assert margin_score(logp) == pytest.approx(torch.tensor([0.2, 0.85, 0.0]), abs=1e-6)
    want = [0.5 * -0.693147 + 0.3 * -1.203973 + 0.2 * -1.609438, 0.9 * -0.105361 + 2 * 0.05 * -2.995732,
            -1.098612]
    assert neg_entropy(logp) == pytest.approx(torch.tensor(want), abs=1e-5)


@pytest.mark.parametrize("order", ["margin", "entropy", "confidence"])
@pytest.mark.parametrize("rule", ["binomial", "exact"])
def test_score_orders_reveal_the_best_scored(maskgit, order, rule):
    """With no Gumbel noise each step reveals the masked tokens of highest score, the score computed
    here from the step's recorded guided logits; branching reproduces the rest of the run."""
    cfg = SamplerConfig(num_steps=5, order=order, count_rule=rule, order_temperature=0.0, schedule="cosine")
    g = GuidanceConfig(cfg_scale=2.0)
    states = list(sample_steps(maskgit, [2, 6], [5, 9], cfg, g, anatomy=AnatomyOptions()))
    for st in states:
        logp = torch.log_softmax(st.anatomy.raw["combined"], -1)
        score = {"margin": margin_score, "entropy": neg_entropy}.get(order)
        for b in range(2):
            masked = st.mask_before[b].nonzero().flatten()
            if score is not None:
                s = score(logp[b, masked])
                torch.testing.assert_close(st.anatomy.score[b, masked], s)
            s = st.anatomy.score[b, masked]
            n = int(st.revealed[b].sum())
            chosen = set(st.revealed[b].nonzero().flatten().tolist())
            assert chosen == set(masked[s.argsort(descending=True, stable=True)[:n]].tolist())
    branch = list(sample_steps(maskgit, [2, 6], [5, 9], cfg, g, init=states[1]))
    assert torch.equal(branch[-1].tokens, states[-1].tokens)
    assert torch.equal(sample(maskgit, [6], [9], cfg, g).tokens[0], states[-1].tokens[1])


def test_score_orders_refuse_a_diffusion_head(emigm_like):
    for order in ("margin", "entropy"):
        with pytest.raises(ValueError, match=f"the {order} order needs token probabilities"):
            sample(emigm_like, [1], [0], SamplerConfig(num_steps=4, order=order))


# ----------------------------------------------------------------------------- remasking


@pytest.mark.parametrize("which", ["emigm", "maskgit"])
def test_remask_off_ignores_eta(emigm_like, maskgit, which):
    net, (cfg, g) = (emigm_like, EMIGM) if which == "emigm" else (maskgit, MASKGIT)
    a = list(sample_steps(net, [1, 3], [2, 4], cfg, g))
    b = list(sample_steps(net, [1, 3], [2, 4], replace(cfg, remask_eta=0.9), g))
    for x, y in zip(a, b):
        assert torch.equal(x.tokens, y.tokens) and torch.equal(x.draft, y.draft) and not x.remasked.any()
        assert not x.revisions.any()


@pytest.mark.parametrize("rule", ["binomial", "exact"])
@pytest.mark.parametrize("remask", ["cap", "rescale"])
def test_remasking_revisions_follow_the_trajectory(emigm_like, rule, remask):
    cfg = SamplerConfig(num_steps=10, count_rule=rule, remask=remask, remask_eta=0.3, head_steps=2)
    g = GuidanceConfig(cfg_scale=2.0, cfg_interval=(0.2, 0.7))
    states = list(sample_steps(emigm_like, [0, 5, 9], [1, 2, 3], cfg, g))
    revisions = torch.zeros_like(states[0].revisions)
    for st in states:
        # re-masked tokens were committed before the step and are masked after it; revealed were masked
        assert not (st.remasked & st.mask_before).any() and bool((st.mask_after[st.remasked]).all())
        assert not (st.revealed & ~st.mask_before).any()
        assert torch.equal(st.mask_after, (st.mask_before & ~st.revealed) | st.remasked)
        assert bool((st.tokens[st.mask_after] == 0).all())  # masked tokens carry nothing
        revisions += st.remasked.long()
        assert torch.equal(st.revisions, revisions)
    assert states[-1].done and int(revisions.sum()) > 0  # tokens were revised, and every one ends committed
    # NFE stays exact: passes are those of the guidance alone
    assert states[-1].passes == 10 + sum(st.cfg_active for st in states)
    fast = sample(emigm_like, [0, 5, 9], [1, 2, 3], cfg, g)
    assert torch.equal(fast.revisions, states[-1].revisions) and fast.passes == states[-1].passes
    assert_tokens_close(fast.tokens, states[-1].tokens)
    one = sample(emigm_like, [5], [2], cfg, g)
    assert torch.equal(one.revisions[0], fast.revisions[1])


def test_remasking_keeps_the_schedule_in_expectation():
    """With remasking the expected masked count after each step stays on the schedule L gamma(s) / gamma(1)
    (averaged over many seeds; the at-least-one rule of the first steps costs under a token)."""
    from emigm.core.schedules import get_schedule, time_grid
    L, S = 64, 8
    seeds = torch.arange(4000)
    gamma = get_schedule("exp").gamma
    grid = time_grid(S)
    schedule = L * gamma(grid[1:]) / gamma(torch.tensor(1.0, dtype=torch.float64))
    for remask in ("cap", "rescale"):
        c = plan_steps(seeds, L, SamplerConfig(num_steps=S, remask=remask, remask_eta=0.5))
        assert float(c.remasked.float().mean()) > 0.5  # about half a token re-masked per step and sample
        masked = L - (c.revealed - c.remasked).cumsum(0).double().mean(1)
        assert torch.allclose(masked[:-1], schedule[:-1], atol=1.0), (masked, schedule)


def test_remask_sigma_schedules():
    from emigm.sample.plan import remask_sigma
    cfg = SamplerConfig(remask="cap", remask_eta=0.1)
    assert remask_sigma(cfg, 0.5, 0.6) == pytest.approx(min(0.1, 0.4 / 0.5))
    assert remask_sigma(cfg, 0.9, 0.95) == pytest.approx(min(0.1, 0.05 / 0.9))
    assert remask_sigma(replace(cfg, remask="rescale"), 0.5, 0.6) == pytest.approx(0.1 * 0.8)
    assert remask_sigma(cfg, 0.0, 0.2) == 0.0  # nothing committed yet
    assert remask_sigma(replace(cfg, remask="off"), 0.5, 0.6) == 0.0


# ----------------------------------------------------------------------------- anatomy


def test_anatomy_categorical_combined_is_the_combinator_and_the_draft(maskgit):
    cfg, g = MASKGIT
    states = list(sample_steps(maskgit, [1, 7], [3, 4], cfg, g, anatomy=AnatomyOptions()))
    assert any("smoothed" in st.anatomy.raw for st in states) and any("null" in st.anatomy.raw for st in states)
    for st in states:
        a = st.anatomy
        refs = [a.raw[n] for n in ("null", "smoothed") if n in a.raw]
        names = [n for n in ("cfg", "self-guidance") if n in a.weights]
        w = [a.weights[n][:, None, None] for n in names]
        m = st.mask_before
        torch.testing.assert_close(a.raw["combined"][m], combine(a.raw["conditional"], refs, w)[m])
        assert torch.equal(a.branches["combined"], st.draft)
        lp = torch.log_softmax(a.raw["combined"], -1)
        torch.testing.assert_close(a.uncertainty[m], -(lp.exp() * lp).sum(-1)[m])
        assert bool((a.uncertainty[~m] == 0).all()) and bool((a.rank[~m] == -1).all())
        assert sorted(a.rank[0][m[0]].tolist()) == list(range(int(m[0].sum())))
        assert torch.equal(a.drawn, st.revealed.sum(1))


def test_anatomy_diffusion_draft_and_path(emigm_like):
    cfg, g = EMIGM
    opts = AnatomyOptions(uncertainty_draws=3, path_token=(1, 5))
    states = list(sample_steps(emigm_like, [2, 8], [6, 7], cfg, g, anatomy=opts))
    plain = list(sample_steps(emigm_like, [2, 8], [6, 7], cfg, g))
    for st, ref in zip(states, plain):
        a = st.anatomy
        assert torch.equal(st.tokens, ref.tokens) and torch.equal(st.draft, ref.draft)  # the anatomy only looks
        m = st.mask_before
        assert a.raw == {}  # a diffusion head combines its branches inside the solver: no raw outputs
        assert torch.equal(a.branches["combined"], st.draft)
        assert bool((a.uncertainty[m] > 0).all())
        # reveal probability and expectation: p, masked x p, the drawn count
        torch.testing.assert_close(a.expected, m.sum(1).float() * a.reveal_p)
        if bool(m[1, 5]):
            solver_steps = cfg.head_steps if st.revealed[1, 5] else cfg.draft_steps
            assert a.path is not None and a.path.shape == (1 + len(dpm_orders(solver_steps)), 4)
            assert_tokens_close(a.path[-1], st.draft[1, 5])
        else:
            assert a.path is None
    assert any(st.anatomy.path is not None for st in states)


def test_uncertainty_is_zero_for_a_deterministic_head(emigm_like, monkeypatch):
    """A diffusion head whose output does not depend on its noise (here: DPM-Solver from x_T = 0 for every
    draw, i.e. a point-mass head) has zero spread."""
    from emigm.sample import anatomy
    from emigm.sample import sampler as sampler_mod

    class PointMass:
        discrete = False

        def __init__(self, inner):
            self.inner = inner

        def sample(self, z, noise, **kw):
            return self.inner.sample(z, lambda i: 0 * noise(i), **kw)

    cfg, g = EMIGM
    captured = {}
    real = anatomy.open_step

    def spy(h, facts, opts, full, draft, temperature):
        captured["out"] = real(PointMass(h), facts, opts, full, draft, temperature)
        return captured["out"]

    real_unc = next(iter(sample_steps(emigm_like, [1], [0], cfg, g, anatomy=AnatomyOptions()))).anatomy.uncertainty
    assert bool((real_unc > 0).all())  # the head with its noise does spread
    monkeypatch.setattr(sampler_mod, "open_step", spy)
    st = next(iter(sample_steps(emigm_like, [1], [0], cfg, g, anatomy=AnatomyOptions())))
    assert bool(st.mask_before.all()) and bool((captured["out"].uncertainty == 0).all())


@pytest.mark.parametrize("kwargs,match", [
    (dict(uncertainty_draws=1), r"uncertainty_draws must be in \[2, 32\]"),
    (dict(uncertainty_draws=100), r"uncertainty_draws must be in \[2, 32\]"),
    (dict(path_token=(0, -1)), r"path_token position must be in \[0, inf\)"),
    (dict(path_token=(0,)), r"path_token must be \(sample, position\)"),
])
def test_anatomy_options_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AnatomyOptions(**kwargs)


def test_anatomy_bad_requests(emigm_like):
    cfg, g = EMIGM
    with pytest.raises(ValueError, match=r"path_token \(0, 99\) is outside the run: 1 samples of 16 tokens"):
        list(sample_steps(emigm_like, [1], [0], cfg, g, anatomy=AnatomyOptions(path_token=(0, 99))))
    with pytest.raises(ValueError, match="needs drafts"):
        list(sample_steps(emigm_like, [1], [0], replace(cfg, draft=False), g, anatomy=AnatomyOptions()))
    with pytest.raises(ValueError, match="not the fast path"):
        sample(emigm_like, [1], [0], cfg, g, anatomy=AnatomyOptions())


@pytest.mark.parametrize("kwargs,match", [
    (dict(remask_eta=1.5), r"remask_eta must be in \[0, 1\]"),
    (dict(remask_eta=float("nan")), "remask_eta must be a finite number"),
    (dict(remask="always"), "unknown remask 'always'; valid: off, cap, rescale"),
    (dict(draft_steps=-1), r"draft_steps must be in \[0, 250\]"),
])
def test_sampler_lab_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplerConfig(**kwargs)


def test_drafts_of_unrevealed_tokens_are_cheaper_previews(emigm_like):
    """draft_steps previews the tokens a step does not reveal with fewer solver steps; the committed
    tokens do not depend on draft_steps at all, and are the fast path's (to float rounding: the fast path's
    last transformer block computes only the revealed positions)."""
    cfg, g = EMIGM
    fast = sample(emigm_like, [3, 4], [1, 2], cfg, g)
    runs = [list(sample_steps(emigm_like, [3, 4], [1, 2], replace(cfg, draft_steps=n), g)) for n in (0, 1, 3)]
    for st in runs:
        assert torch.equal(st[-1].tokens, runs[0][-1].tokens)
        assert_tokens_close(st[-1].tokens, fast.tokens)
    exact = list(sample_steps(emigm_like, [3, 4], [1, 2], replace(cfg, draft_steps=0), g))
    cheap = list(sample_steps(emigm_like, [3, 4], [1, 2], replace(cfg, draft_steps=1), g))
    k = 1
    other = exact[k].mask_after[0]
    assert not torch.equal(exact[k].draft[0][other], cheap[k].draft[0][other])
