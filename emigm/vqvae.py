"""A small VQ-VAE for 28 x 28 (or 32 x 32) grey images, and its training loop.

Owns: the conv encoder / decoder (stride 4: 7 x 7 tokens at 28 px, 8 x 8 at 32 px), the vector
quantiser, `train_vqvae` (Fashion-MNIST from its IDX files), and the safetensors export that
`emigm.tokenizers.VQTokenizer` loads.

Codebook learning: EMA k-means updates (van den Oord et al. 2017, appendix; decay 0.99, Laplace
smoothing) with a straight-through estimator and a commitment loss (beta = 0.25) for the encoder.
EMA updates do not depend on the optimiser's learning rate, which keeps short CPU runs stable. Codes
whose EMA assignment count falls below `dead_threshold` are restarted on random encoder outputs of
the current batch, and the codebook is initialised from the first batch, so codebook use stays high.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .checkpoint import command_line

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
        if self.image_size % self.stride:
            raise ValueError(f"image_size {self.image_size} is not a multiple of stride {self.stride}")
        if self.stride != 4:
            raise ValueError("this VQ-VAE has a fixed stride of 4")
        if self.codebook_size < 2 or self.codebook_dim < 1:
            raise ValueError("codebook_size must be >= 2 and codebook_dim >= 1")


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
        self.register_buffer("codebook", torch.randn(codebook_size, codebook_dim) * 0.1)
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
    from .data import load_fashion_mnist, to_unit_range

    x = to_unit_range(load_fashion_mnist(root or None, split)[0])
    if image_size != 28:
        pad = image_size - 28
        if pad < 0 or pad % 2:
            raise ValueError(f"image_size must be 28 or 28 + an even number, got {image_size}")
        x = F.pad(x, (pad // 2,) * 4, value=-1.0)
    return x


# ----------------------------------------------------------------------------- save / load


def _atomic_write(path: str, write) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual file mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_vqvae(model: VQVAE, path: str, extra: dict | None = None) -> None:
    """Write inference weights (encoder, decoder, codebook) as safetensors; the architecture config
    is stored in the file's metadata under "config" so the file loads on its own."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"config": json.dumps(asdict(model.cfg))}
    if extra:
        meta["metrics"] = json.dumps(extra)
    _atomic_write(path, lambda tmp: save_file(state, tmp, metadata=meta))


