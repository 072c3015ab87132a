"""Giving freed memory back to the system after each run.

Why: Gradio serves handlers from a pool of threads; glibc gives each thread its own malloc arena, and
the transient buffers of a run (decoded frames, PNG and JSON payloads, Gradio's messages) leave freed but
unreturned pages in them. Measured on 100 sequential runs: +18.7 MB RSS without this, +5.7 MB with it,
with no Python objects accumulating. Elsewhere than glibc this does nothing."""
from __future__ import annotations

import ctypes
import ctypes.util

M_ARENA_MAX = -8  # mallopt parameter (glibc malloc.h)


def _libc():
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        lib.malloc_trim  # noqa: B018 (glibc only)
        return lib
    except (OSError, AttributeError):
        return None


_LIBC = _libc()


def limit_arenas(n: int = 2) -> None:
    """At start-up: at most n malloc arenas, however many threads serve requests."""
    if _LIBC is not None and hasattr(_LIBC, "mallopt"):
        _LIBC.mallopt(M_ARENA_MAX, n)


def release() -> None:
    """After a run: return the freed heap pages to the system (about a millisecond)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
