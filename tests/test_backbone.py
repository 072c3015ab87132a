"""The backbone's forward against the reference computation: the non-MAE ablation and dropout."""
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from emigm.core.config import BackboneConfig
from emigm.core.presets import PRESETS, get_preset
from emigm.nn.blocks import Attention, Mlp
from emigm.nn.model import MaskedGenerator


def random_model(seed: int = 0, **backbone) -> MaskedGenerator:
    """test-tiny (16 tokens of 4 channels, 2 buffer slots) with every parameter random."""
    cfg = get_preset("test-tiny")
    cfg = replace(cfg, backbone=replace(cfg.backbone, encoder_depth=2, decoder_depth=1, **backbone))
    model = MaskedGenerator(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return model


# ----------------------------------------------------------------------------- non-MAE ablation


def _ln(P, name, x):
    return F.layer_norm(x, x.shape[-1:], P[name + ".weight"], P[name + ".bias"], eps=1e-6)


def _lin(P, name, x):
    return x @ P[name + ".weight"].T + P[name + ".bias"]


def _vit_block(P, pre, x, heads):
    """timm's pre-norm ViT block: softmax(q k^T / sqrt(d)) v, exact GELU, mlp ratio from the weights."""
    B, S, D = x.shape
    q, k, v = _lin(P, pre + "attn.qkv", _ln(P, pre + "norm1", x)).reshape(B, S, 3, heads, D // heads).permute(2, 0, 3, 1, 4)
    a = (q @ k.transpose(-2, -1) * (D // heads) ** -0.5).softmax(-1)
    x = x + _lin(P, pre + "attn.proj", (a @ v).transpose(1, 2).reshape(B, S, D))
    return x + _lin(P, pre + "mlp.fc2", F.gelu(_lin(P, pre + "mlp.fc1", _ln(P, pre + "norm2", x))))


def reference_no_mae(model, tokens, mask, labels):
    """The reference's use_mae=False forward, written out: class embedding in the buffer slots, position
    embedding, z_proj_ln, THEN masked positions replaced by the raw mask token; encoder on every
    position, encoder_norm, decoder_embed, decoder position embedding, decoder, decoder_norm, drop the
    buffer, add the diffusion position embedding. tokens (B, L, C), mask (B, L) bool -> (B, L, Dd)."""
    P = dict(model.named_parameters())
    bb, Bf = model.cfg.backbone, model.buffer_size
    B = tokens.shape[0]
    x = _lin(P, "z_proj", tokens)
    x = torch.cat([P["class_emb.weight"][labels][:, None].expand(B, Bf, -1), x], dim=1)
    x = _ln(P, "z_proj_ln", x + P["encoder_pos_embed_learned"])
    masked = torch.cat([torch.zeros(B, Bf, dtype=torch.bool), mask], dim=1)
    x = x.clone()
    x[masked] = P["mask_token"].reshape(-1)
    for i in range(bb.encoder_depth):
        x = _vit_block(P, f"encoder_blocks.{i}.", x, bb.num_heads)
    x = _lin(P, "decoder_embed", _ln(P, "encoder_norm", x)) + P["decoder_pos_embed_learned"]
    for i in range(bb.decoder_depth):
        x = _vit_block(P, f"decoder_blocks.{i}.", x, bb.decoder_num_heads)
    return _ln(P, "decoder_norm", x)[:, Bf:] + P["diffusion_pos_embed_learned"]


@pytest.mark.parametrize("null_mode", ["mask", "fake"])
def test_non_mae_forward_matches_the_reference(null_mode):
    model = random_model(mae=False, null_mode=null_mode).eval()
    g = torch.Generator().manual_seed(1)
    tokens = torch.randn(3, 16, 4, generator=g)
    mask = torch.rand(3, 16, generator=g) < torch.tensor([[0.2], [0.5], [0.9]])
    labels = torch.tensor([0, 4, 9])
    with torch.no_grad():
        got = model(tokens, mask, model.condition(labels))
        want = reference_no_mae(model, tokens, mask, labels)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- dropout


def test_dropout_defaults_and_paper_presets():
    assert BackboneConfig().attn_drop == 0.0 and BackboneConfig().proj_drop == 0.0
    paper = [n for n in PRESETS if n.startswith(("in256-", "in512-"))]
    assert len(paper) == 6
    for name in paper:
        assert (PRESETS[name].backbone.attn_drop, PRESETS[name].backbone.proj_drop) == (0.1, 0.1), name


@pytest.mark.parametrize("mae", [True, False])
def test_eval_mode_has_no_dropout(mae):
    """In eval mode a model with dropout is deterministic and equals the same weights without dropout."""
    model = random_model(mae=mae, attn_drop=0.3, proj_drop=0.3).eval()
    plain = random_model(mae=mae).eval()
    plain.load_state_dict(model.state_dict())
    g = torch.Generator().manual_seed(2)
    tokens, mask = torch.randn(2, 16, 4, generator=g), torch.rand(2, 16, generator=g) < 0.5
    cond = model.condition(torch.tensor([1, 2]))
    with torch.no_grad():
        a, b, c = model(tokens, mask, cond), model(tokens, mask, cond), plain(tokens, mask, cond)
    assert torch.equal(a, b)
    torch.testing.assert_close(a, c, rtol=0, atol=0)


@pytest.mark.parametrize("attn_drop,proj_drop", [(0.0, 0.0), (0.2, 0.0), (0.0, 0.2)])
def test_train_mode_applies_dropout(attn_drop, proj_drop):
    model = random_model(attn_drop=attn_drop, proj_drop=proj_drop).train()
    g = torch.Generator().manual_seed(3)
    tokens, mask = torch.randn(2, 16, 4, generator=g), torch.rand(2, 16, generator=g) < 0.5
    cond = model.condition(torch.tensor([1, 2]))
    with torch.no_grad():
        torch.manual_seed(0)
        a = model(tokens, mask, cond)
        torch.manual_seed(1)
        b = model(tokens, mask, cond)
    assert torch.equal(a, b) == (attn_drop == proj_drop == 0.0)


def test_dropout_sites_are_the_reference_ones():
    """attn_drop on the attention probabilities, proj_drop after attn.proj and after both MLP layers:
    the blocks equal the computation written out with F.dropout drawing the same global RNG.
    (SDPA's CPU path with dropout draws its mask as F.dropout on the probabilities does.)"""
    x = torch.randn(3, 5, 8, generator=torch.Generator().manual_seed(4))
    attn = Attention(8, 2, attn_drop=0.3, proj_drop=0.2).train()
    torch.manual_seed(5)
    got = attn(x)
    torch.manual_seed(5)
    q, k, v = attn.qkv(x).view(3, 5, 3, 2, 4).permute(2, 0, 3, 1, 4)
    probs = F.dropout((q @ k.transpose(-2, -1) * 4 ** -0.5).softmax(-1), 0.3)
    want = F.dropout(attn.proj((probs @ v).transpose(1, 2).reshape(3, 5, 8)), 0.2)
    torch.testing.assert_close(got, want)
    mlp = Mlp(8, 32, drop=0.25).train()
    torch.manual_seed(6)
    got = mlp(x)
    torch.manual_seed(6)
    torch.testing.assert_close(got, F.dropout(mlp.fc2(F.dropout(F.gelu(mlp.fc1(x)), 0.25)), 0.25))
