"""Which masked tokens a step reveals: the order registry (one entry per order users can pick), the
orders' priorities and scores, and the selection.

Every order is one `Order` in ORDERS, of one of three kinds:
- priority: a key per position that does not depend on token values (lower = earlier); the count rule
  decides how many. Fixed before sampling (`fixed`): raster (row-major); halton (Besnier et al., ICLR
  2025, Halton-MaskGIT: the 2-D Halton sequence, radical inverses in base 2 for the row and base 3 for
  the column from index 1, point (r, c) in cell (floor(r H), floor(c W)), repeated cells dropped; the
  same order for every sample, its optional per-sample roll not offered); fixed (a given permutation,
  raster by default). Drawn per step from the "where" stream: random (uniform keys); checkerboard (GtR,
  arXiv 2510.17171: the cells with even row + column first, the "skeleton", then the others, uniform
  within a colour).
- score: a score of the head's (guided, untempered) distribution per masked token, highest first, plus
  Gumbel noise tau_k x G from the "where" stream (tau_k: SamplerConfig.order_temperature annealed by
  order_anneal); the count rule decides how many: confidence (MaskGIT: log p of the sampled token);
  margin (Kim et al., ICML 2025: p(top-1) - p(top-2), independent of the sampled token); entropy (Dream:
  sum p log p = -H, the least uncertain first). Margin and entropy live in another range than log p: the
  literature uses them noise-free (order_temperature 0); with MaskGIT's tau_0 = 4.5 they are mostly random.
- adaptive: a score without noise, and the order itself decides how many tokens a step reveals, so the
  number of steps varies per image (SamplerConfig.num_steps caps it; the last step reveals the rest):
  threshold (Fast-dLLM: every masked token whose top probability >= threshold_tau, at least one, the
  most confident); eb (EB-Sampler, arXiv 2505.24857, diffusers' EntropyBoundScheduler: the masked tokens
  sorted by entropy H ascending, the longest prefix U with sum_U H - max_U H <= eb_gamma, at least one;
  the sum minus the max bounds the dependence between the tokens the step draws independently, and
  gamma = 0 reveals one token per step unless several are certain, H = 0).
A diffusion head has no token probabilities: the score and adaptive orders need a categorical head
(`needs`; emigm.sample.capabilities refuses them with the reason).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

from emigm.core import rng
from emigm.nn.categorical_head import margin_score, neg_entropy

Tensor = torch.Tensor

# sub-keys inside the "where" stream: step counts, positions, re-masked counts, re-masked positions
KEY_COUNT, KEY_POS, KEY_REMASK_COUNT, KEY_REMASK_POS = 1, 2, 3, 4
KINDS = ("priority", "score", "adaptive")
PROBABILITIES = "token probabilities"  # what the score and adaptive orders need from the head


@dataclass(frozen=True)
class Order:
    """One reveal order. kind: "priority", "score" or "adaptive" (module docstring). help: one line for
    the CLI and the explorer. priority(seeds (B,), step, num_tokens, given) -> keys (B, L) or (L,), lower =
    earlier (priority kind; `fixed`: the same at every step, computed once before the loop with step -1).
    score(logp (M, K), codes (M,)) -> (M,), higher = earlier (score and adaptive kinds; the head computes it
    on its guided distribution). count(score (B, L), mask (B, L), sampler) -> (B,) tokens to reveal, at
    least one where any is masked (adaptive kind; score is -inf off the mask). needs: what the order needs
    from the head (PROBABILITIES or None)."""

    kind: str
    help: str
    priority: Callable[[Tensor, int, int, Any], Tensor] | None = None
    fixed: bool = False
    score: Callable[[Tensor, Tensor], Tensor] | None = None
    count: Callable[[Tensor, Tensor, Any], Tensor] | None = None
    needs: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown order kind {self.kind!r}; valid: {', '.join(KINDS)}")
        has = (self.priority is not None, self.score is not None, self.count is not None)
        want = {"priority": (True, False, False), "score": (False, True, False), "adaptive": (False, True, True)}
        if has != want[self.kind]:
            raise ValueError(f"a {self.kind} order takes exactly the functions of its kind (priority / score / count)")


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
        raise ValueError(f"the halton and checkerboard orders need a square grid; {num_tokens} tokens is not one")
    return side, side


def _raster(seeds: Tensor, step: int, num_tokens: int, given) -> Tensor:
    return torch.arange(num_tokens, device=seeds.device).float()


def _halton(seeds: Tensor, step: int, num_tokens: int, given) -> Tensor:
    rank = torch.empty(num_tokens, dtype=torch.long)
    rank[torch.tensor(halton_order(*grid_shape(num_tokens)))] = torch.arange(num_tokens)
    return rank.float().to(seeds.device)


def _given(seeds: Tensor, step: int, num_tokens: int, given) -> Tensor:
    if given is None:
        return _raster(seeds, step, num_tokens, None)
    return torch.as_tensor(given, device=seeds.device).float()


def _uniform(seeds: Tensor, step: int, num_tokens: int, given) -> Tensor:
    return rng.uniform(seeds, rng.STREAM_WHERE, step, KEY_POS, tail=(num_tokens,))


def _checkerboard(seeds: Tensor, step: int, num_tokens: int, given) -> Tensor:
    pos = torch.arange(num_tokens, device=seeds.device)
    cols = grid_shape(num_tokens)[1]
    colour = (pos // cols + pos % cols) % 2  # (row + col) parity: keys of colour 0 lie in (0, 1), of 1 in (1, 2)
    return colour.float() + _uniform(seeds, step, num_tokens, given)


def _top_log_p(logp: Tensor, codes: Tensor) -> Tensor:
    return logp.amax(-1)


def _threshold_count(score: Tensor, mask: Tensor, sampler) -> Tensor:
    """score: log of each masked token's top probability (B, L), -inf off the mask."""
    n = (mask & (score >= math.log(sampler.threshold_tau))).sum(1)
    return torch.minimum(n.clamp(min=1), mask.sum(1))


