"""What a sampling run produced, checked before anyone writes or shows it: tokens and decoded images
must be finite. A model whose weights or settings overflow would otherwise write NaN images and
exit as if nothing happened. The refusal is one line naming the model and the first step whose
committed tokens are not finite (from the per-step states when the caller kept them; a fast-path
caller passes `rerun`, which replays the step-by-step generator only after a failure)."""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch

from emigm.sample.sampler import StepState

Tensor = torch.Tensor


def _finite(x: Tensor | None) -> bool:
    return x is None or not x.is_floating_point() or bool(torch.isfinite(x).all())


def first_nonfinite_step(states: Iterable[StepState]) -> tuple[int, int] | None:
    """(1-based step, num_steps) of the first state whose committed tokens are not finite, or None."""
    for state in states:
        if not _finite(state.tokens):
            return state.step + 1, state.num_steps
    return None


def check_finite(label: str, tokens: Tensor, images: Tensor | None = None,
                 states: Sequence[StepState] | None = None,
                 rerun: Callable[[], Iterable[StepState]] | None = None) -> None:
    """Raise a one-line ValueError when the final `tokens` or the decoded `images` hold NaN or
    infinite values. `states`: the run's per-step states, to name the first non-finite step;
    `rerun`: where no states were kept, a callable that replays the run step by step (called only
    after a failure)."""
    if _finite(tokens) and _finite(images):
        return
    name = label or "the model"
    if _finite(tokens):
        raise ValueError(f"{name}: the tokenizer decoded finite tokens into NaN or infinite pixels; nothing "
                         "was written (its decoder's weights overflow)")
    where = None
    if states is not None:
        where = first_nonfinite_step(states)
    elif rerun is not None:
        with torch.inference_mode():
            where = first_nonfinite_step(rerun())
    if where is not None:
        at = f"first at step {where[0]} of {where[1]}"
    elif rerun is not None:
        at = "in the fast path only: the step-by-step re-run in fp32 stayed finite, so reduced precision overflowed"
    else:
        at = "step unknown"
    raise ValueError(f"{name} produced NaN or infinite tokens ({at}); nothing was written: its weights or "
                     "sampling settings overflow")


def check_step(label: str, state: StepState, images: Tensor | None = None) -> None:
    """The per-step form, for a caller that shows every step (the explorer): this state's tokens and
    draft, and the images decoded from them, must be finite."""
    if _finite(state.tokens) and _finite(state.draft) and _finite(images):
        return
    name = label or "the model"
    raise ValueError(f"{name} produced NaN or infinite values at step {state.step + 1} of {state.num_steps}; "
                     "nothing is shown: its weights or sampling settings overflow")
