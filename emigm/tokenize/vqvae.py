"""A small VQ-VAE for 28 x 28 (or 32 x 32) grey images.

Owns: the conv encoder / decoder (stride 4: 7 x 7 tokens at 28 px, 8 x 8 at 32 px), the vector
quantiser, the Fashion-MNIST image loader its training uses, and the safetensors export that
`emigm.tokenize.tokenizers.VQTokenizer` loads. Training: emigm.train.tokenizer (kind "vq").

Codebook learning: EMA k-means updates (van den Oord et al. 2017, appendix; decay 0.99, Laplace
smoothing) with a straight-through estimator and a commitment loss (beta = 0.25) for the encoder.
EMA updates do not depend on the optimiser's learning rate, which keeps short CPU runs stable. Codes
whose EMA assignment count falls below `dead_threshold` are restarted on random encoder outputs of
the current batch, and the codebook is initialised from the first batch, so codebook use stays high.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from safetensors.torch import save
from torch import nn

from emigm.core.fields import check_number
from emigm.core.fileio import write_bytes
from emigm.core.statedict import check_state_dict, on_meta, read_safetensors_meta, spec_of
from emigm.data.datasets import load_fashion_mnist, to_unit_range

Tensor = torch.Tensor


@dataclass(frozen=True)
class VQVAEConfig:
    """Architecture of the small VQ-VAE. Spatial stride is 4; widths are `hidden` at 1/2 resolution
    and 2 * `hidden` at 1/4 resolution (no wide full-resolution layers); residual blocks use a
    `res_hidden` bottleneck."""

    image_size: int = 28
    channels: int = 1
    hidden: int = 64
    res_hidden: int = 32
    num_res_blocks: int = 2
    codebook_size: int = 512
    codebook_dim: int = 32
    stride: int = 4

    def __post_init__(self) -> None:
        for name, low, high in (("image_size", 4, 4096), ("channels", 1, 16), ("hidden", 1, 4096),
                                ("res_hidden", 1, 4096), ("num_res_blocks", 0, 64), ("codebook_size", 2, 1 << 20),
                                ("codebook_dim", 1, 4096), ("stride", 1, 4096)):
            check_number(name, getattr(self, name), low, high, integer=True)
        if self.stride != 4:
            raise ValueError("this VQ-VAE has a fixed stride of 4")
        if self.image_size % self.stride:
            raise ValueError(f"image_size {self.image_size} is not a multiple of stride {self.stride}")


class _ResBlock(nn.Module):
    """x + conv1x1(relu(conv3x3(relu(x)))), pre-activation with a narrow bottleneck."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, hidden, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden, width, 1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class VQEncoder(nn.Module):
    """(B, C, H, W) -> (B, D, H/4, W/4) continuous pre-quantisation vectors.

    The first conv is already strided: full-resolution wide activations dominate CPU time."""

    def __init__(self, cfg: VQVAEConfig) -> None:
        super().__init__()
        h = cfg.hidden
        self.down1 = nn.Conv2d(cfg.channels, h, 4, stride=2, padding=1)
        self.down2 = nn.Conv2d(h, 2 * h, 4, stride=2, padding=1)
        self.conv = nn.Conv2d(2 * h, 2 * h, 3, padding=1)
        self.res = nn.ModuleList(_ResBlock(2 * h, cfg.res_hidden) for _ in range(cfg.num_res_blocks))
        self.conv_out = nn.Conv2d(2 * h, cfg.codebook_dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.down1(x))
        x = self.conv(F.relu(self.down2(x)))
        for block in self.res:
            x = block(x)
        return self.conv_out(F.relu(x))


