"""emigm.core.guidance pinned by value: the combinator, the (t_lo, t_hi] interval, the CFG scale schedules,
which guides are on and what a step costs. Expected values are written out by hand or computed here
from the spec's formulas (eMIGM Sec. 3; Hur et al. 2024, Eq. 5), never by calling the code under test."""
from __future__ import annotations

import pytest
import torch

from emigm.core.guidance import CFG_MODES, CFG_SCHEDULES, GuidanceConfig, cfg_scale_at, combine, guide, in_interval


def _grid_after(S: int, t_end: float = 1e-5) -> list[float]:
    """s_k, the time after step k = 0..S-1, of the spec grid t = linspace(1, t_end, S + 1)."""
    return [1.0 - (k + 1) * (1.0 - t_end) / S for k in range(S)]


# ----------------------------------------------------------------------------- combine / guide


def test_combine_one_term_by_hand():
    cond, ref = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.5, 3.0]])
    # cond + 2 (cond - ref) = [1 + 2 * 0.5, 2 + 2 * (-1)]
    assert combine(cond, [ref], [2.0]).tolist() == [[2.0, 0.0]]


def test_combine_several_terms_add_up():
    cond = torch.tensor([[1.0, -1.0], [2.0, 0.0]])
    r1 = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    r2 = torch.tensor([[2.0, -2.0], [0.0, 4.0]])
    out = combine(cond, [r1, r2], [0.5, 3.0])
    expected = [[1 + 0.5 * 1 + 3.0 * (-1), -1 + 0.5 * (-1) + 3.0 * 1],
                [2 + 0.5 * 1 + 3.0 * 2, 0 + 0.5 * (-1) + 3.0 * (-4)]]
    assert out.tolist() == expected
    assert combine(cond, [], []) is cond  # no guide: the conditional prediction itself


