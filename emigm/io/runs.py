"""A training run's folder: its checkpoints (listing, reading, resume checks), its metrics log, the
lock that keeps a second trainer out, and exports from its checkpoints.

    .lock             held (flock) by the trainer while it runs; holds its pid and host
    config.json       the run's config, written at start
    metrics.jsonl     one JSON line per log_every steps
    ckpt-0001000.pt   training state, written atomically (the newest `keep_last` are kept)
    export/           inference export (EMA weights + config) at the end of the run

(A tokenizer's run folder holds `state.pt` instead of checkpoints.) `check_target` keeps every
command that writes a folder (export, train, train-sg, train-tokenizer) out of the folders whose files
it would overwrite: run folders, model exports, tokenizer folders and the shipped assets.
"""
from __future__ import annotations

import json
import os
import re
import socket
import warnings
from pathlib import Path
from typing import Any

import torch

from emigm.core.config import RunConfig, from_dict
from emigm.core.fileio import ASSETS_DIR, ensure_writable_dir, write_error, write_text
from emigm.core.statedict import CheckpointError, check_state_dict, load_torch
from emigm.io.exports import WEIGHTS_FILE, save_export
from emigm.nn.budget import check_size, model_spec
from emigm.nn.model import MaskedGenerator

CKPT_FORMAT, CKPT_VERSION = "emigm-train-state", 1
CKPT_PATTERN = re.compile(r"^ckpt-(\d{7,})\.pt$")
CONFIG_FILE, METRICS_FILE, EXPORT_DIR, LOCK_FILE = "config.json", "metrics.jsonl", "export", ".lock"
STATE_FILE = "state.pt"  # a tokenizer training run's state (emigm.train.tokenizer)
# what a tokenizer export folder holds (emigm.tokenize.tokenizers, emigm.train.tokenizer.export_tokenizer)
TOKENIZER_FILES = frozenset({"kl.safetensors", "kl.json", "vq.safetensors", "vq.json", "kl16.ckpt"})
# Keys that may differ on resume: they change bookkeeping, not the trajectory (train.steps: upwards).
RESUMABLE_KEYS = frozenset({"train.steps", "train.log_every", "train.ckpt_every", "train.keep_last",
                            "train.sample_every", "train.out_dir", "train.compile", "data.num_workers", "data.path"})


class _Absent:
    def __repr__(self) -> str:
        return "(absent)"


ABSENT = _Absent()


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def config_diff(saved: dict[str, Any], requested: dict[str, Any],
                defaults: dict[str, Any] | None = None) -> dict[str, tuple[Any, Any]]:
    """Dotted key -> (saved value, requested value) for every leaf that differs (ABSENT where a side
    lacks the key). A key the saved config lacks is no difference when the requested value is that
    key's value in `defaults` (a config of defaults): fields added to the code after the run started
    default to what the code did before them."""
    a, b, d = _flatten(saved), _flatten(requested), _flatten(defaults or {})
    diff = {}
    for k in sorted(set(a) | set(b)):
        old, new = a.get(k, ABSENT), b.get(k, ABSENT)
        if old is ABSENT and k in d and new == d[k]:
            continue
        if old != new:
            diff[k] = (old, new)
    return diff


def check_resume_config(saved: dict[str, Any], requested: dict[str, Any], step: int, source: str,
                        defaults: dict[str, Any] | None = None) -> None:
    """Refuse to resume `source` (saved config, at `step`) with a different requested config; keys
    the saved config lacks are accepted at their value in `defaults` (see `config_diff`)."""
    diff = config_diff(saved, requested, defaults)
    bad = {k: v for k, v in diff.items() if k not in RESUMABLE_KEYS}
    if bad:
        listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in bad.items())
        raise ValueError(f"{source} was written with a different config ({listed}); use the saved "
                         "values or another --out-dir (only train.steps may grow on resume)")
    if requested["train"]["steps"] < step:
        raise ValueError(f"{source} is at step {step}, past the requested train.steps "
                         f"{requested['train']['steps']}")


# ----------------------------------------------------------------------------- run folder


