"""Step arithmetic without a model: expected reveals per step and the pass count ("16 x 1.2")
for a sampler + guidance setting. Shared by `python -m emigm schedule` and the explorer."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .sampler import GuidanceConfig, SamplerConfig, plan_counts
from .schedules import get_schedule, time_grid


@dataclass(frozen=True)
class StepRow:
    step: int  # 1-based, as shown to people
    t: float
    s: float
    expected_revealed: float
    expected_masked_after: float
    cfg: bool
    passes: int
    cumulative_passes: int


@dataclass(frozen=True)
class StepTable:
    rows: list[StepRow]
    num_tokens: int
    cfg_steps: int
    passes: int

    @property
    def nfe_per_step(self) -> float:
        return self.passes / len(self.rows)

    def as_dict(self) -> dict:
        return {
            "num_tokens": self.num_tokens,
            "num_steps": len(self.rows),
            "cfg_steps": self.cfg_steps,
            "passes": self.passes,
            "nfe": f"{len(self.rows)} x {self.nfe_per_step:.3g}",
            "steps": [r.__dict__ for r in self.rows],
        }


def step_table(sampler: SamplerConfig, guidance: GuidanceConfig, num_tokens: int) -> StepTable:
    """Expected tokens revealed per step and the transformer passes.

    binomial rule: E[masked after step k] = L gamma(s_k) / gamma(1) (the transfer probabilities
    telescope); the at-least-one rule is ignored in the expectation. exact rule: the deterministic
    counts. A step with CFG costs 2 passes (two branches batched), others 1."""
    sampler.validate()
    guidance.validate()
    if num_tokens < 1:
        raise ValueError(f"num_tokens must be >= 1, got {num_tokens}")
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
    rows, cum, cfg_steps = [], 0, 0
    for k in range(S):
        s = float(grid[k + 1])
        cfg = guidance.cfg_active(s)
        passes = 2 if cfg else 1
        cum += passes
        cfg_steps += int(cfg)
        rows.append(StepRow(k + 1, float(grid[k]), s, float(masked_before[k] - masked_after[k]),
                            float(masked_after[k]), cfg, passes, cum))
    return StepTable(rows, L, cfg_steps, cum)
