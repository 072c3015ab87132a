"""Tokenizers: patch round trip, VQ-VAE shapes / export / shipped quality, KL-16 layout and loader."""
from __future__ import annotations

import dataclasses
import json
import os

import pytest
import torch

from emigm.core.config import TokenizerConfig
from emigm.core.fileio import torch_save
from emigm.data.datasets import DEFAULT_FASHION_MNIST as DEFAULT_FMNIST
from emigm.tokenize.kl16 import AutoencoderKL16, KL16Config, load_kl16
from emigm.tokenize.tokenizers import (
    TOKENIZERS,
    DCAETokenizer,
    KL16Tokenizer,
    PatchTokenizer,
    VQTokenizer,
    build_tokenizer,
)
from emigm.tokenize.vqvae import VQVAE, VectorQuantizer, VQVAEConfig, load_fmnist_images, load_vqvae, psnr, save_vqvae

ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets")
SHIPPED_VQ = os.path.join(ASSETS, "fmnist-vq", "vq.safetensors")
HAVE_FMNIST = os.path.exists(os.path.join(DEFAULT_FMNIST, "t10k-images-idx3-ubyte.gz"))
# The shipped assets/fmnist-vq measured 24.56 dB on the first 256 test images (24.25 on all 10k,
# see vq.json); the floor leaves 1 dB of margin for other CPUs and torch versions.
SHIPPED_PSNR_FLOOR = 23.5

# Reduced width for the KL-16 tests that run the network or write a checkpoint (ch must stay a
# multiple of 32 for GroupNorm(32)); the layout test below uses the real widths on the meta device.
SMALL_KL16 = KL16Config(ch=32)
# Two levels, stride 2: exercises the loader and tokenizer logic in milliseconds (8 px -> 4 x 4 tokens).
TINY_KL16 = KL16Config(ch=32, ch_mult=(1, 2), num_res_blocks=1, resolution=8, attn_resolutions=(4,))


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are tiny: a second OpenMP thread only adds synchronisation, which on a loaded
    2-core machine made single tests 10-40x slower. Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _images(b: int, c: int, s: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, c, s, s, generator=g) * 2 - 1


