"""The sampler's contract: every token revealed once, counts, passes, seeds, guidance equivalences."""
from dataclasses import replace

import pytest
import torch

from emigm.core.guidance import GuidanceConfig, Term
from emigm.core.presets import get_preset
from emigm.nn.model import MaskedGenerator
from emigm.sample.sampler import SamplerConfig, plan_counts, sample, sample_steps


def make(preset="test-tiny", seed=0, **backbone):
    torch.manual_seed(seed)
    cfg = get_preset(preset)
    if backbone:
        cfg = replace(cfg, backbone=replace(cfg.backbone, **backbone))
    model = MaskedGenerator(cfg).eval()
    with torch.no_grad():  # zero-initialised AdaLN layers would make every output ignore its input
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def tiny():
    return make()


@pytest.fixture(scope="module")
def tiny_vq():
    return make("test-tiny-vq")


CASES = [
    ("test-tiny", SamplerConfig(num_steps=6)),
    ("test-tiny", SamplerConfig(num_steps=5, schedule="linear", count_rule="exact", head_solver="ddpm", head_steps=5)),
    ("test-tiny", SamplerConfig(num_steps=16, schedule="cosine", head_solver="dpm2m", head_steps=4, draft=False)),
    ("test-tiny-vq", SamplerConfig(num_steps=6, order="confidence", count_rule="exact", schedule="cosine")),
    ("test-tiny-vq", SamplerConfig(num_steps=16, order="confidence", order_anneal="compound", order_temperature=25)),
    ("test-tiny-vq", SamplerConfig(num_steps=4, temperature=0.0)),
]


@pytest.mark.parametrize("preset,cfg", CASES)
def test_every_token_revealed_exactly_once(preset, cfg):
    model = make(preset)
    states = list(sample_steps(model, [0, 3, 9], [1, 2, 3], cfg, GuidanceConfig(cfg_scale=2.0)))
    assert len(states) == cfg.num_steps
    when = torch.zeros(3, model.num_tokens, dtype=torch.long)
    for st in states:
        had_masked = st.mask_before.any(1)
        assert torch.all(st.revealed.sum(1)[had_masked] >= 1)
        assert torch.all(when[st.revealed] == 0)
        when[st.revealed] = st.step + 1
        assert torch.equal(st.mask_before & ~st.revealed, st.mask_after)
    assert torch.all(when > 0) and states[-1].done


def test_at_least_one_per_step_when_tokens_allow():
    model = make()
    for st in sample_steps(model, [0] * 4, range(4), SamplerConfig(num_steps=8)):
        assert torch.all(st.revealed.sum(1) >= 1)


def test_exact_count_rule_matches_maskgit_formula():
    cfg = SamplerConfig(num_steps=8, schedule="cosine", count_rule="exact")
    counts = plan_counts(torch.arange(2), 256, cfg)
    import math
    masked, expected = 256, []
    for k in range(8):
        keep = math.floor(256 * math.cos(math.pi / 2 * (k + 1) / 8))
        keep = max(1, min(masked - 1, keep)) if k < 7 else 0
        expected.append(masked - keep)
        masked = keep
    assert counts[:, 0].tolist() == expected and counts[:, 1].tolist() == expected


def test_binomial_counts_mean_matches_expectation():
    from emigm.sample.steps import step_table
    cfg = SamplerConfig(num_steps=16)
    counts = plan_counts(torch.arange(4000), 256, cfg).double().mean(1)
    expected = torch.tensor([r.expected_revealed for r in step_table(cfg, GuidanceConfig(), 256).rows])
    # early steps are lifted by the at-least-one rule; the rest match the expectation
    assert torch.allclose(counts[6:], expected[6:].double(), rtol=0.05)
    assert counts.sum() == 256


def test_cfg_interval_pass_counts(tiny):
    g = GuidanceConfig(cfg_scale=4.0, cfg_interval=(0.1, 0.3))
    states = list(sample_steps(tiny, [1], [0], SamplerConfig(num_steps=16), g))
    assert states[-1].passes == 19
    assert [st.step + 1 for st in states if st.cfg_active] == [12, 13, 14]
    heads = tiny.head.evals("dpm", 8)
    assert states[-1].head_evals == heads * 19


def test_no_cfg_costs_one_pass_per_step(tiny):
    assert sample(tiny, [1], [0], SamplerConfig(num_steps=16)).passes == 16
    assert sample(tiny, [1], [0], SamplerConfig(num_steps=16), GuidanceConfig(cfg_scale=3.0)).passes == 32


def test_same_seed_same_reveal_order_across_guidance(tiny):
    cfg = SamplerConfig(num_steps=8)
    runs = [list(sample_steps(tiny, [2, 5], [7, 8], cfg, g)) for g in (
        GuidanceConfig(), GuidanceConfig(cfg_scale=4.0), GuidanceConfig(cfg_scale=4.0, cfg_interval=(0.1, 0.4)),
        GuidanceConfig(cfg_scale=2.0, cfg_schedule="linear"))]
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert torch.equal(a.revealed, b.revealed)
    assert not torch.allclose(runs[0][-1].tokens, runs[1][-1].tokens)


