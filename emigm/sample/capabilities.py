"""What a loaded model can do: the sampler and guidance choices it cannot run, each with its reason.

One source for the sampler's refusals and the explorer's disabled controls: `choice_reasons` lists,
per option field, the choices this model cannot take and why; `limits` gives the numeric caps that
depend on the model (num_steps <= its token count); `refusals` applies both to a concrete setting.

And one source for what a model is run with when nobody says otherwise: `suggested_settings` (the
sampler rule it was trained for) and `suggested_guidance` (its CFG). The CLI, `Pipeline` and the
explorer all read these two, so one seed gives the same image everywhere.
"""
from __future__ import annotations

from typing import Any

from emigm.core.fields import FieldError
from emigm.core.guidance import GuidanceConfig
from emigm.sample.orders import ORDERS, PROBABILITIES

# eMIGM's setting (paper Sec. 3, "16 x 1.2 NFE"): CFG 3 at the steps whose time after the step lies in
# (0.1, 0.3]; measured on the shipped models in assets/results (README: the paper's claims)
SUGGESTED_GUIDANCE = {"cfg_scale": 3.0, "cfg_interval": (0.1, 0.3)}


def choice_reasons(model, smoother=None) -> dict[str, dict[str, str]]:
    """{field: {choice: reason}} for the choices `model` (with its self-guidance smoother `smoother`,
    or None) cannot run."""
    out: dict[str, dict[str, str]] = {}
    if not model.head.discrete:  # a diffusion head has no token probabilities
        usable = ", ".join(n for n, o in ORDERS.items() if o.needs != PROBABILITIES)
        out["order"] = {name: f"the {name} order needs {o.needs}; a diffusion head has none (use {usable})"
                        for name, o in ORDERS.items() if o.needs == PROBABILITIES}
        out["remask"] = {"conf": "ReMDM-conf weighs committed tokens by their probability when committed; a "
                                 "diffusion head has none (use cap or rescale)"}
    other = "fake" if model.null_mode == "mask" else "mask"
    out["cfg_mode"] = {other: f"this model was trained with null mode {model.null_mode!r}; "
                              f"{other!r} needs a model trained with it"}
    return out


def limits(model, smoother=None) -> dict[str, tuple[float, float]]:
    """Numeric caps that depend on the model: {field: (low, high)}."""
    caps = {"num_steps": (1, model.num_tokens)}
    if smoother is None:
        caps["sg_scale"] = (0.0, 0.0)
    return caps


def limit_reasons(model, smoother=None) -> dict[str, str]:
    reasons = {"num_steps": f"at most {model.num_tokens} steps: this model has {model.num_tokens} tokens "
                            "and a step reveals at least one while any is masked"}
    if smoother is None:
        reasons["sg_scale"] = "self-guidance needs a self-guidance smoother; this model has none"
    return reasons


def refusals(model, smoother, sampler, guidance: GuidanceConfig) -> list[FieldError]:
    """Why (sampler, guidance) cannot run on this model, one FieldError per refused field; empty when
    it can."""
    out: list[FieldError] = []
    settings: dict[str, Any] = {"order": sampler.order, "remask": sampler.remask, "cfg_mode": guidance.cfg_mode}
    for name, bad in choice_reasons(model, smoother).items():
        value = settings.get(name)
        if name == "cfg_mode" and (guidance.cfg_scale == 1.0 or not value):
            continue  # the null class is only used when CFG runs
        if value in bad:
            out.append(FieldError(name, f"{{name}} {value!r} is not available: {bad[value]}"))
    lim, why = limits(model, smoother), limit_reasons(model, smoother)
    values = {"num_steps": sampler.num_steps, "sg_scale": guidance.sg_scale}
    for name, (lo, hi) in lim.items():
        if not lo <= values[name] <= hi:
            out.append(FieldError(name, f"{{name}} {values[name]} is not available: {why[name]}"))
    return out


def check_capabilities(model, sampler, guidance: GuidanceConfig, smoother=None) -> None:
    """Raise the FieldError (a ValueError) of the first reason the setting cannot run on this model."""
    reasons = refusals(model, smoother, sampler, guidance)
    if reasons:
        raise reasons[0]


def suggested_settings(model) -> dict[str, Any]:
    """The sampler rule a model was trained for, as option-field values: its training mask schedule,
    and the reveal rule of its family: MaskGIT's for a categorical head (exact counts, most confident
    first), eMIGM's otherwise (binomial counts, random order). The explorer applies these when a model
    is chosen; they are suggestions, every field stays settable."""
    if getattr(model, "is_oracle", False):  # no training rule: eMIGM's sampler
        return {"schedule": "exp", "count_rule": "binomial", "order": "random"}
    if model.head.discrete:
        return {"schedule": model.cfg.masking.schedule, "count_rule": "exact", "order": "confidence"}
    return {"schedule": model.cfg.masking.schedule, "count_rule": "binomial", "order": "random"}


def suggested_guidance(model) -> dict[str, Any]:
    """The guidance a model runs with unless told otherwise, as option-field values: eMIGM's CFG 3 in
    (0.1, 0.3] (SUGGESTED_GUIDANCE). Like `suggested_settings`, a suggestion: every field stays settable
    (cfg_scale 1 turns CFG off). An oracle runs unguided: its point is the exact p(x | c)."""
    if getattr(model, "is_oracle", False):
        return {"cfg_scale": 1.0, "cfg_interval": SUGGESTED_GUIDANCE["cfg_interval"]}
    return dict(SUGGESTED_GUIDANCE)
