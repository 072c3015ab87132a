"""Training: one entry point for a single process (CPU or GPU) and torchrun (DDP).

Owns the training loop of the eMIGM recipe (spec sec. 3), writing and resuming checkpoints, the
deterministic data order, and the `train` / `export` CLI commands. Reading a run folder's
checkpoints and exporting from them live in emigm/runs.py.

Run folder (`out_dir`, default `{train.out_dir}/{name}`):
    config.json       the RunConfig, written at start
    metrics.jsonl     one JSON line per log_every steps: step, loss, lr, grad_norm, images_per_s, elapsed
    ckpt-0001000.pt   training state (the newest `keep_last` are kept), written atomically
    export/           inference export (EMA weights + config), written when the run reaches train.steps

Resume: re-running the same command continues from the newest checkpoint exactly (model, EMA,
optimizer, grad scaler, data position, every rank's generator state). An unreadable newest checkpoint
is an error naming the file (we do not silently fall back: move it away to resume from the previous
one). A requested config that differs from the saved one is refused, listing the differing keys;
only bookkeeping keys (RESUMABLE_KEYS) may change, and train.steps only upwards.

Randomness: every draw comes from explicit torch.Generators: one per rank for masks, label drops
and head noise, seeded by (seed, rank); data order from a per-epoch permutation seeded by
(seed, epoch), of which rank r takes the strided share r::world_size of each global batch. The
model's initial weights are drawn under a forked global RNG seeded by (seed, "init").
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from . import distributed as dist
from .checkpoint import (ASSETS_DIR, atomic_torch_save, atomic_write_bytes, command_line, load_state_dict_strict,
                         save_export)
from .config import RunConfig, apply_overrides, to_dict, to_json
from .masking import draw_mask
from .model import MaskedGenerator
from .optim import base_lr, build_optimizer, ema_decay, ema_init, ema_update, lr_at
from .runs import (CKPT_FORMAT, CKPT_VERSION, CONFIG_FILE, EXPORT_DIR, METRICS_FILE, _latest_checkpoint,
                   check_resume_config, default_run_dir, export_checkpoint, list_checkpoints)

Tensor = torch.Tensor

PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16}
_M64 = (1 << 64) - 1
_STREAM_INIT, _STREAM_DATA, _STREAM_TRAIN = 1, 2, 3


def mix_seed(*keys: int) -> int:
    """A 63-bit seed from integers (splitmix64 finaliser per key): independent streams by key."""
    h = 0x9E3779B97F4A7C15
    for k in keys:
        h = ((h ^ (k & _M64)) * 0xBF58476D1CE4E5B9) & _M64
        h ^= h >> 31
        h = (h * 0x94D049BB133111EB) & _M64
        h ^= h >> 29
    return h >> 1


# ----------------------------------------------------------------------------- config checks


def micro_batch_size(cfg: RunConfig, world_size: int) -> int:
    """Per-rank micro-batch = batch_size / (world_size * grad_accum); validates the train config."""
    t = cfg.train
    for name, value, low in (("steps", t.steps, 1), ("batch_size", t.batch_size, 1), ("grad_accum", t.grad_accum, 1),
                             ("log_every", t.log_every, 1), ("ckpt_every", t.ckpt_every, 1),
                             ("keep_last", t.keep_last, 1), ("warmup_steps", t.warmup_steps, 0)):
        if value < low:
            raise ValueError(f"train.{name} must be >= {low}, got {value}")
    if not 0.0 <= t.ema < 1.0:
        raise ValueError(f"train.ema must be in [0, 1), got {t.ema}")
    if t.grad_clip < 0:
        raise ValueError(f"train.grad_clip must be >= 0 (0 = off), got {t.grad_clip}")
    if t.precision not in ("fp32", *PRECISIONS):
        raise ValueError(f"unknown train.precision {t.precision!r}; valid: fp32, {', '.join(PRECISIONS)}")
    lr_at(0, t)  # validates lr_schedule
    split = world_size * t.grad_accum
    if t.batch_size % split:
        raise ValueError(f"train.batch_size {t.batch_size} is not divisible by world size {world_size} x "
                         f"grad_accum {t.grad_accum} = {split}")
    return t.batch_size // split


# ----------------------------------------------------------------------------- data order


def epoch_permutation(n: int, seed: int, epoch: int) -> Tensor:
    """The data order of `epoch`: a permutation of range(n) (int64) from a generator seeded by
    (seed, epoch)."""
    g = torch.Generator().manual_seed(mix_seed(seed, _STREAM_DATA, epoch))
    return torch.randperm(n, generator=g)


class DataStream:
    """Deterministic, resumable per-rank micro-batches.

    Each step consumes `batch_size` items of the epoch's permutation from position `index`; rank r
    takes the strided share [r::world_size] of those and splits it into `grad_accum` micro-batches.
    A partial last batch of an epoch is dropped. `position` is saved in checkpoints."""

    def __init__(self, dataset: torch.utils.data.Dataset, batch_size: int, grad_accum: int, rank: int,
                 world_size: int, seed: int, num_workers: int = 0, epoch: int = 0, index: int = 0,
                 pin_memory: bool = False) -> None:
        if len(dataset) < batch_size:
            raise ValueError(f"the dataset has {len(dataset)} images, fewer than one batch ({batch_size})")
        self.dataset, self.batch_size, self.grad_accum = dataset, batch_size, grad_accum
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.epoch, self.index = epoch, index
        self._perm: Tensor | None = None
        self._loader: Iterator | None = None

    @property
    def position(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    def _step_indices(self, start: int) -> list[list[int]]:
        """Micro-batch index lists of this rank for the step that starts at `start`."""
        share = self._perm[start:start + self.batch_size][self.rank::self.world_size]
        return [c.tolist() for c in share.chunk(self.grad_accum)]

    def _start_epoch(self) -> None:
        self._perm = epoch_permutation(len(self.dataset), self.seed, self.epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self.epoch)  # augmentations seeded by (seed, epoch, index)
        self._loader = None
        if self.num_workers > 0:  # workers fork with this epoch; they see indices, not randomness
            starts = range(self.index, len(self.dataset) - self.batch_size + 1, self.batch_size)
            plan = [idx for start in starts for idx in self._step_indices(start)]
            self._loader = iter(torch.utils.data.DataLoader(self.dataset, batch_sampler=plan,
                                                            num_workers=self.num_workers,
                                                            pin_memory=self.pin_memory))

    def _fetch(self, idx: list[int]) -> tuple[Tensor, Tensor]:
        items = [self.dataset[i] for i in idx]
        return torch.stack([x for x, _ in items]), torch.stack([torch.as_tensor(y) for _, y in items])

    def next_step(self) -> list[tuple[Tensor, Tensor]]:
        """grad_accum micro-batches (x (b, C, H, W) float32, y (b,) int64) for one optimiser step."""
        if self.index + self.batch_size > len(self.dataset):
            self.epoch, self.index, self._perm = self.epoch + 1, 0, None
        if self._perm is None:
            self._start_epoch()
        if self._loader is not None:
            batches = [next(self._loader) for _ in range(self.grad_accum)]
        else:
            batches = [self._fetch(idx) for idx in self._step_indices(self.index)]
        self.index += self.batch_size
        return batches


# ----------------------------------------------------------------------------- pieces


class _LossModule(nn.Module):
    """Routes DDP's forward to MaskedGenerator.loss so gradient sync works as usual."""

    def __init__(self, model: MaskedGenerator) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: Tensor, mask: Tensor, labels: Tensor, drop: Tensor, weight: Tensor,
                generator: torch.Generator) -> Tensor:
        return self.model.loss(tokens, mask, labels, drop, weight, generator=generator)


