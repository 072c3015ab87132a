"""Inpainting: regenerate the painted tokens of a given image, keep the others exactly.

The run is the ordinary sampler started from given tokens: `inpaint_state` builds the state "before
step 1" (step -1) whose mask is the painted region and whose other tokens are the encoded image, marked
`frozen`; `sample_steps(..., init=state)` / `sample(..., init=state)` run every sampler setting from it
(schedule, steps, count rule, order, guidance, remasking). Frozen tokens are never revealed (they are not
masked), never re-masked by remasking, and the exact count rule counts over the painted tokens
(floor(P gamma(u)/gamma(1)) stay masked, P painted); the binomial rule's p does not depend on the count.

Mask specs (`parse_mask`, on a g x g token grid), joined with "+" for a union:
- left / right / top / bottom: the tokens that overlap that half of the image (on a 7 x 7 grid, 4 of the
  7 columns or rows: the middle one straddles the line);
- centre (or center): the tokens whose centre lies in the middle half of the image in both directions
  (3 x 3 on a 7 x 7 grid);
- random:P[:SEED]: round(P L) tokens, 0 < P <= 1, chosen by a permutation drawn from SEED (default 0);
- tokens:I,J,...: row-major token indices.
`add_ring(mask, k)` grows the painted region by k tokens in every direction (8-neighbours): MAGE masks one
ring more, because the tokens at the border of a painted region were encoded from the image and "record"
the mask's edge (Li et al., MAGE, github.com/LTH14/mage issue 39).
"""
from __future__ import annotations

import math
import re

import torch

from emigm.core.fields import parse_float, parse_int
from emigm.core.guidance import GuidanceConfig
from emigm.sample.options import SamplerConfig
from emigm.sample.orders import grid_shape
from emigm.sample.state import StepState

Tensor = torch.Tensor

HALVES = ("left", "right", "top", "bottom")
MASK_SPEC_HELP = ("left, right, top, bottom, centre, random:P[:SEED], tokens:I,J,...; join with + "
                  "(e.g. left+top)")
MAX_RING = 6


class MaskError(ValueError):
    """A mask that cannot be inpainted: does not parse, paints nothing or everything. One line."""


def _half(name: str, side: int) -> Tensor:
    i = torch.arange(side)
    low, high = i < side / 2, i + 1 > side / 2  # overlaps the first / second half of [0, side)
    rows, cols = torch.meshgrid(i, i, indexing="ij")
    pick = {"left": low[cols], "right": high[cols], "top": low[rows], "bottom": high[rows]}[name]
    return pick.reshape(-1)


def _centre(side: int) -> Tensor:
    c = (torch.arange(side) + 0.5) / side
    inner = (c >= 0.25) & (c <= 0.75)
    return (inner[:, None] & inner[None, :]).reshape(-1)


def _random(arg: str, L: int, spec: str) -> Tensor:
    parts = arg.split(":")
    if len(parts) > 2 or not parts[0]:
        raise MaskError(f"mask {spec!r}: random takes random:P or random:P:SEED, got random:{arg}")
    try:
        p = parse_float(parts[0])
        seed = parse_int(parts[1]) if len(parts) == 2 else 0
    except ValueError as e:
        raise MaskError(f"mask {spec!r}: {e}") from None
    if not (math.isfinite(p) and 0.0 < p <= 1.0):
        raise MaskError(f"mask {spec!r}: the random fraction P must be in (0, 1], got {parts[0]}")
    if not (0 <= seed < 2**63):
        raise MaskError(f"mask {spec!r}: the random mask seed must be in [0, 2^63 - 1], got {parts[1]}")
    n = max(1, round(p * L))
    g = torch.Generator().manual_seed(seed)
    out = torch.zeros(L, dtype=torch.bool)
    out[torch.randperm(L, generator=g)[:n]] = True
    return out


def _tokens(arg: str, L: int, spec: str) -> Tensor:
    out = torch.zeros(L, dtype=torch.bool)
    items = [x.strip() for x in arg.split(",")]
    if not arg.strip() or any(not x for x in items):
        raise MaskError(f"mask {spec!r}: tokens takes a comma-separated list of token indices, e.g. tokens:3,4,10")
    for x in items:
        if not re.fullmatch(r"[0-9]+", x):
            raise MaskError(f"mask {spec!r}: token index {x!r} is not a whole number in ASCII digits")
        i = int(x)
        if i >= L:
            raise MaskError(f"mask {spec!r}: token index {i} is outside the {L} tokens (0..{L - 1})")
        out[i] = True
    return out


