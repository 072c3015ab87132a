"""Saving and loading: inference exports (safetensors + JSON), checkpoint reading and key checks.

An export is a folder holding `model.safetensors` (EMA weights) and `config.json` (the RunConfig under
"config" plus metadata such as the training command, steps and final loss). Shipped models live in
`assets/<name>/` and load by name.
"""
from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from .config import RunConfig, from_dict, to_dict
from .fileio import write_bytes

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"
WEIGHTS_FILE, CONFIG_FILE = "model.safetensors", "config.json"


class CheckpointError(ValueError):
    """A checkpoint or export that is missing, corrupt or does not fit the model."""


def command_line() -> str:
    """The command that launched this process, as a user would type it: `python -m module args` for
    modules (no interpreter path), `python script args` otherwise."""
    import shlex
    import sys

    argv = list(sys.argv)
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name:
        argv = ["python", "-m", spec.name.removesuffix(".__main__"), *argv[1:]]
    else:
        argv = ["python", *argv]
    return shlex.join(argv)


# The one non-tensor class the reference training code pickles into its checkpoints ("args").
SAFE_GLOBALS = (argparse.Namespace,)


def _reason(e: Exception) -> str:
    """One line saying why torch.load failed: the refused global or the cause of a weights-only failure,
    else the exception type and the first non-empty line of its message (an empty file gives none)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    m = re.search(r"unsupported (?:global: )?GLOBAL (\S+)", text, flags=re.IGNORECASE)
    if m:
        return f"refused by the weights-only loader (global {m.group(1)} is not allowed)"
    m = re.search(r"WeightsUnpickler error:\s*(\S.*)", text)  # torch's explanation precedes the cause
    if m:
        return f"refused by the weights-only loader ({m.group(1).strip()[:200]})"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return f"{type(e).__name__}: {lines[0][:200]}" if lines else f"{type(e).__name__} (empty or truncated file?)"


def load_torch(path: str | os.PathLike) -> Any:
    """torch.load with weights_only=True, allowing `argparse.Namespace` (the reference's saved "args")
    and nothing else; a missing, corrupt or foreign file raises a one-line CheckpointError naming it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated / foreign files
        raise CheckpointError(f"cannot read checkpoint {path}: {_reason(e)}") from None


def check_keys(expected: set[str], got: set[str], source: str) -> None:
    missing, unexpected = sorted(expected - got), sorted(got - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s) ({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) ({', '.join(unexpected[:5])}{', ...' if len(unexpected) > 5 else ''})")
        raise CheckpointError(f"{source} does not fit this model: " + "; ".join(parts))


def load_state_dict_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load with exact key and shape checks and a one-line error naming the source."""
    own = model.state_dict()
    check_keys(set(own), set(state), source)
    bad = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items() if state[k].shape != v.shape]
    if bad:
        raise CheckpointError(f"{source} does not fit this model: shape mismatch in {', '.join(bad[:3])}")
    model.load_state_dict(state)


def save_export(model: torch.nn.Module, cfg: RunConfig, out_dir: str | os.PathLike,
                meta: dict[str, Any] | None = None, state: dict[str, torch.Tensor] | None = None) -> Path:
    """Write an inference export: weights (`state`, default the model's) + config.json."""
    from safetensors.torch import save

    out = Path(out_dir)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in (state or model.state_dict()).items()}
    write_bytes(out / WEIGHTS_FILE, save(tensors))
    doc = {"config": to_dict(cfg), "meta": meta or {}}
    write_bytes(out / CONFIG_FILE, json.dumps(doc, indent=2, sort_keys=True).encode())
    return out


def shipped_models() -> list[str]:
    """Names of the models in assets/ (folders holding an export)."""
    if not ASSETS_DIR.is_dir():
        return []
    return sorted(p.name for p in ASSETS_DIR.iterdir() if (p / WEIGHTS_FILE).is_file() and (p / CONFIG_FILE).is_file())


def resolve_export(name_or_path: str | os.PathLike) -> Path:
    """A shipped model name or a folder / config path -> the export folder."""
    p = Path(name_or_path)
    if p.is_dir() and (p / CONFIG_FILE).is_file():
        return p
    if p.is_file() and p.name in (CONFIG_FILE, WEIGHTS_FILE):
        return p.parent
    if (ASSETS_DIR / str(name_or_path) / CONFIG_FILE).is_file():
        return ASSETS_DIR / str(name_or_path)
    names = shipped_models()
    raise CheckpointError(
        f"no model export at {name_or_path!r} (expected a folder with {CONFIG_FILE} and {WEIGHTS_FILE}, "
        f"or a shipped model name; shipped: {', '.join(names) if names else 'none'})")


def read_export_config(folder: Path) -> tuple[RunConfig, dict[str, Any]]:
    path = folder / CONFIG_FILE
    try:
        doc = json.loads(path.read_text())
        return from_dict(RunConfig, doc["config"]), doc.get("meta", {})
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"bad model config {path}: {e}") from None


def load_export(name_or_path: str | os.PathLike, device: str | torch.device = "cpu"):
    """Load an export -> (MaskedGenerator in eval mode, RunConfig, meta)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .model import MaskedGenerator

    folder = resolve_export(name_or_path)
    cfg, meta = read_export_config(folder)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"model weights not found: {weights}")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read model weights {weights}: {e}") from None
    model = MaskedGenerator(cfg)
    load_state_dict_strict(model, state, str(weights))
    meta = dict(meta, export_dir=str(folder))
    return model.to(device).eval(), cfg, meta
