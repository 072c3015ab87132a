"""Step arithmetic without a model: the tokens revealed per step as the sampler plans them, the schedule's
reference L x (gamma(t) - gamma(s)), and the pass count ("16 x 1.2") for a sampler + guidance setting.
Shared by `python -m emigm schedule` and the explorer.

The plan (`emigm.sample.plan.plan_steps`) is what a run does: binomial draws, at least one token per
step, a cap that leaves one token for every later step, remasking. Its mean and 5-95 % range over many
seeds are the table's `planned_*` columns; the schedule's expectation (which ignores the at-least-one
rule and the cap) stays as the reference `expected_revealed`: at 16 steps and 49 tokens the reference is
0.12 tokens at step 1 while every run reveals at least one."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from emigm.core.fields import NAME, FieldError
from emigm.core.guidance import GuidanceConfig
from emigm.core.schedules import get_schedule, time_grid
from emigm.sample.options import SamplerConfig
from emigm.sample.plan import plan_counts, plan_steps

PLAN_DRAWS = 2000  # seeds behind the planned mean and 5-95 % range (fewer for very large L x S)
PLAN_BUDGET = 16_000_000  # at most this many uniform draws (seeds x tokens x steps) for the plan statistics


@dataclass(frozen=True)
class StepRow:
    step: int  # 1-based, as shown to people
    t: float
    s: float
    expected_revealed: float
    expected_masked_after: float
    cfg: bool
    sg: bool
    passes: int
    cumulative_passes: int
    planned_mean: float = 0.0  # mean tokens revealed at this step over `draws` seeds, as plan_steps plans them
    planned_lo: int = 0  # 5th percentile (nearest rank, lower)
    planned_hi: int = 0  # 95th percentile (nearest rank, upper)
    planned_masked_after: float = 0.0  # mean tokens still masked after the step
    planned_remasked: float = 0.0  # mean tokens re-masked at the step (remasking samplers)


@dataclass(frozen=True)
class StepTable:
    rows: list[StepRow]
    num_tokens: int
    cfg_steps: int
    sg_steps: int
    passes: int
    draws: int = 0  # seeds behind the planned columns (0: computed exactly)

    @property
    def nfe_per_step(self) -> float:
        return self.passes / len(self.rows)

    def as_dict(self) -> dict:
        return {
            "num_tokens": self.num_tokens,
            "num_steps": len(self.rows),
            "cfg_steps": self.cfg_steps,
            "sg_steps": self.sg_steps,
            "passes": self.passes,
            "plan_draws": self.draws,
            "nfe": f"{len(self.rows)} x {self.nfe_per_step:.3g}",
            "steps": [r.__dict__ for r in self.rows],
        }


def plan_draws(num_tokens: int, num_steps: int, draws: int = PLAN_DRAWS) -> int:
    """How many seeds the plan statistics use: `draws`, fewer when L x S is large (at least 100)."""
    return max(100, min(draws, PLAN_BUDGET // max(1, num_tokens * num_steps)))


def _binomial_pmf(n: torch.Tensor, L: int, p: float) -> torch.Tensor:
    """(len(n), L + 1) float64: row i is the pmf of Binomial(n[i], p) over 0..L (zero beyond n[i])."""
    width = int(n.max()) + 1 if len(n) else 1
    n = n.double().unsqueeze(1)
    c = torch.arange(width, dtype=torch.float64).unsqueeze(0)
    ok = c <= n
    m = torch.where(ok, n - c, torch.zeros(()))
    p_t = torch.tensor(p, dtype=torch.float64)
    log = (torch.lgamma(n + 1) - torch.lgamma(c + 1) - torch.lgamma(m + 1)
           + torch.xlogy(c, p_t) + torch.xlogy(m, 1.0 - p_t))
    return torch.nn.functional.pad(torch.where(ok, log.exp(), torch.zeros(())), (0, L + 1 - width))


def plan_distribution(sampler: SamplerConfig, num_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact law of `plan_steps` without remasking: (count pmf (S, L + 1): the probability that step k
    reveals c tokens, masked pmf (S, L + 1): that n tokens stay masked after it), by propagating the
    masked count through each step's rule (binomial draw or exact target, then at least one and at most
    n - (steps left), everything at the last step). Masked counts of probability below 1e-15 are dropped."""
    if sampler.remask != "off":
        raise ValueError("plan_distribution covers samplers without remasking")
    S, L = sampler.num_steps, num_tokens
    schedule = get_schedule(sampler.schedule)
    grid = time_grid(S, sampler.t_end)
    g1 = float(schedule.gamma(torch.tensor(1.0, dtype=torch.float64)))
    dist = torch.zeros(L + 1, dtype=torch.float64)
    dist[L] = 1.0
    values = torch.arange(L + 1)
    counts, masked = [], []
    for k in range(S):
        left = S - k - 1
        n = torch.nonzero(dist > 1e-15).squeeze(1)  # the masked counts this step can start from
        rows = torch.arange(len(n))
        if k == S - 1:
            trans = torch.zeros(len(n), L + 1, dtype=torch.float64)
            trans[rows, n] = 1.0  # everything left is revealed
        else:
            if sampler.count_rule == "binomial":
                raw = _binomial_pmf(n, L, float(schedule.transfer_prob(grid[k], grid[k + 1])))
            else:
                g_u = float(schedule.gamma(torch.tensor(1.0 - (k + 1) / S, dtype=torch.float64)))
                raw = torch.zeros(len(n), L + 1, dtype=torch.float64)
                raw[rows, (n - math.floor(L * g_u / g1)).clamp(0, L)] = 1.0  # a negative target clamps like any
            hi = (n - left).clamp(min=1)  # count = clamp(raw, 1, max(n - left, 1)); 0 when n = 0
            cdf = raw.cumsum(1)
            c = values.unsqueeze(0)
            trans = torch.where((c > 1) & (c < hi.unsqueeze(1)), raw, torch.zeros(()))
            trans[rows, 1] += cdf[:, 1]  # P(raw <= 1)
            trans[rows, hi] += torch.where(hi > 1, 1.0 - cdf.gather(1, (hi - 1).unsqueeze(1)).squeeze(1),
                                           1.0 - cdf[:, 1])  # P(raw >= hi) (hi = 1: the rest of the mass)
            trans[n == 0] = 0.0
            trans[n == 0, 0] = 1.0
        joint = dist[n].unsqueeze(1) * trans  # (masked before, count)
        counts.append(joint.sum(0))
        after = torch.zeros(L + 1, dtype=torch.float64)
        idx = (n.unsqueeze(1) - values.unsqueeze(0)).clamp(min=0)  # masked after = n - count
        after.scatter_add_(0, idx.reshape(-1), joint.reshape(-1))
        dist = after
        masked.append(dist)
    return torch.stack(counts), torch.stack(masked)


