"""A small KL autoencoder for 28 x 28 grey images: the continuous latent tokenizer `fmnist-kl`.

In the spirit of the LDM KL-16 VAE that eMIGM's ImageNet models generate latents of (emigm.tokenize.kl16), at
Fashion-MNIST scale: stride 4, so a 28 x 28 image becomes a 7 x 7 grid of latent tokens of
`latent_channels` values each. The encoder predicts a diagonal Gaussian posterior (mean, log-variance);
training minimises the reconstruction error plus a small KL term to N(0, I), which keeps the latent
space smooth enough for a generator to model and the decoder robust to small errors in its input.

Latent normalisation is part of the model: after training, `shift` and `scale` (one value per
channel) are set from the training set's posterior means so that normalised latents have zero mean
and unit variance per channel; the tokenizer (emigm.tokenize.tokenizers.KLTokenizer) applies them.

The decoder upsamples by nearest neighbour followed by 3x3 convolutions (no transposed convolutions),
so reconstructions carry no checkerboard or token-border seams.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from emigm.core.fields import check_number
from emigm.core.statedict import check_state_dict, on_meta, read_safetensors_meta, spec_of

Tensor = torch.Tensor


@dataclass(frozen=True)
class KLVAEConfig:
    """Architecture: widths at full, 1/2 and 1/4 resolution; `num_res_blocks` residual blocks at the
    two lower resolutions of the encoder and the decoder; logvar is clamped to [-30, 20] as in LDM."""

    image_size: int = 28
    channels: int = 1
    latent_channels: int = 4
    widths: tuple[int, int, int] = (32, 64, 128)
    num_res_blocks: int = 1
    stride: int = 4

    def __post_init__(self) -> None:
        for name, low, high in (("image_size", 4, 4096), ("channels", 1, 16), ("latent_channels", 1, 4096),
                                ("num_res_blocks", 0, 64), ("stride", 1, 4096)):
            check_number(name, getattr(self, name), low, high, integer=True)
        if not isinstance(self.widths, tuple) or len(self.widths) != 3:
            raise ValueError(f"widths must have 3 entries (full, 1/2, 1/4 resolution), got {self.widths!r}")
        for w in self.widths:
            check_number("widths", w, 1, 4096, integer=True)
        if self.stride != 4:
            raise ValueError("this KL autoencoder has a fixed stride of 4")
        if self.image_size % self.stride:
            raise ValueError(f"image_size {self.image_size} is not a multiple of stride {self.stride}")
        if self.latent_channels < 1 or self.channels < 1 or min(self.widths) < 1:
            raise ValueError("latent_channels, channels and widths must be >= 1")
        if len(self.widths) != 3:
            raise ValueError(f"widths must have 3 entries (full, 1/2, 1/4 resolution), got {self.widths}")


def _norm(width: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, width), width, eps=1e-6)


class _ResBlock(nn.Module):
    """x + conv(silu(norm(conv(silu(norm(x))))))."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = _norm(width), nn.Conv2d(width, width, 3, padding=1)
        self.norm2, self.conv2 = _norm(width), nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return x + self.conv2(F.silu(self.norm2(h)))