def _init(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in module.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
    return module


# ----------------------------------------------------------------------------- patch


@pytest.mark.parametrize("channels,size,p", [(1, 28, 4), (3, 32, 2), (3, 16, 16)])
def test_patch_round_trip_exact(channels: int, size: int, p: int) -> None:
    tok = PatchTokenizer(size, channels, p)
    x = _images(3, channels, size)
    t = tok.encode(x)
    assert t.shape == (3, (size // p) ** 2, channels * p * p) == (3, tok.num_tokens, tok.token_dim)
    assert torch.equal(tok.decode(t), x)
    assert not tok.discrete and tok.codebook_size == 0


def test_patch_tokens_are_row_major() -> None:
    tok = PatchTokenizer(8, 1, 2)
    rows = torch.arange(4).repeat_interleave(2)
    x = (rows[:, None] * 4 + rows[None, :]).float()[None, None]  # patch (r, c) holds r * 4 + c
    t = tok.encode(x)
    assert torch.equal(t[0, :, 0], torch.arange(16).float())


def test_patch_token_layout_is_channel_first() -> None:
    x = torch.arange(2 * 2 * 2, dtype=torch.float32).reshape(1, 2, 2, 2)  # one 2 x 2 patch, 2 channels
    assert torch.equal(PatchTokenizer(2, 2, 2).encode(x)[0, 0], x.flatten())


def test_patch_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="multiple"):
        PatchTokenizer(28, 1, 5)
    with pytest.raises(ValueError, match="expects images"):
        PatchTokenizer(28, 1, 4).encode(torch.zeros(2, 3, 28, 28))


def test_build_patch_from_config() -> None:
    cfg = TokenizerConfig(kind="patch", image_size=28, channels=1, patch_size=4)
    tok = build_tokenizer(cfg)
    assert (tok.grid, tok.num_tokens, tok.token_dim) == (cfg.grid, cfg.num_tokens, cfg.token_dim)


# ----------------------------------------------------------------------------- VQ


def _tiny_vq(image_size: int = 28) -> VQVAE:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return VQVAE(VQVAEConfig(image_size=image_size, hidden=32, res_hidden=16, codebook_size=16,
                                 codebook_dim=8)).eval()


@pytest.mark.parametrize("size,grid", [(28, 7), (32, 8)])
def test_vq_shapes_and_ids_in_range(size: int, grid: int) -> None:
    tok = VQTokenizer(_tiny_vq(size))
    assert tok.discrete and tok.token_dim == 1 and tok.grid == grid and tok.codebook_size == 16
    ids = tok.encode(_images(4, 1, size))
    assert ids.shape == (4, grid * grid) and ids.dtype == torch.int64
    assert int(ids.min()) >= 0 and int(ids.max()) < 16
    out = tok.decode(ids)
    assert out.shape == (4, 1, size, size) and out.abs().max() <= 1.0
    assert tok.embed_codes(ids).shape == (4, grid * grid, 8)


def test_vq_ema_update_restarts_dead_codes_deterministically() -> None:
    def run() -> torch.Tensor:
        q = VectorQuantizer(8, 2, dead_threshold=1.0)
        g = torch.Generator().manual_seed(3)
        z = torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
        q.ema_update(z, q.codes(z), g)  # first call initialises from the data
        z2 = torch.zeros(64, 2)  # every vector lands on one code: the other codes die
        q.ema_update(z2, q.codes(z2), g)
        restarted = q.ema_update(z, q.codes(z), g)
        assert restarted > 0
        return q.codebook.clone()

    a, b = run(), run()
    assert torch.equal(a, b)


def test_vq_forward_does_not_touch_codebook() -> None:
    model = _tiny_vq()
    before = model.quantizer.codebook.clone()
    model.train()(_images(2, 1, 28))
    assert torch.equal(model.quantizer.codebook, before)


def test_vq_export_round_trip_and_build(tmp_path) -> None:
    model = _tiny_vq()
    save_vqvae(model, str(tmp_path / "vq" / "vq.safetensors"), {"psnr": 1.0})
    assert not [f for f in os.listdir(tmp_path / "vq") if f.startswith(".tmp")]
    x = _images(3, 1, 28)
    for path in ("vq/vq.safetensors", "vq"):  # a file, or the folder holding vq.safetensors
        cfg = TokenizerConfig(kind="vq", codebook_size=16, stride=4, path=path)
        tok = build_tokenizer(cfg, root=str(tmp_path))
        assert torch.equal(tok.encode(x), VQTokenizer(model).encode(x))
    with pytest.raises(ValueError, match="codebook_size"):
        build_tokenizer(TokenizerConfig(kind="vq", codebook_size=512, stride=4, path="vq"), root=str(tmp_path))
    loaded = load_vqvae(str(tmp_path / "vq" / "vq.safetensors"))
    assert torch.equal(loaded.quantizer.ema_sum, loaded.quantizer.codebook)  # EMA restarts cleanly


def test_missing_vq_weights_name_the_path(tmp_path) -> None:
    cfg = TokenizerConfig(kind="vq", codebook_size=512, stride=4, path="nowhere/vq.safetensors")
    with pytest.raises(FileNotFoundError, match=r"VQ-VAE weights.*nowhere"):
        build_tokenizer(cfg, root=str(tmp_path))


def test_corrupt_vq_file_is_a_clear_error(tmp_path) -> None:
    path = tmp_path / "vq.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json")
    with pytest.raises(ValueError, match="vq.safetensors"):
        load_vqvae(str(path))


@pytest.mark.skipif(not HAVE_FMNIST, reason="Fashion-MNIST not installed")
def test_train_vq_tokenizer_smoke_and_resume(tmp_path) -> None:
    """The VQ-VAE trains through emigm.train.tokenizer (kind vq); 1 + 1 steps equal 2 steps."""
    from emigm.train.tokenizer import TokenizerTrainConfig, train_tokenizer

    cfg = TokenizerTrainConfig(kind="vq", steps=2, batch_size=8, codebook_size=16, log_every=1)
    metrics = train_tokenizer(cfg, tmp_path / "out", tmp_path / "run", limit=64, progress=False)
    record = json.loads((tmp_path / "out" / "vq.json").read_text())
    assert record["metrics"]["steps"] == 2 and "command" in record
    assert record["config"]["codebook_size"] == 16 and record["training"]["kind"] == "vq"
    assert 0.0 < metrics["codebook_used"] <= 1.0 and metrics["psnr"] > 0
    assert load_vqvae(str(tmp_path / "out" / "vq.safetensors")).cfg.codebook_size == 16
    assert train_tokenizer(cfg, tmp_path / "out2", tmp_path / "split", limit=64, max_steps=1, progress=False) == {}
    train_tokenizer(cfg, tmp_path / "out2", tmp_path / "split", limit=64, progress=False)
    a, b = (torch.load(tmp_path / d / "state.pt") for d in ("run", "split"))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert [json.loads(x)["step"] for x in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()] == [1, 2]


@pytest.mark.skipif(not HAVE_FMNIST, reason="Fashion-MNIST not installed")
def test_tokenizer_training_faults(tmp_path) -> None:
    """A second trainer on the run folder, a bad max_steps, settings added to the code later."""
    from emigm.io.runs import RunLock, RunLockedError
    from emigm.train.tokenizer import TokenizerTrainConfig, train_tokenizer

    cfg = TokenizerTrainConfig(kind="vq", steps=2, batch_size=8, codebook_size=16)
    with RunLock(tmp_path / "run"):
        with pytest.raises(RunLockedError, match=f"pid {os.getpid()}"):
            train_tokenizer(cfg, tmp_path / "out", tmp_path / "run", limit=64, progress=False)
    with pytest.raises(ValueError, match="max_steps must be >= 1"):
        train_tokenizer(cfg, tmp_path / "out", tmp_path / "run", limit=64, max_steps=0, progress=False)
    train_tokenizer(cfg, tmp_path / "out", tmp_path / "run", limit=64, max_steps=1, progress=False)
    state = torch.load(tmp_path / "run" / "state.pt")
    del state["settings"]["beta"]  # a state written before `beta` was a setting (its default: 0.25)
    torch_save(state, tmp_path / "run" / "state.pt", checksum=True)  # edited: its sha256 recorded again
    with pytest.raises(ValueError, match=r"beta: \(absent\) -> 0\.5"):
        train_tokenizer(dataclasses.replace(cfg, beta=0.5), tmp_path / "out", tmp_path / "run", limit=64,
                        progress=False)
    assert train_tokenizer(cfg, tmp_path / "out", tmp_path / "run", limit=64, progress=False)["steps"] == 2


@pytest.mark.skipif(not (HAVE_FMNIST and os.path.exists(SHIPPED_VQ)), reason="shipped VQ-VAE or data missing")
def test_shipped_vq_reconstructs_fashion_mnist() -> None:
    cfg = TokenizerConfig(kind="vq", image_size=28, channels=1, codebook_size=512, stride=4,
                          path="fmnist-vq/vq.safetensors")
    tok = build_tokenizer(cfg, root=ASSETS)
    x = load_fmnist_images(DEFAULT_FMNIST, "test")[:256]
    ids = tok.encode(x)
    assert ids.shape == (256, 49) and int(ids.max()) < 512
    value = float(psnr(tok.decode(ids), x).mean())
    assert value > SHIPPED_PSNR_FLOOR, value
    assert ids.unique().numel() > 256  # codebook use on 256 images alone stays high


# ----------------------------------------------------------------------------- KL-16


def _expected_kl16_shapes() -> dict[str, tuple[int, ...]]:
    """The LDM / MAR kl16.ckpt layout (the KL-16 VAE of Li et al. 2024, MAR), written out level by level."""
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(name: str, cin: int, cout: int, k: int) -> None:
        shapes[f"{name}.weight"] = (cout, cin, k, k)
        shapes[f"{name}.bias"] = (cout,)

    def norm(name: str, c: int) -> None:
        shapes[f"{name}.weight"] = (c,)
        shapes[f"{name}.bias"] = (c,)

    def res(name: str, cin: int, cout: int) -> None:
        norm(f"{name}.norm1", cin)
        conv(f"{name}.conv1", cin, cout, 3)
        norm(f"{name}.norm2", cout)
        conv(f"{name}.conv2", cout, cout, 3)
        if cin != cout:
            conv(f"{name}.nin_shortcut", cin, cout, 1)

    def attn(name: str, c: int) -> None:
        norm(f"{name}.norm", c)
        for part in ("q", "k", "v", "proj_out"):
            conv(f"{name}.{part}", c, c, 1)

    widths = [128, 128, 256, 256, 512]
    conv("encoder.conv_in", 3, 128, 3)
    cin = 128
    for i, w in enumerate(widths):
        for j in range(2):
            res(f"encoder.down.{i}.block.{j}", cin, w)
            cin = w
            if i == 4:  # feature size 16 at 256 px
                attn(f"encoder.down.{i}.attn.{j}", w)
        if i < 4:
            conv(f"encoder.down.{i}.downsample.conv", w, w, 3)
    for part in ("encoder.mid", "decoder.mid"):
        res(f"{part}.block_1", 512, 512)
        attn(f"{part}.attn_1", 512)
        res(f"{part}.block_2", 512, 512)
    norm("encoder.norm_out", 512)
    conv("encoder.conv_out", 512, 32, 3)
    conv("decoder.conv_in", 16, 512, 3)
    cin = 512
    for i in reversed(range(5)):
        w = widths[i]
        for j in range(3):
            res(f"decoder.up.{i}.block.{j}", cin, w)
            cin = w
            if i == 4:
                attn(f"decoder.up.{i}.attn.{j}", w)
        if i > 0:
            conv(f"decoder.up.{i}.upsample.conv", w, w, 3)
    norm("decoder.norm_out", 128)
    conv("decoder.conv_out", 128, 3, 3)
    conv("quant_conv", 32, 32, 1)
    conv("post_quant_conv", 16, 16, 1)
    return shapes


def test_kl16_parameter_names_and_shapes_match_layout() -> None:
    with torch.device("meta"):
        model = AutoencoderKL16()
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == _expected_kl16_shapes()
    assert got["encoder.conv_in.weight"] == (128, 3, 3, 3)
    assert got["quant_conv.weight"] == (32, 32, 1, 1)
    assert got["post_quant_conv.weight"] == (16, 16, 1, 1)
    assert got["decoder.conv_out.weight"] == (3, 128, 3, 3)


def test_kl16_forward_shapes() -> None:
    model = _init(AutoencoderKL16(SMALL_KL16)).eval()
    with torch.no_grad():
        mean, logvar = model.encode(_images(2, 3, 32))
        assert mean.shape == logvar.shape == (2, 16, 2, 2)
        assert model.decode(mean).shape == (2, 3, 32, 32)


def _small_kl16_checkpoint(tmp_path, wrap: bool = True) -> tuple[str, AutoencoderKL16]:
    model = _init(AutoencoderKL16(TINY_KL16), seed=1).eval()
    state = dict(model.state_dict())
    state["loss.logvar"] = torch.zeros(())  # training-only keys in MAR's file are ignored
    path = str(tmp_path / "kl16.ckpt")
    torch.save({"model": state} if wrap else state, path)
    return path, model


@pytest.mark.parametrize("wrap", [True, False])
def test_kl16_checkpoint_round_trip(tmp_path, wrap: bool) -> None:
    path, model = _small_kl16_checkpoint(tmp_path, wrap)
    loaded = load_kl16(path, TINY_KL16)
    x = _images(1, 3, 8)
    with torch.no_grad():
        assert torch.equal(loaded.encode(x)[0], model.encode(x)[0])
        z = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(0))
        assert torch.equal(loaded.decode(z), model.decode(z))


