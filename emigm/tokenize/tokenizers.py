"""Images <-> tokens: one interface over pixel patches, VQ codes and VAE latents.

Owns the `Tokenizer` interface, its five implementations and `build_tokenizer`, the only place a
tokenizer kind name is turned into an object. Images are (B, C, H, W) floats in [-1, 1]; tokens are
in row-major order: (B, L, token_dim) floats for continuous tokenizers, (B, L) int64 code ids for
discrete ones. Latent scales are constants on the tokenizer classes.
"""
from __future__ import annotations

import os

import torch
from einops import rearrange
from torch import nn

from emigm.core.config import TokenizerConfig
from emigm.tokenize.kl16 import AutoencoderKL16, KL16Config, load_kl16
from emigm.tokenize.klvae import KLVAE, load_klvae
from emigm.tokenize.vqvae import VQVAE, load_vqvae

Tensor = torch.Tensor


class Tokenizer(nn.Module):
    """Base class. Attributes: grid (tokens per side), num_tokens (= grid ** 2), token_dim (channels
    per continuous token; 1 for discrete), discrete, codebook_size (0 for continuous), image_size,
    channels."""

    grid: int
    num_tokens: int
    token_dim: int
    discrete: bool = False
    codebook_size: int = 0
    image_size: int
    channels: int

    def _set_shape(self, image_size: int, channels: int, grid: int, token_dim: int) -> None:
        self.image_size, self.channels = image_size, channels
        self.grid, self.num_tokens, self.token_dim = grid, grid * grid, token_dim

    def _check_images(self, images: Tensor) -> None:
        want = (self.channels, self.image_size, self.image_size)
        if images.ndim != 4 or tuple(images.shape[1:]) != want:
            raise ValueError(f"{type(self).__name__} expects images (B, {want[0]}, {want[1]}, "
                             f"{want[2]}), got {tuple(images.shape)}")

    def encode(self, images: Tensor) -> Tensor:
        """(B, C, H, W) in [-1, 1] -> (B, L, token_dim) float, or (B, L) int64 when discrete."""
        raise NotImplementedError

    def decode(self, tokens: Tensor) -> Tensor:
        """Tokens as returned by `encode` -> (B, C, H, W) images clamped to [-1, 1]."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return (f"image_size={self.image_size}, channels={self.channels}, grid={self.grid}, "
                f"token_dim={self.token_dim}, codebook_size={self.codebook_size}")


class PatchTokenizer(Tokenizer):
    """Pixels as continuous tokens: each p x p patch flattened to C * p * p values, channel first
    within a token ((c p1 p2), MAR's patchify order). The round trip is exact."""

    def __init__(self, image_size: int, channels: int, patch_size: int) -> None:
        super().__init__()
        if patch_size < 1 or image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        self.patch_size = patch_size
        self._set_shape(image_size, channels, image_size // patch_size, channels * patch_size**2)

    def encode(self, images: Tensor) -> Tensor:
        self._check_images(images)
        p = self.patch_size
        return rearrange(images, "b c (h p1) (w p2) -> b (h w) (c p1 p2)", p1=p, p2=p)

    def decode(self, tokens: Tensor) -> Tensor:
        p = self.patch_size
        x = rearrange(tokens, "b (h w) (c p1 p2) -> b c (h p1) (w p2)", h=self.grid, p1=p, p2=p)
        return x.clamp(-1.0, 1.0)


class VQTokenizer(Tokenizer):
    """Discrete tokens from the small VQ-VAE (`emigm.tokenize.vqvae`): (B, L) code ids, L = (H / 4) ** 2."""

    discrete = True

    def __init__(self, model: VQVAE) -> None:
        super().__init__()
        cfg = model.cfg
        self.model = model.eval().requires_grad_(False)
        self.codebook_size = cfg.codebook_size
        self.stride = cfg.stride
        self._set_shape(cfg.image_size, cfg.channels, cfg.image_size // cfg.stride, 1)

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        self._check_images(images)
        return self.model.encode(images).flatten(1)

    @torch.no_grad()
    def decode(self, tokens: Tensor) -> Tensor:
        ids = tokens.long().reshape(tokens.shape[0], self.grid, self.grid)
        return self.model.decode_codes(ids).clamp(-1.0, 1.0)

    def embed_codes(self, ids: Tensor) -> Tensor:
        """(B, L) int64 -> (B, L, D) codebook vectors (D = the VQ-VAE's codebook_dim)."""
        return self.model.quantizer.embed(ids.long())


def posterior_sample(mean: Tensor, logvar: Tensor, generator: torch.Generator | None) -> Tensor:
    """A draw from the diagonal Gaussian posterior N(mean, exp(logvar)) of a KL autoencoder, with the
    noise from `generator`; its mean when `generator` is None."""
    if generator is None:
        return mean
    noise = torch.randn(mean.shape, generator=generator, device=generator.device)
    return mean + (0.5 * logvar).exp() * noise.to(mean.device, mean.dtype)


class KLTokenizer(Tokenizer):
    """Continuous tokens from the small KL autoencoder (`emigm.tokenize.klvae`, shipped as `fmnist-kl`):
    (B, (H/4) ** 2, latent_channels) posterior means, normalised per channel by the autoencoder's own
    (shift, scale). Pass a torch.Generator to `encode` to draw a posterior sample instead."""

    def __init__(self, model: KLVAE) -> None:
        super().__init__()
        cfg = model.cfg
        self.model = model.eval().requires_grad_(False)
        self.stride = cfg.stride
        self._set_shape(cfg.image_size, cfg.channels, cfg.image_size // cfg.stride, cfg.latent_channels)

    @torch.no_grad()
    def encode(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        self._check_images(images)
        z = posterior_sample(*self.model.moments(images), generator)
        return rearrange(self.model.normalize(z), "b c h w -> b (h w) c")

    @torch.no_grad()
    def decode(self, tokens: Tensor) -> Tensor:
        z = rearrange(tokens, "b (h w) c -> b c h w", h=self.grid)
        return self.model.decode(self.model.denormalize(z)).clamp(-1.0, 1.0)


class KL16Tokenizer(Tokenizer):
    """Continuous tokens from the LDM KL-16 VAE: (B, (H/16) ** 2, 16) latents times `scale`.

    `encode` returns the posterior mean (scaled); pass a torch.Generator to draw a posterior sample
    instead, as MAR does for training."""

    scale = 0.2325

    def __init__(self, model: AutoencoderKL16, image_size: int = 256) -> None:
        super().__init__()
        cfg = model.cfg
        if image_size % cfg.stride:
            raise ValueError(f"image_size {image_size} is not a multiple of the VAE stride {cfg.stride}")
        self.model = model.eval().requires_grad_(False)
        self.stride = cfg.stride
        self._set_shape(image_size, cfg.in_channels, image_size // cfg.stride, cfg.embed_dim)

    @torch.no_grad()
    def encode(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        self._check_images(images)
        z = posterior_sample(*self.model.encode(images), generator)
        return rearrange(z * self.scale, "b c h w -> b (h w) c")

    @torch.no_grad()
    def decode(self, tokens: Tensor) -> Tensor:
        z = rearrange(tokens / self.scale, "b (h w) c -> b c h w", h=self.grid)
        return self.model.decode(z).clamp(-1.0, 1.0)


class DCAETokenizer(Tokenizer):
    """Continuous tokens from DC-AE f32c32 (512 px: 16 x 16 tokens of 32 channels) through diffusers'
    `AutoencoderDC` loaded from a local folder; latents times `scale`. diffusers is optional."""

    scale = 0.3189
    latent_channels = 32
    stride = 32

    def __init__(self, folder: str, image_size: int = 512) -> None:
        super().__init__()
        try:
            from diffusers import AutoencoderDC
        except ImportError as e:
            raise ImportError("the dcae tokenizer needs diffusers: pip install diffusers") from e
        if image_size % self.stride:
            raise ValueError(f"image_size {image_size} is not a multiple of the DC-AE stride 32")
        self.model = AutoencoderDC.from_pretrained(folder).eval().requires_grad_(False)
        self._set_shape(image_size, 3, image_size // self.stride, self.latent_channels)

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        self._check_images(images)
        z = self.model.encode(images).latent
        return rearrange(z * self.scale, "b c h w -> b (h w) c")

    @torch.no_grad()
    def decode(self, tokens: Tensor) -> Tensor:
        z = rearrange(tokens / self.scale, "b (h w) c -> b c h w", h=self.grid)
        return self.model.decode(z).sample.clamp(-1.0, 1.0)


# ----------------------------------------------------------------------------- building


def _resolve(cfg: TokenizerConfig, root: str | None, default_file: str, what: str,
             folder_ok: bool = False) -> str:
    """cfg.path made absolute against root; a folder is completed with `default_file` unless the
    tokenizer loads folders. Raises FileNotFoundError naming the path and what it should hold."""
    if not cfg.path:
        raise ValueError(f"tokenizer.path is empty: the {cfg.kind} tokenizer needs its {what}")
    path = os.path.expanduser(cfg.path)
    if root and not os.path.isabs(path):
        path = os.path.join(root, path)
    if os.path.isdir(path) and not folder_ok:
        path = os.path.join(path, default_file)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def _check(cfg: TokenizerConfig, name: str, want: int, got: int, path: str) -> None:
    if want and want != got:
        raise ValueError(f"{path}: the model expects tokenizer.{name} {want}; these {cfg.kind} weights have {got}")


def _build_patch(cfg: TokenizerConfig, root: str | None) -> Tokenizer:
    return PatchTokenizer(cfg.image_size, cfg.channels, cfg.patch_size)


def _check_geometry(cfg: TokenizerConfig, tok, path: str) -> Tokenizer:
    """The config's stride, image size and channels against the loaded autoencoder's; returns `tok`."""
    for name in ("stride", "image_size", "channels"):
        _check(cfg, name, getattr(cfg, name), getattr(tok, name), path)
    return tok


def _build_vq(cfg: TokenizerConfig, root: str | None) -> Tokenizer:
    path = resolve_weights(cfg, root)
    tok = VQTokenizer(load_vqvae(path))
    _check(cfg, "codebook_size", cfg.codebook_size, tok.codebook_size, path)
    return _check_geometry(cfg, tok, path)


_WEIGHTS = {"vq": ("vq.safetensors", "VQ-VAE weights (vq.safetensors)"),
            "kl": ("kl.safetensors", "KL autoencoder weights (kl.safetensors)"),
            "kl16": ("kl16.ckpt", "KL-16 VAE checkpoint (kl16.ckpt)")}


def resolve_weights(cfg: TokenizerConfig, root: str | None = None) -> str:
    """The weights file of a vq / kl / kl16 tokenizer (FileNotFoundError naming it when missing)."""
    if cfg.kind not in _WEIGHTS:
        raise ValueError(f"the {cfg.kind} tokenizer has no weights file")
    return _resolve(cfg, root, *_WEIGHTS[cfg.kind])


def _build_kl(cfg: TokenizerConfig, root: str | None) -> Tokenizer:
    path = resolve_weights(cfg, root)
    tok = KLTokenizer(load_klvae(path))
    _check(cfg, "latent_channels", cfg.latent_channels, tok.token_dim, path)
    return _check_geometry(cfg, tok, path)


def _build_kl16(cfg: TokenizerConfig, root: str | None) -> Tokenizer:
    path = resolve_weights(cfg, root)
    vae_cfg = KL16Config()
    _check(cfg, "latent_channels", cfg.latent_channels, vae_cfg.embed_dim, path)
    _check(cfg, "stride", cfg.stride, vae_cfg.stride, path)
    _check(cfg, "channels", cfg.channels, vae_cfg.in_channels, path)
    return KL16Tokenizer(load_kl16(path, vae_cfg), cfg.image_size)


def _build_dcae(cfg: TokenizerConfig, root: str | None) -> Tokenizer:
    path = _resolve(cfg, root, "", "DC-AE model folder (diffusers AutoencoderDC)", folder_ok=True)
    _check(cfg, "latent_channels", cfg.latent_channels, DCAETokenizer.latent_channels, path)
    _check(cfg, "stride", cfg.stride, DCAETokenizer.stride, path)
    _check(cfg, "channels", cfg.channels, 3, path)
    return DCAETokenizer(path, cfg.image_size)


TOKENIZERS = {"patch": _build_patch, "vq": _build_vq, "kl": _build_kl, "kl16": _build_kl16, "dcae": _build_dcae}


def build_tokenizer(cfg: TokenizerConfig, root: str | None = None) -> Tokenizer:
    """The tokenizer described by `cfg`; a relative `cfg.path` is resolved against `root` (the
    assets or model folder). Unknown kinds raise ValueError listing the valid ones; missing weights
    raise FileNotFoundError naming the path."""
    try:
        builder = TOKENIZERS[cfg.kind]
    except KeyError:
        raise ValueError(f"unknown tokenizer kind {cfg.kind!r}; valid: {', '.join(TOKENIZERS)}") from None
    return builder(cfg, root)
