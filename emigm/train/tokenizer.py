"""Training the small Fashion-MNIST tokenizers: the KL autoencoder (`fmnist-kl`) and the VQ-VAE
(`fmnist-vq`), with one resumable loop.

Run folder (`run_dir`): `state.pt` (model, optimiser, generator, step; written atomically every
`ckpt_every` steps), `metrics.jsonl` and `.lock` (held while training: a second trainer on the same
folder stops with a message naming the first one's pid). Re-running the same command continues from
`state.pt` exactly; a different setting is refused with the differing keys listed (settings added
to the code later are accepted at their defaults). At the end the tokenizer is evaluated on the test
split and exported to `out_dir` (weights + a JSON record), atomically.

Batches are drawn with replacement from a torch.Generator (its state is checkpointed), so a resumed
run sees the same batches as an uninterrupted one.
"""
from __future__ import annotations

import json
import os
import time
import warnings
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from emigm.core.fields import check_fields, coerce_tuples, option
from emigm.core.fileio import command_line, ensure_writable_dir, torch_save, write_bytes
from emigm.core.progress import Stage
from emigm.core.statedict import CheckpointError, load_torch
from emigm.eval.evaluation import seam_ratio
from emigm.io.runs import (
    STATE_FILE,
    TOKENIZER,
    TOKENIZER_RUN,
    MetricsLog,
    RunLock,
    check_target,
    config_diff,
    trim_metrics,
)
from emigm.tokenize.klvae import KLVAE, KLVAEConfig
from emigm.tokenize.vqvae import VQVAE, VQVAEConfig, load_fmnist_images, psnr
from emigm.train.optim import LRSchedule, lr_at, warmup_then_decay

Tensor = torch.Tensor
TOKENIZER_KINDS = ("kl", "vq")
METRICS_FILE = "metrics.jsonl"


@dataclass(frozen=True)
class TokenizerTrainConfig:
    """A tokenizer training run; validated at construction (emigm.core.fields)."""

    kind: str = option("kl", "tokenizer to train: kl (continuous latents) or vq (codes)", choices=TOKENIZER_KINDS)
    steps: int = option(6000, "optimiser steps", low=1, high=1 << 40)
    batch_size: int = option(64, "images per step", low=1, high=1024)
    lr: float = option(2e-3, "peak learning rate", low=0.0, high=10.0, open_low=True)
    seed: int = option(0, "seed of the weights, batches and noise", low=0, high=(1 << 63) - 1)
    latent_channels: int = option(4, "kl: channels per latent token", low=1, high=64)
    widths: tuple[int, int, int] = (32, 64, 128)  # kl
    num_res_blocks: int = option(1, "kl: residual blocks per resolution", low=0, high=16)
    kl_weight: float = option(1e-4, "kl: weight of the per-element KL against the per-pixel MSE", low=0.0,
                              high=1e3)
    codebook_size: int = option(512, "vq: number of codes", low=2, high=65536)
    beta: float = option(0.25, "vq: commitment weight", low=0.0, high=100.0)
    ckpt_every: int = option(250, "steps per checkpoint", low=1, high=1 << 40)
    log_every: int = option(100, "steps per metrics line", low=1, high=1 << 40)

    def __post_init__(self) -> None:
        coerce_tuples(self)
        check_fields(self)
        if len(self.widths) != 3 or not all(isinstance(w, int) and 1 <= w <= 1024 for w in self.widths):
            raise ValueError(f"widths must be 3 whole numbers in [1, 1024], got {self.widths!r}")


def build_autoencoder(cfg: TokenizerTrainConfig):
    if cfg.kind == "kl":
        return KLVAE(KLVAEConfig(latent_channels=cfg.latent_channels, widths=tuple(cfg.widths),
                                 num_res_blocks=cfg.num_res_blocks))
    return VQVAE(VQVAEConfig(codebook_size=cfg.codebook_size))


