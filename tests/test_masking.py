import math

import numpy as np
import pytest
import torch

from emigm.core.config import MaskingConfig
from emigm.core.masking import draw_mask, masked_mean, truncated_normal_ratio


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_bernoulli_shared_count_same_count_different_positions():
    d = draw_mask(MaskingConfig(distribution="bernoulli", shared_count=True), 64, 49, gen())
    counts = d.mask.sum(1)
    assert torch.all(counts == counts[0]) and int(counts[0]) >= 2
    assert len({tuple(r.tolist()) for r in d.mask}) > 1
    assert torch.all(d.t >= 0.2) and torch.all(d.t == d.t[0])


def test_bernoulli_independent_ratio_matches_gamma():
    cfg = MaskingConfig(distribution="bernoulli", shared_count=False, t_min=0.0, schedule="linear")
    d = draw_mask(cfg, 4000, 64, gen(1))
    p = 0.999 * d.t + 0.001
    frac = d.mask.float().mean(1)
    # per-row fraction is Binomial(64, p)/64: regress against p
    assert float((frac - p).mean()) == pytest.approx(0.0, abs=0.01)
    assert torch.all(d.mask.sum(1) >= 1)


def test_time_truncation_is_a_clamp():
    cfg = MaskingConfig(distribution="bernoulli", shared_count=False, t_min=0.4)
    d = draw_mask(cfg, 20000, 16, gen(2))
    assert float(d.t.min()) == pytest.approx(0.4)
    assert float((d.t == 0.4).float().mean()) == pytest.approx(0.4, abs=0.02)


@pytest.mark.parametrize("schedule", ["linear", "cosine", "exp"])
def test_exact_count_is_ceil_l_gamma(schedule):
    from emigm.core.schedules import get_schedule

    cfg = MaskingConfig(distribution="exact", schedule=schedule, t_min=0.0)
    d = draw_mask(cfg, 256, 49, gen(3))
    expected = torch.ceil(49 * get_schedule(schedule).gamma(0.999 * d.t + 0.001)).long().clamp(1, 49)
    assert torch.equal(d.mask.sum(1), expected)


def test_mar_ratio_in_range_and_mode_near_one():
    r = truncated_normal_ratio(20000, gen(4), None)
    assert float(r.min()) >= 0.7 and float(r.max()) <= 1.0
    hist = torch.histc(r, bins=6, min=0.7, max=1.0)
    assert hist[-1] > hist[0]  # density increases toward the mode at 1
    d = draw_mask(MaskingConfig(distribution="mar"), 8, 100, gen(5))
    c = d.mask.sum(1)
    assert torch.all(c == c[0]) and 70 <= int(c[0]) <= 100


def test_mdm_weight():
    from emigm.core.schedules import get_schedule

    d = draw_mask(MaskingConfig(distribution="bernoulli", shared_count=False, weighting="mdm", schedule="cosine"), 16, 8, gen(6))
    p = 0.999 * d.t + 0.001
    torch.testing.assert_close(d.weight, get_schedule("cosine").mdm_weight(p))


def test_generator_reproducible_and_bad_names():
    a = draw_mask(MaskingConfig(), 4, 16, gen(7))
    b = draw_mask(MaskingConfig(), 4, 16, gen(7))
    assert torch.equal(a.mask, b.mask)
    with pytest.raises(ValueError, match="bernoulli, exact, mar"):
        draw_mask(MaskingConfig(distribution="poisson"), 4, 16, gen())


def test_masked_mean():
    loss = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    mask = torch.tensor([[True, False], [True, True]])
    assert float(masked_mean(loss, mask)) == pytest.approx(8 / 3)
    assert float(masked_mean(loss, mask, torch.tensor([2.0, 0.0]))) == pytest.approx(2 / 3)


# ----------------------------------------------------------------------------- shared count at t_min = 0

_GAMMA = {"linear": lambda p: p, "exp": lambda p: 1 - np.exp(-5 * p)}  # written out, not imported


def _count_law(schedule: str, L: int) -> tuple[np.ndarray, float]:
    """Exact law of the shared count at t_min = 0 before any rule: P(k) = int_0^1 Binomial(k; L, g(t)) dt,
    g(t) = gamma(0.999 t + 0.001), by Simpson's rule on 20001 points (error far below 1e-9); and
    E[t | count >= 2]."""
    t = np.linspace(0.0, 1.0, 20001)
    w = np.ones_like(t)
    w[1:-1:2], w[2:-1:2] = 4, 2
    w /= 3 * (len(t) - 1)
    g = _GAMMA[schedule](0.999 * t + 0.001)
    dens = np.stack([math.comb(L, k) * g**k * (1 - g) ** (L - k) for k in range(L + 1)])
    p_ge2 = dens[2:].sum(0)
    return dens @ w, float((t * p_ge2) @ w / (p_ge2 @ w))


@pytest.mark.parametrize("schedule", ["linear", "exp"])
def test_shared_count_is_redrawn_not_clamped(schedule):
    """At t_min = 0 with 4 tokens, draws with fewer than 2 masked are common (about 40% for linear,
    12% for exp). Redrawing gives P(k) / P(>= 2) for k = 2..4; clamping would pile P(0) + P(1) onto
    k = 2 (linear: 0.60 instead of 0.33; exp: 0.22 instead of 0.11) and leave E[t] = 1/2."""
    L, n = 4, 4000
    law, mean_t = _count_law(schedule, L)
    redraw = law[2:] / law[2:].sum()
    clamp = np.concatenate([[law[:3].sum()], law[3:]])
    g = gen(11)
    cfg = MaskingConfig(schedule=schedule, distribution="bernoulli", shared_count=True, t_min=0.0)
    draws = [draw_mask(cfg, 2, L, g) for _ in range(n)]
    counts = np.array([int(d.mask[0].sum()) for d in draws])
    assert all(bool((d.mask.sum(1) == d.mask[0].sum()).all()) for d in draws[:50])
    freq = np.bincount(counts, minlength=L + 1)[2:] / n
    sd = np.sqrt(redraw * (1 - redraw) / n)
    assert np.all(np.abs(freq - redraw) < 4.5 * sd), (freq, redraw)
    assert abs(freq[0] - clamp[0]) > 10 * sd[0]  # the clamping law is far off
    ts = np.array([float(d.t[0]) for d in draws])
    assert abs(ts.mean() - mean_t) < 4.5 * ts.std() / np.sqrt(n), (ts.mean(), mean_t)


def test_shared_count_draw_is_reproducible_per_seed():
    cfg = MaskingConfig(schedule="linear", distribution="bernoulli", shared_count=True, t_min=0.0)
    draws = []
    for seed in range(20):  # with 4 tokens about 40% of first candidates are rejected
        a, b = draw_mask(cfg, 3, 4, gen(seed)), draw_mask(cfg, 3, 4, gen(seed))
        assert torch.equal(a.mask, b.mask) and torch.equal(a.t, b.t) and torch.equal(a.weight, b.weight)
        assert int(a.mask[0].sum()) >= 2
        draws.append((tuple(a.mask.flatten().tolist()), float(a.t[0])))
    assert len(set(draws)) == 20
