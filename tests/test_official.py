"""Official-layout checkpoints (plain, or under model / model_ema) load into our model."""
from dataclasses import replace

import pytest
import torch

from emigm.checkpoint import CheckpointError
from emigm.config import TokenizerConfig
from emigm.model import MaskedGenerator
from emigm.official import infer_config, load_official
from emigm.presets import get_preset


def small_official(null_mode: str) -> MaskedGenerator:
    """A small model on the official layout: KL-16 latents (16 channels, 16 x 16 tokens)."""
    base = get_preset("in256-b")
    cfg = replace(base, tokenizer=TokenizerConfig(kind="kl16", image_size=256, channels=3, latent_channels=16,
                                                  stride=16, path="kl16.ckpt"),
                  backbone=replace(base.backbone, width=64, decoder_width=64, encoder_depth=2, decoder_depth=1,
                                   num_heads=1, decoder_num_heads=1, buffer_size=8, num_classes=7,
                                   null_mode=null_mode),
                  head=replace(base.head, width=32, depth=2))
    torch.manual_seed(0)
    return MaskedGenerator(cfg).eval()


@pytest.mark.parametrize("null_mode,wrap", [("mask", "model_ema"), ("fake", "model"), ("mask", None)])
def test_round_trip(tmp_path, null_mode, wrap):
    model = small_official(null_mode)
    state = model.state_dict()
    if null_mode == "mask":
        state["fake_latent"] = state["mask_token"].clone()  # the reference stores the shared vector twice
    path = tmp_path / "eMIGM_test_256_checkpoint.pth"
    torch.save({wrap: state, "epoch": 3} if wrap else state, path)
    loaded, cfg = load_official(path)
    assert cfg.backbone.null_mode == null_mode and cfg.backbone.encoder_depth == 2 and cfg.backbone.decoder_depth == 1
    assert cfg.backbone.buffer_size == 8 and cfg.backbone.num_classes == 7 and cfg.head.depth == 2
    x, mask = torch.randn(2, 256, 16), torch.rand(2, 256) < 0.5
    cond = model.condition(torch.tensor([1, 2]))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, mask, loaded.condition(torch.tensor([1, 2]))), model(x, mask, cond))


def test_ema_weights_are_preferred(tmp_path):
    model = small_official("mask")
    other = {k: v + 1 for k, v in model.state_dict().items()}
    torch.save({"model": other, "model_ema": model.state_dict()}, tmp_path / "c.pth")
    loaded, _ = load_official(tmp_path / "c.pth")
    assert torch.equal(loaded.class_emb.weight, model.class_emb.weight)


def test_bad_files_are_refused_with_the_file_named(tmp_path):
    model = small_official("mask")
    state = model.state_dict()
    del state["decoder_norm.weight"]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match=r"broken\.pth.*missing key.*decoder_norm\.weight.*unexpected key.*extra\.weight"):
        load_official(tmp_path / "broken.pth")
    (tmp_path / "cut.pth").write_bytes(open(tmp_path / "broken.pth", "rb").read()[:100])
    with pytest.raises(CheckpointError, match=r"cut\.pth"):
        load_official(tmp_path / "cut.pth")
    torch.save({"weights": [1, 2]}, tmp_path / "foreign.pth")
    with pytest.raises(CheckpointError, match="foreign.pth: expected a state dict"):
        load_official(tmp_path / "foreign.pth")
    with pytest.raises(CheckpointError, match="not found"):
        load_official(tmp_path / "missing.pth")


def test_paper_presets_are_recognised_from_shapes():
    for name in ("in256-xs", "in256-b"):
        with torch.device("meta"):
            state = MaskedGenerator(get_preset(name)).state_dict()
        cfg = infer_config(state)
        want = get_preset(name)
        assert cfg.backbone == want.backbone and cfg.head == want.head and cfg.tokenizer.num_tokens == 256


def test_cli_needs_the_vae_for_official_checkpoints(tmp_path, capsys):
    from emigm.cli import main

    torch.save({"model_ema": small_official("mask").state_dict()}, tmp_path / "eMIGM_small_test.pth")
    assert main(["sample", "--checkpoint", str(tmp_path / "eMIGM_small_test.pth"), "--device", "cpu"]) == 2
    assert "--vae" in capsys.readouterr().err
    assert main(["sample", "--checkpoint", str(tmp_path / "eMIGM_small_test.pth"), "--vae",
                 str(tmp_path / "kl16.ckpt"), "--device", "cpu"]) == 2
    assert "KL-16 VAE checkpoint (kl16.ckpt) not found" in capsys.readouterr().err
