"""JSON traces of a sampling run: the settings and, per step, what was revealed where and the cost."""
from __future__ import annotations

from typing import Any, Iterable

from emigm.core.config import to_dict
from emigm.sample.sampler import StepState


def step_record(state: StepState) -> dict[str, Any]:
    revealed = state.revealed.cpu()
    return {
        "step": state.step + 1,
        "num_steps": state.num_steps,
        "t": state.t,
        "s": state.s,
        "cfg_active": state.cfg_active,
        "cfg_scale": [round(float(x), 6) for x in state.cfg_scale.cpu()],
        "sg_active": state.sg_active,
        "sg_scale": state.sg_scale,
        "revealed": [row.nonzero().flatten().tolist() for row in revealed],
        "passes": state.passes,
        "head_evals": state.head_evals,
    }


def trace_dict(states: Iterable[StepState], model: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Settings + per-step records. Positions are row-major token indices."""
    states = list(states)
    if not states:
        raise ValueError("empty trace")
    last = states[-1]
    return {
        "model": model,
        "sampler": to_dict(last.sampler),
        "guidance": to_dict(last.guidance),
        "seeds": last.seeds.cpu().tolist(),
        "labels": last.labels.cpu().tolist(),
        "num_tokens": int(last.mask_after.shape[1]),
        "total_passes": last.passes,
        "total_head_evals": last.head_evals,
        **(extra or {}),
        "steps": [step_record(s) for s in states],
    }