@pytest.mark.parametrize("preset", ["test-tiny", "test-tiny-vq"])
def test_batch_size_invariance(preset):
    model = make(preset)
    cfg = SamplerConfig(num_steps=6, order="confidence" if preset.endswith("vq") else "random")
    g = GuidanceConfig(cfg_scale=3.0, cfg_interval=(0.2, 0.8))
    big = sample(model, [1, 4, 7, 2], [10, 11, 12, 13], cfg, g)
    for i, (label, seed) in enumerate(zip([1, 4, 7, 2], [10, 11, 12, 13])):
        one = sample(model, [label], [seed], cfg, g)
        assert torch.equal(one.mask_after, big.mask_after[i:i + 1])
        if model.discrete:
            assert torch.equal(one.tokens[0], big.tokens[i])
        else:
            torch.testing.assert_close(one.tokens[0], big.tokens[i], atol=1e-4, rtol=1e-4)


def test_sample_equals_last_yielded_state(tiny):
    cfg = SamplerConfig(num_steps=5)
    states = list(sample_steps(tiny, [3], [4], cfg))
    last = sample(tiny, [3], [4], cfg, fast=False)
    assert torch.equal(last.tokens, states[-1].tokens) and last.passes == states[-1].passes
    # the fast path has no drafts: its head sees fewer rows, so it agrees to float rounding
    fast = sample(tiny, [3], [4], cfg)
    torch.testing.assert_close(fast.tokens, states[-1].tokens, atol=1e-5, rtol=1e-5)
    assert torch.equal(fast.revealed, states[-1].revealed) and fast.passes == states[-1].passes
    assert fast.head_evals == states[-1].head_evals and fast.draft is None


def test_yielded_states_are_never_mutated(tiny):
    gen = sample_steps(tiny, [3, 1], [4, 5], SamplerConfig(num_steps=6))
    first = next(gen)
    snap = {k: v.clone() for k, v in first.__dict__.items() if isinstance(v, torch.Tensor)}
    for _ in gen:
        pass
    for k, v in snap.items():
        assert torch.equal(getattr(first, k), v), k


def test_draft_holds_committed_and_predictions(tiny):
    states = list(sample_steps(tiny, [3], [4], SamplerConfig(num_steps=4)))
    for st in states:
        committed = ~st.mask_before
        assert torch.equal(st.draft[committed], st.tokens[committed])
        assert torch.equal(st.draft[st.revealed], st.tokens[st.revealed])
    # turning drafts off changes nothing in the result
    nodraft = sample(tiny, [3], [4], SamplerConfig(num_steps=4, draft=False))
    torch.testing.assert_close(nodraft.tokens, states[-1].tokens, atol=1e-5, rtol=1e-5)
    assert nodraft.draft is None


def test_branch_from_step_reproduces_the_rest(tiny):
    cfg = SamplerConfig(num_steps=6)
    states = list(sample_steps(tiny, [3, 6], [4, 9], cfg))
    branch = list(sample_steps(tiny, [3, 6], [4, 9], cfg, init=states[2]))
    assert [s.step for s in branch] == [3, 4, 5]
    for a, b in zip(states[3:], branch):
        assert torch.equal(a.revealed, b.revealed)
        torch.testing.assert_close(a.tokens, b.tokens)
        assert a.passes == b.passes
    other = sample(tiny, [3, 6], [4, 9], cfg, GuidanceConfig(cfg_scale=5.0), init=states[2])
    assert torch.equal(other.tokens[~states[2].mask_after], states[2].tokens[~states[2].mask_after])


def test_fixed_order(tiny):
    perm = torch.arange(16).flip(0)
    states = list(sample_steps(tiny, [0], [0], SamplerConfig(num_steps=4, order="fixed"), fixed_order=perm))
    order = torch.cat([st.revealed[0].nonzero().flatten().sort(descending=True).values for st in states])
    assert order.tolist() == list(range(15, -1, -1))


def test_scale_one_equals_no_guidance_in_the_head(tiny):
    head = tiny.head
    z = torch.randn(5, 32)
    noise = lambda i: torch.randn(5, 4, generator=torch.Generator().manual_seed(i))
    plain = head.sample(z, noise, steps=4)
    guided = head.sample(z, noise, guides=[Term("cfg", torch.randn(5, 32), torch.zeros(5))], steps=4)
    torch.testing.assert_close(plain, guided, atol=1e-5, rtol=1e-5)


def test_batched_cfg_equals_two_passes(tiny):
    """The sampler's batched branches equal separate conditional and unconditional forwards."""
    x = torch.randn(2, 16, 4)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[:, 5:] = True
    mask[1, 2] = True
    labels = torch.tensor([1, 2])
    cond = tiny.condition(labels)
    null = tiny.condition(labels, torch.ones(2, dtype=torch.bool))
    with torch.no_grad():
        both = tiny(torch.cat([x, x]), torch.cat([mask, mask]), torch.cat([cond, null]))
        c, u = tiny(x, mask, cond), tiny(x, mask, null)
    torch.testing.assert_close(both, torch.cat([c, u]), atol=1e-5, rtol=1e-5)


