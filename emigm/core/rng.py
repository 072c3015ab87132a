"""Counter-based random numbers for sampling.

Why not torch.Generator here: the sampler must give image k the same result at any batch size, keep
the reveal-order stream ("where") apart from the token-noise stream ("what"), run on any device and
never sync with the host. A stateless hash of (sample seed, stream, step, position, counter) does all
of that in a few vectorised integer ops: every random number is addressed, not consumed, so two runs
that differ only in guidance reveal the same positions, and branching from step k reproduces the rest
of the original run. Training code, where none of this matters, uses ordinary torch.Generators.

The hash is the 32-bit "lowbias32" integer finaliser, applied in int64 arithmetic and masked to 32
bits, so the low bits are exact on every backend even when a product wraps.
"""
from __future__ import annotations

import math

import torch

Tensor = torch.Tensor
_M32 = 0xFFFFFFFF

# Stream identifiers; any distinct integers would do.
STREAM_WHERE = 0x5EED0001
STREAM_WHAT = 0x5EED0002
STREAM_PROBE = 0x5EED0003  # extra draws that only look: the anatomy's uncertainty probes


def _fmix(x: Tensor) -> Tensor:
    x = x & _M32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _M32
    x = x ^ (x >> 16)
    return x


def _fmix_int(x: int) -> int:
    """_fmix of a Python int: the same 32-bit result, computed on the host (no device tensor, so no
    host-to-device copy, which on CUDA would wait for the stream)."""
    x &= _M32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _M32
    x ^= x >> 15
    x = (x * 0x846CA68B) & _M32
    return x ^ (x >> 16)


def _mix(h: Tensor, key: Tensor | int) -> Tensor:
    if isinstance(key, int):
        return _fmix(h ^ _fmix_int(key + 0x9E3779B9))
    key = key.to(torch.int64)
    if key.device != h.device:
        key = key.to(h.device)
    return _fmix(h ^ _fmix(key + 0x9E3779B9))


def hash_bits(seeds: Tensor, *keys: Tensor | int, tail: tuple[int, ...] = ()) -> Tensor:
    """32-bit hashes of shape (*seeds.shape, *tail).

    seeds: int64 tensor of per-sample seeds (any shape); keys: ints or int64 tensors broadcastable
    to seeds' shape; each element of `tail` gets its own counter.
    """
    h = _fmix(seeds.to(torch.int64) ^ 0x2545F491)
    for key in keys:
        h = _mix(h, key)
    if tail:
        n = math.prod(tail)
        idx = torch.arange(n, dtype=torch.int64, device=h.device)
        h = _mix(h.unsqueeze(-1), idx).reshape(*h.shape, *tail)
    return h


def uniform(seeds: Tensor, *keys: Tensor | int, tail: tuple[int, ...] = ()) -> Tensor:
    """Uniform float32 numbers in the open interval (0, 1), addressed by (seed, *keys, tail index)."""
    bits = hash_bits(seeds, *keys, tail=tail) >> 8  # 24 bits: exact in float32
    return (bits.to(torch.float32) + 0.5) * (1.0 / (1 << 24))


def normal(seeds: Tensor, *keys: Tensor | int, tail: tuple[int, ...] = ()) -> Tensor:
    """Standard normal float32 numbers (Box-Muller on two independent uniforms)."""
    u1 = uniform(seeds, *keys, 1, tail=tail)
    u2 = uniform(seeds, *keys, 2, tail=tail)
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)


def gumbel(seeds: Tensor, *keys: Tensor | int, tail: tuple[int, ...] = ()) -> Tensor:
    """Standard Gumbel float32 numbers."""
    return -torch.log(-torch.log(uniform(seeds, *keys, tail=tail)))
