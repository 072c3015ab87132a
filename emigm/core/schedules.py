"""Mask schedules: gamma(t), the probability that a token is masked at time t in [0, 1].

One object per schedule owns gamma and its derivative; everything else derives from it:
the training mask ratio gamma(t), the MDM loss weight gamma'(t)/gamma(t) (eMIGM paper, Table 1)
and the sampling transfer probability 1 - gamma(s)/gamma(t) (paper Sec. 3, sampling).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

Tensor = torch.Tensor


@dataclass(frozen=True)
class Schedule:
    """A mask schedule. `gamma` and `dgamma` map a tensor of times to a tensor of the same shape."""

    name: str
    gamma: Callable[[Tensor], Tensor]
    dgamma: Callable[[Tensor], Tensor]
    formula: str

    def mask_ratio(self, t: Tensor) -> Tensor:
        """Training mask ratio at time t (same as gamma)."""
        return self.gamma(t)

    def mdm_weight(self, t: Tensor) -> Tensor:
        """MDM loss weight w(t) = gamma'(t) / gamma(t) (paper Table 1, MDM row)."""
        return self.dgamma(t) / self.gamma(t)

    def transfer_prob(self, t: Tensor, s: Tensor) -> Tensor:
        """Probability that a token still masked at time t is revealed by time s < t:
        1 - gamma(s) / gamma(t), clamped to [0, 1]."""
        return (1.0 - self.gamma(s) / self.gamma(t)).clamp(0.0, 1.0)


def _linear(t: Tensor) -> Tensor:
    return t


def _dlinear(t: Tensor) -> Tensor:
    return torch.ones_like(t)


def _cosine(t: Tensor) -> Tensor:
    return torch.cos(0.5 * math.pi * (1.0 - t))


def _dcosine(t: Tensor) -> Tensor:
    return 0.5 * math.pi * torch.sin(0.5 * math.pi * (1.0 - t))


_EXP_RATE = 5.0


def _exp(t: Tensor) -> Tensor:
    return 1.0 - torch.exp(-_EXP_RATE * t)


def _dexp(t: Tensor) -> Tensor:
    return _EXP_RATE * torch.exp(-_EXP_RATE * t)


SCHEDULES: dict[str, Schedule] = {
    "linear": Schedule("linear", _linear, _dlinear, "gamma(t) = t"),
    "cosine": Schedule("cosine", _cosine, _dcosine, "gamma(t) = cos(pi/2 (1 - t))"),
    "exp": Schedule("exp", _exp, _dexp, "gamma(t) = 1 - exp(-5 t)"),
}


def get_schedule(name: str | Schedule) -> Schedule:
    """Look a schedule up by name; unknown names raise ValueError listing the valid ones."""
    if isinstance(name, Schedule):
        return name
    try:
        return SCHEDULES[name]
    except KeyError:
        raise ValueError(f"unknown schedule {name!r}; valid: {', '.join(SCHEDULES)}") from None


def time_grid(num_steps: int, t_end: float = 1e-5) -> Tensor:
    """Sampling time grid t_k = linspace(1, t_end, num_steps + 1) in float64 (paper Sec. 3)."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    return torch.linspace(1.0, t_end, num_steps + 1, dtype=torch.float64)