def load_vqvae(path: str, device: torch.device | str = "cpu") -> VQVAE:
    """Load a VQ-VAE exported by `save_vqvae` (eval mode)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"VQ-VAE weights not found: {path}")
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
        state = load_file(path, device=str(device))
    except Exception as e:  # safetensors raises several types for a damaged header
        raise ValueError(f"{path}: not a readable VQ-VAE safetensors file ({e})") from e
    if "config" not in meta:
        raise ValueError(f"{path}: no 'config' metadata; was it written by emigm.vqvae.save_vqvae?")
    cfg = VQVAEConfig(**json.loads(meta["config"]))
    with torch.device("meta"):
        model = VQVAE(cfg)
    model = model.to_empty(device=device)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: VQ-VAE weights do not match its config; missing {missing[:4]}, "
                         f"unexpected {unexpected[:4]}")
    q = model.quantizer  # EMA statistics are not exported: restart them from the codebook
    q.ema_count.fill_(q.dead_threshold)
    q.ema_sum.copy_(q.codebook * q.dead_threshold)
    q.initialised.fill_(True)
    return model.eval()


# ----------------------------------------------------------------------------- training


@torch.no_grad()
def evaluate_vqvae(model: VQVAE, images: Tensor, batch_size: int = 500) -> dict[str, float]:
    """Mean PSNR (dB) over `images` (N, C, H, W) in [-1, 1], fraction of codes used, perplexity."""
    device = next(model.parameters()).device
    model.eval()
    total_psnr, counts = 0.0, torch.zeros(model.cfg.codebook_size, dtype=torch.float64)
    for i in range(0, images.shape[0], batch_size):
        x = images[i:i + batch_size].to(device)
        ids = model.encode(x)
        total_psnr += float(psnr(model.decode_codes(ids), x).sum())
        counts += torch.bincount(ids.flatten().cpu(), minlength=model.cfg.codebook_size).double()
    p = counts / counts.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return {"psnr": total_psnr / images.shape[0], "codebook_used": float((counts > 0).double().mean()),
            "perplexity": float(entropy.exp())}


def train_vqvae(data_root: str, out_dir: str, steps: int = 3000, batch_size: int = 128,
                codebook_size: int = 512, seed: int = 0, device: str | torch.device = "cpu",
                lr: float = 2e-3, image_size: int = 28, hidden: int = 64, codebook_dim: int = 32,
                beta: float = 0.25, log_every: int = 100, limit: int = 0) -> dict[str, float]:
    """Train the VQ-VAE on Fashion-MNIST train images; evaluate on the test split; write
    `out_dir/vq.safetensors` (weights + config metadata) and `out_dir/vq.json` (config, metrics and
    the command line), both atomically. Returns the metrics. `limit` > 0 uses only the first
    `limit` images of each split (smoke tests).

    Deterministic for a given seed and device: parameters are initialised under a forked, seeded RNG
    and batches / code restarts draw from a torch.Generator.
    """
    device = torch.device(device)
    cfg = VQVAEConfig(image_size=image_size, channels=1, hidden=hidden, codebook_size=codebook_size,
                      codebook_dim=codebook_dim)
    train = load_fmnist_images(data_root, "train", image_size)
    test = load_fmnist_images(data_root, "test", image_size)
    if limit:
        train, test = train[:limit], test[:limit]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = VQVAE(cfg)
    model.to(device).train()
    gen = torch.Generator(device="cpu").manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    warmup = max(1, min(100, steps // 10))

    def lr_at(step: int) -> float:  # linear warm-up, cosine decay to 10 %
        if step < warmup:
            return lr * (step + 1) / warmup
        frac = (step - warmup) / max(1, steps - warmup)
        return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))

    start = time.time()
    restarted = 0
    for step in range(steps):
        idx = torch.randint(0, train.shape[0], (batch_size,), generator=gen)
        x = train[idx].to(device)
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        recon, ids, commit, z = model(x)
        rec = F.mse_loss(recon, x)
        loss = rec + beta * commit
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        flat = z.detach().permute(0, 2, 3, 1).reshape(-1, cfg.codebook_dim)
        restarted += model.quantizer.ema_update(flat, ids, gen)
        if log_every and (step % log_every == 0 or step == steps - 1):
            used = int((model.quantizer.ema_count > model.quantizer.dead_threshold).sum())
            print(f"step {step:5d}  rec {rec.item():.4f}  commit {commit.item():.4f}  "
                  f"live codes {used}  restarts {restarted}  {time.time() - start:.0f}s", flush=True)
            restarted = 0
    train_seconds = time.time() - start
    metrics = evaluate_vqvae(model, test)
    metrics.update(train_seconds=round(train_seconds, 1), steps=steps, batch_size=batch_size,
                   seed=seed, lr=lr, beta=beta)
    print(f"test PSNR {metrics['psnr']:.2f} dB  codebook used {metrics['codebook_used']:.3f}  "
          f"perplexity {metrics['perplexity']:.1f}", flush=True)
    save_vqvae(model, os.path.join(out_dir, "vq.safetensors"), metrics)
    record = {"config": asdict(cfg), "metrics": metrics, "data_root": data_root or "default (Debian dataset-fashion-mnist)",
              "eval_images": int(test.shape[0]),
              "command": command_line(),
              "torch": torch.__version__}

    def write_json(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(record, f, indent=2, sort_keys=True)
            f.write("\n")

    _atomic_write(os.path.join(out_dir, "vq.json"), write_json)
    return metrics