class VQDecoder(nn.Module):
    """(B, D, h, w) quantised vectors -> (B, C, 4h, 4w) images (unclamped, trained on [-1, 1])."""

    def __init__(self, cfg: VQVAEConfig) -> None:
        super().__init__()
        h = cfg.hidden
        self.conv_in = nn.Conv2d(cfg.codebook_dim, 2 * h, 3, padding=1)
        self.res = nn.ModuleList(_ResBlock(2 * h, cfg.res_hidden) for _ in range(cfg.num_res_blocks))
        self.up1 = nn.ConvTranspose2d(2 * h, h, 4, stride=2, padding=1)
        self.up2 = nn.ConvTranspose2d(h, cfg.channels, 4, stride=2, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        x = self.conv_in(z)
        for block in self.res:
            x = block(x)
        x = F.relu(self.up1(F.relu(x)))
        return self.up2(x)


class VectorQuantizer(nn.Module):
    """Nearest-neighbour codebook lookup with EMA codebook updates.

    `forward` is a pure lookup; the training loop calls `ema_update` explicitly (with its own
    torch.Generator for dead-code restarts), so inference never changes the codebook.
    """

    def __init__(self, codebook_size: int, codebook_dim: int, decay: float = 0.99,
                 eps: float = 1e-5, dead_threshold: float = 1.0) -> None:
        super().__init__()
        self.codebook_size = codebook_size
        self.codebook_dim = codebook_dim
        self.decay = decay
        self.eps = eps
        self.dead_threshold = dead_threshold
        # N(0, 0.1^2) draws, the same numbers as randn(...) * 0.1 but an in-place fill, which a build on
        # the meta device skips (emigm.core.statedict.on_meta): meta arithmetic would import torch's compiler
        self.register_buffer("codebook", torch.empty(codebook_size, codebook_dim).normal_(0.0, 0.1))
        self.register_buffer("ema_count", torch.ones(codebook_size), persistent=False)
        self.register_buffer("ema_sum", self.codebook.clone(), persistent=False)
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool), persistent=False)

    def codes(self, z: Tensor) -> Tensor:
        """z: (N, D) -> nearest code ids (N,) int64."""
        e = self.codebook
        dist = z.pow(2).sum(1, keepdim=True) - 2.0 * z @ e.t() + e.pow(2).sum(1)[None]
        return dist.argmin(1)

    def embed(self, ids: Tensor) -> Tensor:
        """ids (...) int64 -> code vectors (..., D)."""
        return F.embedding(ids, self.codebook)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """z: (B, D, h, w) -> (z_q straight-through (B, D, h, w), ids (B, h, w), commitment loss)."""
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)
        ids = self.codes(flat.detach())
        q = self.embed(ids)
        commit = F.mse_loss(flat, q.detach())
        q = flat + (q - flat).detach()
        return q.reshape(b, h, w, d).permute(0, 3, 1, 2), ids.reshape(b, h, w), commit

    @torch.no_grad()
    def ema_update(self, z: Tensor, ids: Tensor, generator: torch.Generator) -> int:
        """One EMA k-means step on encoder outputs z (N, D) with assignments ids (N,); restarts dead
        codes on random rows of z. Returns the number of restarted codes."""
        z = z.detach().float()
        ids = ids.reshape(-1)
        if not bool(self.initialised):
            # Start from data: a random subset of the first batch's encoder outputs.
            pick = torch.randint(0, z.shape[0], (self.codebook_size,), generator=generator,
                                 device=generator.device).to(z.device)
            self.codebook.copy_(z[pick])
            self.ema_sum.copy_(z[pick] * self.dead_threshold)
            self.ema_count.fill_(self.dead_threshold)
            self.initialised.fill_(True)
            ids = self.codes(z)
        onehot = F.one_hot(ids, self.codebook_size).to(z.dtype)
        count = onehot.sum(0)
        self.ema_count.mul_(self.decay).add_(count, alpha=1 - self.decay)
        self.ema_sum.mul_(self.decay).add_(onehot.t() @ z, alpha=1 - self.decay)
        total = self.ema_count.sum()
        smoothed = (self.ema_count + self.eps) / (total + self.codebook_size * self.eps) * total
        self.codebook.copy_(self.ema_sum / smoothed[:, None])
        dead = (self.ema_count < self.dead_threshold).nonzero().flatten()
        if dead.numel():
            pick = torch.randint(0, z.shape[0], (dead.numel(),), generator=generator,
                                 device=generator.device).to(z.device)
            # Like Jukebox: a code assigned less than `dead_threshold` times per batch (EMA) moves
            # onto a random encoder output, and has to win assignments from the next batch on.
            self.codebook[dead] = z[pick]
            self.ema_sum[dead] = z[pick] * self.dead_threshold
            self.ema_count[dead] = self.dead_threshold
        return int(dead.numel())


