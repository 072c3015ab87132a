"""Training-time masking distributions q(x_t | x_0) and loss weights w(t) (eMIGM paper, Table 1).

All draws are vectorised over the batch (no per-sample Python loops) and take an explicit
torch.Generator. A mask is a bool tensor (B, L), True where the token is masked (to be predicted).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from emigm.core.config import MaskingConfig
from emigm.core.names import DISTRIBUTIONS, WEIGHTINGS
from emigm.core.schedules import get_schedule

Tensor = torch.Tensor

_MAR_LOW, _MAR_MODE, _MAR_SCALE = 0.7, 1.0, 0.25


@dataclass(frozen=True)
class MaskDraw:
    """mask (B, L) bool; t (B,) training time after truncation; weight (B,) loss weight w(t)."""

    mask: Tensor
    t: Tensor
    weight: Tensor


def _rand(shape: tuple[int, ...], generator: torch.Generator | None, device) -> Tensor:
    return torch.rand(shape, generator=generator, device=device)


def _first_k(keys: Tensor, k: Tensor) -> Tensor:
    """Mask of the k[b] positions with the smallest keys in each row. keys (B, L), k (B,) -> (B, L)."""
    ranks = keys.argsort(dim=1).argsort(dim=1)
    return ranks < k.unsqueeze(1)


def truncated_normal_ratio(batch: int, generator: torch.Generator | None, device) -> Tensor:
    """MAR's mask ratio: normal with mode 1 and scale 0.25 truncated to [0.7, 1], by inverse CDF."""
    def cdf(x: float) -> float:
        return 0.5 * (1.0 + math.erf((x - _MAR_MODE) / (_MAR_SCALE * math.sqrt(2.0))))
    lo, hi = cdf(_MAR_LOW), cdf(1.0)
    u = lo + (hi - lo) * _rand((batch,), generator, device).double()
    return (_MAR_MODE + _MAR_SCALE * torch.special.ndtri(u)).clamp(_MAR_LOW, 1.0).float()


REDRAWS = 32  # candidate (t, count) draws per batch for the shared-count rejection rule


def _shared_count_draw(cfg: MaskingConfig, schedule, L: int, generator: torch.Generator | None,
                       device) -> tuple[Tensor, Tensor]:
    """One (t, count) for the batch, as the reference draws it: t ~ U(0, 1) clamped at t_min,
    count ~ Binomial(L, gamma(0.999 t + 0.001)), both drawn again while count < 2 (when L >= 2).

    Rejection sampling without a host sync: REDRAWS candidates are drawn at once and the first one
    with count >= 2 is taken, which is the same distribution unless all of them fail (then the last
    candidate's count is raised to 2; with L >= 16 and t_min = 0 the chance is below 1e-30)."""
    t = _rand((REDRAWS,), generator, device).clamp(min=cfg.t_min)
    ratio = schedule.mask_ratio(0.999 * t + 0.001)
    counts = (_rand((REDRAWS, L), generator, device) < ratio.unsqueeze(1)).sum(1)
    need = min(2, L)
    ok = counts >= need
    first = torch.where(ok.any(), ok.to(torch.int8).argmax(), torch.tensor(REDRAWS - 1, device=ok.device))
    return t[first].reshape(1), counts[first].clamp(min=need)


def draw_mask(cfg: MaskingConfig, batch: int, num_tokens: int,
              generator: torch.Generator | None = None, device=None) -> MaskDraw:
    """Draw training masks for a batch.

    - bernoulli: t ~ U(0,1) clamped below at t_min (time truncation), p = 0.999 t + 0.001, each token
      masked with prob gamma(p). With shared_count (the reference's behaviour) one t and one count
      K ~ Binomial(L, gamma(p)) serve the whole batch, positions differ per sample.
    - exact: per-sample t, exactly ceil(L gamma(p)) tokens masked uniformly without replacement.
    - mar: one ratio r per batch from MAR's truncated normal, exactly ceil(L r) tokens masked.
    At least one token is always masked; with a shared count, t and the count are drawn again until
    at least two are (as the reference does, when L >= 2).
    """
    if cfg.distribution not in DISTRIBUTIONS:
        raise ValueError(f"unknown masking distribution {cfg.distribution!r}; valid: {', '.join(DISTRIBUTIONS)}")
    if cfg.weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {cfg.weighting!r}; valid: {', '.join(WEIGHTINGS)}")
    schedule = get_schedule(cfg.schedule)
    L = num_tokens
    if cfg.distribution == "bernoulli" and cfg.shared_count:
        t, count = _shared_count_draw(cfg, schedule, L, generator, device)
        t = t.expand(batch)
    else:
        shared = cfg.distribution == "mar"
        t = _rand((1 if shared else batch,), generator, device).clamp(min=cfg.t_min).expand(batch)
    p = 0.999 * t + 0.001
    ratio = schedule.mask_ratio(p)
    keys = _rand((batch, L), generator, device)
    if cfg.distribution == "bernoulli":
        if cfg.shared_count:
            mask = _first_k(keys, count.expand(batch))
        else:
            mask = keys < ratio.unsqueeze(1)
            # guarantee one masked token: the position with the smallest key
            mask = mask | _first_k(keys, torch.ones(batch, dtype=torch.long, device=keys.device))
    else:
        if cfg.distribution == "mar":
            ratio = truncated_normal_ratio(1, generator, device).expand(batch)
            t = ratio  # MAR has no time variable; report the ratio
        count = torch.ceil(L * ratio).long().clamp(1, L)
        mask = _first_k(keys, count)
    if cfg.weighting == "mdm":
        weight = schedule.mdm_weight(p)
    else:
        weight = torch.ones_like(t)
    return MaskDraw(mask=mask, t=t.contiguous(), weight=weight.contiguous())


def masked_mean(loss: Tensor, mask: Tensor, weight: Tensor | None = None) -> Tensor:
    """sum_b sum_i w_b loss[b, i] mask[b, i] / number of masked tokens. loss, mask (B, L); weight (B,)."""
    m = mask.to(loss.dtype)
    if weight is not None:
        m = m * weight.to(loss.dtype).unsqueeze(1)
    return (loss * m).sum() / mask.sum().clamp(min=1)
