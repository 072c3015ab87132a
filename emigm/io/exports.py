"""Inference exports: a folder of safetensors weights + JSON config, saved, found by name and loaded.

An export is a folder holding `model.safetensors` (EMA weights) and `config.json` (the RunConfig under
"config" plus metadata such as the training command, steps and final loss). Shipped models live in
`assets/<name>/` and load by name.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from emigm.core.config import RunConfig, from_dict, to_dict
from emigm.core.fileio import ASSETS_DIR, write_bytes
from emigm.core.statedict import CheckpointError, check_state_dict, read_safetensors
from emigm.nn.budget import check_size, model_spec
from emigm.nn.model import MaskedGenerator

WEIGHTS_FILE, CONFIG_FILE = "model.safetensors", "config.json"


def save_export(model: torch.nn.Module, cfg: RunConfig, out_dir: str | os.PathLike,
                meta: dict[str, Any] | None = None, state: dict[str, torch.Tensor] | None = None) -> Path:
    """Write an inference export: weights (`state`, default the model's) + config.json."""
    from safetensors.torch import save

    out = Path(out_dir)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in (state or model.state_dict()).items()}
    write_bytes(out / WEIGHTS_FILE, save(tensors), checksum=True)
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
    """The RunConfig and meta of an export's config.json; CheckpointError (one line) when the file is
    unreadable, not JSON, lacks the "config" object or holds an invalid config."""
    path = folder / CONFIG_FILE
    try:
        doc = json.loads(path.read_text())
        if not isinstance(doc, dict) or not isinstance(doc.get("config"), dict):
            raise ValueError('expected a JSON object with a "config" object (the RunConfig) and "meta"')
        meta = doc.get("meta", {})
        return from_dict(RunConfig, doc["config"]), meta if isinstance(meta, dict) else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError, ValueError, RecursionError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"bad model config {path}: {reason}") from None


def read_export(name_or_path: str | os.PathLike, device: str | torch.device = "cpu"):
    """An export read and checked, nothing built: (folder, RunConfig, meta, weights). The config is
    validated, the size estimated and the weights checked (keys, shapes, dtypes, finite and bounded
    values) against the model the config describes."""
    folder = resolve_export(name_or_path)
    cfg, meta = read_export_config(folder)
    check_size(cfg, folder.name, device)
    weights = folder / WEIGHTS_FILE
    state = read_safetensors(weights)
    check_state_dict(model_spec(cfg), state, str(weights))
    return folder, cfg, dict(meta, export_dir=str(folder)), state


def build_generator(cfg: RunConfig, state: dict[str, torch.Tensor], device: str | torch.device = "cpu") -> MaskedGenerator:
    """The model of `cfg` with checked weights `state`, in eval mode on `device`."""
    model = MaskedGenerator(cfg)
    model.load_state_dict(state)
    return model.to(device).eval()


def load_export(name_or_path: str | os.PathLike, device: str | torch.device = "cpu"):
    """Load an export -> (MaskedGenerator in eval mode, RunConfig, meta): `read_export`, then the
    model is built."""
    folder, cfg, meta, state = read_export(name_or_path, device)
    return build_generator(cfg, state, device), cfg, meta