class VQVAE(nn.Module):
    """Encoder, vector quantiser and decoder. Images are (B, C, H, W) floats in [-1, 1]."""

    def __init__(self, cfg: VQVAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = VQEncoder(cfg)
        self.quantizer = VectorQuantizer(cfg.codebook_size, cfg.codebook_dim)
        self.decoder = VQDecoder(cfg)

    def encode(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> code ids (B, H/4, W/4) int64."""
        z = self.encoder(x)
        return self.quantizer(z)[1]

    def decode_codes(self, ids: Tensor) -> Tensor:
        """ids (B, h, w) int64 -> images (B, C, 4h, 4w), unclamped."""
        return self.decoder(self.quantizer.embed(ids).permute(0, 3, 1, 2))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """x (B, C, H, W) -> (reconstruction, ids (B, h, w), commitment loss, encoder output z)."""
        z = self.encoder(x)
        q, ids, commit = self.quantizer(z)
        return self.decoder(q), ids, commit, z


def psnr(x: Tensor, y: Tensor) -> Tensor:
    """Per-image PSNR in dB of images in [-1, 1] (peak 1 on the [0, 1] scale). x, y: (B, ...) -> (B,)."""
    mse = ((x.clamp(-1, 1) - y.clamp(-1, 1)) / 2).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(1.0 / mse.clamp_min(1e-10))


# ----------------------------------------------------------------------------- data


def load_fmnist_images(root: str, split: str, image_size: int = 28) -> Tensor:
    """Fashion-MNIST images of `split` ("train" or "test") as (N, 1, S, S) float32 in [-1, 1];
    image_size 32 pads the 28 px images with background (-1)."""

    x = to_unit_range(load_fashion_mnist(root or None, split)[0])
    if image_size != 28:
        pad = image_size - 28
        if pad < 0 or pad % 2:
            raise ValueError(f"image_size must be 28 or 28 + an even number, got {image_size}")
        x = F.pad(x, (pad // 2,) * 4, value=-1.0)
    return x


# ----------------------------------------------------------------------------- save / load


def save_vqvae(model: VQVAE, path: str, extra: dict | None = None) -> None:
    """Write inference weights (encoder, decoder, codebook) as safetensors; the architecture config
    is stored in the file's metadata under "config" so the file loads on its own."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"config": json.dumps(asdict(model.cfg))}
    if extra:
        meta["metrics"] = json.dumps(extra)
    write_bytes(path, save(state, metadata=meta), checksum=True)


def load_vqvae(path: str, device: torch.device | str = "cpu") -> VQVAE:
    """Load a VQ-VAE exported by `save_vqvae` (eval mode)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"VQ-VAE weights not found: {path}")
    state, meta = read_safetensors_meta(path, "VQ-VAE weights", device)
    if "config" not in meta:
        raise ValueError(f"{path}: no 'config' metadata; was it written by emigm.tokenize.vqvae.save_vqvae?")
    try:
        arch = json.loads(meta["config"])
        if not isinstance(arch, dict):
            raise ValueError("not a JSON object")
        cfg = VQVAEConfig(**arch)
    except (TypeError, ValueError) as e:  # json.JSONDecodeError is a ValueError
        raise ValueError(f"{path}: invalid architecture metadata ({e})") from None

    with on_meta():  # shapes only: the file is checked before anything is allocated
        model = VQVAE(cfg)
    check_state_dict(spec_of(model), state, path)
    model = model.to_empty(device=device)
    model.load_state_dict(state)
    q = model.quantizer  # EMA statistics are not exported: restart them from the codebook
    q.ema_count.fill_(q.dead_threshold)
    q.ema_sum.copy_(q.codebook * q.dead_threshold)
    q.initialised.fill_(True)
    return model.eval()