def build_model(cfg: RunConfig) -> MaskedGenerator:
    """The model with initial weights drawn from a seed of (train.seed, "init"); the global RNG is
    forked, so its state is left untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(mix_seed(cfg.train.seed, _STREAM_INIT))
        return MaskedGenerator(cfg)


def _token_source(cfg: RunConfig, device: torch.device) -> tuple[torch.utils.data.Dataset, Callable]:
    """(dataset, to_tokens): to_tokens(x on device, generator) -> tokens (b, L, C) float / (b, L) int64."""
    from .data import CachedLatents, build_dataset
    from .tokenizers import DCAETokenizer, KL16Tokenizer, build_tokenizer

    tk = cfg.tokenizer
    if cfg.data.cache_latents:  # raw encoder samples; the latent scale lives on the tokenizer class
        scales = {"kl16": KL16Tokenizer.scale, "dcae": DCAETokenizer.scale}
        if tk.kind not in scales:
            raise ValueError(f"data.cache_latents needs a kl16 or dcae tokenizer, not {tk.kind!r}")
        dataset = CachedLatents(cfg.data.cache_latents, seed=cfg.train.seed)
        scale = scales[tk.kind]
        if dataset.latent_shape != (tk.latent_channels, tk.grid, tk.grid):
            raise ValueError(f"cached latents in {cfg.data.cache_latents} have shape {dataset.latent_shape}, "
                             f"the tokenizer expects {(tk.latent_channels, tk.grid, tk.grid)}")
        return dataset, lambda x, g: (x * scale).flatten(2).transpose(1, 2)  # (b, c, h, w) -> (b, hw, c)
    tokenizer = build_tokenizer(tk, root=str(ASSETS_DIR)).to(device).eval().requires_grad_(False)
    dataset = build_dataset(cfg.data, tk, "train", num_classes=cfg.backbone.num_classes, seed=cfg.train.seed)
    if tk.kind == "kl":  # encode once; sample each step's latents from the stored posterior moments
        from .data import EncodedDataset

        dataset = EncodedDataset(dataset, tokenizer.model.moments, device=device)

        def sample_latents(moments: Tensor, g: torch.Generator) -> Tensor:
            mean, logvar = moments.unbind(1)
            noise = torch.randn(mean.shape, generator=g, device=g.device).to(mean.device)
            z = tokenizer.model.normalize(mean + (0.5 * logvar).exp() * noise)
            return z.flatten(2).transpose(1, 2)  # (b, c, h, w) -> (b, hw, c)

        return dataset, sample_latents
    if tk.kind == "kl16":  # MAR trains on posterior samples
        return dataset, lambda x, g: tokenizer.encode(x, generator=g)
    return dataset, lambda x, g: tokenizer.encode(x)


def resolve_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device cuda was requested but no CUDA device is available; use cpu")
        return torch.device("cuda", local_rank)
    if name == "cpu" or name.startswith("cuda:"):
        return torch.device(name)
    raise ValueError(f"unknown device {name!r}; valid: auto, cpu, cuda")


def _device_label(device: torch.device) -> str:
    return f"cuda ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "cpu"


def _rewrite_metrics(path: Path, upto_step: int) -> None:
    """Drop metric lines past the resumed step (written by a run killed before its next checkpoint)."""
    if not path.is_file():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= upto_step]
    atomic_write_bytes(path, "".join(ln + "\n" for ln in keep).encode())


# ----------------------------------------------------------------------------- training


def train(cfg: RunConfig, out_dir: str | os.PathLike | None = None, max_steps: int | None = None, *,
          device: str = "auto", command: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Train (or resume) the run described by `cfg` in `out_dir` (default `{train.out_dir}/{name}`).

    max_steps: stop once the global step reaches it (a checkpoint is written there, no export);
    None trains to cfg.train.steps and writes the export. Under torchrun (WORLD_SIZE > 1) every rank
    calls this; only rank 0 writes files. Returns a summary: run_dir, step, final_loss (mean over the
    last log window, all ranks), images_per_s and ms_per_step (this invocation, after its first step),
    seconds, device, world_size, resumed_from, export_dir, plus `model` (the trained module) and
    `ema` (its EMA state dict, float32)."""
    info = dist.info_from_env()
    dev = resolve_device(device, info.local_rank)
    owns_group = info.world_size > 1 and not dist.is_active()
    info = dist.init_from_env(dev.type)
    try:
        return _train(cfg, Path(out_dir) if out_dir else default_run_dir(cfg), max_steps, dev, info,
                      command if command is not None else command_line(), progress)
    finally:
        if owns_group:
            dist.cleanup()