def parse_mask(spec: str, num_tokens: int) -> Tensor:
    """(L,) bool, True = painted (regenerated), from a mask spec (see the module docstring). A spec that
    does not parse is a one-line MaskError naming what is allowed. Empty and full masks are returned
    as they are: `check_mask` refuses them."""
    if not isinstance(spec, str) or not spec.strip():
        raise MaskError(f"give a mask: {MASK_SPEC_HELP}")
    side = grid_shape(num_tokens)[0]
    out = torch.zeros(num_tokens, dtype=torch.bool)
    for part in spec.strip().split("+"):
        word = part.strip().lower()
        name, _, arg = word.partition(":")
        if name in HALVES and not arg:
            out |= _half(name, side)
        elif name in ("centre", "center") and not arg:
            out |= _centre(side)
        elif name == "random":
            out |= _random(arg, num_tokens, spec)
        elif name == "tokens":
            out |= _tokens(arg, num_tokens, spec)
        else:
            raise MaskError(f"mask {spec!r}: {part.strip()!r} is not a mask; valid: {MASK_SPEC_HELP}")
    return out


def add_ring(mask: Tensor, k: int) -> Tensor:
    """The painted region grown by k tokens in every direction, diagonals included (k = 0: unchanged).
    mask: (L,) or (B, L) bool on a square grid. A ring around nothing is a MaskError."""
    if isinstance(k, bool) or not isinstance(k, int) or not (0 <= k <= MAX_RING):
        raise MaskError(f"the ring must be a whole number of tokens in [0, {MAX_RING}], got {k!r}")
    if k == 0:
        return mask
    if not bool(mask.any(-1).all()):
        raise MaskError("a ring needs a painted region to go around: the mask paints no token")
    side = grid_shape(mask.shape[-1])[0]
    g = mask.reshape(-1, 1, side, side).float()
    grown = torch.nn.functional.max_pool2d(g, 2 * k + 1, stride=1, padding=k) > 0
    return grown.reshape(mask.shape)


def check_mask(mask: Tensor) -> None:
    """Refuse a mask with nothing to do (paints no token) or nothing to keep (paints every token)."""
    painted = mask.reshape(-1, mask.shape[-1]).sum(-1)
    L = mask.shape[-1]
    if bool((painted == 0).any()):
        raise MaskError("the mask paints no token: nothing to inpaint")
    if bool((painted == L).any()):
        raise MaskError(f"the mask paints all {L} tokens: that is plain sampling (python -m emigm sample), "
                        "not inpainting")


def steps_for(painted: int, wanted: int | None, default: int = 16) -> int:
    """The step count of an inpainting run: `wanted`, or min(default, painted tokens) when not given."""
    return min(default, painted) if wanted is None else wanted


def check_steps(sampler: SamplerConfig, mask: Tensor) -> None:
    """A step reveals at least one token, so a run has at most as many steps as the fewest painted tokens."""
    fewest = int(mask.reshape(-1, mask.shape[-1]).sum(-1).min())
    if sampler.num_steps > fewest:
        raise MaskError(f"{sampler.num_steps} steps exceed the {fewest} painted tokens: a step reveals at least "
                        f"one token; use {fewest} steps or fewer")


def inpaint_state(tokens: Tensor, mask: Tensor, labels, seeds, sampler: SamplerConfig = SamplerConfig(),
                  guidance: GuidanceConfig = GuidanceConfig()) -> StepState:
    """The state before step 1 of an inpainting run (step -1): `tokens` (B, L, C) or (B, L), the encoded
    image(s), kept where `mask` (L,) or (B, L) is False and frozen; masked (to be sampled) where True.
    Pass it as `init=` to emigm.sample.sampler.sample_steps or sample, with the same labels, seeds and
    configs. Refuses an empty or full mask and more steps than painted tokens."""
    B, L = tokens.shape[0], tokens.shape[1]
    mask = torch.as_tensor(mask, dtype=torch.bool, device=tokens.device)
    if mask.dim() == 1:
        mask = mask.expand(B, L)
    if tuple(mask.shape) != (B, L):
        raise MaskError(f"the mask has shape {tuple(mask.shape)}, the tokens {B} x {L}")
    mask = mask.clone()
    check_mask(mask)
    check_steps(sampler, mask)
    keep = ~mask if tokens.dim() == 2 else (~mask).unsqueeze(-1)
    known = torch.where(keep, tokens, torch.zeros_like(tokens))
    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    seeds_t = torch.as_tensor(seeds, dtype=torch.long).reshape(-1)
    nothing = torch.zeros(B, L, dtype=torch.bool, device=tokens.device)
    return StepState(step=-1, num_steps=sampler.num_steps, t=1.0, s=1.0, mask_before=mask, mask_after=mask,
                     revealed=nothing, remasked=nothing, revisions=torch.zeros(B, L, dtype=torch.long,
                                                                               device=tokens.device),
                     tokens=known, draft=None, cfg_active=False, cfg_scale=torch.ones(B), sg_active=False,
                     sg_scale=0.0, passes=0, head_evals=0, seeds=seeds_t, labels=labels, sampler=sampler,
                     guidance=guidance, frozen=~mask)


def painted_count(mask: Tensor) -> int:
    return int(mask.reshape(-1, mask.shape[-1]).sum(-1).min())


def token_box(position: int, side: int, image_size: int) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) pixels of a token on a side x side grid over an image_size image."""
    px = image_size / side
    r, c = divmod(position, side)
    return math.floor(r * px), math.floor(c * px), math.floor((r + 1) * px), math.floor((c + 1) * px)