def _quantile(pmf: torch.Tensor, q: float, upper: bool) -> torch.Tensor:
    """Per row of a pmf: the smallest value whose cdf reaches q (lower), or for upper the smallest whose
    cdf exceeds q (nearest rank from above)."""
    cdf = pmf.cumsum(1)
    hit = cdf > q + 1e-12 if upper else cdf >= q - 1e-12
    return hit.double().argmax(1).double()


def plan_statistics(sampler: SamplerConfig, num_tokens: int, draws: int) -> dict[str, torch.Tensor]:
    """Per step, of the tokens `plan_steps` reveals: "mean", "lo" (5 %), "hi" (95 %), and "masked_after"
    (mean), "remasked" (mean); each (S,). Exact (`plan_distribution`) without remasking; with remasking,
    over seeds 0..draws-1."""
    L = num_tokens
    if sampler.remask == "off":
        count, masked = plan_distribution(sampler, L)
        values = torch.arange(L + 1, dtype=torch.float64)
        return {"mean": count @ values, "lo": _quantile(count, 0.05, False), "hi": _quantile(count, 0.95, True),
                "masked_after": masked @ values, "remasked": torch.zeros(sampler.num_steps, dtype=torch.float64)}
    counts = plan_steps(torch.arange(draws, dtype=torch.long), num_tokens, sampler)
    rev = counts.revealed.double()  # (S, B)
    net = (counts.revealed - counts.remasked).cumsum(0).double()
    return {"mean": rev.mean(1), "lo": torch.quantile(rev, 0.05, dim=1, interpolation="lower"),
            "hi": torch.quantile(rev, 0.95, dim=1, interpolation="higher"),
            "masked_after": num_tokens - net.mean(1), "remasked": counts.remasked.double().mean(1)}


def step_table(sampler: SamplerConfig, guidance: GuidanceConfig, num_tokens: int, draws: int = PLAN_DRAWS
               ) -> StepTable:
    """Tokens revealed per step (as planned, and the schedule's reference) and the transformer passes.

    planned_*: plan_steps over `plan_draws(L, S, draws)` seeds (mean, 5-95 % range). The reference,
    binomial rule: E[masked after step k] = L gamma(s_k) / gamma(1) (the transfer probabilities
    telescope), ignoring the at-least-one rule and the cap; exact rule: the deterministic counts. A step
    costs 1 pass, +1 with CFG (its null branch, batched), +1 with self-guidance (its sequential smoothed
    pass)."""
    if num_tokens < 1:
        raise ValueError(f"num_tokens must be >= 1, got {num_tokens}")
    if sampler.num_steps > num_tokens:
        raise FieldError("num_steps", f"{NAME} {sampler.num_steps} exceeds the {num_tokens} tokens: a step "
                                      "reveals at least one token while any is masked")
    S, L = sampler.num_steps, num_tokens
    sched = get_schedule(sampler.schedule)
    grid = time_grid(S, sampler.t_end)
    g1 = sched.gamma(grid[0])
    if sampler.count_rule == "exact":
        counts = plan_counts(torch.zeros(1, dtype=torch.long), L, sampler)[:, 0].double()
        masked_after = L - counts.cumsum(0)
    else:
        masked_after = L * sched.gamma(grid[1:]) / g1
        masked_after[-1] = 0.0
    masked_before = torch.cat([torch.tensor([float(L)], dtype=torch.float64), masked_after[:-1]])
    n = 0 if sampler.remask == "off" else plan_draws(L, S, draws)  # 0: the exact law, no draws
    plan = plan_statistics(sampler, L, n)
    rows, cum = [], 0
    for k in range(S):
        s = float(grid[k + 1])
        passes = guidance.passes(s)
        cum += passes
        rows.append(StepRow(k + 1, float(grid[k]), s, float(masked_before[k] - masked_after[k]),
                            float(masked_after[k]), guidance.cfg_active(s), guidance.sg_active(s), passes, cum,
                            float(plan["mean"][k]), int(plan["lo"][k]), int(plan["hi"][k]),
                            float(plan["masked_after"][k]), float(plan["remasked"][k])))
    return StepTable(rows, L, sum(r.cfg for r in rows), sum(r.sg for r in rows), cum, n)