def test_kl16_truncated_checkpoint_names_the_file(tmp_path) -> None:
    path, _ = _small_kl16_checkpoint(tmp_path)
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"kl16\.ckpt.*truncated or corrupt"):
        load_kl16(path, TINY_KL16)


def test_kl16_garbage_file_names_the_file(tmp_path) -> None:
    path = tmp_path / "kl16.ckpt"
    path.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(ValueError, match=r"kl16\.ckpt.*cannot read"):
        load_kl16(str(path), TINY_KL16)


def test_kl16_wrong_layout_lists_keys(tmp_path) -> None:
    model = _init(AutoencoderKL16(TINY_KL16))
    state = dict(model.state_dict())
    state["encoder.conv_input.weight"] = state.pop("encoder.conv_in.weight")
    path = str(tmp_path / "other.ckpt")
    torch.save({"model": state}, path)
    with pytest.raises(ValueError, match=r"other\.ckpt.*missing key\(s\) \(encoder\.conv_in\.weight.*"
                                         r"unexpected key\(s\) \(encoder\.conv_input\.weight"):
        load_kl16(path, TINY_KL16)
    wider = _init(AutoencoderKL16(dataclasses.replace(TINY_KL16, ch=64)))  # same names, other widths
    torch.save({"model": wider.state_dict()}, path)
    with pytest.raises(ValueError, match=r"other\.ckpt.*shape mismatch"):
        load_kl16(path, TINY_KL16)