def test_mae_padding_matches_single_rows():
    """Rows with different visible counts are padded; each row equals its own unpadded forward."""
    model = make()
    x = torch.randn(3, 16, 4)
    mask = torch.rand(3, 16, generator=torch.Generator().manual_seed(0)) < torch.tensor([[0.2], [0.5], [0.9]])
    cond = model.condition(torch.tensor([0, 1, 2]))
    with torch.no_grad():
        batched = model(x, mask, cond)
        for i in range(3):
            torch.testing.assert_close(batched[i], model(x[i:i + 1], mask[i:i + 1], cond[i:i + 1])[0], atol=1e-5, rtol=1e-5)


def test_mae_off_and_fake_null_mode_run():
    for model in (make(mae=False), make(null_mode="fake")):
        st = sample(model, [1], [0], SamplerConfig(num_steps=3), GuidanceConfig(cfg_scale=2.0))
        assert st.done and torch.isfinite(st.tokens).all()


def test_null_mode_mismatch_is_refused(tiny):
    with pytest.raises(ValueError, match="null mode 'mask'"):
        sample(tiny, [1], [0], SamplerConfig(num_steps=2), GuidanceConfig(cfg_scale=2.0, cfg_mode="fake"))


@pytest.mark.parametrize("cls,kwargs,match", [
    (SamplerConfig, dict(num_steps=0), r"num_steps must be in \[1, 1024\], got 0"),
    (SamplerConfig, dict(schedule="sigmoid"), "valid: linear, cosine, exp"),
    (SamplerConfig, dict(order="spiral"), "valid: random, confidence, margin, entropy, halton, raster, fixed"),
    (SamplerConfig, dict(head_solver="euler"), "valid: ddpm, dpm, dpm2m"),
    (SamplerConfig, dict(temperature=-1), "temperature"),
    (SamplerConfig, dict(temperature=float("nan")), "temperature must be a finite number"),
    (SamplerConfig, dict(head_steps=100000), r"head_steps must be in \[1, 250\]"),
    (GuidanceConfig, dict(cfg_scale=-1), "cfg_scale"),
    (GuidanceConfig, dict(cfg_scale=float("inf")), "cfg_scale must be a finite number"),
    (GuidanceConfig, dict(cfg_interval=(0.5, 0.3)), "cfg_interval"),
    (GuidanceConfig, dict(cfg_interval=(0.0, 1.5)), "cfg_interval"),
    (GuidanceConfig, dict(sg_interval=(0.3, 0.3)), "sg_interval"),
])
def test_bad_settings_raise_clear_errors(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


@pytest.mark.parametrize("sampler,guidance,match", [
    (SamplerConfig(order="confidence"), GuidanceConfig(), "needs token probabilities"),
    (SamplerConfig(num_steps=17), GuidanceConfig(), "at most 16 steps"),
    (SamplerConfig(), GuidanceConfig(sg_scale=1.0), "self-guidance smoother"),
])
def test_settings_the_model_cannot_run_are_refused(tiny, sampler, guidance, match):
    with pytest.raises(ValueError, match=match):
        sample(tiny, [1], [0], sampler, guidance)


def test_bad_class_and_seed_count(tiny):
    with pytest.raises(ValueError, match=r"\[0, 9\]"):
        sample(tiny, [10], [0])
    with pytest.raises(ValueError, match="seeds"):
        sample(tiny, [1, 2], [0, 1, 2])


def test_tiny_model_loss_falls_on_toy_problem():
    """Both heads learn a toy problem: tokens that depend on the class."""
    for preset in ("test-tiny", "test-tiny-vq"):
        model = make(preset).train()
        gen = torch.Generator().manual_seed(0)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        from emigm.core.masking import draw_mask
        losses = []
        for step in range(60):
            labels = torch.randint(0, 10, (16,), generator=gen)
            if model.discrete:
                tokens = (labels[:, None] + torch.arange(16)) % 16
            else:
                tokens = ((labels[:, None, None] - 4.5) / 4.5 + torch.zeros(16, 16, 4)) * torch.linspace(-1, 1, 16)[None, :, None]
            d = draw_mask(model.cfg.masking, 16, 16, gen)
            loss = model.loss(tokens, d.mask, labels, torch.zeros(16, dtype=torch.bool), d.weight, gen)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert sum(losses[-10:]) / 10 < 0.7 * sum(losses[:10]) / 10, (preset, losses[:3], losses[-3:])


def test_a_suspended_sampler_leaves_grad_mode_alone(tiny):
    gen = sample_steps(tiny, [1], [0], SamplerConfig(num_steps=4))
    next(gen)
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
    gen.close()
