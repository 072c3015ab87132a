"""Which masked tokens a step reveals: the orders' priorities and scores, and the selection.

Fixed orders decide a priority per position before sampling (lower = earlier):
- raster: row-major position index;
- halton (Besnier et al., ICLR 2025, Halton-MaskGIT): the 2-D Halton sequence, radical inverses in base 2
  for the row and base 3 for the column, starting at index 1 (so the first point is (1/2, 1/3)); point
  (r, c) falls in cell (floor(r H), floor(c W)); repeated cells are dropped, keeping the first, and
  points are generated until every cell is covered. The same order for every sample (Halton-MaskGIT's
  default; its optional per-sample roll is not offered);
- fixed: a given permutation (raster by default).
The random order ranks masked tokens by a uniform key from the "where" stream. Score orders rank by a
score of the head's (guided, untempered) distribution, highest first, plus Gumbel noise tau_k x G from
the "where" stream (tau_k: SamplerConfig.order_temperature annealed by order_anneal):
- confidence (MaskGIT): log p of the sampled token;
- margin (Kim et al., ICML 2025, "top probability margin"): p(top-1) - p(top-2), independent of the
  sampled token;
- entropy (Dream): sum p log p = -H, so the least uncertain token first.
Margin and entropy are scores in another range than log p; the literature uses them noise-free
(order_temperature 0), with MaskGIT's tau_0 = 4.5 they are mostly random. A diffusion head has no
token probabilities: the score orders need a categorical head (emigm.sample.capabilities says so).
"""
from __future__ import annotations

import math

import torch

Tensor = torch.Tensor


def radical_inverse(i: int, base: int) -> float:
    """The base-`base` digits of i mirrored about the radix point (van der Corput): 1 -> 1/b, 2 -> 2/b, ..."""
    out, f = 0.0, 1.0 / base
    while i > 0:
        i, d = divmod(i, base)
        out += d * f
        f /= base
    return out


def halton_order(rows: int, cols: int) -> list[int]:
    """The row-major cells of a rows x cols grid in the order the 2-D Halton sequence first visits them
    (see the module docstring). Every cell appears exactly once."""
    if rows < 1 or cols < 1:
        raise ValueError(f"the grid must be at least 1 x 1, got {rows} x {cols}")
    seen, order, i = set(), [], 1
    limit = 1000 * rows * cols + 1000  # far beyond what any grid needs: a guard, not a setting
    while len(order) < rows * cols:
        if i > limit:
            raise RuntimeError(f"the Halton sequence did not cover the {rows} x {cols} grid")
        r, c = math.floor(radical_inverse(i, 2) * rows), math.floor(radical_inverse(i, 3) * cols)
        cell = r * cols + c
        if cell not in seen:
            seen.add(cell)
            order.append(cell)
        i += 1
    return order


def grid_shape(num_tokens: int) -> tuple[int, int]:
    """The token grid (rows, cols) of a model: square, as every tokenizer here makes."""
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise ValueError(f"the halton order needs a square token grid; {num_tokens} tokens is not one")
    return side, side


def fixed_priority(order: str, num_tokens: int, given: Tensor | None, device) -> Tensor:
    """(L,) or (B, L) float priority of every position for a fixed order (lower = revealed earlier)."""
    if order == "halton":
        rank = torch.empty(num_tokens, dtype=torch.long)
        rank[torch.tensor(halton_order(*grid_shape(num_tokens)))] = torch.arange(num_tokens)
        return rank.float().to(device)
    if order == "fixed" and given is not None:
        return torch.as_tensor(given, device=device).float()
    return torch.arange(num_tokens, device=device).float()  # raster, and fixed by default


def painted_priority(clicks, num_tokens: int) -> Tensor:
    """(L,) float priority of order "fixed" from a painted reveal order: the clicked tokens first, in the
    order given, then every other token in raster order. clicks: row-major token indices, each at most
    once (a ValueError names the first bad one)."""
    seen: list[int] = []
    for i in clicks:
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < num_tokens:
            raise ValueError(f"reveal order: token {i!r} is outside the {num_tokens} tokens (0..{num_tokens - 1})")
        if i in seen:
            raise ValueError(f"reveal order: token {i} is given twice")
        seen.append(i)
    rest = [i for i in range(num_tokens) if i not in set(seen)]
    rank = torch.empty(num_tokens)
    rank[torch.tensor(seen + rest, dtype=torch.long)] = torch.arange(num_tokens, dtype=torch.float32)
    return rank


def parse_reveal_order(text: str, num_tokens: int) -> list[int]:
    """A painted reveal order written as row-major token indices "I,J,K" (ASCII digits, commas) -> list."""
    items = [x.strip() for x in str(text).split(",")]
    if not str(text).strip() or any(not x for x in items):
        raise ValueError("reveal order: give comma-separated token indices, e.g. 24,17,31")
    for x in items:
        if not x.isascii() or not x.isdigit():
            raise ValueError(f"reveal order: {x!r} is not a token index in ASCII digits")
    out = [int(x) for x in items]
    painted_priority(out, num_tokens)  # range and repeats
    return out


def smallest(keys: Tensor, count: Tensor) -> Tensor:
    """(B, L) bool: the count[b] positions with the smallest keys in row b (ties: the lower position)."""
    return ranks(keys) < count.unsqueeze(1)


def ranks(keys: Tensor) -> Tensor:
    """(B, L) int64: each position's place when row b is sorted by key (stable: ties by position)."""
    return keys.argsort(dim=1, stable=True).argsort(dim=1)


def flat_select(sel: Tensor, m: int) -> tuple[Tensor, Tensor]:
    """Row and column indices of the True entries of sel (B, L), m of them, row-major, without a host
    sync. An m above the number of True entries pads with False entries (callers discard them)."""
    L = sel.shape[1]
    idx = (~sel).reshape(-1).to(torch.int8).argsort(stable=True)[:m]
    return idx // L, idx % L
