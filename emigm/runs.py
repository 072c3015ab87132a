"""A training run's folder: its checkpoints (listing, reading, resume checks) and exports from them.

    config.json       the RunConfig, written at start
    metrics.jsonl     one JSON line per log_every steps
    ckpt-0001000.pt   training state, written atomically (the newest `keep_last` are kept)
    export/           inference export (EMA weights + config) at the end of the run
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from .checkpoint import CheckpointError, load_state_dict_strict, load_torch, save_export
from .config import RunConfig
from .model import MaskedGenerator

CKPT_FORMAT, CKPT_VERSION = "emigm-train-state", 1
CKPT_PATTERN = re.compile(r"^ckpt-(\d{7,})\.pt$")
CONFIG_FILE, METRICS_FILE, EXPORT_DIR = "config.json", "metrics.jsonl", "export"
# Keys that may differ on resume: they change bookkeeping, not the trajectory (train.steps: upwards).
RESUMABLE_KEYS = frozenset({"train.steps", "train.log_every", "train.ckpt_every", "train.keep_last",
                            "train.out_dir", "train.compile", "data.num_workers", "data.path"})


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def config_diff(saved: dict[str, Any], requested: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Dotted key -> (saved value, requested value) for every leaf that differs."""
    a, b = _flatten(saved), _flatten(requested)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def check_resume_config(saved: dict[str, Any], requested: dict[str, Any], step: int, source: str) -> None:
    """Refuse to resume `source` (saved config, at `step`) with a different requested config."""
    diff = config_diff(saved, requested)
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


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a training checkpoint; CheckpointError naming the file if it is unreadable or foreign."""
    ck = load_torch(path)
    if not isinstance(ck, dict) or ck.get("format") != CKPT_FORMAT:
        raise CheckpointError(f"{path} is not an emigm training checkpoint")
    if ck.get("version") != CKPT_VERSION:
        raise CheckpointError(f"{path}: checkpoint version {ck.get('version')} is not {CKPT_VERSION}")
    return ck


def _latest_checkpoint(run_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    ckpts = list_checkpoints(run_dir)
    if not ckpts:
        return None
    path = ckpts[-1][1]
    try:
        return path, load_checkpoint(path)
    except CheckpointError as e:
        hint = f"; move it away to resume from {ckpts[-2][1].name}" if len(ckpts) > 1 else ""
        raise CheckpointError(f"{e}{hint}") from None


def export_checkpoint(source: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write an inference export (EMA weights + config) from a training checkpoint, or from the
    newest checkpoint of a run folder: for exporting a run before it reaches train.steps."""
    from .config import from_dict

    src = Path(source)
    if src.is_dir():
        found = _latest_checkpoint(src)
        if found is None:
            raise CheckpointError(f"no checkpoints (ckpt-*.pt) in {src}")
        path, ck = found
    else:
        path, ck = src, load_checkpoint(src)
    cfg = from_dict(RunConfig, ck["config"])
    model = MaskedGenerator(cfg)
    load_state_dict_strict(model, ck["ema"], f"{path} (EMA)")
    meta = {"steps": ck["step"], "planned_steps": cfg.train.steps, "seconds": round(ck.get("elapsed", 0.0), 3),
            "final_loss": ck.get("loss"), "exported_from": path.name}
    return save_export(model, cfg, out_dir, meta=meta, state=ck["ema"])
