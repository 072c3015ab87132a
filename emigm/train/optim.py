"""Optimisation pieces: AdamW parameter groups (eMIGM / MAR recipe: no weight decay on 1-D
parameters, biases and the per-token head) and the one learning-rate schedule function, `lr_at`,
which every training loop here uses (generator, tokenizers, classifier). The EMA of weights is in
emigm.train.ema; the loop in emigm.train.trainer.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from emigm.core.config import TrainConfig
from emigm.core.names import LR_SCHEDULES

Tensor = torch.Tensor

# Parameters of the per-token head (both kinds) get no weight decay, as in MAR.
HEAD_PREFIXES = ("diffloss.", "token_head.")
WARMUP_SHAPES = ("linear", "cosine")


def no_decay(name: str, param: Tensor) -> bool:
    """True for parameters trained without weight decay: 1-D tensors (norm scales, biases),
    anything named `*.bias`, and the head."""
    return param.ndim <= 1 or name.endswith(".bias") or name.startswith(HEAD_PREFIXES)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: [{params with decay, weight_decay}, {params without, 0.0}]; each group also
    carries the parameter names under "names" (ignored by the optimizer, handy for tests)."""
    decay, skip = ([], []), ([], [])
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        names, params = skip if no_decay(name, p) else decay
        names.append(name)
        params.append(p)
    return [{"params": decay[1], "names": decay[0], "weight_decay": weight_decay},
            {"params": skip[1], "names": skip[0], "weight_decay": 0.0}]


def base_lr(cfg: TrainConfig) -> float:
    """lr = blr * batch_size / 256 (batch_size: the global batch)."""
    return cfg.blr * cfg.batch_size / 256


def build_optimizer(model: nn.Module, cfg: TrainConfig, fused: bool = False) -> torch.optim.AdamW:
    """AdamW with the config's betas over `param_groups`; lr is set each step from `lr_at`."""
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=base_lr(cfg),
                             betas=tuple(cfg.betas), fused=fused or None)


# ----------------------------------------------------------------------------- learning rate


@dataclass(frozen=True)
class LRSchedule:
    """A warm-up and a decay that meet at `peak`, over 0-based optimiser steps:
        warm-up  `initial` at step warmup_start -> `peak` at step warmup_end  (shape: linear / cosine)
        hold     `peak` until decay_start
        decay    `peak` at decay_start -> `final` at decay_end, then held     (shape: constant / cosine)

    Steps may be fractional (one-cycle places its turn at 0.3 * steps - 1). Build one with
    `warmup_then_decay` (the trainer's and the tokenizers' schedules) or `one_cycle` (the
    classifier's, torch's OneCycleLR)."""

    peak: float
    warmup_end: float = -1.0
    decay_start: float = 0.0
    decay_end: float = 1.0
    decay: str = "constant"
    final: float = 0.0
    warmup: str = "linear"
    initial: float = 0.0
    warmup_start: float = -1.0

    def __post_init__(self) -> None:
        if self.decay not in LR_SCHEDULES:
            raise ValueError(f"unknown lr_schedule {self.decay!r}; valid: {', '.join(LR_SCHEDULES)}")
        if self.warmup not in WARMUP_SHAPES:
            raise ValueError(f"unknown warm-up shape {self.warmup!r}; valid: {', '.join(WARMUP_SHAPES)}")
        for name in ("peak", "final", "initial"):
            value = getattr(self, name)
            if not math.isfinite(value):
                raise ValueError(f"learning rate {name} must be finite, got {value}")
        if not self.warmup_start <= self.warmup_end <= self.decay_start < self.decay_end:
            raise ValueError("LRSchedule needs warmup_start <= warmup_end <= decay_start < decay_end, got "
                             f"{self.warmup_start}, {self.warmup_end}, {self.decay_start}, {self.decay_end}")


def _anneal(start: float, end: float, pct: float, shape: str) -> float:
    """From `start` (pct 0) to `end` (pct 1): linear, or half a cosine (as torch's OneCycleLR)."""
    if shape == "linear":
        return start + (end - start) * pct
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * pct))


def lr_at(step: int, schedule: LRSchedule) -> float:
    """The learning rate for 0-based optimiser step `step`."""
    s = schedule
    if step <= s.warmup_end:
        if s.warmup == "linear":  # written out so the trainer's numbers stay bit-identical
            return s.initial + (s.peak - s.initial) * (step - s.warmup_start) / (s.warmup_end - s.warmup_start)
        return _anneal(s.initial, s.peak, (step - s.warmup_start) / (s.warmup_end - s.warmup_start), "cosine")
    if step < s.decay_start or s.decay == "constant":
        return s.peak
    pct = min(1.0, (step - s.decay_start) / (s.decay_end - s.decay_start))
    return _anneal(s.peak, s.final, pct, s.decay)


def warmup_then_decay(peak: float, warmup_steps: int, steps: int, decay: str = "constant",
                      final: float = 0.0) -> LRSchedule:
    """Linear warm-up from 0 reaching `peak` at step warmup_steps - 1, then constant, or a cosine
    from `peak` at step warmup_steps down to `final` at step `steps`."""
    return LRSchedule(peak=peak, warmup_start=-1, warmup_end=warmup_steps - 1, decay_start=warmup_steps,
                      decay_end=warmup_steps + max(1, steps - warmup_steps), decay=decay, final=final)


def one_cycle(peak: float, steps: int, pct_start: float = 0.3, div_factor: float = 25.0,
              final_div_factor: float = 1e4) -> LRSchedule:
    """torch's OneCycleLR (two phases, cosine): from peak / div_factor up to `peak` at step
    pct_start * steps - 1, then down to peak / div_factor / final_div_factor at step steps - 1."""
    initial = peak / div_factor
    turn = float(pct_start * steps) - 1
    return LRSchedule(peak=peak, warmup_start=0.0, warmup_end=turn, decay_start=turn, decay_end=steps - 1,
                      decay="cosine", final=initial / final_div_factor, warmup="cosine", initial=initial)


def training_schedule(cfg: TrainConfig) -> LRSchedule:
    """The trainer's schedule: lr = blr * batch / 256 after `warmup_steps` of linear warm-up, then
    constant or cosine to `min_lr` at `steps` (TrainConfig.lr_schedule)."""
    return warmup_then_decay(base_lr(cfg), cfg.warmup_steps, cfg.steps, cfg.lr_schedule, cfg.min_lr)
