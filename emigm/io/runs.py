"""A training run's folder: its checkpoints (listing, reading, resume checks), its metrics log, the
lock that keeps a second trainer out, and exports from its checkpoints.

    .lock             held (flock) by the trainer while it runs; holds its pid and host
    config.json       the run's config, written at start
    metrics.jsonl     one JSON line per log_every steps
    ckpt-0001000.pt   training state, written atomically (the newest `keep_last` are kept)
    export/           inference export (EMA weights + config) at the end of the run

(A tokenizer's run folder holds `state.pt` instead of checkpoints.) The one write-target rule, for
every file and folder any command writes: `check_target` (folders: export, train, train-sg,
train-tokenizer, train-classifier) and `check_output` (files: sample --out / --trace) keep writes out
of the shipped assets, out of the files of a run, an export or a tokenizer other than the one being
written, and out of an existing folder holding files that are not the command's own; the command's
own earlier output is replaced only with an explicit `--overwrite`, which the refusal names.
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
from emigm.core.fileio import (
    ASSETS_DIR,
    CHECKSUMS_FILE,
    check_output_file,
    check_regular,
    ensure_writable_dir,
    write_error,
    write_text,
)
from emigm.core.statedict import CheckpointError, check_state_dict, load_torch
from emigm.io.exports import WEIGHTS_FILE, save_export
from emigm.nn.budget import check_size, model_spec
from emigm.nn.model import MaskedGenerator
from emigm.nn.smoother import SMOOTHER_DIR

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


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _tensors(v: Any) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and isinstance(t, torch.Tensor) for k, t in v.items())


def check_train_state(ck: Any, source: str | os.PathLike) -> dict[str, Any]:
    """The schema of a generator / add-on training checkpoint, checked on resume before anything is
    built or loaded from it: every key the trainer writes, with its type and range (step, data
    position >= 0; elapsed finite and >= 0; weights and EMA dicts of tensors; the optimizer's state and
    param groups; the generator states, one ByteTensor per rank). A missing or retyped key is a
    one-line CheckpointError naming the file and the key, never a KeyError or TypeError later.
    Returns `ck`."""
    name = os.fspath(source)

    def bad(key: str, expected: str) -> CheckpointError:
        got = ck.get(key, ABSENT) if "." not in key else None
        shown = "missing" if got is ABSENT else f"got {type(got).__name__}"
        return CheckpointError(f"{name}: not a usable training checkpoint ({key}: expected {expected}, "
                               f"{shown if '.' not in key else 'got something else'})")

    if not isinstance(ck, dict):
        raise CheckpointError(f"{name}: not a usable training checkpoint (expected a dict, got {type(ck).__name__})")
    if not _count(ck.get("step")):
        step = ck.get("step", ABSENT)
        if isinstance(step, int) and not isinstance(step, bool):
            raise CheckpointError(f"{name}: not a usable training checkpoint (step {step} is negative)")
        raise bad("step", "an integer >= 0")
    if not isinstance(ck.get("config"), dict):
        raise bad("config", "an object (the run's config)")
    for key in ("model", "ema"):
        if not _tensors(ck.get(key)):
            raise bad(key, "a dict of tensors")
    opt = ck.get("optimizer")
    if not (isinstance(opt, dict) and isinstance(opt.get("state"), dict) and isinstance(opt.get("param_groups"), list)
            and all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in opt["param_groups"])):
        raise bad("optimizer", "an optimizer state (state, param_groups)")
    if ck.get("scaler", None) is not None and not isinstance(ck["scaler"], dict):
        raise bad("scaler", "a grad-scaler state or null")
    data = ck.get("data")
    if not (isinstance(data, dict) and _count(data.get("epoch")) and _count(data.get("index"))):
        raise bad("data", "a data position {epoch, index} of integers >= 0")
    if not (_number(ck.get("elapsed")) and 0 <= ck["elapsed"] < float("inf")):
        raise bad("elapsed", "a finite number of seconds >= 0")
    if not _number(ck.get("loss")):
        raise bad("loss", "a number")
    rng = ck.get("rng")
    if not (isinstance(rng, dict) and isinstance(rng.get("world_size"), int) and not isinstance(rng["world_size"], bool)
            and rng["world_size"] >= 1 and isinstance(rng.get("device"), str) and isinstance(rng.get("train"), list)
            and len(rng["train"]) == rng["world_size"]
            and all(isinstance(s, torch.Tensor) and s.dtype == torch.uint8 for s in rng["train"])):
        raise bad("rng", "generator states {world_size, device, train: one byte tensor per rank}")
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


OVERWRITE_FLAG = "--overwrite"


def _ours(name: str, own: str | None, files: frozenset[str]) -> bool:
    """Whether an entry of an existing output folder is one the command writes there itself."""
    if name.startswith(".") or name == CHECKSUMS_FILE or name in files:
        return True
    if own == TRAINING_RUN:
        return name in (CONFIG_FILE, METRICS_FILE, EXPORT_DIR) or CKPT_PATTERN.match(name) is not None
    if own == TOKENIZER_RUN:
        return name in (STATE_FILE, METRICS_FILE)
    if own == MODEL_EXPORT:
        return name in (CONFIG_FILE, WEIGHTS_FILE, SMOOTHER_DIR, "README.md")  # README.md: its model card
    return False


def check_target(folder: str | os.PathLike, what: str, own: str | None = None,
                 allow: str | os.PathLike | None = None, files: frozenset[str] | set[str] = frozenset(),
                 overwrite: bool = False, flag: str = OVERWRITE_FLAG) -> None:
    """Refuse to write `what` (e.g. "export folder", "run folder") into `folder` when it is, or lies
    inside, a folder whose files it would overwrite or mix with: a shipped asset (anything already in
    assets/; a run never goes there), or a folder of another kind than `own` (the kind this command
    writes itself: TRAINING_RUN for train, TOKENIZER_RUN for train-tokenizer's state, MODEL_EXPORT
    for export), or any folder of a known kind above it, or an existing folder holding entries the
    command does not write (`files`, and those of `own`'s kind). An existing folder holding only
    the command's own earlier output is replaced only with `overwrite` (the refusal names `flag`),
    except a run folder (train resumes it) and `allow`: one folder that may lie inside a run (a
    run's own export/, which its trainer writes too). One-line ValueError naming the path and what
    it is."""
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
    resumable = own in (TRAINING_RUN, TOKENIZER_RUN)
    if not target.is_dir() or (resumable and folder_kind(target) == own):
        return  # nothing there yet, or the run this command resumes
    names = sorted(os.listdir(target))
    foreign = [n for n in names if not _ours(n, own, frozenset(files))]
    if foreign:
        listed = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise ValueError(f"{what} {text} is an existing folder holding files this command does not write "
                         f"({listed}); give a new or empty folder")
    mine = [n for n in names if not n.startswith(".")]
    if mine and not resumable and not overwrite:
        raise ValueError(f"{what} {text} already holds an earlier output ({', '.join(mine[:3])}); add {flag} "
                         "to replace it, or give a new folder")


def check_output(path: str | os.PathLike, option: str, suffixes: tuple[str, ...] = (), overwrite: bool = False,
                 flag: str = OVERWRITE_FLAG) -> Path:
    """The write-target rule for a file a command writes (`sample --out`, `--trace`), before any work:
    `check_output_file` (a file name, writable, not a fifo or device), then never inside the shipped
    assets, never inside a training run, a tokenizer's run, a model export or a tokenizer folder
    (their files are written by their own commands only), and an existing file is replaced only
    with `overwrite` (the refusal names `flag`). One-line ValueError / WriteError naming `option`."""
    text = os.fspath(path)
    p = check_output_file(path, option, suffixes)
    target = p.resolve()
    assets = ASSETS_DIR.resolve()
    if assets in target.parents:
        raise ValueError(f"{option} {text} is inside the shipped assets folder assets/; shipped files are never "
                         "overwritten: give a file outside assets/")
    for parent in target.parents:
        kind = folder_kind(parent)
        if kind is not None:
            raise ValueError(f"{option} {text} is inside {kind} ({parent}), whose files only its own command "
                             "writes; give a file outside it")
    if target.exists() and not overwrite:
        raise ValueError(f"{option} {text} already exists; add {flag} to replace it, or give a new file name")
    return p


# ----------------------------------------------------------------------------- metrics


def trim_metrics(path: str | os.PathLike, upto_step: int) -> None:
    """Before resuming at `upto_step`: drop metric lines past it (written by a run killed before its
    next checkpoint) and a torn last line (a run killed while writing it), with a warning for the
    latter. A corrupt line elsewhere is a ValueError naming the file and line."""
    path = Path(path)
    if not check_regular(path, "the run's metrics file"):
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
        step = rec.get("step") if isinstance(rec, dict) else None
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise ValueError(f"{path}, line {i + 1}: not a metrics record with a step >= 0 ({line[:60]!r}); fix "
                             "or remove the line to resume")
        if step <= upto_step:
            keep.append(line)
    if len(keep) != len(lines):
        write_text(path, "".join(ln + "\n" for ln in keep))


class MetricsLog:
    """Appends one JSON line per record to a metrics file, flushed at once; OS errors (a full disk)
    become a WriteError naming the file."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        check_regular(self.path, "the run's metrics file")  # opening a fifo to append would block
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
    if isinstance(step, int) and not isinstance(step, bool) and step < 0:
        raise CheckpointError(f"{name}: not a usable training checkpoint (step {step} is negative)")
    return cfg, ck["ema"], step if isinstance(step, int) and not isinstance(step, bool) else None


# ----------------------------------------------------------------------------- exports


def export_checkpoint(source: str | os.PathLike, out_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write an inference export (EMA weights + config) from a generator training checkpoint, or
    from the newest checkpoint of a run folder: for exporting a run before it reaches train.steps.
    The output folder is checked first (`check_target`: not a run, a tokenizer or a shipped asset,
    except the run's own export/), the checkpoint (config, size, EMA weights) before the model is
    built. An existing export is replaced only with `overwrite`."""

    src = Path(source)
    if not str(out_dir).strip():
        raise ValueError("the export folder is empty: give --out DIR")
    ckpts = list_checkpoints(src) if src.is_dir() else [(0, src)]
    if not ckpts:
        raise CheckpointError(f"no checkpoints (ckpt-*.pt) in {src}")
    path = ckpts[-1][1]
    # not into a run, a tokenizer or a shipped asset; the run's own export/ is where the trainer writes too
    check_target(out_dir, "export folder", own=MODEL_EXPORT, allow=path.parent / EXPORT_DIR, overwrite=overwrite)
    if overwrite and (Path(out_dir) / SMOOTHER_DIR).exists():  # its module was trained for the old weights
        raise ValueError(f"export folder {out_dir} holds a self-guidance module trained for its current weights, "
                         "which new weights would no longer fit; give a new folder, or move that module away first")
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
