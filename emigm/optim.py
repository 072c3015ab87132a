"""Optimisation pieces of the eMIGM recipe (spec sec. 3): AdamW parameter groups, the learning-rate
schedule and the EMA of weights. Pure functions of the config; the loop lives in emigm.train."""
from __future__ import annotations

import math

import torch
from torch import nn

from .config import TrainConfig

Tensor = torch.Tensor

# Parameters of the per-token head (both kinds) get no weight decay (spec sec. 3).
HEAD_PREFIXES = ("diffloss.", "token_head.")
LR_SCHEDULES = ("constant", "cosine")


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
    """AdamW with the config's betas over `param_groups`; lr is set each step by `lr_at`."""
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=base_lr(cfg),
                             betas=tuple(cfg.betas), fused=fused or None)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for 0-based optimiser step `step`: linear warm-up to base_lr over warmup_steps
    (reaching it at step warmup_steps - 1), then constant, or cosine decay to min_lr at cfg.steps."""
    if cfg.lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown lr_schedule {cfg.lr_schedule!r}; valid: {', '.join(LR_SCHEDULES)}")
    peak = base_lr(cfg)
    if step < cfg.warmup_steps:
        return peak * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return peak
    span = max(1, cfg.steps - cfg.warmup_steps)
    frac = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr + (peak - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * frac))


def ema_init(model: nn.Module) -> dict[str, Tensor]:
    """A float32 copy of the model's state dict (same keys), on the model's device."""
    return {k: v.detach().to(torch.float32 if v.is_floating_point() else v.dtype, copy=True)
            for k, v in model.state_dict().items()}


@torch.no_grad()
def ema_decay(cfg_decay: float, step: int, warmup: bool) -> float:
    """EMA decay at optimizer step `step` (1-based). With warm-up, min(decay, (1 + step) / (10 + step)):
    early weights are forgotten quickly, so a short run's EMA is not dominated by its initialisation."""
    return min(cfg_decay, (1.0 + step) / (10.0 + step)) if warmup else cfg_decay


def ema_update(ema: dict[str, Tensor], model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * weights for floating tensors; others are copied."""
    floats_e, floats_m = [], []
    for k, v in model.state_dict().items():
        if v.is_floating_point():
            floats_e.append(ema[k])
            floats_m.append(v.detach().float())
        else:
            ema[k].copy_(v)
    if floats_e:
        torch._foreach_lerp_(floats_e, floats_m, 1.0 - decay)