def default_run_dir(cfg: RunConfig) -> Path:
    return Path(cfg.train.out_dir) / cfg.name


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """[(step, path)] of the run's checkpoints, oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), run_dir / m.group(0)) for m in map(CKPT_PATTERN.match, os.listdir(run_dir)) if m]
    return sorted(found)


def load_checkpoint(path: str | os.PathLike, max_bytes: int | None = None) -> dict[str, Any]:
    """Read a training checkpoint; CheckpointError naming the file if it is unreadable or foreign, or
    holds more than `max_bytes` (emigm.core.statedict.check_archive)."""
    ck = load_torch(path, max_bytes)
    if not isinstance(ck, dict) or ck.get("format") != CKPT_FORMAT:
        raise CheckpointError(f"{path} is not an emigm training checkpoint")
    if ck.get("version") != CKPT_VERSION:
        raise CheckpointError(f"{path}: checkpoint version {ck.get('version')} is not {CKPT_VERSION}")
    return ck


def latest_checkpoint(run_dir: str | os.PathLike, max_bytes: int | None = None) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint of a run folder as (path, contents), or None when there is none. An
    unreadable newest checkpoint (or one holding more than `max_bytes`) is a CheckpointError naming it
    (and the one to fall back to): we do not silently resume from an older one."""
    ckpts = list_checkpoints(run_dir)
    if not ckpts:
        return None
    path = ckpts[-1][1]
    try:
        return path, load_checkpoint(path, max_bytes)
    except CheckpointError as e:
        hint = f"; move it away to resume from {ckpts[-2][1].name}" if len(ckpts) > 1 else ""
        raise CheckpointError(f"{e}{hint}") from None


# ----------------------------------------------------------------------------- write targets

TRAINING_RUN, TOKENIZER_RUN, MODEL_EXPORT, TOKENIZER = ("a training run folder", "a tokenizer's training run folder",
                                                        "a model export", "a tokenizer folder")


def folder_kind(folder: str | os.PathLike) -> str | None:
    """What an existing folder holds, by its files: TRAINING_RUN (config.json with the lock, metrics or
    checkpoints), TOKENIZER_RUN (state.pt with the lock or metrics), MODEL_EXPORT (config.json +
    model.safetensors), TOKENIZER (kl / vq weights or records), or None (anything else, or not a
    folder: a lone `.lock`, which other tools write too, says nothing)."""
    try:
        names = set(os.listdir(folder))
    except OSError:
        return None
    if STATE_FILE in names and (LOCK_FILE in names or METRICS_FILE in names):
        return TOKENIZER_RUN
    if CONFIG_FILE in names and (LOCK_FILE in names or METRICS_FILE in names
                                 or any(CKPT_PATTERN.match(n) for n in names)):
        return TRAINING_RUN
    if CONFIG_FILE in names and WEIGHTS_FILE in names:
        return MODEL_EXPORT
    if names & TOKENIZER_FILES:
        return TOKENIZER
    return None


def check_target(folder: str | os.PathLike, what: str, own: str | None = None,
                 allow: str | os.PathLike | None = None) -> None:
    """Refuse to write `what` (e.g. "export folder", "run folder") into `folder` when it is, or lies
    inside, a folder whose files it would overwrite or mix with: a shipped asset (anything already in
    assets/; a run never goes there), or a folder of another kind than `own` (the kind this command
    writes itself: TRAINING_RUN for train, TOKENIZER_RUN for train-tokenizer's state, MODEL_EXPORT
    for export), or any folder of a known kind above it. `allow`: one folder that may lie inside a run
    (a run's own export/). One-line ValueError naming the path and what it is."""
    text = os.fspath(folder)
    target = Path(text).expanduser().resolve()
    assets = ASSETS_DIR.resolve()
    if target == assets or assets in target.parents:
        top = assets / target.relative_to(assets).parts[0] if target != assets else assets
        if target == assets:
            where = "the shipped assets folder assets/"
        elif top.exists():
            where = f"{'' if target == top else 'inside '}the shipped asset assets/{top.name}"
        else:
            where = "inside the shipped assets folder assets/, where no run goes"
        if target == assets or top.exists() or own in (TRAINING_RUN, TOKENIZER_RUN):
            raise ValueError(f"{what} {text} is {where}; shipped files are never overwritten: give a folder "
                             "outside assets/")
    kind = folder_kind(target) if target.is_dir() else None
    if kind is not None and kind != own:
        raise ValueError(f"{what} {text} is {kind}; writing there would overwrite or mix with its files: give "
                         "a new folder")
    if allow is not None and target == Path(allow).expanduser().resolve():
        return
    for parent in target.parents:
        kind = folder_kind(parent)
        if kind is not None:
            raise ValueError(f"{what} {text} is inside {kind} ({parent}); give a folder of its own")


# ----------------------------------------------------------------------------- metrics