def test_kl16_missing_checkpoint(tmp_path) -> None:
    cfg = TokenizerConfig(kind="kl16", image_size=256, channels=3, latent_channels=16, stride=16,
                          path="vae")
    with pytest.raises(FileNotFoundError, match=r"KL-16 VAE checkpoint.*not found: .*vae"):
        build_tokenizer(cfg, root=str(tmp_path))


def test_kl16_tokenizer_scale_and_order() -> None:
    model = _init(AutoencoderKL16(TINY_KL16)).eval()
    tok = KL16Tokenizer(model, image_size=8)
    assert (tok.grid, tok.num_tokens, tok.token_dim, tok.discrete) == (4, 16, 16, False)
    x = _images(2, 3, 8)
    t = tok.encode(x)
    with torch.no_grad():
        mean, _ = model.encode(x)
        assert t.shape == (2, 16, 16)
        assert torch.allclose(t[:, 6], mean[:, :, 1, 2] * 0.2325)  # row-major: token 6 is (1, 2)
        assert torch.allclose(tok.decode(t), model.decode(mean).clamp(-1, 1), atol=1e-5)
    s1 = tok.encode(x, generator=torch.Generator().manual_seed(5))
    s2 = tok.encode(x, generator=torch.Generator().manual_seed(5))
    assert torch.equal(s1, s2) and not torch.equal(s1, t)


# ----------------------------------------------------------------------------- building


def test_unknown_kind_lists_valid_ones() -> None:
    with pytest.raises(ValueError) as err:
        build_tokenizer(TokenizerConfig(kind="vqgan"))  # type: ignore[arg-type]
    for kind in TOKENIZERS:
        assert kind in str(err.value)
    assert set(TOKENIZERS) == {"patch", "vq", "kl", "kl16", "dcae"}


def test_dcae_without_diffusers_says_how_to_install(tmp_path) -> None:
    try:
        import diffusers  # noqa: F401
        pytest.skip("diffusers is installed")
    except ImportError:
        pass
    with pytest.raises(ImportError, match="pip install diffusers"):
        DCAETokenizer(str(tmp_path))