def test_combine_per_row_weights():
    cond = torch.tensor([[1.0, 1.0], [1.0, 1.0], [4.0, 0.0]])
    ref = torch.tensor([[0.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    w = torch.tensor([0.0, 1.0, 2.0])  # (M,): one weight per row, broadcast over the row's values
    assert combine(cond, [ref], [w]).tolist() == [[1.0, 1.0], [2.0, 0.0], [10.0, -2.0]]
    # a (M,) weight on a 3-D tensor broadcasts over every trailing dimension
    cond3, ref3 = torch.ones(2, 2, 3), torch.zeros(2, 2, 3)
    out3 = combine(cond3, [ref3], [torch.tensor([1.0, 3.0])])
    assert out3[0].eq(2.0).all() and out3[1].eq(4.0).all()
    # with 1-D predictions a (M,) weight is elementwise
    flat = combine(torch.tensor([1.0, 2.0]), [torch.tensor([0.0, 0.0])], [torch.tensor([1.0, 2.0])])
    assert flat.tolist() == [2.0, 6.0]


def test_guide_is_the_paper_form():
    pred, ref = torch.tensor([3.0, -1.0]), torch.tensor([1.0, 1.0])
    # ref + w (pred - ref)
    assert guide(pred, ref, 4.0).tolist() == [1 + 4 * 2, 1 + 4 * (-2)]
    assert guide(pred, ref, 1.0).tolist() == pred.tolist()  # w = 1: no guidance
    assert guide(pred, ref, 0.0).tolist() == ref.tolist()  # w = 0: the reference alone
    per_row = guide(torch.tensor([[2.0], [2.0]]), torch.tensor([[0.0], [0.0]]), torch.tensor([1.5, 3.0]))
    assert per_row.tolist() == [[3.0], [6.0]]


def test_self_guidance_formula():
    """Hur et al. Eq. 5: guided = (1 + s) normal - s smooth, as combine(normal, [smooth], [s])."""
    normal, smooth, s = torch.tensor([0.3, -2.0, 1.0]), torch.tensor([1.0, 0.5, 1.0]), 1.5
    torch.testing.assert_close(combine(normal, [smooth], [s]), (1 + s) * normal - s * smooth)


# ----------------------------------------------------------------------------- interval and scale


@pytest.mark.parametrize("s,inside", [
    (0.1, False),  # s == t_lo: excluded
    (0.1000001, True),
    (0.2, True),
    (0.3, True),  # s == t_hi: included
    (0.3000001, False),
    (0.0, False),
    (1.0, False),
])
def test_in_interval_boundaries(s, inside):
    assert in_interval(s, (0.1, 0.3)) is inside


def test_in_interval_full_range():
    assert in_interval(1.0, (0.0, 1.0)) and in_interval(1e-5, (0.0, 1.0))
    assert not in_interval(0.0, (0.0, 1.0))


def test_cfg_scale_constant():
    for frac in (0.0, 0.25, 1.0):
        assert cfg_scale_at(4.0, "constant", frac) == 4.0


def test_cfg_scale_linear_direction():
    """Linear: 1 + (w - 1) x fraction revealed, from 1 (nothing revealed) to w (all revealed)."""
    assert cfg_scale_at(4.0, "linear", 0.0) == 1.0
    assert cfg_scale_at(4.0, "linear", 1.0) == 4.0
    assert cfg_scale_at(4.0, "linear", 0.5) == 2.5
    assert cfg_scale_at(3.0, "linear", 0.25) == 1.5
    assert cfg_scale_at(0.0, "linear", 0.5) == 0.5  # below one the schedule still starts at 1
    frac = torch.tensor([0.0, 0.5, 1.0])
    assert cfg_scale_at(5.0, "linear", frac).tolist() == [1.0, 3.0, 5.0]


def test_cfg_schedules_and_modes_named():
    assert set(CFG_SCHEDULES) == {"constant", "linear"}
    assert set(CFG_MODES) == {"", "mask", "fake"}
    with pytest.raises(ValueError, match="valid: constant, linear"):
        cfg_scale_at(2.0, "cosine", 0.5)


# ----------------------------------------------------------------------------- the config


def test_defaults_are_off():
    g = GuidanceConfig()
    assert (g.cfg_scale, g.cfg_mode, g.cfg_interval, g.cfg_schedule) == (1.0, "", (0.0, 1.0), "constant")
    assert (g.sg_scale, g.sg_interval) == (0.0, (0.0, 1.0))
    assert not any(g.cfg_active(s) or g.sg_active(s) for s in _grid_after(16))
    assert all(g.passes(s) == 1 for s in _grid_after(16))


def test_cfg_active():
    g = GuidanceConfig(cfg_scale=3.0, cfg_interval=(0.1, 0.3))
    assert not g.cfg_active(0.1) and g.cfg_active(0.3) and g.cfg_active(0.2) and not g.cfg_active(0.31)
    # scale 1 is "off" even inside the interval; any other scale is on (0: the null branch alone)
    assert not GuidanceConfig(cfg_scale=1.0).cfg_active(0.5)
    assert GuidanceConfig(cfg_scale=0.0).cfg_active(0.5)
    assert GuidanceConfig(cfg_scale=1.01).cfg_active(0.5) and GuidanceConfig(cfg_scale=0.99).cfg_active(0.5)


def test_sg_active():
    g = GuidanceConfig(sg_scale=1.0, sg_interval=(0.2, 0.6))
    assert not g.sg_active(0.2) and g.sg_active(0.6) and g.sg_active(0.4) and not g.sg_active(0.61)
    assert not GuidanceConfig(sg_scale=0.0).sg_active(0.5)  # s = 0 skips the second pass
    assert GuidanceConfig(sg_scale=0.01).sg_active(0.5)


@pytest.mark.parametrize("cfg,sg,s,passes", [
    (1.0, 0.0, 0.5, 1),
    (4.0, 0.0, 0.5, 2),
    (1.0, 1.0, 0.5, 2),
    (4.0, 1.0, 0.5, 3),
    (4.0, 1.0, 0.05, 1),  # outside both intervals
    (4.0, 1.0, 0.25, 2),  # inside CFG's only
])
def test_passes_one_plus_cfg_plus_sg(cfg, sg, s, passes):
    g = GuidanceConfig(cfg_scale=cfg, cfg_interval=(0.1, 0.9), sg_scale=sg, sg_interval=(0.3, 1.0))
    assert g.passes(s) == passes


@pytest.mark.parametrize("S,interval,cfg_steps,passes,steps_on", [
    (16, (0.1, 0.3), 3, 19, [12, 13, 14]),  # the paper's "16 x 1.2": s in {0.25, 0.1875, 0.125}
    (128, (0.05, 0.4), 45, 173, None),
    (16, (0.0, 1.0), 16, 32, list(range(1, 17))),
])
def test_spec_pass_counts(S, interval, cfg_steps, passes, steps_on):
    g = GuidanceConfig(cfg_scale=4.0, cfg_interval=interval)
    s_after = _grid_after(S)
    on = [k + 1 for k, s in enumerate(s_after) if g.cfg_active(s)]
    assert len(on) == cfg_steps and sum(g.passes(s) for s in s_after) == passes
    if steps_on is not None:
        assert on == steps_on


def test_spec_pass_counts_through_step_table():
    from emigm.sample.sampler import SamplerConfig
    from emigm.sample.steps import step_table

    t16 = step_table(SamplerConfig(num_steps=16), GuidanceConfig(cfg_scale=4.0, cfg_interval=(0.1, 0.3)), 256)
    assert (t16.cfg_steps, t16.passes, t16.sg_steps) == (3, 19, 0)
    assert [r.step for r in t16.rows if r.cfg] == [12, 13, 14]
    assert t16.as_dict()["nfe"] == "16 x 1.19" and t16.nfe_per_step == 19 / 16
    t128 = step_table(SamplerConfig(num_steps=128), GuidanceConfig(cfg_scale=4.0, cfg_interval=(0.05, 0.4)), 256)
    assert (t128.cfg_steps, t128.passes) == (45, 173)
    both = step_table(SamplerConfig(num_steps=8), GuidanceConfig(cfg_scale=2.0, cfg_interval=(0.5, 1.0),
                                                                  sg_scale=1.0, sg_interval=(0.0, 0.5)), 64)
    # s = 0.875 .. 0.5 (4 steps) take CFG, s = 0.375 .. ~0 (4 steps) take self-guidance: 16 passes
    assert (both.cfg_steps, both.sg_steps, both.passes) == (4, 4, 16)
    assert [r.cumulative_passes for r in both.rows] == [2, 4, 6, 8, 10, 12, 14, 16]


@pytest.mark.parametrize("kwargs,match", [
    (dict(cfg_scale=-0.001), r"cfg_scale must be in \[0, 50\]"),
    (dict(cfg_scale=50.001), r"cfg_scale must be in \[0, 50\]"),
    (dict(sg_scale=-0.001), r"sg_scale must be in \[0, 20\]"),
    (dict(sg_scale=20.001), r"sg_scale must be in \[0, 20\]"),
    (dict(cfg_interval=(-0.1, 0.5)), r"cfg_interval must be in \[0, 1\]"),
    (dict(cfg_interval=(0.1, 1.01)), r"cfg_interval must be in \[0, 1\]"),
    (dict(sg_interval=(0.5, 0.4)), "sg_interval needs t_lo < t_hi"),
    (dict(cfg_interval=(0.3, 0.3)), "cfg_interval needs t_lo < t_hi"),
    (dict(cfg_interval=(0.1, 0.2, 0.3)), "cfg_interval must be 2 numbers"),
    (dict(cfg_schedule="cosine"), "valid: constant, linear"),
    (dict(cfg_mode="null"), "valid: '', mask, fake"),
    (dict(cfg_scale=float("nan")), "finite"),
])
def test_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GuidanceConfig(**kwargs)


def test_range_ends_are_allowed():
    for kwargs in (dict(cfg_scale=0.0), dict(cfg_scale=50.0), dict(sg_scale=20.0), dict(cfg_interval=(0.0, 1.0)),
                   dict(sg_interval=(0.999, 1.0)), dict(cfg_interval=[0.1, 0.3])):
        GuidanceConfig(**kwargs)
    assert GuidanceConfig(cfg_interval=[0.1, 0.3]).cfg_interval == (0.1, 0.3)  # JSON lists become tuples


def test_guided_logits_exact_values():
    """The categorical head's guided logits are, value by value, cond + (w - 1)(cond - null) for CFG and
    (1 + s) cond - s smooth for self-guidance (both terms together: their sum), and the confidence it
    returns is the guided log-probability of the sampled code."""
    from emigm.core.guidance import Term
    from emigm.nn.categorical_head import CategoricalHead

    torch.manual_seed(0)
    head = CategoricalHead(6, 5)
    z, z_null, z_smooth = torch.randn(3, 4, 6).unbind(0)
    cond, null, smooth = head.logits(z), head.logits(z_null), head.logits(z_smooth)
    w, s = torch.tensor([3.0, 1.5, 4.0, 2.0]), 0.7
    got = head.guided_logits(z, [Term("cfg", z_null, w - 1), Term("self-guidance", z_smooth, torch.full((4,), s))])
    want = cond + (w - 1)[:, None] * (cond - null) + s * (cond - smooth)
    assert torch.allclose(got, want, atol=1e-5)
    only_sg = head.guided_logits(z, [Term("self-guidance", z_smooth, torch.full((4,), s))])
    assert torch.allclose(only_sg, (1 + s) * cond - s * smooth, atol=1e-5)
    u = torch.rand(4, 5, generator=torch.Generator().manual_seed(1))
    codes, score, logp = head.sample(z, lambda i: u, guides=[Term("cfg", z_null, w - 1)], temperature=1.0)
    guided = cond + (w - 1)[:, None] * (cond - null)
    assert torch.equal(codes, (torch.log_softmax(guided, -1) - torch.log(-torch.log(u))).argmax(-1))
    assert torch.allclose(logp, torch.log_softmax(guided, -1).gather(1, codes[:, None]).squeeze(1), atol=1e-5)
    assert torch.equal(score, logp)  # no order score given: the score is the code's guided log-probability
