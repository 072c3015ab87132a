"""Seeds for torch.Generators: one 64-bit mixer that turns a tuple of integers into a seed, so that
independent random streams are addressed by key instead of being consumed from one shared source.

Stream keys in use (any distinct integers would do; they are part of saved runs, so never renumber):
STREAM_INIT (model weights), STREAM_DATA (the per-epoch data order), STREAM_TRAIN (masks, label drops
and head noise, per rank), STREAM_AUGMENT (per-item augmentation: flips, latent noise).

The sampler does not use this: it draws from the counter-based hash of emigm.core.rng, which addresses
every number by (sample seed, stream, step, position) and needs no generator state at all.
"""
from __future__ import annotations

from typing import Any

from emigm.core.fields import check_number, parse_int

_M64 = (1 << 64) - 1
MAX_SEED = (1 << 63) - 1  # seeds are int64 tensors in the sampler; negative seeds are refused


def check_seed(name: str, seed, count: int = 1) -> None:
    """Refuse a seed outside [0, MAX_SEED] and, when `count` images get seeds seed .. seed + count - 1,
    a seed whose last one would pass MAX_SEED. One line naming `name` (e.g. "--seed")."""

    check_number(name, seed, 0, MAX_SEED, integer=True)
    if seed + count - 1 > MAX_SEED:
        raise ValueError(f"{name} {seed} with {count} images needs seeds up to {seed + count - 1}, past the "
                         f"largest seed {MAX_SEED}; use a seed of at most {MAX_SEED - count + 1}")


def parse_seed(name: str, value: Any, count: int = 1) -> int:
    """A seed as the user gave it -> a checked int: an int, a whole float (a number widget's 7.0) or a
    string of ASCII digits (a command line, a URL); then `check_seed`. Every door (library, CLI, the
    explorer and its permalinks) takes the same range [0, MAX_SEED] with the same message."""
    if isinstance(value, str):
        try:
            value = parse_int(value)
        except ValueError:
            raise ValueError(f"{name} must be a whole number in [0, {MAX_SEED}], got {value!r}") from None
    elif isinstance(value, float) and value.is_integer():
        value = int(value)
    check_seed(name, value, count)
    return value


STREAM_INIT, STREAM_DATA, STREAM_TRAIN, STREAM_AUGMENT = 1, 2, 3, 4


def mix_seed(*keys: int) -> int:
    """A 63-bit seed from integers (the splitmix64 finaliser per key; negative keys wrap modulo 2^64).
    Checkpoints resume through these values: they must never change."""
    h = 0x9E3779B97F4A7C15
    for k in keys:
        h = ((h ^ (k & _M64)) * 0xBF58476D1CE4E5B9) & _M64
        h ^= h >> 31
        h = (h * 0x94D049BB133111EB) & _M64
        h ^= h >> 29
    return h >> 1