def _eb_count(score: Tensor, mask: Tensor, sampler) -> Tensor:
    """score: -H (B, L), -inf off the mask. The prefix of length n of the sorted entropies costs the sum of
    its first n - 1 (the sum minus the max), which grows with n: count the n whose cost is <= gamma."""
    h = torch.where(mask, (-score).clamp(min=0.0), float("inf")).sort(dim=1).values
    before = torch.cat([torch.zeros_like(h[:, :1]), h[:, :-1].cumsum(1)], dim=1)
    n = (torch.isfinite(h) & (before <= sampler.eb_gamma)).sum(1)
    return torch.minimum(n.clamp(min=1), mask.sum(1))


def remask_keys(u: Tensor, confidence: Tensor) -> Tensor:
    """ReMDM-conf's choice of committed tokens to re-mask: keys -log(u) / (1 - confidence), smallest first,
    i.e. sampling without replacement with weights 1 - confidence (normalised over the committed tokens;
    Efraimidis-Spirakis). A token committed with probability 1 has weight 0 and key inf (chosen last).
    u, confidence: (B, L)."""
    w = (1.0 - confidence).clamp(min=0.0)
    return torch.where(w > 0, -torch.log(u) / w.clamp(min=1e-30), float("inf"))


def _log_p_of_code(logp: Tensor, codes: Tensor) -> Tensor:
    return logp.gather(1, codes[:, None]).squeeze(1)


ORDERS: dict[str, Order] = {
    "random": Order("priority", "uniform among the masked tokens (eMIGM, MAR)", _uniform),
    "confidence": Order("score", "most confident first: log p of the sampled token plus annealed Gumbel noise "
                                 "(MaskGIT; categorical heads)", score=_log_p_of_code, needs=PROBABILITIES),
    "margin": Order("score", "largest top-1 minus top-2 probability first, plus annealed Gumbel noise (Kim et al. "
                             "2025; categorical heads)", score=lambda logp, codes: margin_score(logp),
                    needs=PROBABILITIES),
    "entropy": Order("score", "lowest entropy of the token's distribution first, plus annealed Gumbel noise (Dream; "
                              "categorical heads)", score=lambda logp, codes: neg_entropy(logp), needs=PROBABILITIES),
    "halton": Order("priority", "a 2-D Halton sequence over the token grid, fixed before sampling (Halton-MaskGIT)",
                    _halton, fixed=True),
    "raster": Order("priority", "row by row, left to right", _raster, fixed=True),
    "fixed": Order("priority", "a given permutation (raster order by default)", _given, fixed=True),
    "threshold": Order("adaptive", "every masked token whose top probability >= threshold_tau, at least one; "
                                   "the steps vary per image (Fast-dLLM; categorical heads)", score=_top_log_p,
                       count=_threshold_count, needs=PROBABILITIES),
    "eb": Order("adaptive", "the lowest-entropy tokens while their summed entropy minus the largest <= eb_gamma, "
                            "at least one; the steps vary per image (EB-Sampler; categorical heads)",
                score=lambda logp, codes: neg_entropy(logp), count=_eb_count, needs=PROBABILITIES),
    "checkerboard": Order("priority", "one colour of a checkerboard first (the skeleton), then the other; uniform "
                                      "within a colour (GtR)", _checkerboard),
}


def get_order(name: str) -> Order:
    """The registry entry of `name`; a ValueError listing the valid names otherwise."""
    if name not in ORDERS:
        raise ValueError(f"unknown order {name!r}; valid: {', '.join(ORDERS)}")
    return ORDERS[name]


def orders_of(*kinds: str) -> tuple[str, ...]:
    """The names of the orders of the given kinds, in registry order."""
    return tuple(n for n, o in ORDERS.items() if o.kind in kinds)


def fixed_priority(order: str, num_tokens: int, given: Tensor | None, device) -> Tensor:
    """(L,) or (B, L) float priority of every position for an order fixed before sampling (lower = earlier)."""
    entry = get_order(order)
    if not entry.fixed:
        raise ValueError(f"the {order} order is not fixed before sampling")
    return entry.priority(torch.zeros(0, dtype=torch.long, device=device), -1, num_tokens, given)


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