class KLEncoder(nn.Module):
    """(B, C, H, W) -> (B, 2 * latent_channels, H/4, W/4): posterior mean and log-variance."""

    def __init__(self, cfg: KLVAEConfig) -> None:
        super().__init__()
        w0, w1, w2 = cfg.widths
        self.conv_in = nn.Conv2d(cfg.channels, w0, 3, padding=1)
        self.down1 = nn.Conv2d(w0, w1, 4, stride=2, padding=1)
        self.res1 = nn.ModuleList(_ResBlock(w1) for _ in range(cfg.num_res_blocks))
        self.down2 = nn.Conv2d(w1, w2, 4, stride=2, padding=1)
        self.res2 = nn.ModuleList(_ResBlock(w2) for _ in range(cfg.num_res_blocks))
        self.norm_out = _norm(w2)
        self.conv_out = nn.Conv2d(w2, 2 * cfg.latent_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.down1(F.silu(self.conv_in(x)))
        for block in self.res1:
            x = block(x)
        x = self.down2(x)
        for block in self.res2:
            x = block(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class KLDecoder(nn.Module):
    """(B, latent_channels, h, w) -> (B, C, 4h, 4w) images (unclamped; trained on [-1, 1])."""

    def __init__(self, cfg: KLVAEConfig) -> None:
        super().__init__()
        w0, w1, w2 = cfg.widths
        self.conv_in = nn.Conv2d(cfg.latent_channels, w2, 3, padding=1)
        self.res2 = nn.ModuleList(_ResBlock(w2) for _ in range(cfg.num_res_blocks))
        self.up2 = nn.Conv2d(w2, w1, 3, padding=1)
        self.res1 = nn.ModuleList(_ResBlock(w1) for _ in range(cfg.num_res_blocks))
        self.up1 = nn.Conv2d(w1, w0, 3, padding=1)
        self.norm_out = _norm(w0)
        self.conv_out = nn.Conv2d(w0, cfg.channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        x = self.conv_in(z)
        for block in self.res2:
            x = block(x)
        x = self.up2(F.interpolate(x, scale_factor=2, mode="nearest"))
        for block in self.res1:
            x = block(x)
        x = self.up1(F.interpolate(x, scale_factor=2, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(x)))


class KLVAE(nn.Module):
    """Encoder, diagonal Gaussian posterior, decoder, and the latent normalisation (shift, scale)."""

    def __init__(self, cfg: KLVAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = KLEncoder(cfg)
        self.decoder = KLDecoder(cfg)
        self.register_buffer("shift", torch.zeros(cfg.latent_channels))
        self.register_buffer("scale", torch.ones(cfg.latent_channels))

    def moments(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior (mean, logvar), each (B, latent_channels, h, w), in raw (unnormalised) units."""
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def normalize(self, z: Tensor) -> Tensor:
        """Raw latents (B, c, h, w) -> normalised (zero mean, unit variance per channel)."""
        return (z - self.shift.view(1, -1, 1, 1)) / self.scale.view(1, -1, 1, 1)

    def denormalize(self, z: Tensor) -> Tensor:
        return z * self.scale.view(1, -1, 1, 1) + self.shift.view(1, -1, 1, 1)

    def decode(self, z: Tensor) -> Tensor:
        """Raw latents (B, c, h, w) -> images (B, C, H, W), unclamped."""
        return self.decoder(z)

    def training_loss(self, x: Tensor, generator: torch.Generator | None, kl_weight: float
                      ) -> tuple[Tensor, dict[str, Tensor]]:
        """Reconstruction MSE of a posterior sample + kl_weight * KL(q(z|x) || N(0, I)) (per element)."""
        mean, logvar = self.moments(x)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device)
        z = mean + (0.5 * logvar).exp() * noise
        rec = F.mse_loss(self.decode(z), x)
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()
        return rec + kl_weight * kl, {"rec": rec.detach(), "kl": kl.detach()}

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """Decode the posterior mean: the deterministic round trip the tokenizer makes."""
        return self.decode(self.moments(x)[0])


# ----------------------------------------------------------------------------- load


def load_klvae(path: str, device: torch.device | str = "cpu") -> KLVAE:
    """Load a KL autoencoder exported by `emigm.train.tokenizer` (`kl.safetensors`: weights, with
    the architecture in the file's metadata). Errors name the file and what is wrong."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"KL autoencoder weights not found: {path}")
    state, meta = read_safetensors_meta(path, "KL autoencoder weights", device)
    try:
        arch = json.loads(meta["config"])
        cfg = KLVAEConfig(**{**arch, "widths": tuple(arch["widths"])})
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: missing or invalid architecture metadata ({e})") from None

    with on_meta():  # shapes only: the file is checked before anything is allocated
        model = KLVAE(cfg)
    check_state_dict(spec_of(model), state, path)
    model = KLVAE(cfg)
    model.load_state_dict(state)
    return model.to(device).eval()
