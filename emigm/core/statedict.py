"""Reading weights safely and checking them against a model before anything is built: the one-line
`CheckpointError`, the weights-only torch loader, safetensors reading, and state-dict checks (keys,
shapes, dtypes, finite values) against a {key: (shape, dtype)} spec."""
from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file


class CheckpointError(ValueError):
    """A checkpoint or export that is missing, corrupt or does not fit the model."""


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


def read_safetensors(path: str | os.PathLike, what: str = "model weights") -> dict[str, torch.Tensor]:
    """A safetensors file's tensors (on the CPU); CheckpointError (one line) when missing or unreadable."""
    return read_safetensors_meta(path, what)[0]


def read_safetensors_meta(path: str | os.PathLike, what: str = "model weights",
                          device: torch.device | str = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors on `device`, the file's string metadata) of a safetensors file; CheckpointError (one
    line naming `what` and the file) when it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        return load_file(str(path), device=str(device)), meta
    except Exception as e:  # safetensors raises several types (SafetensorError, OSError, ValueError) for damaged files
        raise CheckpointError(f"cannot read {what} {path}: {_reason(e)}") from None
