"""Reading weights safely and checking them against a model before anything is built: the one-line
`CheckpointError`, the weights-only torch loader (which bounds what it will inflate before reading),
safetensors reading, state-dict checks (keys, shapes, dtypes, finite values of a bounded
magnitude) against a {key: (shape, dtype)} spec, and the meta-device builds those specs come from
(`on_meta`, `shapes_of`)."""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch.overrides import TorchFunctionMode

from emigm.core.fileio import ChecksumError, check_regular, verify_checksum


class CheckpointError(ValueError):
    """A checkpoint or export that is missing, corrupt or does not fit the model."""


# The one non-tensor class the reference training code pickles into its checkpoints ("args").
SAFE_GLOBALS = (argparse.Namespace,)
# The largest |weight| a loaded file may hold. Why a bound: finite weights can still overflow a forward
# pass (a 3e38 weight makes inf at the first matmul, and the sampler then writes NaN images). The
# largest magnitude in any shipped file is 6.8 (a BatchNorm running variance; network weights stay
# under 3), so 1e4 refuses only files no training produces. The sampler's own output check
# (emigm.sample.checks) stays the guarantee; this bound refuses such files at the door.
MAX_WEIGHT = 1e4


def _size(n: float) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} bytes"


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


def check_archive(path: str | os.PathLike, max_bytes: int | None = None) -> None:
    """Bound what torch.load would inflate, from the zip archive's own record sizes, before anything is
    read: torch.save stores its records uncompressed, so the records of a real checkpoint add up to
    less than the file itself; more means compressed records (a small file that would inflate to
    gigabytes) and is refused. `max_bytes` (what the caller expects the checkpoint to hold, e.g. from
    its config) lowers the limit further. Files that are not zip archives pass (torch.load judges them)."""
    path = Path(path)
    try:
        if not zipfile.is_zipfile(path):
            return
        with zipfile.ZipFile(path) as z:
            declared = sum(i.file_size for i in z.infolist())
    except (OSError, zipfile.BadZipFile, ValueError):
        return  # a damaged archive: torch.load gives the reason
    on_disk = path.stat().st_size
    if declared > on_disk:
        raise CheckpointError(f"cannot read checkpoint {path}: its records would inflate to {_size(declared)} "
                              f"from a {_size(on_disk)} file (compressed records, which torch.save never "
                              "writes); refused before reading")
    if max_bytes is not None and declared > max_bytes:
        raise CheckpointError(f"cannot read checkpoint {path}: it holds {_size(declared)}, more than the "
                              f"{_size(max_bytes)} expected here; refused before reading")


def _check_file(path: Path, what: str, verify: bool = True) -> None:
    """A weight file exists, is a regular file and (with `verify`) matches the sha256 recorded when it
    was written (emigm.core.fileio.verify_checksum); CheckpointError naming `what` and the file otherwise."""
    try:
        if not check_regular(path, what):
            raise CheckpointError(f"{what} not found: {path}")
        if verify:
            verify_checksum(path, what)
    except ChecksumError as e:
        raise CheckpointError(str(e)) from None
    except ValueError as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(str(e)) from None


def load_torch(path: str | os.PathLike, max_bytes: int | None = None) -> Any:
    """torch.load with weights_only=True, allowing `argparse.Namespace` (the reference's saved "args")
    and nothing else, after `check_archive` (nothing is inflated past the file's own size or
    `max_bytes`); a missing, corrupt, foreign or inflating file raises a one-line CheckpointError
    naming it. torch's warnings about the file (e.g. an unusual pickle protocol) are not printed: the
    error says what is wrong."""
    path = Path(path)
    _check_file(path, "checkpoint", verify=False)
    check_archive(path, max_bytes)  # from the archive's directory: before the whole file is read to hash it
    _check_file(path, "checkpoint")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
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


class _NoFills(TorchFunctionMode):
    """Inside `on_meta`: skips initialisers' random fills of meta tensors and makes value factories
    (randn, rand, eye) plain empty meta tensors. Why: a meta tensor has no values, and torch's meta random
    ops import its compiler on first use (seconds and about 75 MB) for nothing."""

    FILLS = frozenset({torch.nn.init.normal_, torch.nn.init.trunc_normal_, torch.Tensor.normal_,
                       torch.Tensor.uniform_})
    FACTORIES = frozenset({torch.randn, torch.rand, torch.eye})

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.FILLS:
            tensor = args[0] if args else kwargs.get("tensor", kwargs.get("self"))
            if isinstance(tensor, torch.Tensor) and tensor.is_meta:
                return tensor
        if func in self.FACTORIES:
            keep = {k: v for k, v in kwargs.items() if k in ("dtype", "requires_grad")}
            if func is torch.eye:  # eye(n) or eye(n, m)
                n = args[0] if args else kwargs["n"]
                m = args[1] if len(args) > 1 else kwargs.get("m", n)
                return torch.empty(n, n if m is None else m, device="meta", **keep)
            return torch.empty(*args, *([kwargs["size"]] if "size" in kwargs else []), device="meta", **keep)
        return func(*args, **kwargs)


@contextlib.contextmanager
def on_meta() -> Iterator[None]:
    """Build modules on the meta device: shapes only, nothing allocated, initialisers' random fills
    skipped (`_NoFills`). For checking a file against a model before the model is built."""
    with torch.device("meta"), _NoFills():
        yield


def shapes_of(build: Callable[[], torch.nn.Module]) -> Spec:
    """The {key: (shape, dtype)} spec of the module `build()` makes, built `on_meta`: what a file is
    checked against before a model is built."""
    with on_meta():
        return spec_of(build())


def check_state_dict(expected: Spec, state: Any, source: str, finite: bool = True) -> None:
    """Check a state dict read from a file against what a model expects, BEFORE anything is built from
    it: a dict of tensors, the same keys, the same shapes (so the same ranks), floating-point values
    where the model has floating-point tensors, and (when `finite`) no NaN or infinite value and no
    magnitude above MAX_WEIGHT. CheckpointError (one line naming `source` and the first offending
    keys) otherwise."""
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
        check_magnitudes(state, source)


def check_magnitudes(state: dict[str, torch.Tensor], source: str, bound: float = MAX_WEIGHT) -> None:
    """Refuse NaN or infinite floating-point values, and magnitudes above `bound` (see MAX_WEIGHT), in
    one pass per tensor (its min and max). One line naming `source` and the first keys."""
    nonfinite, large = [], []
    for k, v in state.items():
        if not v.is_floating_point() or v.numel() == 0:
            continue
        lo, hi = (float(x) for x in torch.aminmax(v.detach().reshape(-1)))
        peak = max(-lo, hi)
        if not (math.isfinite(lo) and math.isfinite(hi)):
            nonfinite.append(k)
        elif peak > bound:
            large.append((k, peak))
    if nonfinite:
        raise CheckpointError(f"{source}: weights contain NaN or infinite values "
                              f"({', '.join(nonfinite[:3])}{', ...' if len(nonfinite) > 3 else ''})")
    if large:
        shown = ", ".join(f"{k} up to {p:.3g}" for k, p in large[:3])
        raise CheckpointError(f"{source}: weights too large to run ({shown}{', ...' if len(large) > 3 else ''}); "
                              f"at most {bound:g} in magnitude, as any trained model is (a forward pass would "
                              "overflow)")


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
    _check_file(path, what)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        return load_file(str(path), device=str(device)), meta
    except Exception as e:  # safetensors raises several types (SafetensorError, OSError, ValueError) for damaged files
        raise CheckpointError(f"cannot read {what} {path}: {_reason(e)}") from None
