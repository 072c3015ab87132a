"""JSON traces of a sampling run: the settings and, per step, what was revealed where and the cost."""
from __future__ import annotations

from typing import Any, Iterable

from emigm.core.config import to_dict
from emigm.sample.state import StepState


def _rounded(x, digits: int = 5):
    return [round(float(v), digits) for v in x]


def anatomy_record(state: StepState) -> dict[str, Any]:
    """The step's anatomy for JSON: per image, over the tokens masked before the step (row-major
    positions), the order's score, the Gumbel noise, the selection rank and the uncertainty."""
    a = state.anatomy
    per_image = []
    for b in range(state.mask_before.shape[0]):
        pos = state.mask_before[b].nonzero().flatten()
        per_image.append({"positions": pos.tolist(), "score": _rounded(a.score[b, pos].cpu()),
                          "noise": _rounded(a.noise[b, pos].cpu()), "rank": a.rank[b, pos].tolist(),
                          "uncertainty": _rounded(a.uncertainty[b, pos].cpu())})
    out = {"reveal_p": _rounded(a.reveal_p.cpu(), 6), "expected": _rounded(a.expected.cpu(), 4),
           "drawn": a.drawn.cpu().tolist(), "remask_sigma": round(a.remask_sigma, 6), "images": per_image}
    if a.path is not None:
        out["path"] = [_rounded(row.cpu()) for row in a.path]
    return out


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
        "remasked": [row.nonzero().flatten().tolist() for row in state.remasked.cpu()],
        "passes": state.passes,
        "head_evals": state.head_evals,
        "active": state.mask_before.any(1).cpu().tolist(),
        **({"anatomy": anatomy_record(state)} if state.anatomy is not None else {}),
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
        "revisions": last.revisions.cpu().tolist(),
        "steps_per_image": None if last.image_steps is None else last.image_steps.cpu().tolist(),
        "passes_per_image": None if last.image_passes is None else last.image_passes.cpu().tolist(),
        **(extra or {}),
        "steps": [step_record(s) for s in states],
    }
