"""The exponential moving average of a module's weights, kept in float32 beside the module.

Sampling uses the EMA weights (the exports hold them). `state_dict()` is a plain dict with the
module's state-dict keys, which is how training checkpoints store it under "ema".
"""
from __future__ import annotations

import torch
from torch import nn

from emigm.core.statedict import check_keys

Tensor = torch.Tensor


def ema_decay(decay: float, step: int, warmup: bool) -> float:
    """The decay of the update after `step` earlier optimiser steps (0 for the first update). With
    warm-up, min(decay, (1 + step) / (10 + step)): early weights are forgotten quickly, so a short
    run's EMA is not dominated by its initialisation."""
    return min(decay, (1.0 + step) / (10.0 + step)) if warmup else decay


class EMA:
    """shadow <- d * shadow + (1 - d) * weights for floating tensors (d from `ema_decay`); integer
    buffers are copied. The shadow is float32 whatever the module's dtype, on the module's device."""

    def __init__(self, module: nn.Module, decay: float, warmup: bool = False) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay, self.warmup = decay, warmup
        self.shadow: dict[str, Tensor] = {
            k: v.detach().to(torch.float32 if v.is_floating_point() else v.dtype, copy=True)
            for k, v in module.state_dict().items()}

    def decay_at(self, step: int) -> float:
        return ema_decay(self.decay, step, self.warmup)

    @torch.no_grad()
    def update(self, module: nn.Module, step: int) -> None:
        """Fold in the module's current weights; `step`: optimiser steps taken before the one whose
        weights these are (0 after the first step)."""
        d = self.decay_at(step)
        floats_e, floats_m = [], []
        for k, v in module.state_dict().items():
            if v.is_floating_point():
                floats_e.append(self.shadow[k])
                floats_m.append(v.detach().float())
            else:
                self.shadow[k].copy_(v)
        if floats_e:
            torch._foreach_lerp_(floats_e, floats_m, 1.0 - d)

    def state_dict(self) -> dict[str, Tensor]:
        """The shadow weights (the live tensors: copy them to keep a snapshot)."""
        return self.shadow

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Tensor], source: str = "EMA state") -> None:
        """Copy `state` (same keys and shapes) into the shadow, in place."""
        check_keys(set(self.shadow), set(state), source)
        for k, v in state.items():
            if v.shape != self.shadow[k].shape:
                raise ValueError(f"{source}: shape mismatch in {k}: {tuple(v.shape)} vs {tuple(self.shadow[k].shape)}")
            self.shadow[k].copy_(v)

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        """Load the EMA weights into `module` (cast to its dtypes)."""
        own = module.state_dict()
        check_keys(set(own), set(self.shadow), "EMA weights")
        for k, v in own.items():
            v.copy_(self.shadow[k])
