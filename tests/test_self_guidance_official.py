"""Self-guidance, recipe "official" (the public code, point by point) beside recipe "ours": the error-token
count and positions, the double-softmax codes, the loss positions, the regulariser's pass, the base's
seeded dropout, the masked class slot, the doubled value bias, the init, resume, and "ours" unchanged."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from emigm.cli import main as cli
from emigm.core.fields import FieldError
from emigm.core.masking import draw_mask
from emigm.core.presets import get_preset
from emigm.io.exports import save_export
from emigm.nn.blocks import Attention
from emigm.nn.model import MaskedGenerator
from emigm.nn.smoother import Smoother, SmootherConfig, check_base, config_for
from emigm.train.smoother import auxiliary_loss, base_dropout, official_corrupt, official_error_codes, official_loss


def make(preset: str = "test-tiny-vq", seed: int = 0, **backbone) -> MaskedGenerator:
    cfg = get_preset(preset)
    if preset == "test-tiny-vq":
        backbone.setdefault("mae", False)  # MaskGIT: a plain bidirectional transformer
    cfg = replace(cfg, backbone=replace(cfg.backbone, **backbone))
    torch.manual_seed(seed)
    model = MaskedGenerator(cfg).eval().requires_grad_(False)
    for m in model.modules():  # zero-init linears (the diffusion head's outputs): wake them
        if isinstance(m, torch.nn.Linear) and not m.weight.any():
            torch.nn.init.normal_(m.weight, std=0.02)
    return model


def official(model: MaskedGenerator, seed: int = 1, **overrides) -> Smoother:
    torch.manual_seed(seed)
    return Smoother(config_for(model, "official", **overrides))


def batch(model: MaskedGenerator, n: int = 6, seed: int = 3, min_visible: int = 0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, model.head.codebook_size, (n, model.num_tokens), generator=g)
    mask = draw_mask(model.cfg.masking, n, model.num_tokens, generator=g).mask
    if min_visible:  # keep the first min_visible positions visible in every row
        mask[:, :min_visible] = False
    return tokens, mask, torch.arange(n) % 10


# ----------------------------------------------------------------------------- config


def test_recipe_official_sets_the_public_loss_positions_and_refuses_others():
    model = make()
    cfg = config_for(model, "official")
    assert (cfg.recipe, cfg.loss_positions) == ("official", "replaced")
    assert config_for(model).recipe == "ours" and config_for(model).loss_positions == "masked"
    with pytest.raises(FieldError, match="loss_positions must be 'replaced' with recipe official"):
        replace(cfg, loss_positions="masked")
    with pytest.raises(ValueError, match="recipe must be one of|valid: ours, official"):
        SmootherConfig(recipe="nope")
    with pytest.raises(ValueError, match="categorical heads only"):
        check_base(make("test-tiny"), replace(config_for(make("test-tiny")), recipe="official",
                                              loss_positions="replaced"))


def test_official_init_is_truncated_normal_not_the_identity():
    model = make()
    sm = official(model)
    D = model.cfg.backbone.width
    assert torch.equal(sm.channel, torch.eye(D))  # P starts at the identity in both recipes
    for w in [sm.anchor.weight, sm.anchor_proj.weight, *(b.down.weight for b in sm.feedback),
              *(b.out.weight for b in sm.feedback)]:
        # trunc_normal_(std=0.02) with torch's default cut at +-2 (absolute, as the public code calls it)
        w = w.detach()
        assert 0.015 < float(w.std()) < 0.025 and abs(float(w.mean())) < 0.005
    assert not sm.anchor_proj.bias.any() and sm.anchor_norm.eps == 1e-5


# ----------------------------------------------------------------------------- error tokens


def test_official_error_count_is_round_of_the_visible_count():
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(2000, 16, generator=g) < torch.rand(2000, 1, generator=g)  # every visible count 0..16
    mask[:50] = True  # images with no visible token
    tokens, codes = torch.zeros(2000, 16, dtype=torch.long), torch.ones(2000, 16, dtype=torch.long)
    cfg = config_for(make(), "official")
    out, replaced, after = official_corrupt(tokens, mask, codes, cfg, torch.Generator().manual_seed(1))
    visible = (~mask).sum(1)
    want = torch.tensor([max(1, round(0.3 * int(v))) for v in visible])  # Python round: half to even, as torch
    assert torch.equal(replaced.sum(1), want)
    assert {int(v) for v in visible} >= {0, 5, 15}  # 0.3 x 5 = 1.5 -> 2, 0.3 x 15 = 4.5 -> 4 are exercised
    some = visible > 0
    assert not (replaced[some] & mask[some]).any()  # with a visible token, only visible ones are replaced
    none = ~some
    assert torch.equal(replaced[none].sum(1), torch.ones(int(none.sum()), dtype=torch.long))
    assert not (after & replaced).any() and torch.equal(after | replaced, mask | replaced)  # replaced = visible
    assert torch.equal(out[replaced], codes[replaced]) and torch.equal(out[~replaced], tokens[~replaced])


def test_official_error_positions_are_uniform_among_the_visible():
    n = 6000
    mask = torch.ones(n, 16, dtype=torch.bool)
    visible_at = torch.tensor([0, 3, 4, 7, 9, 10, 12, 15, 1, 6])  # 10 visible -> 3 replaced
    mask[:, visible_at] = False
    tokens = torch.zeros(n, 16, dtype=torch.long)
    cfg = config_for(make(), "official")
    _, replaced, _ = official_corrupt(tokens, mask, tokens + 1, cfg, torch.Generator().manual_seed(2))
    hits = replaced.float().sum(0)
    assert hits[mask[0]].sum() == 0
    freq = hits[visible_at] / n  # each visible position: 3/10, sd sqrt(0.21 / n) ~ 0.006
    assert (freq - 0.3).abs().max() < 0.03, freq


def test_official_codes_follow_the_double_softmax_of_the_base_prediction():
    model = make()
    with torch.no_grad():  # a peaked base prediction, so softmax(p) differs clearly from uniform and from p
        model.head.proj.weight.mul_(300.0)
    n = 4000
    labels = torch.full((n,), 3)
    codes = official_error_codes(model, labels, torch.Generator().manual_seed(0))  # (n, L)
    with torch.no_grad():
        tokens, mask = torch.zeros(1, 16, dtype=torch.long), torch.ones(1, 16, dtype=torch.bool)
        p = model.head.logits(model(tokens, mask, model.condition(labels[:1])))[0].softmax(-1)  # (L, K)
    q = p.softmax(-1)
    K = q.shape[-1]
    assert float(p.max(-1).values.min()) > 0.9  # the prediction is peaked...
    emp = F.one_hot(codes, K).float().mean(0)  # (L, K) empirical frequencies
    tv = 0.5 * (emp - q).abs().sum(-1)
    assert float(tv.max()) < 0.06, tv  # ...and the codes follow softmax(p)
    assert float((0.5 * (emp - p).abs().sum(-1)).min()) > 0.5  # not p itself
    uniform = torch.full_like(q, 1.0 / K)
    assert float((0.5 * (emp - uniform).abs().sum(-1)).min()) > 0.03  # nor uniform codes


# ----------------------------------------------------------------------------- the loss


def test_official_loss_ignores_the_non_replaced_positions():
    """Targets at masked (not replaced) positions change the loss of recipe ours, never the official's."""
    model = make()
    tokens, mask, labels = batch(model, min_visible=4)  # every row has visible tokens: only they are replaced
    other = torch.where(mask, (tokens + 5) % 16, tokens)
    sm = official(model)
    a = official_loss(sm, model, tokens, mask, labels, torch.Generator().manual_seed(7))
    b = official_loss(sm, model, other, mask, labels, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    c = official_loss(sm, model, (tokens + 5) % 16, mask, labels, torch.Generator().manual_seed(7))
    assert not torch.equal(a, c)  # the replaced positions' targets (and the visible input) do count
    ours = Smoother(config_for(model))
    x = auxiliary_loss(ours, model, tokens, mask, labels, torch.Generator().manual_seed(7))
    y = auxiliary_loss(ours, model, other, mask, labels, torch.Generator().manual_seed(7))
    assert not torch.equal(x, y)


def _official_by_hand(sm, model, tokens, mask, labels, seed):
    """official_loss's steps, one by one, with the same generator: (ce, pass 1, pass 2)."""
    g = torch.Generator().manual_seed(seed)
    with base_dropout(model, g):
        codes = official_error_codes(model, labels, g)
        corrupted, replaced, after = official_corrupt(tokens, mask, codes, sm.cfg, g)
        with torch.no_grad():
            first = model.features(corrupted, after, model.condition(labels), record=True)
        second = sm.smooth_features(model, first.hidden, labels, record=True)
    logits = model.head.logits(model.to_z(second.hidden)[replaced])
    return F.cross_entropy(logits, tokens[replaced], label_smoothing=0.1), first, second


def test_official_regulariser_reads_the_second_pass():
    model = make()
    tokens, mask, labels = batch(model)
    sm = official(model)
    loss = official_loss(sm, model, tokens, mask, labels, torch.Generator().manual_seed(5))
    ce, first, second = _official_by_hand(sm, model, tokens, mask, labels, 5)
    var2, var1 = sm.var_loss(second.layer_io), sm.var_loss(first.layer_io)
    assert abs(float((var2 - var1).detach())) > 1e-3  # the two passes' regularisers differ
    torch.testing.assert_close(loss, ce + 0.1 * var2, rtol=1e-6, atol=1e-7)
    sm0 = official(model, var_weight=0.0)
    torch.testing.assert_close(official_loss(sm0, model, tokens, mask, labels, torch.Generator().manual_seed(5)), ce,
                               rtol=1e-6, atol=1e-7)


def test_official_second_pass_masks_the_class_slot_and_doubles_the_value_bias():
    model = make(seed=2)
    with torch.no_grad():  # the value bias must not be zero for the doubled bias to show
        for block in model.layers:
            block.attn.qkv.bias.normal_(std=0.1)
    labels = torch.tensor([1, 8])
    B, L = 2, model.num_tokens
    tokens, mask = torch.zeros(B, L, dtype=torch.long), torch.ones(B, L, dtype=torch.bool)
    feats = lambda cond, **kw: model.features(tokens, mask, cond, record=True, **kw)  # noqa: E731
    a = feats(model.condition(labels), mask_buffer=True)
    b = feats(model.condition(labels.flip(0)), mask_buffer=True)
    assert torch.equal(a.hidden, b.hidden)  # the class slot's content no longer depends on the class
    first_in = a.layer_io[0][0]  # layer 0's input: every slot and position carries the raw mask token
    torch.testing.assert_close(first_in, model.mask_token.view(1, 1, -1).expand_as(first_in))
    plain = feats(model.condition(labels, torch.ones(B, dtype=torch.bool)))
    assert not torch.allclose(plain.hidden, a.hidden)  # ours: the null class through the embedding's LayerNorm
    # the official module's pass 2 is exactly that, with the doubled value bias
    sm = official(model)
    with torch.no_grad():
        hidden = model.features(torch.randint(0, 16, (B, L)), torch.rand(B, L) < 0.5, model.condition(labels)).hidden
        got = sm.smooth_features(model, hidden, labels).hidden
        td = sm.top_down(sm.select(hidden, labels))
        want = model.features(tokens, mask, model.condition(labels.flip(0)), td=td, mask_buffer=True, td_bias=True)
        no_bias = model.features(tokens, mask, model.condition(labels), td=td, mask_buffer=True)
    torch.testing.assert_close(got, want.hidden)
    assert not torch.allclose(got, no_bias.hidden)


def test_value_bias_is_added_twice_with_td_bias():
    torch.manual_seed(0)
    attn = Attention(8, 2).eval()
    with torch.no_grad():
        attn.qkv.bias.normal_()
    x, td = torch.randn(1, 5, 8), torch.randn(1, 5, 8)
    w_v, b_v = attn.qkv.weight[16:], attn.qkv.bias[16:]
    # td_bias with td equals no td_bias with td + W_v^-1 b_v (W_v is invertible here)
    shift = torch.linalg.solve(w_v, b_v)
    torch.testing.assert_close(attn(x, td=td, td_bias=True), attn(x, td=td + shift), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(attn(x, td=td, td_bias=True), attn(x, td=td))


# ----------------------------------------------------------------------------- dropout and resume


def test_official_base_dropout_is_active_seeded_and_leaves_the_global_rng():
    model = make(proj_drop=0.3, attn_drop=0.3)
    tokens, mask, labels = batch(model)
    sm = official(model)
    state = torch.get_rng_state()
    a = official_loss(sm, model, tokens, mask, labels, torch.Generator().manual_seed(11))
    assert torch.equal(torch.get_rng_state(), state) and not model.training  # restored
    torch.manual_seed(12345)  # another global RNG state: the same loss (the masks come from the generator)
    b = official_loss(sm, model, tokens, mask, labels, torch.Generator().manual_seed(11))
    c = official_loss(sm, model, tokens, mask, labels, torch.Generator().manual_seed(12))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # active: the same draws through the same weights without dropout give another loss
    ce, _, second = _official_by_hand(sm, model, tokens, mask, labels, 11)
    torch.testing.assert_close(a, ce + 0.1 * sm.var_loss(second.layer_io), rtol=1e-6, atol=1e-7)
    no_drop = make(proj_drop=0.0, attn_drop=0.0)
    no_drop.load_state_dict(model.state_dict())
    d = official_loss(official(no_drop), no_drop, tokens, mask, labels, torch.Generator().manual_seed(11))
    assert not torch.allclose(a, d)


def _tiny_base(tmp_path, **backbone):
    from emigm.train.tokenizer import TokenizerTrainConfig, train_tokenizer
    vq_dir = tmp_path / "vq"
    if not vq_dir.exists():
        train_tokenizer(TokenizerTrainConfig(kind="vq", steps=2, batch_size=8, codebook_size=16), vq_dir,
                        tmp_path / "vq-run", limit=64, progress=False)
    cfg = get_preset("test-tiny-vq")
    cfg = replace(cfg, tokenizer=replace(cfg.tokenizer, image_size=28, path=str(vq_dir)),
                  backbone=replace(cfg.backbone, mae=False, **backbone),
                  data=replace(cfg.data, name="synthetic", image_size=28))
    torch.manual_seed(0)
    export = tmp_path / "base"
    save_export(MaskedGenerator(cfg), cfg, export)
    return export


@pytest.mark.needs_fashion_mnist
def test_official_resume_is_exact_with_base_dropout(tmp_path, capsys):
    """train-sg --smoother.recipe official: 2 + 2 steps (resumed) equal 4 steps, the base's dropout on."""
    export = _tiny_base(tmp_path, proj_drop=0.2, attn_drop=0.2)
    args = ["train-sg", "--base", str(export), "--no-progress", "--device", "cpu", "--smoother.recipe", "official",
            "--train.steps", "4", "--train.warmup_steps", "1", "--train.batch_size", "8",
            "--train.ckpt_every", "2", "--train.log_every", "2"]

    def run(*extra: str) -> int:
        torch.manual_seed(0)  # as a fresh process: the module's init draws from the global RNG (both recipes)
        return cli.main(args + list(extra))

    assert run("--out-dir", str(tmp_path / "a")) == 0
    assert run("--out-dir", str(tmp_path / "b"), "--max-steps", "2") == 0
    torch.manual_seed(99)  # the resumed process's global RNG does not matter: the dropout masks are seeded
    assert cli.main(args + ["--out-dir", str(tmp_path / "b")]) == 0
    wa = (tmp_path / "a" / "export" / "model.safetensors").read_bytes()
    assert wa == (tmp_path / "b" / "export" / "model.safetensors").read_bytes()
    assert '"recipe": "official"' in (tmp_path / "a" / "export" / "config.json").read_text()
    capsys.readouterr()
    # a contradicting loss position is one line
    code = cli.main(args + ["--out-dir", str(tmp_path / "d"), "--smoother.loss_positions", "masked", "--dry-run"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "smoother.loss_positions must be 'replaced'" in err, err


# ----------------------------------------------------------------------------- ours unchanged


def test_recipe_ours_loss_is_unchanged():
    """Recipe ours: the loss, its gradient and the generator draws it consumes, pinned from the code before
    the recipe option existed (commit 2f8e77d; equal bit for bit there on the same machine)."""
    pinned = {"test-tiny-vq": ("0x1.86ea9c0000000p+1", "0x1.78dec4db0a6f7p-3", 1300636228),
              "test-tiny": ("0x1.7eaef60000000p+3", "0x1.1daed9956291ap-4", 329595185)}
    for preset, (loss_hex, grad_hex, next_draw) in pinned.items():
        model = make(preset)
        torch.manual_seed(1)
        sm = Smoother(config_for(model))
        with torch.no_grad():
            for p in sm.parameters():
                p.add_(0.05 * torch.randn_like(p))
        g = torch.Generator().manual_seed(3)
        tokens = (torch.randint(0, 16, (6, 16), generator=g) if model.discrete
                  else torch.randn(6, 16, 4, generator=g))
        mask = draw_mask(model.cfg.masking, 6, 16, generator=g).mask
        loss = auxiliary_loss(sm, model, tokens, mask, torch.arange(6) % 10, g)
        loss.backward()
        gn = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in sm.parameters()))
        assert loss.item() == pytest.approx(float.fromhex(loss_hex), rel=1e-6)
        assert float(gn) == pytest.approx(float.fromhex(grad_hex), rel=1e-5)
        assert int(torch.randint(0, 2 ** 31, (1,), generator=g)) == next_draw  # the same draws consumed
