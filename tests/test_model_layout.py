"""The backbone's parameter names and shapes follow the official eMIGM / MAR checkpoints."""
from dataclasses import replace

import pytest
import torch

from emigm.core.presets import get_preset
from emigm.nn.model import MaskedGenerator


def meta_model(name, **backbone):
    cfg = get_preset(name)
    if backbone:
        cfg = replace(cfg, backbone=replace(cfg.backbone, **backbone))
    with torch.device("meta"):
        return MaskedGenerator(cfg)


@pytest.mark.parametrize("name,millions", [("in256-xs", 69.0), ("in256-s", 96.6), ("in256-b", 207.9),
                                           ("in256-l", 478.3), ("in256-h", 942.4)])
def test_paper_presets_have_the_published_parameter_counts(name, millions):
    model = meta_model(name)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 1) == millions


def test_b_preset_names_and_shapes():
    sd = meta_model("in256-b").state_dict()
    L, Bf, D, W, C = 256, 64, 768, 1024, 16
    expected = {
        "mask_token": (1, D),  # CFG with mask: the null class and the decoder mask token are one vector
        "class_emb.weight": (1000, D),
        "z_proj.weight": (D, C), "z_proj.bias": (D,), "z_proj_ln.weight": (D,),
        "encoder_pos_embed_learned": (1, L + Bf, D), "decoder_pos_embed_learned": (1, L + Bf, D),
        "diffusion_pos_embed_learned": (1, L, D),
        "encoder_blocks.11.attn.qkv.weight": (3 * D, D), "encoder_blocks.11.attn.qkv.bias": (3 * D,),
        "encoder_blocks.0.attn.proj.weight": (D, D), "encoder_blocks.0.norm1.weight": (D,),
        "encoder_blocks.0.norm2.bias": (D,), "encoder_blocks.0.mlp.fc1.weight": (4 * D, D),
        "encoder_blocks.0.mlp.fc2.weight": (D, 4 * D), "decoder_blocks.11.mlp.fc2.bias": (D,),
        "encoder_norm.weight": (D,), "decoder_embed.weight": (D, D), "decoder_norm.bias": (D,),
        "diffloss.net.time_embed.mlp.0.weight": (W, 256), "diffloss.net.time_embed.mlp.2.weight": (W, W),
        "diffloss.net.cond_embed.weight": (W, D), "diffloss.net.input_proj.weight": (W, C),
        "diffloss.net.res_blocks.5.in_ln.weight": (W,), "diffloss.net.res_blocks.5.mlp.0.weight": (W, W),
        "diffloss.net.res_blocks.5.mlp.2.weight": (W, W), "diffloss.net.res_blocks.5.adaLN_modulation.1.weight": (3 * W, W),
        "diffloss.net.final_layer.linear.weight": (2 * C, W),
        "diffloss.net.final_layer.adaLN_modulation.1.weight": (2 * W, W),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    assert "fake_latent" not in sd and "encoder_blocks.12.norm1.weight" not in sd
    assert "diffloss.net.res_blocks.6.in_ln.weight" not in sd


def test_fake_class_mode_has_separate_vectors_like_mar():
    sd = meta_model("in256-b", null_mode="fake").state_dict()
    assert tuple(sd["fake_latent"].shape) == (1, 768) and tuple(sd["mask_token"].shape) == (1, 1, 768)


def test_discrete_model_uses_token_embedding_and_categorical_head():
    sd = MaskedGenerator(get_preset("test-tiny-vq")).state_dict()
    assert "token_embed.weight" in sd and "token_head.proj.weight" in sd and "z_proj.weight" not in sd