def lr_schedule(cfg: TokenizerTrainConfig) -> LRSchedule:
    """Linear warm-up over min(100, steps/10) steps, then cosine decay to 10 % of the peak."""
    return warmup_then_decay(cfg.lr, max(1, min(100, cfg.steps // 10)), cfg.steps, "cosine", final=0.1 * cfg.lr)


def _loss(model, cfg: TokenizerTrainConfig, x: Tensor, gen: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
    if cfg.kind == "kl":
        return model.training_loss(x, gen, cfg.kl_weight)
    recon, ids, commit, z = model(x)
    rec = F.mse_loss(recon, x)
    flat = z.detach().permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    restarts = model.quantizer.ema_update(flat, ids, gen)  # EMA codebook: no optimiser involved
    return rec + cfg.beta * commit, {"rec": rec.detach(), "commit": commit.detach(),
                                     "restarts": torch.tensor(float(restarts))}


@torch.no_grad()
def evaluate_autoencoder(model, images: Tensor, batch_size: int = 500) -> dict[str, float]:
    """Test PSNR (dB) and the seam ratio of reconstructions (and of the inputs, for reference); for a
    VQ-VAE also codebook use and perplexity."""

    model.eval()
    device = next(model.parameters()).device
    total, recons = 0.0, []
    discrete = hasattr(model, "quantizer")
    counts = torch.zeros(model.cfg.codebook_size, dtype=torch.float64) if discrete else None
    for chunk in images.split(batch_size):
        x = chunk.to(device)
        if discrete:
            ids = model.encode(x)
            rec = model.decode_codes(ids)
            counts += torch.bincount(ids.flatten().cpu(), minlength=model.cfg.codebook_size).double()
        else:
            rec = model.reconstruct(x)
        total += float(psnr(rec, x).sum())
        recons.append(rec.clamp(-1, 1).cpu())
    recon = torch.cat(recons)
    out = {"psnr": total / images.shape[0], "seam_ratio": seam_ratio(recon), "seam_ratio_data": seam_ratio(images)}
    if discrete:
        p = counts / counts.sum()
        out["codebook_used"] = float((counts > 0).double().mean())
        out["perplexity"] = float((-(p[p > 0] * p[p > 0].log()).sum()).exp())
    return out


@torch.no_grad()
def fit_latent_normalisation(model, images: Tensor, batch_size: int = 1000) -> None:
    """Set the KL autoencoder's (shift, scale) from the posterior means of `images`: per-channel mean
    and standard deviation, so normalised latents are ~N(0, 1) per channel."""
    means = torch.cat([model.moments(c.to(model.shift.device))[0].cpu() for c in images.split(batch_size)])
    flat = means.transpose(0, 1).reshape(means.shape[1], -1).double()
    model.shift.copy_(flat.mean(1).float())
    model.scale.copy_(flat.std(1).clamp_min(1e-6).float())


def _settings(cfg: TokenizerTrainConfig) -> dict[str, Any]:
    doc = json.loads(json.dumps(asdict(cfg)))
    for key in ("ckpt_every", "log_every"):  # bookkeeping: may change on resume
        doc.pop(key)
    return doc


def train_tokenizer(cfg: TokenizerTrainConfig, out_dir: str | os.PathLike, run_dir: str | os.PathLike,
                    data_root: str | None = None, device: str | torch.device = "cpu", limit: int = 0,
                    max_steps: int | None = None, progress: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """Train (or resume) a tokenizer; at `cfg.steps` evaluate it on the test split and export it to
    `out_dir` (an earlier export there is replaced only with `overwrite`). `limit` > 0 uses only the
    first `limit` images of each split (tests); `max_steps` >= 1
    stops early with a checkpoint and no export. Returns the metrics (empty before the end)."""
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be >= 1 (or None: train to steps), got {max_steps}")
    device = torch.device(device)
    out_dir, run_dir = Path(out_dir), Path(run_dir)
    check_target(run_dir, "run folder", own=TOKENIZER_RUN)  # not another run, an export or a shipped asset
    check_target(out_dir, "export folder", own=TOKENIZER, files={f"{cfg.kind}.safetensors", f"{cfg.kind}.json"},
                 overwrite=overwrite)  # an earlier export is replaced only with overwrite
    ensure_writable_dir(run_dir, "run folder")  # before any work; the export folder too
    ensure_writable_dir(out_dir, "export folder")
    with ExitStack() as stack:
        stack.enter_context(RunLock(run_dir))
        return _train_tokenizer(cfg, out_dir, run_dir, data_root, device, limit, max_steps, progress, stack)


def _extra_buffers(model: torch.nn.Module) -> dict[str, Tensor]:
    """Buffers outside the state dict (the VQ codebook's EMA statistics): training state all the same."""
    persistent = set(model.state_dict())
    return {k: v for k, v in model.named_buffers() if k not in persistent}


def _resume_state(state_path: Path, cfg: TokenizerTrainConfig) -> dict[str, Any]:
    ck = load_torch(state_path)
    if not isinstance(ck, dict) or ck.get("format") != "emigm-tokenizer-train":
        raise CheckpointError(f"{state_path} is not a tokenizer training state")
    diff = config_diff(ck["settings"], _settings(cfg), _settings(TokenizerTrainConfig()))
    if diff:
        listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
        raise ValueError(f"{state_path} was written with different settings ({listed}); use the saved "
                         "values or another --run-dir")
    return ck


def _train_tokenizer(cfg: TokenizerTrainConfig, out_dir: Path, run_dir: Path, data_root: str | None,
                     device: torch.device, limit: int, max_steps: int | None, progress: bool,
                     stack: ExitStack) -> dict[str, Any]:

    state_path = run_dir / STATE_FILE
    ck = _resume_state(state_path, cfg) if state_path.exists() else None
    train = load_fmnist_images(data_root or "", "train")
    test = load_fmnist_images(data_root or "", "test")
    if limit:
        train, test = train[:limit], test[:limit]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = build_autoencoder(cfg)
    model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    schedule = lr_schedule(cfg)
    step, elapsed = 0, 0.0
    if ck is not None:
        model.load_state_dict(ck["model"])
        extra = _extra_buffers(model)
        if "buffers" in ck:
            with torch.no_grad():
                for k, v in ck["buffers"].items():
                    extra[k].copy_(v)
        elif extra:
            warnings.warn(f"{state_path} predates saving {', '.join(extra)}; they restart, so this run "
                          "will not match an uninterrupted one exactly")
        opt.load_state_dict(ck["optimizer"])
        gen.set_state(ck["generator"])
        step, elapsed = ck["step"], ck["elapsed"]
        print(f"resuming {run_dir} at step {step}", flush=True)
    trim_metrics(run_dir / METRICS_FILE, step)
    stop = cfg.steps if max_steps is None else min(cfg.steps, max_steps)
    t0 = time.perf_counter()

    def save_state() -> None:
        torch_save({"format": "emigm-tokenizer-train", "settings": _settings(cfg), "step": step,
                    "model": model.state_dict(), "buffers": _extra_buffers(model), "optimizer": opt.state_dict(),
                    "generator": gen.get_state(), "elapsed": elapsed + time.perf_counter() - t0}, state_path,
                   checksum=True)

    model.train()
    metrics = stack.enter_context(MetricsLog(run_dir / METRICS_FILE))
    bar = stack.enter_context(Stage(f"training the {cfg.kind} tokenizer", total=stop - step, unit="step",
                                    enabled=progress, detail=f"steps {step + 1}-{stop} of {cfg.steps}"))
    while step < stop:
        idx = torch.randint(0, train.shape[0], (cfg.batch_size,), generator=gen)
        x = train[idx].to(device)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, schedule)
        loss, logs = _loss(model, cfg, x, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        bar.update(1)
        if step % cfg.log_every == 0 or step == stop:
            rec = {"step": step, "loss": float(loss.detach()), **{k: float(v) for k, v in logs.items()},
                   "elapsed": round(elapsed + time.perf_counter() - t0, 2)}
            metrics.write(rec)
            if progress and bar.mode == "lines":  # a log gets a line per window; a terminal the bar
                print(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in rec.items()),
                      flush=True)
            bar.postfix(loss=f"{rec['loss']:.4g}")
        if step % cfg.ckpt_every == 0 or step == stop:
            save_state()
    elapsed += time.perf_counter() - t0
    if step < cfg.steps:
        return {}
    model.eval()
    if isinstance(model, KLVAE):
        fit_latent_normalisation(model, train)
    result = evaluate_autoencoder(model, test)
    result.update(train_seconds=round(elapsed, 1), steps=cfg.steps, batch_size=cfg.batch_size,
                  parameters=sum(p.numel() for p in model.parameters()))
    export_tokenizer(model, out_dir, cfg, result)
    return result


def export_tokenizer(model, out_dir: str | os.PathLike, cfg: TokenizerTrainConfig, metrics: dict[str, Any]) -> None:
    """Write `<kind>.safetensors` (weights + the architecture in the metadata) and `<kind>.json`."""
    from safetensors.torch import save

    out_dir = Path(out_dir)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    arch = json.dumps(asdict(model.cfg))
    write_bytes(out_dir / f"{cfg.kind}.safetensors",
                       save(state, metadata={"config": arch, "metrics": json.dumps(metrics)}), checksum=True)
    record = {"config": asdict(model.cfg), "training": asdict(cfg), "metrics": metrics,
              "command": command_line(), "torch": torch.__version__}
    write_bytes(out_dir / f"{cfg.kind}.json", (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())
