"""Guidance weights through the GUIDES registry, on the categorical head's logits and in the sampler: the
terms the registry yields give, value by value, the paper forms written out here (CFG: null + w (cond -
null); self-guidance, Hur et al. Eq. 5: (1 + s) cond - s smooth; both: their sum), and the linear CFG
ramp w_k = 1 + (w - 1) x (fraction of tokens revealed after step k) is what the sampler reports and what
the step's guided logits use, at every step."""
from __future__ import annotations

import pytest
import torch
from seam_models import tiny_maskgit, tiny_model

from emigm.core.guidance import GUIDES, GuidanceConfig, Term
from emigm.nn.categorical_head import CategoricalHead
from emigm.sample.options import AnatomyOptions
from emigm.sample.sampler import SamplerConfig, sample_steps


def registry_terms(g: GuidanceConfig, s: float, frac: torch.Tensor, refs: dict[str, torch.Tensor]) -> list[Term]:
    """The terms of the guides active at time s, built only from the registry's entries."""
    rows = frac.shape[0]
    out = []
    for guide in g.guides_at(s):
        w = guide.weight(g, frac)
        w = w if isinstance(w, torch.Tensor) else torch.full((rows,), w)
        out.append(Term(guide.name, refs[guide.reference], w))
    return out


@pytest.fixture(scope="module")
def head_and_logits():
    torch.manual_seed(3)
    head = CategoricalHead(8, 6).eval()
    z, z_null, z_smooth = torch.randn(3, 5, 8).unbind(0)
    with torch.no_grad():
        return head, (z, z_null, z_smooth), tuple(head.logits(v) for v in (z, z_null, z_smooth))


@pytest.mark.parametrize("w,s,schedule", [(3.0, 0.0, "constant"), (1.0, 0.8, "constant"), (2.5, 1.5, "constant"),
                                          (4.0, 0.0, "linear"), (4.0, 0.6, "linear"), (0.5, 0.0, "constant")])
def test_registry_terms_give_the_paper_forms_on_logits(head_and_logits, w, s, schedule):
    head, (z, z_null, z_smooth), (cond, null, smooth) = head_and_logits
    g = GuidanceConfig(cfg_scale=w, sg_scale=s, cfg_schedule=schedule)
    frac = torch.tensor([0.0, 0.25, 0.5, 0.8, 1.0])
    terms = registry_terms(g, 0.5, frac, {"null": z_null, "smoothed": z_smooth})
    assert [t.name for t in terms] == [n for n, on in (("cfg", w != 1.0), ("self-guidance", s > 0)) if on]
    w_k = (1 + (w - 1) * frac if schedule == "linear" else torch.full((5,), w))[:, None]
    want = null + w_k * (cond - null)  # eps_u + w (eps_c - eps_u), on the logits
    if s > 0:
        want = want + ((1 + s) * cond - s * smooth) - cond  # the self-guidance form, added as a second term
    with torch.no_grad():
        got = head.guided_logits(z, terms)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_registry_weights_by_hand():
    g = GuidanceConfig(cfg_scale=3.0, sg_scale=0.7, cfg_schedule="linear", cfg_interval=(0.2, 0.6),
                       sg_interval=(0.0, 0.4))
    frac = torch.tensor([0.0, 0.5, 1.0])
    torch.testing.assert_close(GUIDES["cfg"].weight(g, frac), torch.tensor([0.0, 1.0, 2.0]))  # (1 + 2 f) - 1
    assert GUIDES["cfg"].weight(g, 0.25) == pytest.approx(0.5)
    assert GUIDES["self-guidance"].weight(g, frac) == 0.7 and GUIDES["self-guidance"].weight(g, 0.9) == 0.7
    constant = GuidanceConfig(cfg_scale=3.0)
    assert GUIDES["cfg"].weight(constant, 0.0) == 2.0 and GUIDES["cfg"].weight(constant, 1.0) == 2.0
    # which guides run: (t_lo, t_hi] on the time after the step
    assert [x.name for x in g.guides_at(0.6)] == ["cfg"]
    assert [x.name for x in g.guides_at(0.3)] == ["cfg", "self-guidance"]
    assert [x.name for x in g.guides_at(0.2)] == ["self-guidance"]
    assert g.guides_at(0.7) == ()


def test_linear_cfg_ramp_in_the_sampler_at_every_step():
    """cfg_scale of each step = 1 + (w - 1) x (revealed after the step) / L inside the interval, 1 outside."""
    model = tiny_model()
    L, w = model.num_tokens, 4.0
    g = GuidanceConfig(cfg_scale=w, cfg_schedule="linear", cfg_interval=(0.1, 0.9))
    states = list(sample_steps(model, [1, 6, 3], [5, 6, 7], SamplerConfig(num_steps=8, head_steps=2), g))
    active = [st.step for st in states if st.cfg_active]
    assert active == [st.step for st in states if 0.1 < st.s <= 0.9] and 2 <= len(active) < len(states)
    for st in states:
        frac = 1.0 - st.mask_after.sum(1).double() / L
        want = 1.0 + (w - 1.0) * frac if 0.1 < st.s <= 0.9 else torch.ones(3, dtype=torch.float64)
        torch.testing.assert_close(st.cfg_scale.double(), want, rtol=0, atol=1e-6)
    ramp = [float(st.cfg_scale[0]) for st in states if st.cfg_active]
    assert ramp == sorted(ramp) and ramp[-1] > ramp[0]  # it rises as tokens are revealed


def test_linear_cfg_ramp_reaches_the_guided_logits():
    """In the MaskGIT-like run with CFG (linear) and self-guidance, each step's combined logits are
    cond + (w_k - 1)(cond - null) + s (cond - smooth) with w_k from the revealed fraction, and the
    anatomy's weights are w_k - 1 and s."""
    nets = tiny_maskgit()
    L, w, s = nets.model.num_tokens, 3.0, 0.5
    g = GuidanceConfig(cfg_scale=w, cfg_schedule="linear", sg_scale=s, sg_interval=(0.0, 0.6))
    cfg = SamplerConfig(num_steps=6, schedule="cosine", count_rule="exact", order="random")
    states = list(sample_steps(nets, [2, 9], [11, 12], cfg, g, anatomy=AnatomyOptions()))
    assert any("self-guidance" in st.anatomy.weights for st in states)
    assert any("self-guidance" not in st.anatomy.weights for st in states)
    for st in states:
        a, m = st.anatomy, st.mask_before
        w_k = 1.0 + (w - 1.0) * (1.0 - st.mask_after.sum(1).float() / L)
        torch.testing.assert_close(a.weights["cfg"], w_k - 1.0, rtol=0, atol=1e-6)
        cond, null = a.raw["conditional"], a.raw["null"]
        want = cond + (w_k - 1.0)[:, None, None] * (cond - null)
        if 0.0 < st.s <= 0.6:
            assert float(a.weights["self-guidance"][0]) == s
            want = want + s * (cond - a.raw["smoothed"])
        else:
            assert "smoothed" not in a.raw
        torch.testing.assert_close(a.raw["combined"][m], want[m], rtol=0, atol=1e-4)
