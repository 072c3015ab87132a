"""Step arithmetic without a model: expected reveals per step and the pass count ("16 x 1.2")
for a sampler + guidance setting. Shared by `python -m emigm schedule` and the explorer."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from emigm.core.fields import NAME, FieldError
from emigm.core.guidance import GuidanceConfig
from emigm.core.schedules import get_schedule, time_grid
from emigm.sample.options import SamplerConfig
from emigm.sample.plan import plan_counts


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


@dataclass(frozen=True)
class StepTable:
    rows: list[StepRow]
    num_tokens: int
    cfg_steps: int
    sg_steps: int
    passes: int

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
            "nfe": f"{len(self.rows)} x {self.nfe_per_step:.3g}",
            "steps": [r.__dict__ for r in self.rows],
        }


def step_table(sampler: SamplerConfig, guidance: GuidanceConfig, num_tokens: int) -> StepTable:
    """Expected tokens revealed per step and the transformer passes.

    binomial rule: E[masked after step k] = L gamma(s_k) / gamma(1) (the transfer probabilities
    telescope); the at-least-one rule is ignored in the expectation. exact rule: the deterministic
    counts. A step costs 1 pass, +1 with CFG (its null branch, batched), +1 with self-guidance
    (its sequential smoothed pass)."""
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
    rows, cum = [], 0
    for k in range(S):
        s = float(grid[k + 1])
        passes = guidance.passes(s)
        cum += passes
        rows.append(StepRow(k + 1, float(grid[k]), s, float(masked_before[k] - masked_after[k]),
                            float(masked_after[k]), guidance.cfg_active(s), guidance.sg_active(s), passes, cum))
    return StepTable(rows, L, sum(r.cfg for r in rows), sum(r.sg for r in rows), cum)
