"""The axes the Compare tab varies on one seed, and the measured FD of a panel's setting.

An axis is one sampler choice (or the guidance, whose panels live in compare.py): every panel runs the
tab's setting with that one field (or two, for the head) changed, with the same seed, so with the
random and fixed orders the "where" stream reveals the same positions wherever the axis leaves the
counts alone (temperature, head, order between the fixed ones). A value the model cannot run gets a
panel that says why (emigm.sample.capabilities' reason); an axis it cannot vary at all is refused.

`measured_fd` finds a panel's setting among the measured points of assets/results/claims.json
(benchmarks/paper_claims.py), so one sample links to the distribution metric.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

from emigm.core.fields import NAME, FieldError
from emigm.core.guidance import GuidanceConfig
from emigm.core.schedules import SCHEDULES
from emigm.sample.capabilities import refusals
from emigm.sample.options import ORDERS, REMASKS, SamplerConfig

AXES = {"guidance": "guidance: no guidance, CFG (null class, interval), self-guidance",
        "schedule": "mask schedule gamma(t): linear, cosine, exp",
        "steps": "sampling steps: 4, 8, 16, 32",
        "order": f"reveal order: {', '.join(o for o in ORDERS if o != 'fixed')} (as the model can)",
        "head": "diffusion head: DPM-Solver++ with 4, 8, 14 steps, DPM-Solver++ 2M, DDPM 100",
        "remask": f"revocable tokens (ReMDM): {', '.join(REMASKS)}",
        "temperature": "token temperature: 0.5, 1, 1.5",
        "model": "the oracle (exact conditionals) beside the learned model of its tokenizer"}
# an oracle model and the learned model of the same tokenizer, grid and classes (both ways)
MODEL_PAIRS = {"fmnist-oracle": "fmnist-maskgit", "fmnist-oracle-kl": "fmnist-emigm"}
MODEL_PAIRS.update({v: k for k, v in list(MODEL_PAIRS.items())})
HEAD_VALUES = (("dpm", 4), ("dpm", 8), ("dpm", 14), ("dpm2m", 8), ("ddpm", 100))
SOLVER_TITLES = {"dpm": "DPM-Solver++", "dpm2m": "DPM-Solver++ 2M", "ddpm": "DDPM"}


def axis_values(axis: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(key, title, sampler overrides) of every panel of `axis` (not the guidance axis)."""
    if axis == "schedule":
        return [(f"schedule={s}", f"{s} schedule", {"schedule": s}) for s in SCHEDULES]
    if axis == "steps":
        return [(f"steps={n}", f"{n} steps", {"num_steps": n}) for n in (4, 8, 16, 32)]
    if axis == "order":
        return [(f"order={o}", f"{o} order", {"order": o}) for o in ORDERS if o != "fixed"]
    if axis == "head":
        return [(f"head={s}x{n}", f"{SOLVER_TITLES[s]} ×{n}", {"head_solver": s, "head_steps": n})
                for s, n in HEAD_VALUES]
    if axis == "remask":
        return [(f"remask={r}", "remasking off" if r == "off" else f"remask {r}", {"remask": r})
                for r in REMASKS]
    if axis == "temperature":
        return [(f"temperature={t:g}", f"temperature {t:g}", {"temperature": t}) for t in (0.5, 1.0, 1.5)]
    raise FieldError("axis", f"unknown {NAME} {axis!r}; valid: {', '.join(AXES)}")


def axis_reasons(model) -> dict[str, str]:
    """{axis: why} for the axes `model` cannot vary."""
    out = {}
    if model.head.discrete:
        out["head"] = "a categorical head samples its logits directly: it has no diffusion solver to vary"
    return out


def check_axis(axis: Any, model) -> str:
    if axis not in AXES:
        raise FieldError("axis", f"unknown {NAME} {axis!r}; valid: {', '.join(AXES)}")
    why = axis_reasons(model).get(axis)
    if why:
        raise FieldError("axis", f"{NAME} {axis!r} is not available for this model: {why}")
    return axis


def axis_settings(axis: str, model, smoother, sampler: SamplerConfig,
                  guidance: GuidanceConfig) -> list[tuple[str, str, SamplerConfig | None, str]]:
    """(key, title, sampler or None, note) per panel: the tab's sampler with the axis value, or None and
    why the model cannot run it."""
    out = []
    for key, title, over in axis_values(axis):
        try:
            s = replace(sampler, **over)
        except ValueError as e:
            out.append((key, title, None, f"unavailable: {e}"))
            continue
        reasons = refusals(model, smoother, s, guidance)
        if reasons:
            out.append((key, title, None, f"unavailable: {reasons[0]}"))
        else:
            out.append((key, title, s, ", ".join(f"{k} {v}" for k, v in over.items())))
    return out
