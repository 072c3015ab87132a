"""Which torch device to run on: the one parser of a device name, for the CLI, training and the app.

Names: "auto" (CUDA when available, else the CPU), "cpu", "cuda" (the process's local GPU under
torchrun, else GPU 0) and "cuda:N". A CUDA device that was asked for and is missing is an error,
never a silent fall-back to the CPU. Also the sampler's precision (autocast dtype) and the one-line
out-of-memory error of a batch that does not fit.
"""
from __future__ import annotations

import contextlib

import torch

VALID = "auto, cpu, cuda, cuda:N"


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """A device name -> torch.device; ValueError (one line naming the device and the alternative)
    for unknown names and for CUDA devices that do not exist here."""
    text = str(name).strip().lower()
    if text == "auto":
        return resolve_device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda":
        index = local_rank
    elif text.startswith("cuda:"):
        digits = text[len("cuda:"):]
        if not digits.isdigit():
            raise ValueError(f"unknown device {name!r}; valid: {VALID}")
        index = int(digits)
    else:
        raise ValueError(f"unknown device {name!r}; valid: {VALID}")
    if not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was requested but no CUDA device is available "
                         f"(torch {torch.__version__}); use --device cpu")
    count = torch.cuda.device_count()
    if index >= count:
        raise ValueError(f"device {name!r}{' (local rank %d)' % local_rank if text == 'cuda' else ''} does not "
                         f"exist: {count} CUDA device(s) here (cuda:0..cuda:{count - 1}); use one of those or cpu")
    return torch.device("cuda", index)


# ----------------------------------------------------------------------------- precision and memory

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def device_name(device: torch.device) -> str:
    """'cuda:0 (NVIDIA H100 80GB HBM3)' or 'cpu'."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return str(device)


def bf16_supported(device: torch.device) -> bool:
    """Native bf16 matrix units: CUDA devices of compute capability 8.0 or newer."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8


def resolve_precision(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype of a sampler or benchmark run (None: plain fp32). "auto" is bf16 on a CUDA
    device that has it and fp32 elsewhere; bf16 / fp16 asked for where they cannot run is a one-line
    ValueError naming the device and the alternative, never a silent fp32 run."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return None
    if precision == "auto":
        return torch.bfloat16 if bf16_supported(device) else None
    if device.type != "cuda":
        raise ValueError(f"precision {precision} (autocast) runs on CUDA devices only, not on {device_name(device)}; "
                         "use precision fp32 (or auto) there")
    if precision == "bf16" and not bf16_supported(device):
        raise ValueError(f"device {device_name(device)} has no bf16 support (compute capability "
                         f"{'.'.join(map(str, torch.cuda.get_device_capability(device)))} < 8.0); "
                         "use precision fp16 or fp32")
    return _DTYPES[precision]


def autocast(device: torch.device, dtype: torch.dtype | None, cache: bool = True):
    """Autocast to `dtype` on the device (a no-op context for None). cache=False re-casts weights on
    every use: needed inside CUDA graphs, whose replays must not read a cache freed after capture."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype, cache_enabled=cache)


class DeviceMemoryError(ValueError):
    """A batch that does not fit in the device's memory (one line: batch, device, a smaller batch)."""


@contextlib.contextmanager
def memory_guard(batch: int, device: torch.device, what: str, hint: str = ""):
    """Turn a CUDA out-of-memory error inside the block into a one-line DeviceMemoryError naming the
    batch size and the device and suggesting a smaller batch (never a retry on the CPU)."""
    try:
        yield
    except torch.OutOfMemoryError:
        total = ""
        if device.type == "cuda":
            torch.cuda.empty_cache()
            total = f", {torch.cuda.get_device_properties(device).total_memory / 2**30:.0f} GiB"
        smaller = hint or f"use a smaller batch (e.g. {max(1, batch // 2)})"
        raise DeviceMemoryError(f"{what} with batch {batch} does not fit in the memory of "
                                f"{device_name(device)}{total}; {smaller}") from None
