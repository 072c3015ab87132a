"""Which torch device to run on: the one parser of a device name, for the CLI, training and the app.

Names: "auto" (CUDA when available, else the CPU), "cpu", "cuda" (the process's local GPU under
torchrun, else GPU 0) and "cuda:N". A CUDA device that was asked for and is missing is an error,
never a silent fall-back to the CPU.
"""
from __future__ import annotations

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
