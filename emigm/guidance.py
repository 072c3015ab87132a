"""Guidance, in one place: the combinator, the CFG time interval and the CFG scale schedule.

guide(pred, ref, scale) = ref + scale * (pred - ref):
- classifier-free guidance: guide(cond, uncond, w) (eMIGM Sec. 3; applied to the head's noise
  prediction or to the logits);
- self-guidance: guide(normal, smooth, 1 + s) = (1 + s) normal - s smooth (Hur et al., Eq. 5).
"""
from __future__ import annotations

import torch

Tensor = torch.Tensor

CFG_SCHEDULES = ("constant", "linear")


def guide(pred: Tensor, ref: Tensor, scale: Tensor | float) -> Tensor:
    """ref + scale * (pred - ref). `scale` is a float or a tensor broadcastable against pred's leading
    dimension (one scale per row)."""
    if isinstance(scale, Tensor) and scale.dim() == 1 and pred.dim() > 1:
        scale = scale.view(-1, *([1] * (pred.dim() - 1)))
    return ref + scale * (pred - ref)


def in_interval(s: float, interval: tuple[float, float]) -> bool:
    """CFG runs at a step whose time AFTER the step, s, lies in (t_min, t_max] (eMIGM Sec. 3)."""
    lo, hi = interval
    return lo < s <= hi


def cfg_scale_at(scale: float, schedule: str, frac_revealed: Tensor | float) -> Tensor | float:
    """Scale for one step. constant: w; linear: 1 + (w - 1) * fraction of tokens revealed after the
    step (MAR's rule)."""
    if schedule == "constant":
        return scale
    if schedule == "linear":
        return 1.0 + (scale - 1.0) * frac_revealed
    raise ValueError(f"unknown cfg schedule {schedule!r}; valid: {', '.join(CFG_SCHEDULES)}")
