"""What the sampler yields after every step: an immutable `StepState`, and, when asked for, the step's
`StepAnatomy` (why these tokens, what each guidance branch predicted, how sure the model was)."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from emigm.core.guidance import GuidanceConfig
from emigm.sample.options import SamplerConfig

Tensor = torch.Tensor


@dataclass(frozen=True)
class StepAnatomy:
    """One step, opened. Shapes: B samples, L tokens, C token channels (continuous) or K codes.

    Why these positions:
    - reveal_p (B,): the probability with which each still-masked token was revealed (the binomial
      rule's p, with remasking the ReMDM unmasking probability; the exact rule's count / masked);
      expected (B,) = masked x reveal_p and drawn (B,) = the count actually revealed; remask_sigma: the
      re-masking probability of a committed token (0 when off), remasked_count (B,);
    - score (B, L): the order's priority of each token masked before the step, higher = earlier (the
      score orders: confidence log p, top-1 minus top-2 probability, minus the entropy; random: minus
      its uniform key; the fixed orders: minus the position's rank), NaN where not masked;
      noise (B, L): the Gumbel noise added to the score (tau_k x Gumbel; 0 for the other orders);
      rank (B, L): the token's place in this step's selection (0 = first), -1 where not masked.
    What each guidance branch predicted (every token masked before the step; committed tokens copied):
    - branches: {"conditional", "null" (when CFG ran), "smoothed" (when self-guidance ran), "combined"}
      -> token values (B, L, C) or codes (B, L), each sampled with the same noise; "combined" is the
      run's draft;
    - raw: the same names -> what the guidance combinator combines, logits (B, L, K), for a categorical
      head (empty for a diffusion head, which combines inside its solver); combined =
      emigm.core.guidance.combine(conditional, references, weights) for the masked tokens;
    - weights: {guide name: (B,) lambda}.
    How sure: uncertainty (B, L), the entropy (categorical) or the spread of K head draws (diffusion)
    of the draft, 0 where not masked.
    path: (steps + 1, C) values of the requested token after each diffusion-solver step (the first
    row is its starting noise), or None.
    z: {"conditional", "null" (when CFG ran), "smoothed" (when self-guidance ran)} -> the network's
    output (B, L, D) that the head read for each branch (zero at positions it did not read): what
    emigm.sample.rescore needs to re-score the step without a network pass."""

    reveal_p: Tensor
    expected: Tensor
    drawn: Tensor
    remask_sigma: float
    remasked_count: Tensor
    score: Tensor
    noise: Tensor
    rank: Tensor
    branches: dict[str, Tensor]
    raw: dict[str, Tensor]
    weights: dict[str, Tensor]
    uncertainty: Tensor
    path: Tensor | None = None
    z: dict[str, Tensor] | None = None


@dataclass(frozen=True)
class StepState:
    """The sampler's state after step `step` (0-based) of `num_steps`. Tensors are never mutated.

    mask_before / mask_after / revealed: (B, L) bool (True = masked / revealed at this step);
    remasked: (B, L) bool, committed tokens re-masked at this step (remasking; all False when off);
    revisions: (B, L) int64, how often each token has been re-masked after commitment so far;
    tokens: committed tokens, (B, L, C) float or (B, L) int64, zero where still masked;
    draft: committed tokens plus the model's current prediction at every position that was masked
    before this step (None when the sampler runs without drafts);
    cfg_scale: (B,) guidance scale used at this step (1 where CFG did not run);
    sg_active / sg_scale: whether self-guidance ran at this step, and its scale s;
    passes / head_evals: cumulative transformer passes and head network evaluations;
    anatomy: the step opened (StepAnatomy) when the run was asked for it, else None;
    frozen: (B, L) bool, tokens given before the run that it never changes (inpainting: the visible part
    of the image; a run branched from this state keeps them), or None;
    image_steps / image_passes: (B,) int64, per image the steps that found it with a masked token and their
    transformer passes so far (an adaptive order's steps vary per image; `passes` counts the batch's);
    confidence: (B, L) float, each committed token's probability when it was committed (categorical
    heads; 0 where masked), or None.
    """

    step: int
    num_steps: int
    t: float
    s: float
    mask_before: Tensor
    mask_after: Tensor
    revealed: Tensor
    remasked: Tensor
    revisions: Tensor
    tokens: Tensor
    draft: Tensor | None
    cfg_active: bool
    cfg_scale: Tensor
    sg_active: bool
    sg_scale: float
    passes: int
    head_evals: int
    seeds: Tensor
    labels: Tensor
    sampler: SamplerConfig = field(repr=False)
    guidance: GuidanceConfig = field(repr=False)
    anatomy: StepAnatomy | None = field(default=None, repr=False)
    frozen: Tensor | None = field(default=None, repr=False)
    image_steps: Tensor | None = field(default=None, repr=False)
    image_passes: Tensor | None = field(default=None, repr=False)
    confidence: Tensor | None = field(default=None, repr=False)

    @property
    def done(self) -> bool:
        return not bool(self.mask_after.any())

    def to(self, device: torch.device | str) -> "StepState":
        """A copy with every tensor moved to `device` (the anatomy stays where it is)."""
        moved = {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in self.__dict__.items()}
        return replace(self, **moved)
