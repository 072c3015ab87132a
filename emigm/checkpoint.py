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
        return f"not a torch checkpoint, or one the weights-only loader refuses ({m.group(1).strip()[:200]})"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return f"{type(e).__name__} (empty or truncated file?)"
    first = re.split(r"(?<=[a-z0-9)])\. (?=[A-Z])", lines[0])[0]  # the first sentence: torch appends advice
    return f"{type(e).__name__}: {first[:200]}"


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


Spec = dict[str, tuple[tuple[int, ...], torch.dtype]]


def spec_of(module: torch.nn.Module) -> Spec:
    """{key: (shape, dtype)} of a module's state dict."""
    return {k: (tuple(v.shape), v.dtype) for k, v in module.state_dict().items()}


def check_state_dict(expected: Spec, state: Any, source: str, finite: bool = True) -> None:
    """Check a state dict read from a file against what a model expects, BEFORE anything is built from
    it: a dict of tensors, the same keys, the same shapes (so the same ranks), floating-point values
    where the model has floating-point tensors, and (when `finite`) no NaN or infinite value.
    CheckpointError (one line naming `source` and the first offending keys) otherwise."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{source}: expected a state dict of tensors, got {type(state).__name__}")
    odd = [str(k) for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if odd:
        raise CheckpointError(f"{source}: expected a state dict of tensors; not a tensor: {', '.join(odd[:3])}")
    check_keys(set(expected), set(state), source)
    bad = [f"{k} {tuple(state[k].shape)} in the file, {shape} in the model" for k, (shape, _) in expected.items()
           if tuple(state[k].shape) != shape]
    if bad:
        raise CheckpointError(f"{source} does not fit this model: shape mismatch in {', '.join(bad[:3])}"
                              f"{f' (and {len(bad) - 3} more)' if len(bad) > 3 else ''}")
    wrong = [f"{k} ({str(state[k].dtype).removeprefix('torch.')})" for k, (_, dtype) in expected.items()
             if dtype.is_floating_point and not state[k].is_floating_point()]
    if wrong:
        raise CheckpointError(f"{source}: expected floating-point weights; {', '.join(wrong[:3])} "
                              f"{'is' if len(wrong) == 1 else 'are'} not")
    if finite:
        nonfinite = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if nonfinite:
            raise CheckpointError(f"{source}: weights contain NaN or infinite values "
                                  f"({', '.join(nonfinite[:3])}{', ...' if len(nonfinite) > 3 else ''})")


def load_state_dict_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str,
                           finite: bool = True) -> None:
    """Load with the checks of `check_state_dict` (keys, shapes, dtypes, finite values) and a one-line
    error naming the source."""
    check_state_dict(spec_of(model), state, source, finite)
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


def read_safetensors(path: Path, what: str = "model weights") -> dict[str, torch.Tensor]:
    """A safetensors file's tensors (on the CPU); CheckpointError (one line) when missing or unreadable."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise CheckpointError(f"{what} not found: {path}")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises several types (SafetensorError, OSError, ValueError) for damaged files
        raise CheckpointError(f"cannot read {what} {path}: {_reason(e)}") from None


def load_export(name_or_path: str | os.PathLike, device: str | torch.device = "cpu"):
    """Load an export -> (MaskedGenerator in eval mode, RunConfig, meta). The config is validated, the
    size estimated and the weights checked (keys, shapes, dtypes, finite values) before the model is
    built."""
    from .budget import check_size, model_spec
    from .model import MaskedGenerator

    folder = resolve_export(name_or_path)
    cfg, meta = read_export_config(folder)
    check_size(cfg, folder.name, device)
    weights = folder / WEIGHTS_FILE
    state = read_safetensors(weights)
    check_state_dict(model_spec(cfg), state, str(weights))
    model = MaskedGenerator(cfg)
    model.load_state_dict(state)
    meta = dict(meta, export_dir=str(folder))
    return model.to(device).eval(), cfg, meta
