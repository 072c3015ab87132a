"""The training loop, generic over a small task interface: one entry point for a single process (CPU
or GPU) and torchrun (DDP), with exact resume, an EMA of the weights, checkpoints, metrics and an
export at the end. The generator's task is emigm.train.generator.GeneratorTask; any module that can state its
config, data and loss trains the same way (e.g. a small add-on on top of a frozen network).

Run folder (see emigm.io.runs): `.lock` (taken for the whole training: a second trainer on the folder
stops with a message naming the first one's pid), `config.json`, `metrics.jsonl` (rank 0),
`ckpt-XXXXXXX.pt` (atomic, fsynced; the newest `keep_last` kept) and `export/` once the run reaches
train.steps. The folder is checked to be creatable and writable before any work starts.

Resume: re-running the same command continues from the newest checkpoint exactly (trainable
weights, EMA, optimizer, grad scaler, data position, every rank's generator state). An unreadable
newest checkpoint is an error naming the file. A requested config that differs from the saved one
is refused listing the differing keys; only bookkeeping keys (runs.RESUMABLE_KEYS) may change, and
train.steps only upwards; keys the saved config lacks are accepted at their default values.

Randomness: every draw comes from explicit torch.Generators: one per rank, seeded by (seed, rank),
passed to `to_inputs` and `loss`; the data order comes from a per-epoch permutation seeded by
(seed, epoch) (emigm.data.stream).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

import torch
from torch import nn

from emigm.core import distributed as dist
from emigm.core.config import TrainConfig, from_dict, to_dict
from emigm.core.devices import memory_guard, resolve_device
from emigm.core.fileio import check_regular, command_line, ensure_writable_dir, record_checksum, torch_save, write_text
from emigm.core.progress import Stage, line
from emigm.core.seeds import STREAM_TRAIN, mix_seed
from emigm.core.statedict import CheckpointError, load_state_dict_strict
from emigm.data.stream import DataStream, Share
from emigm.io.runs import (
    CKPT_FORMAT,
    CKPT_VERSION,
    CONFIG_FILE,
    EXPORT_DIR,
    METRICS_FILE,
    TRAINING_RUN,
    MetricsLog,
    RunLock,
    check_resume_config,
    check_target,
    check_train_state,
    latest_checkpoint,
    list_checkpoints,
    trim_metrics,
)
from emigm.train.ema import EMA
from emigm.train.optim import base_lr, build_optimizer, lr_at, training_schedule

Tensor = torch.Tensor
PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16}
SAMPLES_DIR = "samples"  # validation grids (train.sample_every) inside the run folder


@runtime_checkable
class TrainTask(Protocol):
    """What the loop trains.

    trainable: the module whose parameters (those with requires_grad) are optimised and EMA'd and
        whose state dict is checkpointed; everything else the task uses stays frozen.
    config_dict(): the task's config as plain JSON data, saved with the run and compared on resume
        (the trainer adds the TrainConfig under "train").
    config_defaults(): the same for a default config: a key an older run lacks resumes only at its
        default value (return {} to accept no missing keys).
    dataset(): the training items (x, y); called once, after the resume checks, so it may be slow.
    to_inputs(batch, generator): one micro-batch (tuple of tensors, on the device) -> the loss's
        inputs; runs under torch.no_grad().
    loss(inputs, generator): the scalar loss of a micro-batch; gradients flow into `trainable`.
    export(ema_state, out_dir, meta): write an inference export from the EMA weights.
    check_config(doc) (optional): validate a saved config_dict() read back from a run's config.json
        (raise ValueError); the trainer validates its "train" section itself.
    """

    trainable: nn.Module

    def config_dict(self) -> dict[str, Any]: ...

    def config_defaults(self) -> dict[str, Any]: ...

    def dataset(self) -> torch.utils.data.Dataset: ...

    def to_inputs(self, batch: tuple[Tensor, ...], generator: torch.Generator) -> Any: ...

    def loss(self, inputs: Any, generator: torch.Generator) -> Tensor: ...

    def export(self, ema_state: dict[str, Tensor], out_dir: Path, meta: dict[str, Any]) -> None: ...


# ----------------------------------------------------------------------------- checks


def micro_batch_size(t: TrainConfig, world_size: int) -> int:
    """Per-rank micro-batch = batch_size / (world_size * grad_accum); validates the train config."""
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
    training_schedule(t)  # validates lr_schedule
    split = world_size * t.grad_accum
    if t.batch_size % split:
        raise ValueError(f"train.batch_size {t.batch_size} is not divisible by world size {world_size} x "
                         f"grad_accum {t.grad_accum} = {split}")
    return t.batch_size // split


def check_max_steps(max_steps: int | None) -> None:
    if max_steps is not None and (isinstance(max_steps, bool) or max_steps < 1):
        raise ValueError(f"max_steps must be >= 1 (or None: train to train.steps), got {max_steps}")


def check_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any], source: str) -> None:
    """A checkpoint's optimizer state fits `optimizer` before it is loaded: the same groups of the same
    sizes, and every per-parameter tensor (Adam's moments) the shape of its parameter. One-line
    CheckpointError naming the file, instead of torch's errors at load or at the next step."""
    groups = state["param_groups"]
    ours = optimizer.param_groups
    if len(groups) != len(ours) or any(len(g["params"]) != len(o["params"]) for g, o in zip(groups, ours)):
        raise CheckpointError(f"{source}: not a usable training checkpoint (optimizer: its parameter groups do "
                              "not fit this model)")
    params = {i: p for g, o in zip(groups, ours) for i, p in zip(g["params"], o["params"])}
    for i, entry in state["state"].items():
        if i not in params or not isinstance(entry, dict):
            raise CheckpointError(f"{source}: not a usable training checkpoint (optimizer state {i!r} belongs to "
                                  "no parameter)")
        for key, v in entry.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                continue
            if not isinstance(v, torch.Tensor) or (v.dim() > 0 and v.shape != params[i].shape):
                raise CheckpointError(f"{source}: not a usable training checkpoint (optimizer state {i}.{key} "
                                      f"does not fit its parameter {tuple(params[i].shape)})")


def _on_main(info: dist.DistInfo, fn: Callable[[], Any]) -> Any:
    """Run `fn` on rank 0 only; a user or OS error there is raised on every rank, so no rank waits
    for a collective that rank 0 never reaches."""
    result, error = None, None
    if info.is_main:
        try:
            result = fn()
        except (ValueError, OSError) as e:
            error = e
    errors = dist.all_gather_objects(error)
    if errors[0] is not None:
        raise errors[0] if not info.is_main else error
    return result


def device_label(device: torch.device) -> str:
    return f"cuda ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "cpu"


def _autocast(dev: torch.device, precision: str):
    """bf16 / fp16 autocast on CUDA; fp32 (no autocast) elsewhere."""
    if dev.type == "cuda" and precision in PRECISIONS:
        return torch.autocast("cuda", dtype=PRECISIONS[precision])
    return contextlib.nullcontext()


class _TaskLoss(nn.Module):
    """Routes DDP's forward to task.loss, so DDP syncs the trainable module's gradients as usual."""

    def __init__(self, task: TrainTask) -> None:
        super().__init__()
        self.trainable = task.trainable
        self._loss = task.loss

    def forward(self, inputs: Any, generator: torch.Generator) -> Tensor:
        return self._loss(inputs, generator)


def checkpoint_budget(trainable: nn.Module) -> int:
    """The most bytes a checkpoint of `trainable` may hold: its state dict four times (weights, EMA and
    Adam's two moments) plus 16 MiB (generator states, data position, config). A file declaring more
    is refused before it is read (emigm.core.statedict.check_archive)."""
    state = trainable.state_dict()
    return 4 * sum(v.numel() * v.element_size() for v in state.values()) + (16 << 20)


def read_run_config(path: Path, check: Callable[[dict[str, Any]], Any] | None = None) -> dict[str, Any]:
    """A run folder's config.json, validated: valid JSON, an object, its "train" section a valid
    TrainConfig, and whatever `check` (the task's own validation) says. A file edited by hand into
    broken JSON, a NaN or an invalid value is a one-line ValueError naming the file, never ignored."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ValueError(f"{path}: not valid JSON ({e}); fix or remove it to resume") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected a JSON object (the run's config), got {type(doc).__name__}")
    train = doc.get("train", {})
    try:
        if not isinstance(train, dict):
            raise ValueError(f"train: expected an object, got {train!r}")
        from_dict(TrainConfig, train, "train")
        if check is not None:
            check(doc)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}; fix or remove it to resume") from None
    return doc


def _resume_point(run_dir: Path, cfg_dict: dict[str, Any], defaults: dict[str, Any], check=None,
                  max_bytes: int | None = None):
    """The newest checkpoint (path, contents), or (None, None); refuses a different config, in the
    newest checkpoint or in the run's config.json (which must be valid: `read_run_config`)."""
    saved = run_dir / CONFIG_FILE
    doc = read_run_config(saved, check) if check_regular(saved, "the run's config") else None
    latest = latest_checkpoint(run_dir, max_bytes)
    if latest is not None:  # its schema, before anything is built or loaded from it
        check_train_state(latest[1], latest[0])
    step = latest[1]["step"] if latest is not None else 0
    if latest is not None:
        check_resume_config(latest[1]["config"], cfg_dict, step, str(latest[0]), defaults)
    if doc is not None:  # a run stopped before its first checkpoint, or a file edited since
        check_resume_config(doc, cfg_dict, step, str(saved), defaults)
    return latest if latest is not None else (None, None)


# ----------------------------------------------------------------------------- the loop


def fit(task: TrainTask, train: TrainConfig, run_dir: str | os.PathLike, *, device: torch.device | str,
        max_steps: int | None = None, num_workers: int = 0, command: str | None = None,
        progress: bool = True, desc: str = "") -> dict[str, Any]:
    """Train (or resume) `task` with the loop settings `train` in `run_dir`, on `device` (where the
    task's modules already are; a name is resolved by emigm.core.devices.resolve_device).

    max_steps: stop once the global step reaches it (a checkpoint is written there, no export);
    None trains to train.steps and writes the export. Under torchrun (WORLD_SIZE > 1) every rank
    calls this; only rank 0 writes files. Returns a summary: run_dir, step, steps_run (this
    invocation), final_loss (mean over the last log window, all ranks), images_per_s and
    ms_per_step (this invocation, after its first step), seconds, elapsed, device, world_size,
    resumed_from, export_dir, plus `model` (the trainable module) and `ema` (its EMA state dict,
    float32)."""
    check_max_steps(max_steps)
    if not isinstance(device, torch.device):
        device = resolve_device(device, dist.info_from_env().local_rank)
    micro_batch_size(train, dist.info_from_env().world_size)  # before any process group or folder
    if train.sample_every and not callable(getattr(task, "sample_grid", None)):
        raise ValueError("train.sample_every: this run has no class grid to sample (grids are written by "
                         "generator runs); leave it at 0")
    if not any(p.requires_grad for p in task.trainable.parameters()):
        raise ValueError("the task's trainable module has no parameters that require grad")
    owns_group = dist.info_from_env().world_size > 1 and not dist.is_active()
    info = dist.init_from_env(device.type)
    run_dir = Path(run_dir)
    with contextlib.ExitStack() as stack:
        if owns_group:
            stack.callback(dist.cleanup)
        lock = RunLock(run_dir)
        stack.callback(lock.release)

        def claim() -> None:  # before any work: a usable folder that no other trainer holds
            check_target(run_dir, "run folder", own=TRAINING_RUN)  # not an export, a tokenizer, an asset
            ensure_writable_dir(run_dir, "run folder")
            lock.acquire()

        _on_main(info, claim)
        header = (f"train {desc or run_dir.name}: run folder {run_dir}, {train.steps} steps of batch "
                  f"{train.batch_size} on {device_label(device)}") if progress else ""
        return _Loop(task, train, run_dir, device, info, num_workers, stack, header).run(
            max_steps, command if command is not None else command_line(), progress, desc or run_dir.name)


class _Loop:
    """One invocation of the loop on one rank: set-up and resume, then steps, metrics, checkpoints
    and the summary (and export) at the end."""

    def __init__(self, task: TrainTask, train: TrainConfig, run_dir: Path, dev: torch.device,
                 info: dist.DistInfo, num_workers: int, stack: contextlib.ExitStack, header: str = "") -> None:
        self.task, self.t, self.run_dir, self.dev, self.info = task, train, run_dir, dev, info
        self.main = info.is_main
        self.cfg_dict = {**task.config_dict(), "train": to_dict(train)}
        defaults = {**task.config_defaults(), "train": to_dict(TrainConfig())}
        self.ck_path, ck = _resume_point(run_dir, self.cfg_dict, defaults, getattr(task, "check_config", None),
                                         checkpoint_budget(task.trainable))  # every rank reads; none writes yet
        dist.barrier()

        trainable = task.trainable
        self.optimizer = build_optimizer(trainable, train, fused=dev.type == "cuda")
        self.scaler = torch.amp.GradScaler("cuda") if dev.type == "cuda" and train.precision == "fp16" else None
        self.ema = EMA(trainable, train.ema, train.ema_warmup)
        self.gen = torch.Generator(device=dev).manual_seed(mix_seed(train.seed, STREAM_TRAIN, info.rank))
        self.schedule = training_schedule(train)
        self.step, self.elapsed, self.last_loss = 0, 0.0, float("nan")
        position = {"epoch": 0, "index": 0}
        if ck is not None:
            self._restore(ck, str(self.ck_path))
            self.step, self.elapsed, self.last_loss, position = ck["step"], ck["elapsed"], ck["loss"], ck["data"]
        if header and self.main:  # the first line: the run is checked, its data not yet read (or encoded)
            line(header + (f"; resuming at step {self.step} from {self.ck_path.name}" if ck is not None else ""))
        share = Share(train.batch_size, train.grad_accum, info.rank, info.world_size)
        self.stream = DataStream(task.dataset(), share, train.seed, epoch=position["epoch"], index=position["index"],
                                 num_workers=num_workers, pin_memory=dev.type == "cuda")
        net: nn.Module = _TaskLoss(task)
        self.ddp = info.world_size > 1
        if self.ddp:
            net = nn.parallel.DistributedDataParallel(net, device_ids=[dev.index] if dev.type == "cuda" else None)
        self.net = net
        self.params = [p for p in trainable.parameters() if p.requires_grad]

        self.metrics: MetricsLog | None = None
        if self.main:  # the lock is held and the folder is writable (fit checked both)
            for stale in run_dir.glob(".*.tmp"):  # temp files of a run killed while writing
                stale.unlink()
            write_text(run_dir / CONFIG_FILE, json.dumps(self.cfg_dict, indent=2, sort_keys=True) + "\n")
            trim_metrics(run_dir / METRICS_FILE, self.step)
            self.metrics = stack.enter_context(MetricsLog(run_dir / METRICS_FILE))

    def _restore(self, ck: dict[str, Any], source: str) -> None:
        """Load a checkpoint's weights, optimizer, scaler, EMA and this rank's generator state."""
        info, dev = self.info, self.dev
        load_state_dict_strict(self.task.trainable, ck["model"], source)
        check_optimizer_state(self.optimizer, ck["optimizer"], source)
        self.optimizer.load_state_dict(ck["optimizer"])
        self.ema.load_state_dict(ck["ema"], f"{source} (EMA)")
        if self.scaler is not None and ck.get("scaler"):
            self.scaler.load_state_dict(ck["scaler"])
        rng = ck["rng"]
        if rng["world_size"] == info.world_size and rng["device"] == dev.type:
            self.gen.set_state(rng["train"][info.rank])
        else:  # still deterministic, just not the stream an unchanged setup would have drawn
            warnings.warn(f"{source} was written by {rng['world_size']} {rng['device']} process(es); reseeding "
                          f"the training generators for {info.world_size} {dev.type} process(es)")
            self.gen.manual_seed(mix_seed(self.t.seed, STREAM_TRAIN, info.rank, ck["step"]))

    def write_grid(self, step: int) -> Path:
        """The validation grid at `step`: {run folder}/samples/step-NNNNNNN.png (the task's sample_grid),
        under a forked global RNG (CPU and this device), so the training streams are untouched."""
        path = self.run_dir / SAMPLES_DIR / f"step-{step:07d}.png"
        ensure_writable_dir(path.parent, "samples folder")
        cuda = [self.dev.index if self.dev.index is not None else torch.cuda.current_device()] \
            if self.dev.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            self.task.sample_grid(path)
        return path

    def save_checkpoint(self, seconds: float) -> None:
        """A collective: every rank calls this; rank 0 writes."""
        states = dist.all_gather_objects(self.gen.get_state())
        if not self.main:
            return
        state = {"format": CKPT_FORMAT, "version": CKPT_VERSION, "step": self.step, "config": self.cfg_dict,
                 "model": self.task.trainable.state_dict(), "ema": self.ema.state_dict(),
                 "optimizer": self.optimizer.state_dict(),
                 "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                 "data": self.stream.position, "elapsed": self.elapsed + seconds, "loss": self.last_loss,
                 "rng": {"world_size": self.info.world_size, "device": self.dev.type, "train": states}}
        torch_save(state, self.run_dir / f"ckpt-{self.step:07d}.pt", checksum=True)
        for _, old in list_checkpoints(self.run_dir)[:-self.t.keep_last]:
            record_checksum(old, None)
            old.unlink()

    def train_step(self, win_loss: Tensor, win_gn: Tensor) -> float:
        """One optimiser step over grad_accum micro-batches; adds its loss and gradient norm to the
        window sums in place (on the device: no host sync per step). Returns the step's lr."""
        t, dev, gen, net, scaler = self.t, self.dev, self.gen, self.net, self.scaler
        lr = lr_at(self.step, self.schedule)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        for i, batch in enumerate(self.stream.next_step()):
            batch = tuple(x.to(dev, non_blocking=True) for x in batch)
            with torch.no_grad():
                inputs = self.task.to_inputs(batch, gen)
            # DDP all-reduces gradients on the last micro-batch only
            with net.no_sync() if self.ddp and i < t.grad_accum - 1 else contextlib.nullcontext():
                with _autocast(dev, t.precision):
                    loss = net(inputs, gen)
                scaled = loss / t.grad_accum
                (scaler.scale(scaled) if scaler is not None else scaled).backward()
            win_loss += loss.detach().float() / t.grad_accum
        if scaler is not None:
            scaler.unscale_(self.optimizer)
        win_gn += torch.nn.utils.clip_grad_norm_(self.params, t.grad_clip if t.grad_clip > 0 else math.inf).float()
        if scaler is not None:
            scaler.step(self.optimizer)
            scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update(self.task.trainable, self.step)
        self.step += 1
        return lr

    def run(self, max_steps: int | None, command: str, progress: bool, desc: str) -> dict[str, Any]:
        t, dev, info, main = self.t, self.dev, self.info, self.main
        stop_at = t.steps if max_steps is None else min(max_steps, t.steps)
        bar = Stage(f"training {desc}", total=max(stop_at - self.step, 0), unit="step", enabled=main and progress,
                    detail=f"steps {self.step + 1}-{stop_at} of {t.steps}, batch {t.batch_size}, run folder "
                           f"{self.run_dir}").__enter__()
        start_step, t_start = self.step, time.perf_counter()
        t_first, n_first = t_start, self.step  # throughput counts from the end of this invocation's first step
        win_loss, win_gn = torch.zeros((), device=dev), torch.zeros((), device=dev)
        win_steps, win_t, ckpt_seconds = 0, t_start, 0.0
        self.task.trainable.train()
        micro = micro_batch_size(t, info.world_size)
        hint = (f"use a smaller --train.batch_size or a larger --train.grad_accum (micro-batch {micro} per "
                f"process now)")
        while self.step < stop_at:
            with memory_guard(t.batch_size, dev, "training", hint):
                lr = self.train_step(win_loss, win_gn)
            win_steps += 1
            bar.update(1)
            step = self.step
            if step == start_step + 1:
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                t_first, n_first = time.perf_counter(), step
            if step % t.log_every == 0 or step == stop_at:
                self.last_loss, gn = dist.all_reduce_mean(torch.stack([win_loss, win_gn]) / win_steps).tolist()
                now = time.perf_counter()
                ips = t.batch_size * win_steps / max(now - win_t, 1e-9)
                if self.metrics is not None:
                    self.metrics.write({"step": step, "loss": self.last_loss, "lr": lr, "grad_norm": gn,
                                        "images_per_s": ips, "elapsed": self.elapsed + now - t_start})
                    bar.postfix(loss=f"{self.last_loss:.4f}", steps_s=f"{ips / t.batch_size:.2f}",
                                img_s=f"{ips:.1f}")
                    if bar.mode == "lines":  # a log gets a line per window; a terminal the bar
                        line(f"step {step}/{t.steps}: loss {self.last_loss:.4f}, lr {lr:.3g}, {ips:.1f} images/s")
                win_loss.zero_()
                win_gn.zero_()
                win_steps, win_t = 0, now
            if step % t.ckpt_every == 0 or step == stop_at:
                t_save = time.perf_counter()
                self.save_checkpoint(t_save - t_start)
                pause = time.perf_counter() - t_save  # not training: kept out of the throughput numbers
                ckpt_seconds, win_t = ckpt_seconds + pause, win_t + pause
            if main and t.sample_every and (step % t.sample_every == 0 or step == stop_at):
                t_grid = time.perf_counter()
                self.write_grid(step)
                pause = time.perf_counter() - t_grid
                ckpt_seconds, win_t = ckpt_seconds + pause, win_t + pause
        bar.__exit__()

        now = time.perf_counter()
        seconds = now - t_start
        self.elapsed += seconds
        step = self.step
        done, train_seconds = step - n_first, now - t_first - ckpt_seconds
        if done <= 0:  # a single step: count it, warm-up and all
            done, train_seconds = step - start_step, seconds - ckpt_seconds
        ips = t.batch_size * done / train_seconds if done > 0 else 0.0
        export_dir = self.run_dir / EXPORT_DIR if step >= t.steps else None
        # a finished run re-invoked keeps its export (and the throughput recorded in it)
        exported = export_dir is not None and export_dir.is_dir() and any(export_dir.iterdir())
        if main and export_dir is not None and (step > start_step or not exported):
            meta = {"command": command, "steps": step, "seconds": round(self.elapsed, 3),
                    "final_loss": self.last_loss, "device": device_label(dev), "world_size": info.world_size,
                    "images_per_s": round(ips, 3), "batch_size": t.batch_size, "lr": base_lr(t)}
            self.task.export(self.ema.state_dict(), export_dir, meta)
        dist.barrier()
        return {"run_dir": str(self.run_dir), "step": step, "steps_run": step - start_step,
                "final_loss": self.last_loss, "images_per_s": ips,
                "ms_per_step": 1000.0 * t.batch_size / ips if ips > 0 else float("nan"), "seconds": seconds,
                "elapsed": self.elapsed, "device": device_label(dev), "world_size": info.world_size,
                "resumed_from": str(self.ck_path) if self.ck_path is not None else None,
                "export_dir": str(export_dir) if export_dir else None, "model": self.task.trainable,
                "ema": self.ema.state_dict()}