def _resume_point(run_dir: Path, cfg_dict: dict[str, Any]) -> tuple[Path | None, dict[str, Any] | None]:
    """The newest checkpoint (path, contents), or (None, None); refuses a different config."""
    latest = _latest_checkpoint(run_dir)
    if latest is not None:
        check_resume_config(latest[1]["config"], cfg_dict, latest[1]["step"], str(latest[0]))
        return latest
    saved = run_dir / CONFIG_FILE  # a run stopped before its first checkpoint
    if saved.is_file():
        try:
            doc = json.loads(saved.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{saved}: not valid JSON ({e})") from None
        check_resume_config(doc, cfg_dict, 0, str(saved))
    return None, None


def _restore(ck: dict[str, Any], source: str, raw: nn.Module, optimizer: torch.optim.Optimizer, scaler,
             ema: dict[str, Tensor], gen: torch.Generator, info: dist.DistInfo, dev: torch.device, seed: int) -> None:
    """Load a checkpoint's model, optimizer, scaler, EMA and this rank's generator state."""
    load_state_dict_strict(raw, ck["model"], source)
    optimizer.load_state_dict(ck["optimizer"])
    for k, v in ck["ema"].items():
        ema[k].copy_(v)
    if scaler is not None and ck.get("scaler"):
        scaler.load_state_dict(ck["scaler"])
    rng = ck["rng"]
    if rng["world_size"] == info.world_size and rng["device"] == dev.type:
        gen.set_state(rng["train"][info.rank])
    else:  # still deterministic, just not the stream an unchanged setup would have drawn
        warnings.warn(f"{source} was written by {rng['world_size']} {rng['device']} process(es); reseeding "
                      f"the training generators for {info.world_size} {dev.type} process(es)")
        gen.manual_seed(mix_seed(seed, _STREAM_TRAIN, info.rank, ck["step"]))


def _autocast(dev: torch.device, precision: str):
    """bf16 / fp16 autocast on CUDA; fp32 (no autocast) elsewhere."""
    if dev.type == "cuda" and precision in PRECISIONS:
        return torch.autocast("cuda", dtype=PRECISIONS[precision])
    return contextlib.nullcontext()


def _train(cfg: RunConfig, run_dir: Path, max_steps: int | None, dev: torch.device, info: dist.DistInfo,
           command: str, progress: bool) -> dict[str, Any]:
    t, main, cfg_dict = cfg.train, info.is_main, to_dict(cfg)
    micro = micro_batch_size(cfg, info.world_size)
    stop_at = t.steps if max_steps is None else max(0, min(max_steps, t.steps))
    ck_path, ck = _resume_point(run_dir, cfg_dict)  # every rank reads; nobody writes before the barrier
    dist.barrier()

    # ---- model, optimizer, EMA, generator, data
    raw = build_model(cfg).to(dev)
    optimizer = build_optimizer(raw, t, fused=dev.type == "cuda")
    scaler = torch.amp.GradScaler("cuda") if dev.type == "cuda" and t.precision == "fp16" else None
    ema = ema_init(raw)
    gen = torch.Generator(device=dev).manual_seed(mix_seed(t.seed, _STREAM_TRAIN, info.rank))
    step, elapsed, last_loss, position = 0, 0.0, float("nan"), {"epoch": 0, "index": 0}
    if ck is not None:
        _restore(ck, str(ck_path), raw, optimizer, scaler, ema, gen, info, dev, t.seed)
        step, elapsed, last_loss, position = ck["step"], ck["elapsed"], ck["loss"], ck["data"]
    dataset, to_tokens = _token_source(cfg, dev)
    stream = DataStream(dataset, t.batch_size, t.grad_accum, info.rank, info.world_size, t.seed,
                        cfg.data.num_workers, position["epoch"], position["index"], pin_memory=dev.type == "cuda")
    if t.compile:
        raw.compile()
        if hasattr(raw.head, "net"):
            raw.head.net.compile()
    net: nn.Module = _LossModule(raw)
    ddp = info.world_size > 1
    if ddp:
        net = nn.parallel.DistributedDataParallel(net, device_ids=[dev.index] if dev.type == "cuda" else None)
    params = [p for p in raw.parameters() if p.requires_grad]
    L = cfg.tokenizer.num_tokens

    # ---- run folder (rank 0 only)
    metrics_path = run_dir / METRICS_FILE
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        for stale in run_dir.glob(".ckpt-*.tmp"):  # left by a run killed while saving
            stale.unlink()
        atomic_write_bytes(run_dir / CONFIG_FILE, (to_json(cfg) + "\n").encode())
        _rewrite_metrics(metrics_path, step)
    metrics = open(metrics_path, "a") if main else None

    def save_checkpoint() -> None:
        states = dist.all_gather_objects(gen.get_state())  # a collective: every rank calls this
        if not main:
            return
        state = {"format": CKPT_FORMAT, "version": CKPT_VERSION, "step": step, "config": cfg_dict,
                 "model": raw.state_dict(), "ema": ema, "optimizer": optimizer.state_dict(),
                 "scaler": scaler.state_dict() if scaler is not None else None, "data": stream.position,
                 "elapsed": elapsed + time.perf_counter() - t_start, "loss": last_loss,
                 "rng": {"world_size": info.world_size, "device": dev.type, "train": states}}
        atomic_torch_save(state, run_dir / f"ckpt-{step:07d}.pt")
        for _, old in list_checkpoints(run_dir)[:-t.keep_last]:
            old.unlink()

    from tqdm import tqdm

    bar = tqdm(total=t.steps, initial=step, desc=cfg.name, dynamic_ncols=True, disable=not (main and progress))
    start_step, t_start = step, time.perf_counter()
    t_first, n_first = t_start, step  # throughput counts from the end of this invocation's first step
    win_loss, win_gn = torch.zeros((), device=dev), torch.zeros((), device=dev)  # no host sync per step
    win_steps, win_t, ckpt_seconds = 0, t_start, 0.0
    raw.train()
    while step < stop_at:
        lr = lr_at(step, t)
        for group in optimizer.param_groups:
            group["lr"] = lr
        for i, (x, y) in enumerate(stream.next_step()):
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            with torch.no_grad():
                tokens = to_tokens(x, gen)
            draw = draw_mask(cfg.masking, micro, L, generator=gen, device=dev)
            drop = torch.rand(micro, generator=gen, device=dev) < cfg.masking.label_drop
            # DDP all-reduces gradients on the last micro-batch only
            with net.no_sync() if ddp and i < t.grad_accum - 1 else contextlib.nullcontext():
                with _autocast(dev, t.precision):
                    loss = net(tokens, draw.mask, y, drop, draw.weight, gen)
                scaled = loss / t.grad_accum
                (scaler.scale(scaled) if scaler is not None else scaled).backward()
            win_loss += loss.detach().float() / t.grad_accum
        if scaler is not None:
            scaler.unscale_(optimizer)
        win_gn += torch.nn.utils.clip_grad_norm_(params, t.grad_clip if t.grad_clip > 0 else math.inf).float()
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema_update(ema, raw, ema_decay(t.ema, step, t.ema_warmup))
        step, win_steps = step + 1, win_steps + 1
        bar.update(1)
        if step == start_step + 1:
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t_first, n_first = time.perf_counter(), step
        if step % t.log_every == 0 or step == stop_at:
            last_loss, grad_norm = dist.all_reduce_mean(torch.stack([win_loss, win_gn]) / win_steps).tolist()
            now = time.perf_counter()
            ips = t.batch_size * win_steps / max(now - win_t, 1e-9)
            if main:
                rec = {"step": step, "loss": last_loss, "lr": lr, "grad_norm": grad_norm, "images_per_s": ips,
                       "elapsed": elapsed + now - t_start}
                metrics.write(json.dumps(rec) + "\n")
                metrics.flush()
                bar.set_postfix(loss=f"{last_loss:.4f}", steps_s=f"{ips / t.batch_size:.2f}", img_s=f"{ips:.1f}")
            win_loss.zero_()
            win_gn.zero_()
            win_steps, win_t = 0, now
        if step % t.ckpt_every == 0 or step == stop_at:
            t_save = time.perf_counter()
            save_checkpoint()
            pause = time.perf_counter() - t_save  # not training: kept out of the throughput numbers
            ckpt_seconds, win_t = ckpt_seconds + pause, win_t + pause
    bar.close()
    if metrics is not None:
        metrics.close()

    # ---- summary and export
    now = time.perf_counter()
    seconds = now - t_start
    elapsed += seconds
    done, train_seconds = step - n_first, now - t_first - ckpt_seconds
    if done <= 0:  # a single step: count it, warm-up and all
        done, train_seconds = step - start_step, seconds - ckpt_seconds
    ips = t.batch_size * done / train_seconds if done > 0 else 0.0
    export_dir = run_dir / EXPORT_DIR if step >= t.steps else None
    # a finished run re-invoked keeps its export (and the throughput recorded in it)
    if main and export_dir is not None and (step > start_step or not (export_dir / "config.json").is_file()):
        meta = {"command": command, "steps": step, "seconds": round(elapsed, 3), "final_loss": last_loss,
                "device": _device_label(dev), "world_size": info.world_size, "images_per_s": round(ips, 3),
                "batch_size": t.batch_size, "lr": base_lr(t)}
        save_export(raw, cfg, export_dir, meta=meta, state=ema)
    dist.barrier()
    return {"run_dir": str(run_dir), "step": step, "final_loss": last_loss, "images_per_s": ips,
            "ms_per_step": 1000.0 * t.batch_size / ips if ips > 0 else float("nan"), "seconds": seconds,
            "elapsed": elapsed, "device": _device_label(dev), "world_size": info.world_size,
            "resumed_from": str(ck_path) if ck_path is not None else None,
            "export_dir": str(export_dir) if export_dir else None, "model": raw, "ema": ema}


# ----------------------------------------------------------------------------- CLI


def _parse_overrides(rest: list[str], parser: argparse.ArgumentParser) -> list[tuple[str, str]]:
    """["--train.steps", "100", "--data.path=/x"] -> [("train.steps", "100"), ("data.path", "/x")]."""
    pairs, i = [], 0
    while i < len(rest):
        tok = rest[i]
        key, eq, value = tok[2:].partition("=")
        if not tok.startswith("--") or "." not in key:
            parser.error(f"unrecognized argument {tok!r}; config overrides look like --train.steps 100")
        if not eq:
            if i + 1 >= len(rest):
                parser.error(f"config override {tok} needs a value")
            value, i = rest[i + 1], i + 1
        pairs.append((key.replace("-", "_"), value))
        i += 1
    return pairs


def _accept_overrides(parser: argparse.ArgumentParser) -> None:
    """Make `parser` collect unknown trailing `--a.b VALUE` pairs into args.overrides (argparse has no
    wildcard options; the top-level parser would otherwise reject them)."""
    known = parser.parse_known_args

    def parse_known_args(args=None, namespace=None):
        ns, rest = known(args, namespace)
        ns.overrides = _parse_overrides(rest, parser)
        return ns, []

    parser.parse_known_args = parse_known_args


def cmd_train(args: argparse.Namespace) -> None:
    from .presets import get_preset

    cfg = apply_overrides(get_preset(args.preset), getattr(args, "overrides", []))
    if args.dry_run:
        micro_batch_size(cfg, dist.info_from_env().world_size)
        print(to_json(cfg))
        return
    out = train(cfg, args.out_dir or None, args.max_steps, device=args.device, progress=not args.no_progress)
    if dist.info_from_env().is_main:
        print(f"{out['run_dir']}: step {out['step']}, loss {out['final_loss']:.4f}, "
              f"{out['images_per_s']:.1f} images/s on {out['device']}"
              + (f", export {out['export_dir']}" if out["export_dir"] else ""))


def cmd_export(args: argparse.Namespace) -> None:
    out = export_checkpoint(args.source, args.out)
    print(f"wrote {out}")


def register_cli(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `train` and `export` to the CLI's subparsers: `train --preset NAME [--a.b VALUE ...]
    [--dry-run] [--out-dir DIR] [--device D] [--max-steps N]`; `export RUN_OR_CKPT --out DIR`."""
    from .presets import PRESETS

    e = subparsers.add_parser("export", help="write an inference export from a training checkpoint")
    e.add_argument("source", help="a run folder (its newest checkpoint) or a ckpt-*.pt file")
    e.add_argument("--out", required=True, help="export folder (model.safetensors + config.json)")
    e.set_defaults(func=cmd_export)

    p = subparsers.add_parser("train", help="train or resume a run (one process, or torchrun)",
                              description="Train a preset; trailing --section.key VALUE pairs override "
                                          "the config. Re-running the same command resumes.")
    p.add_argument("--preset", required=True, help=f"{', '.join(PRESETS)}")
    p.add_argument("--out-dir", default="", help="run folder (default: {train.out_dir}/{name})")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config as JSON and exit")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--max-steps", type=int, default=None,
                   help="stop at this step (checkpointed; resumable) without changing train.steps")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train, overrides=[])
    _accept_overrides(p)
    return p


def main(argv: list[str] | None = None) -> int:
    """`python -m emigm.train ...` (the same command as `python -m emigm train ...`)."""
    from .cli import EXIT_USAGE, CliError, _Parser

    parser = _Parser(prog="python -m emigm")
    register_cli(parser.add_subparsers(dest="command", required=True, parser_class=_Parser))
    try:
        args = parser.parse_args(["train", *(sys.argv[1:] if argv is None else argv)])
        args.func(args)
    except (CliError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    return 0


if __name__ == "__main__":
    sys.exit(main())
