"""The LDM KL-16 VAE (MAR's `kl16.ckpt`) and its checkpoint loader.

Owns the architecture only; the latent scale (0.2325) and the image <-> token reshapes live on
`emigm.tokenize.tokenizers.KL16Tokenizer`. Parameter names and shapes follow the LDM / MAR layout so the
official state dict loads without renaming:
encoder.{conv_in, down.{i}.block.{j}, down.{i}.attn.{j}, down.{i}.downsample.conv, mid.{block_1,
attn_1, block_2}, norm_out, conv_out}, decoder.{conv_in, mid.*, up.{i}.block.{j}, up.{i}.attn.{j},
up.{i}.upsample.conv, norm_out, conv_out}, quant_conv, post_quant_conv.
Res blocks: norm1, conv1, norm2, conv2 and a 1x1 nin_shortcut when widths differ; attention blocks:
norm, q, k, v, proj_out (all 1x1 convs).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from emigm.core.statedict import CheckpointError, check_state_dict, load_torch, on_meta, spec_of

Tensor = torch.Tensor


@dataclass(frozen=True)
class KL16Config:
    """LDM AutoencoderKL "kl-f16" as used by MAR. `resolution` is the training resolution that places
    the attention blocks (at feature size 16); inputs of any multiple of 16 px work."""

    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    resolution: int = 256
    in_channels: int = 3
    out_channels: int = 3
    z_channels: int = 16
    embed_dim: int = 16

    def __post_init__(self) -> None:
        if self.ch % 32:
            raise ValueError(f"ch must be a multiple of 32 (GroupNorm with 32 groups), got {self.ch}")

    @property
    def stride(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm1 = _norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        if hasattr(self, "nin_shortcut"):
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with 1x1-conv projections."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        q, k, v = (m(y).reshape(b, 1, c, h * w).transpose(-1, -2) for m in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # scale c ** -0.5, as in LDM
        return x + self.proj_out(out.transpose(-1, -2).reshape(b, c, h, w))


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # asymmetric pad, as in LDM


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Mid(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    """(B, 3, H, W) -> (B, 2 z, H/16, W/16) (double_z: mean and log-variance)."""

    def __init__(self, cfg: KL16Config) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        in_mult = (1,) + tuple(cfg.ch_mult)
        res = cfg.resolution
        self.down = nn.ModuleList()
        for i, mult in enumerate(cfg.ch_mult):
            level = nn.Module()
            c_in, c_out = cfg.ch * in_mult[i], cfg.ch * mult
            level.block = nn.ModuleList()
            level.attn = nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                level.block.append(ResnetBlock(c_in, c_out))
                c_in = c_out
                if res in cfg.attn_resolutions:
                    level.attn.append(AttnBlock(c_out))
            if i != len(cfg.ch_mult) - 1:
                level.downsample = Downsample(c_out)
                res //= 2
            self.down.append(level)
        self.mid = _Mid(c_out)
        self.norm_out = _norm(c_out)
        self.conv_out = nn.Conv2d(c_out, 2 * cfg.z_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in self.down:
            for j, block in enumerate(level.block):
                h = block(h)
                if len(level.attn):
                    h = level.attn[j](h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """(B, z, h, w) -> (B, 3, 16 h, 16 w); num_res_blocks + 1 blocks per level."""

    def __init__(self, cfg: KL16Config) -> None:
        super().__init__()
        c_in = cfg.ch * cfg.ch_mult[-1]
        res = cfg.resolution // cfg.stride
        self.conv_in = nn.Conv2d(cfg.z_channels, c_in, 3, padding=1)
        self.mid = _Mid(c_in)
        up: list[nn.Module] = []
        for i in reversed(range(len(cfg.ch_mult))):
            level = nn.Module()
            c_out = cfg.ch * cfg.ch_mult[i]
            level.block = nn.ModuleList()
            level.attn = nn.ModuleList()
            for _ in range(cfg.num_res_blocks + 1):
                level.block.append(ResnetBlock(c_in, c_out))
                c_in = c_out
                if res in cfg.attn_resolutions:
                    level.attn.append(AttnBlock(c_out))
            if i != 0:
                level.upsample = Upsample(c_out)
                res *= 2
            up.insert(0, level)  # up[i] is level i, as in the checkpoint
        self.up = nn.ModuleList(up)
        self.norm_out = _norm(c_in)
        self.conv_out = nn.Conv2d(c_in, cfg.out_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            for j, block in enumerate(level.block):
                h = block(h)
                if len(level.attn):
                    h = level.attn[j](h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class AutoencoderKL16(nn.Module):
    """KL-16 VAE. Images (B, 3, H, W) in [-1, 1] <-> latents (B, 16, H/16, W/16) (unscaled)."""

    def __init__(self, cfg: KL16Config = KL16Config()) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quant_conv = nn.Conv2d(2 * cfg.z_channels, 2 * cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, 3, H, W) -> posterior moments (mean, logvar), each (B, 16, H/16, W/16); logvar is
        clamped to [-30, 20] as in LDM's DiagonalGaussianDistribution."""
        mean, logvar = self.quant_conv(self.encoder(x)).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z: Tensor) -> Tensor:
        """(B, 16, h, w) unscaled latents -> (B, 3, 16 h, 16 w) images (unclamped)."""
        return self.decoder(self.post_quant_conv(z))


def load_kl16(path: str, cfg: KL16Config = KL16Config(),
              device: torch.device | str = "cpu") -> AutoencoderKL16:
    """Load a KL-16 VAE from a torch checkpoint (MAR / LDM layout): the state dict plain or under
    "model" (MAR) or "state_dict" (LDM). `loss.*` keys (LPIPS / discriminator) are ignored; any other
    missing or unexpected key, or a shape mismatch, raises ValueError naming the file. Returns the
    model in eval mode on `device`."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"KL-16 VAE checkpoint not found: {path}")

    try:
        ckpt = load_torch(path)
    except CheckpointError as e:  # one line: "cannot read checkpoint PATH: reason"
        reason = str(e).removeprefix(f"cannot read checkpoint {path}: ")
        raise ValueError(f"{path}: cannot read the KL-16 VAE checkpoint (truncated or corrupt?): {reason}") from None
    if isinstance(ckpt, dict) and isinstance(ckpt.get("model"), dict):
        ckpt = ckpt["model"]
    elif isinstance(ckpt, dict) and isinstance(ckpt.get("state_dict"), dict):
        ckpt = ckpt["state_dict"]
    if not isinstance(ckpt, dict) or not all(isinstance(v, Tensor) for v in ckpt.values()):
        raise ValueError(f"{path}: expected a state dict of tensors (plain or under 'model')")
    state = {k: v for k, v in ckpt.items() if not k.startswith("loss.")}
    with on_meta():
        model = AutoencoderKL16(cfg)
    check_state_dict(spec_of(model), state, f"{path} (KL-16 VAE)")
    model = model.to_empty(device=device)
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.eval()
