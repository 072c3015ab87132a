"""Guidance, in one place: the guidance settings, when each guide is on, and how guides combine.

A guide is a reference prediction the sample is pushed away from. Each kind of guide is one entry of
`GUIDES` (a `Guide`: its name, the reference it needs, when it is on and its weight lambda with its
convention); the settings ask the registry which guides run at a step (`GuidanceConfig.guides_at`)
and what a step costs (`GuidanceConfig.passes`), so the sampler, the step arithmetic, the memory
estimate and the explorer all read one answer. Each step the sampler turns the active guides into
`Term`s, each a reference condition z_ref for the head and a weight lambda, and the head combines its
predictions by one function:
    out = cond + sum_i lambda_i (cond - ref_i)                                        (`combine`)

With one guide this is the familiar guide(cond, ref, 1 + lambda) = ref + (1 + lambda)(cond - ref):
- classifier-free guidance (eMIGM Sec. 3): ref = the null-class prediction, lambda = w - 1, so
  eps = eps_u + w (eps_c - eps_u) on the diffusion head's noise, or on the logits;
- self-guidance (Hur et al. 2024, Eq. 5): ref = the smoothed prediction of the self-guidance smoother,
  lambda = s, so logits = (1 + s) normal - s smooth; on the continuous head (our extension)
  eps = eps_bar + (1 + s)(eps - eps_bar).
Both may be on at once, each in its own time interval; a new guide is one more `GUIDES` entry.

Cost: CFG's null branch is batched with the conditional pass (one extra row block, counted as one
extra transformer pass); self-guidance needs the conditional pass's hidden states, so its pass is a
second, sequential one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from emigm.core.fields import all_of, check_fields, coerce_tuples, interval_check, option

Tensor = torch.Tensor


def _constant(scale: float, frac_revealed: Tensor | float) -> Tensor | float:
    return scale


def _linear(scale: float, frac_revealed: Tensor | float) -> Tensor | float:
    return 1.0 + (scale - 1.0) * frac_revealed


# CFG scale schedules: constant w, or MAR's linear 1 + (w - 1) * fraction of tokens revealed after the step
CFG_SCHEDULES = {"constant": _constant, "linear": _linear}
CFG_MODES = {"": "the model's own null class", "mask": "mask (null class = mask token)",
             "fake": "fake class (a learned null vector)"}


@dataclass(frozen=True)
class GuidanceConfig:
    """Which guides run, how strongly, and when. Intervals are (t_lo, t_hi]: a guide runs at a step whose
    time AFTER the step, s, satisfies t_lo < s <= t_hi."""

    cfg_scale: float = option(1.0, "classifier-free guidance scale w (1 = off)", low=0.0, high=50.0,
                              cli="--cfg")
    cfg_mode: str = option("", "null class of CFG: the model's own, mask or fake", choices=CFG_MODES,
                           labels=CFG_MODES)
    cfg_interval: tuple[float, float] = option((0.0, 1.0), "CFG only at steps with t_lo < s <= t_hi",
                                               low=0.0, high=1.0)
    cfg_schedule: str = option("constant", "CFG scale schedule: constant w, or linear 1 + (w - 1) x "
                                           "fraction revealed", choices=CFG_SCHEDULES)
    sg_scale: float = option(0.0, "self-guidance scale s (0 = off; needs a self-guidance smoother)",
                             low=0.0, high=20.0, cli="--sg")
    sg_interval: tuple[float, float] = option((0.0, 1.0), "self-guidance only at steps with "
                                                          "t_lo < s <= t_hi", low=0.0, high=1.0)

    def __post_init__(self) -> None:
        coerce_tuples(self)
        check_fields(self, all_of(interval_check("cfg_interval"), interval_check("sg_interval")))

    def guides(self) -> tuple["Guide", ...]:
        """The guides these settings use at some step (in `GUIDES` order)."""
        return tuple(g for g in GUIDES.values() if g.on(self))

    def guides_at(self, s: float) -> tuple["Guide", ...]:
        """The guides that run at a step ending at time s (in `GUIDES` order)."""
        return tuple(g for g in GUIDES.values() if g.active(self, s))

    def passes(self, s: float) -> int:
        """Transformer passes of a step ending at time s: 1, and 1 more per active guide (CFG's null
        branch is batched into the conditional pass, the smoothed pass runs after it; each counts one)."""
        return 1 + len(self.guides_at(s))

    def cfg_active(self, s: float) -> bool:
        return GUIDES["cfg"].active(self, s)

    def sg_active(self, s: float) -> bool:
        return GUIDES["self-guidance"].active(self, s)


@dataclass(frozen=True)
class Guide:
    """One kind of guide. reference: the prediction it pushes away from, "null" (the null-class branch,
    rows batched into the conditional pass) or "smoothed" (the self-guidance smoother's prediction, a
    second pass after the conditional one). on(g): whether settings g use it at all; interval(g): its
    (t_lo, t_hi]; weight(g, frac): its lambda in cond + lambda (cond - ref), given the fraction of
    tokens revealed after the step (a float or a (B,) tensor)."""

    name: str
    reference: str
    on: Callable[[GuidanceConfig], bool]
    interval: Callable[[GuidanceConfig], tuple[float, float]]
    weight: Callable[[GuidanceConfig, "Tensor | float"], "Tensor | float"]

    def active(self, g: GuidanceConfig, s: float) -> bool:
        return self.on(g) and in_interval(s, self.interval(g))


@dataclass(frozen=True)
class Term:
    """One active guide for the selected tokens: reference conditions z (M, D) and weights (M,)."""

    name: str
    z: Tensor
    weight: Tensor


def combine(cond: Tensor, refs: Sequence[Tensor], weights: Sequence[Tensor | float]) -> Tensor:
    """cond + sum_i weights_i * (cond - refs_i). A weight is a float or (M,), one per row of cond."""
    out = cond
    for ref, w in zip(refs, weights):
        if isinstance(w, Tensor) and w.dim() == 1 and cond.dim() > 1:
            w = w.view(-1, *([1] * (cond.dim() - 1)))
        out = out + w * (cond - ref)
    return out


def guide(pred: Tensor, ref: Tensor, scale: Tensor | float) -> Tensor:
    """ref + scale * (pred - ref), the paper form of one guide: combine(pred, [ref], [scale - 1])."""
    return combine(pred, [ref], [scale - 1.0])


def in_interval(s: float, interval: tuple[float, float]) -> bool:
    """A guide runs at a step whose time AFTER the step, s, lies in (t_lo, t_hi] (eMIGM Sec. 3)."""
    lo, hi = interval
    return lo < s <= hi


def cfg_scale_at(scale: float, schedule: str, frac_revealed: Tensor | float) -> Tensor | float:
    """The CFG scale w of one step under `schedule` (a CFG_SCHEDULES name)."""
    try:
        rule = CFG_SCHEDULES[schedule]
    except KeyError:
        raise ValueError(f"unknown cfg_schedule {schedule!r}; valid: {', '.join(CFG_SCHEDULES)}") from None
    return rule(scale, frac_revealed)


# The guides, in the order their references are computed and their terms combined. The weight
# conventions: CFG's lambda = w - 1 (eps = eps_u + w (eps_c - eps_u)); self-guidance's lambda = s.
GUIDES: dict[str, Guide] = {
    "cfg": Guide("cfg", "null", lambda g: g.cfg_scale != 1.0, lambda g: g.cfg_interval,
                 lambda g, frac: cfg_scale_at(g.cfg_scale, g.cfg_schedule, frac) - 1.0),
    "self-guidance": Guide("self-guidance", "smoothed", lambda g: g.sg_scale > 0.0, lambda g: g.sg_interval,
                           lambda g, frac: g.sg_scale),
}