def trim_metrics(path: str | os.PathLike, upto_step: int) -> None:
    """Before resuming at `upto_step`: drop metric lines past it (written by a run killed before its
    next checkpoint) and a torn last line (a run killed while writing it), with a warning for the
    latter. A corrupt line elsewhere is a ValueError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        return
    lines = path.read_text(errors="replace").splitlines()
    keep = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                warnings.warn(f"{path}: dropping a torn last line (a run stopped while writing it): "
                              f"{line[:60]!r}", stacklevel=2)
                continue
            raise ValueError(f"{path}, line {i + 1}: not valid JSON ({line[:60]!r}); fix or remove the "
                             "line to resume") from None
        if not isinstance(rec, dict):
            raise ValueError(f"{path}, line {i + 1}: not a metrics record ({line[:60]!r})")
        if rec.get("step", 0) <= upto_step:
            keep.append(line)
    if len(keep) != len(lines):
        write_text(path, "".join(ln + "\n" for ln in keep))


class MetricsLog:
    """Appends one JSON line per record to a metrics file, flushed at once; OS errors (a full disk)
    become a WriteError naming the file."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        try:
            self._file = open(self.path, "a")
        except OSError as e:
            raise write_error(self.path, e) from None

    def write(self, record: dict[str, Any]) -> None:
        try:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        except OSError as e:
            raise write_error(self.path, e) from None

    def close(self) -> None:
        try:
            self._file.close()
        except OSError:
            pass

    def __enter__(self) -> "MetricsLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ----------------------------------------------------------------------------- lock


class RunLockedError(ValueError):
    """Another process holds the run folder's lock."""


class RunLock:
    """An exclusive lock on a run folder for the whole of a training: `flock` on `run_dir/.lock`,
    which then holds this process's pid and host. The kernel drops the lock when the process ends,
    however it ends, so a killed run never leaves a stale lock behind. The file itself stays."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock, as before
            warnings.warn(f"cannot lock {self.run_dir} on this system; do not start two trainers on it")
            return self
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise write_error(self.path, e) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 256, 0).decode(errors="replace").split()
            os.close(fd)
            who = f"pid {holder[0]} on host {holder[1]}" if len(holder) >= 2 else "a process that has not written its pid yet"
            raise RunLockedError(f"{self.run_dir} is in use by another trainer ({who}, holding {self.path}); "
                                 "wait for it to end or stop it, or use another folder") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        except OSError as e:
            os.close(fd)
            raise write_error(self.path, e) from None
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor releases the flock
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def is_training_state(ck: Any) -> bool:
    """True for the contents of our training checkpoints (a dict with format emigm-train-state)."""
    return isinstance(ck, dict) and ck.get("format") == CKPT_FORMAT


def read_training_checkpoint(path: Path, ck: Any, device: torch.device | str | None = None):
    """(RunConfig, EMA state dict, step) of a generator training checkpoint's contents `ck`, checked
    before anything is built: the version, the config (valid, and a size that fits), the EMA weights
    (keys, shapes, dtypes, finite values). Errors are one line naming the file."""

    name = path.name
    if ck.get("version") != CKPT_VERSION:
        raise CheckpointError(f"{name}: training checkpoint version {ck.get('version')!r} is not {CKPT_VERSION}")
    if not isinstance(ck.get("config"), dict):
        raise CheckpointError(f"{name}: not a usable training checkpoint (no 'config' object)")
    if "ema" not in ck:
        raise CheckpointError(f"{name}: not a usable training checkpoint (no 'ema' weights)")
    try:
        cfg = from_dict(RunConfig, ck["config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{name}: not a usable training checkpoint ({e})") from None
    check_size(cfg, name, device)
    check_state_dict(model_spec(cfg), ck["ema"], f"{name} (EMA)")
    step = ck.get("step")
    return cfg, ck["ema"], step if isinstance(step, int) else None


# ----------------------------------------------------------------------------- exports


def export_checkpoint(source: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write an inference export (EMA weights + config) from a generator training checkpoint, or
    from the newest checkpoint of a run folder: for exporting a run before it reaches train.steps.
    The output folder is checked first (`check_target`: not a run, a tokenizer or a shipped asset,
    except the run's own export/), the checkpoint (config, size, EMA weights) before the model is
    built."""

    src = Path(source)
    if not str(out_dir).strip():
        raise ValueError("the export folder is empty: give --out DIR")
    ckpts = list_checkpoints(src) if src.is_dir() else [(0, src)]
    if not ckpts:
        raise CheckpointError(f"no checkpoints (ckpt-*.pt) in {src}")
    path = ckpts[-1][1]
    # not into a run, a tokenizer or a shipped asset; the run's own export/ is where the trainer writes too
    check_target(out_dir, "export folder", own=MODEL_EXPORT, allow=path.parent / EXPORT_DIR)
    ensure_writable_dir(out_dir, "export folder")
    path, ck = latest_checkpoint(src) if src.is_dir() else (src, load_checkpoint(src))
    cfg, ema, step = read_training_checkpoint(path, ck)
    model = MaskedGenerator(cfg)
    model.load_state_dict(ema)
    def number(v):
        return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    elapsed = number(ck.get("elapsed"))
    meta = {"steps": step, "planned_steps": cfg.train.steps,
            "seconds": round(elapsed if elapsed is not None else 0.0, 3),
            "final_loss": number(ck.get("loss")), "exported_from": path.name}
    return save_export(model, cfg, out_dir, meta=meta, state=ema)
