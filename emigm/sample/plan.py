"""Planning a run before its loop: per-sample seeds, and how many tokens every step reveals (and, with
remasking, re-masks), decided from the "where" random stream alone so that the plan is the same for
every guidance setting and the loop needs one host sync in all.

Count rules (SamplerConfig.count_rule), at step k from t = t_k to s = t_{k+1} with n tokens masked:
- binomial (eMIGM): each masked token revealed with p = 1 - gamma(s)/gamma(t), at least one;
- exact (MaskGIT / MAR): floor(L gamma(u)/gamma(1)) tokens stay masked, u = 1 - (k+1)/S.
Both reveal every remaining token at the last step, and never reveal so many that a later step would
have nothing left to reveal (at most n - (S - k - 1)): every step reveals at least one token and costs
its passes for something. (The reference's binomial rule can empty the mask before the last step at
S close to L, leaving steps that reveal nothing.)

Remasking (ReMDM, Wang et al. 2025; SamplerConfig.remask): with alpha(t) = 1 - gamma(t)/gamma(1) the
fraction of tokens unmasked at time t, each committed token is re-masked with probability sigma_k,
    sigma_max = min(1, (1 - alpha_s) / alpha_t);   cap: min(eta, sigma_max);   rescale: eta sigma_max,
and each masked token is revealed with p = (alpha_s - (1 - sigma) alpha_t) / (1 - alpha_t), which keeps
the expected masked fraction on the schedule (sigma = 0 gives the plain rule). The exact rule reveals
the tokens that bring the masked count to its target after the re-masked ones are added back. Only
COUNTS are planned; which committed tokens are re-masked is drawn in the step (uniformly among them).
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass

import torch

from emigm.core import rng
from emigm.core.schedules import get_schedule, time_grid
from emigm.core.seeds import MAX_SEED, check_seed
from emigm.sample.options import SamplerConfig
from emigm.sample.orders import KEY_COUNT, KEY_POS, KEY_REMASK_COUNT, KEY_REMASK_POS  # noqa: F401 (re-exported)

Tensor = torch.Tensor


@dataclass(frozen=True)
class Counts:
    """The planned counts of steps start..S-1: revealed (S - start, B) and re-masked (S - start, B) int64,
    and per step the reveal probability p (S - start,) and the re-masking probability sigma used."""

    revealed: Tensor
    remasked: Tensor
    reveal_p: list[float]
    sigma: list[float]


def _alpha(schedule, t: Tensor, g1: float) -> float:
    return 1.0 - float(schedule.gamma(t)) / g1


def remask_sigma(cfg: SamplerConfig, alpha_t: float, alpha_s: float) -> float:
    """The re-masking probability of a committed token at a step from alpha_t to alpha_s (see the module
    docstring); 0 when remasking is off or nothing is committed yet."""
    if cfg.remask == "off" or alpha_t <= 0.0:
        return 0.0
    sigma_max = min(1.0, (1.0 - alpha_s) / alpha_t)
    return min(cfg.remask_eta, sigma_max) if cfg.remask in ("cap", "conf") else cfg.remask_eta * sigma_max


def plan_steps(seeds: Tensor, num_tokens: int, cfg: SamplerConfig, masked: Tensor | None = None,
               start: int = 0, frozen: Tensor | None = None) -> Counts:
    """Counts of steps start..S-1 for every sample (see the module docstring). masked: (B,) tokens still
    masked before step `start` (default: all); frozen: (B,) tokens given before the run that it never
    changes (inpainting's visible tokens; default none): they are never re-masked, and the exact rule
    counts over the others (floor((L - frozen) gamma(u)/gamma(1)) stay masked). Uses only the "where"
    stream."""
    S, L, B = cfg.num_steps, num_tokens, seeds.shape[0]
    schedule = get_schedule(cfg.schedule)
    grid = time_grid(S, cfg.t_end)
    g1 = float(schedule.gamma(torch.tensor(1.0, dtype=torch.float64)))
    n = torch.full((B,), L, dtype=torch.long, device=seeds.device) if masked is None else masked.clone()
    j = torch.arange(L, device=seeds.device)
    revealed, remasked, ps, sigmas = [], [], [], []
    for k in range(start, S):
        left = S - k - 1  # steps after this one; each needs a token to reveal
        a_t, a_s = _alpha(schedule, grid[k], g1), _alpha(schedule, grid[k + 1], g1)
        sigma = remask_sigma(cfg, a_t, a_s) if k < S - 1 else 0.0
        r = torch.zeros_like(n)
        if sigma > 0.0:
            u = rng.uniform(seeds, rng.STREAM_WHERE, k, KEY_REMASK_COUNT, tail=(L,))
            committed = L - n if frozen is None else L - n - frozen
            r = ((u < sigma) & (j < committed.unsqueeze(1))).sum(1)
        if k == S - 1:
            count, p = n.clone(), 1.0
        elif cfg.count_rule == "binomial":
            if sigma > 0.0:
                p = min(1.0, max(0.0, (a_s - (1.0 - sigma) * a_t) / (1.0 - a_t)))
            else:
                p = float(schedule.transfer_prob(grid[k], grid[k + 1]))
            u = rng.uniform(seeds, rng.STREAM_WHERE, k, KEY_COUNT, tail=(L,))
            count = ((u < p) & (j < n.unsqueeze(1))).sum(1)
        else:
            g_u = float(schedule.gamma(torch.tensor(1.0 - (k + 1) / S, dtype=torch.float64)))
            keep = math.floor(L * g_u / g1) if frozen is None else \
                torch.floor((L - frozen).double() * g_u / g1).long()
            count = n + r - keep
            p = float("nan")  # deterministic counts: the anatomy reports count / masked per sample
        # leave a token for every later step, but reveal at least one (a branch state may hold fewer
        # masked tokens than steps remain: then the early steps win)
        count = torch.minimum(torch.minimum(count, n + r - left).clamp(min=1), n)
        revealed.append(count)
        remasked.append(r)
        ps.append(p)
        sigmas.append(sigma)
        n = n - count + r
    empty = torch.zeros(0, B, dtype=torch.long, device=seeds.device)
    return Counts(torch.stack(revealed) if revealed else empty, torch.stack(remasked) if remasked else empty,
                  ps, sigmas)


def plan_counts(seeds: Tensor, num_tokens: int, cfg: SamplerConfig, masked: Tensor | None = None,
                start: int = 0, frozen: Tensor | None = None) -> Tensor:
    """Tokens revealed per step and sample, (S - start, B) int64 (see `plan_steps`)."""
    return plan_steps(seeds, num_tokens, cfg, masked, start, frozen).revealed


@dataclass(frozen=True)
class Plan:
    """Host-side facts of the steps start..S-1, known before the loop (one host sync builds them).

    counts: the planned Counts (on the device); num_visible[i]: the most visible tokens of any row before
    step start + i (the MAE encoder's length); reveal_rows[i] / masked_rows[i]: tokens revealed at that
    step / masked before it, over the batch; max_revealed[i] / max_masked[i]: the most of any row."""

    counts: Counts
    num_visible: list[int]
    reveal_rows: list[int]
    masked_rows: list[int]
    max_revealed: list[int]
    max_masked: list[int]


def make_plan(seeds: Tensor, mask: Tensor, cfg: SamplerConfig, start: int, frozen: Tensor | None = None) -> Plan:
    """The plan of steps start..S-1 from the mask before step `start` and the frozen tokens (B, L) bool or None."""
    L = mask.shape[1]
    counts = plan_steps(seeds, L, cfg, mask.sum(1), start, None if frozen is None else frozen.sum(1))
    rev, rem = counts.revealed.cpu(), counts.remasked.cpu()  # the one sync: every shape follows from it
    change = torch.cat([torch.zeros_like(rev[:1]), (rem - rev).cumsum(0)[:-1]])
    masked = mask.sum(1).cpu() + change  # (S - start, B) masked before each step
    visible = (L - masked).amax(1) if len(rev) else rev.new_zeros(0)
    most = (lambda t: t.amax(1).tolist()) if len(rev) else (lambda t: [])
    return Plan(counts, visible.tolist(), rev.sum(1).tolist(), masked.sum(1).tolist(), most(rev), most(masked))


def as_seeds(seeds, batch: int | None, device) -> Tensor:
    """Per-sample seeds as an int64 tensor: an int (sample i gets seed + i), a sequence of ints or an
    integer tensor; whole numbers in [0, 2^63 - 1] (a one-line ValueError otherwise)."""
    if isinstance(seeds, Tensor):
        if seeds.is_floating_point() or seeds.is_complex() or seeds.dtype == torch.bool or \
                (seeds.numel() and int(seeds.min()) < 0):
            raise ValueError(f"seeds must be whole numbers in [0, {MAX_SEED}]")
        return seeds.to(device=device, dtype=torch.int64).reshape(-1)
    if not isinstance(seeds, (str, bytes)) and hasattr(seeds, "__iter__"):
        values = list(seeds)
    else:
        values = [seeds]
    try:
        values = [operator.index(v) for v in values]
    except TypeError:
        raise ValueError(f"seeds must be whole numbers in [0, {MAX_SEED}], got {values[:4]!r}") from None
    if len(values) == 1 and not hasattr(seeds, "__iter__"):
        check_seed("seed", values[0], batch or 1)
        values = [values[0] + i for i in range(batch or 1)]
    for v in values:
        check_seed("seed", v)
    return torch.as_tensor(values, dtype=torch.int64, device=device).reshape(-1)
