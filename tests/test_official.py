"""Official-layout checkpoints (plain, or under model / model_ema) load into our model."""
import argparse
import collections
from dataclasses import replace

import pytest
import torch

from emigm.core.config import TokenizerConfig
from emigm.core.presets import get_preset
from emigm.core.statedict import CheckpointError, load_torch
from emigm.io.official import infer_config, load_official
from emigm.nn.model import MaskedGenerator


def small_official(null_mode: str, mae: bool = True) -> MaskedGenerator:
    """A small model on the official layout: KL-16 latents (16 channels, 16 x 16 tokens)."""
    base = get_preset("in256-b")
    cfg = replace(base, tokenizer=TokenizerConfig(kind="kl16", image_size=256, channels=3, latent_channels=16,
                                                  stride=16, path="kl16.ckpt"),
                  backbone=replace(base.backbone, width=64, decoder_width=64, encoder_depth=2, decoder_depth=1,
                                   num_heads=1, decoder_num_heads=1, buffer_size=8, num_classes=7,
                                   null_mode=null_mode, mae=mae),
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
    assert cfg.backbone.mae and cfg.head.time_label == "reference"  # no saved args: MAE, as released
    assert loaded.diffloss.time_label == loaded.diffloss.diffusion.logsnr.time_label == "reference"
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
        assert cfg.backbone == want.backbone and cfg.tokenizer.num_tokens == 256
        assert cfg.head == replace(want.head, time_label="reference")  # DPM labels as the reference


def test_cli_needs_the_vae_for_official_checkpoints(tmp_path, capsys):
    from emigm.cli.main import main

    torch.save({"model_ema": small_official("mask").state_dict()}, tmp_path / "eMIGM_small_test.pth")
    assert main(["sample", "--checkpoint", str(tmp_path / "eMIGM_small_test.pth"), "--device", "cpu"]) == 2
    assert "--vae" in capsys.readouterr().err
    assert main(["sample", "--checkpoint", str(tmp_path / "eMIGM_small_test.pth"), "--vae",
                 str(tmp_path / "kl16.ckpt"), "--device", "cpu"]) == 2
    assert "KL-16 VAE checkpoint (kl16.ckpt) not found" in capsys.readouterr().err


# ----------------------------------------------------------------------------- files of the reference's training code


def training_file(model: MaskedGenerator, path, **args) -> None:
    """A checkpoint as the reference's training code saves it: model, model_ema, optimizer, scaler,
    epoch, and its argparse.Namespace of arguments."""
    state = model.state_dict()
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))])
    opt.step()
    torch.save({"model": state, "model_ema": state, "optimizer": opt.state_dict(),
                "scaler": {"scale": 65536.0, "growth_factor": 2.0, "_growth_tracker": 7}, "epoch": 799,
                "args": argparse.Namespace(model="mar_base", buffer_size=8, cfg_with_mask=True, **args)}, path)


@pytest.mark.parametrize("use_mae", [True, False, None])
def test_reference_training_file_loads_and_sets_mae_from_args(tmp_path, use_mae):
    model = small_official("mask", mae=use_mae is not False)
    path = tmp_path / "checkpoint-last.pth"
    training_file(model, path, **({} if use_mae is None else {"use_mae": use_mae}))
    ck = load_torch(path)
    assert isinstance(ck["args"], argparse.Namespace) and ck["epoch"] == 799
    loaded, cfg = load_official(path)
    assert cfg.backbone.mae is (use_mae is not False) and cfg.head.time_label == "reference"
    x, mask = torch.randn(2, 256, 16), torch.rand(2, 256) < 0.5
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, mask, loaded.condition(torch.tensor([1, 2]))),
                                   model(x, mask, model.condition(torch.tensor([1, 2]))))


class _Custom:
    pass


class _Dict(collections.OrderedDict):
    pass


class _Payload:
    """Unpickling this would create the file `marker` (a stand-in for arbitrary code)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("make,refused", [
    (lambda tmp: _Custom(), "_Custom"),
    (lambda tmp: _Dict(a=torch.zeros(1)), "_Dict"),
    (lambda tmp: _Payload(tmp / "marker"), "open"),
])
def test_only_namespace_is_allowed_beyond_weights(tmp_path, make, refused):
    path = tmp_path / "bad.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "args": argparse.Namespace(use_mae=True), "extra": make(tmp_path)},
               path)
    with pytest.raises(CheckpointError) as err:
        load_torch(path)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"cannot read checkpoint {path}: ") and refused in msg, msg
    assert not (tmp_path / "marker").exists()
    # the allowance is scoped to our loader, not added to torch's global allow-list
    assert argparse.Namespace not in torch.serialization.get_safe_globals()
    torch.save({"args": argparse.Namespace(use_mae=True)}, tmp_path / "ns.pth")
    with pytest.raises(Exception):
        torch.load(tmp_path / "ns.pth", weights_only=True)


def test_unreadable_files_give_one_line(tmp_path):
    (tmp_path / "empty.pth").write_bytes(b"")
    (tmp_path / "text.pth").write_bytes(b"not a checkpoint\nsecond line\n")
    for name in ("empty.pth", "text.pth"):
        with pytest.raises(CheckpointError) as err:
            load_official(tmp_path / name)
        msg = str(err.value)
        assert msg.startswith(f"cannot read checkpoint {tmp_path / name}: ") and "\n" not in msg, msg


def test_bad_use_mae_is_refused(tmp_path):
    training_file(small_official("mask"), tmp_path / "c.pth", use_mae="yes")
    with pytest.raises(CheckpointError, match=r"c\.pth: args\.use_mae should be true or false"):
        load_official(tmp_path / "c.pth")
