"""The explorer's controls: one per SamplerConfig / GuidanceConfig field (same names), their ranges
and defaults, and the conversion of raw widget or API values into validated configs.

Ranges here are the app's limits (what a slider offers and what the API accepts); the engine's own
validation still runs after ours. Every bad value raises ValueError with a one-line message.
"""
from __future__ import annotations

import math
from typing import Any

from emigm.fields import option_fields
from emigm.guidance import CFG_MODES, GuidanceConfig
from emigm.sampler import SamplerConfig

SAMPLER_FIELDS = ("num_steps", "schedule", "count_rule", "order", "order_temperature", "order_anneal",
                  "temperature", "head_solver", "head_steps")
# cfg_interval is one (t_lo, t_hi) field in GuidanceConfig, two sliders here
GUIDANCE_FIELDS = ("cfg_scale", "cfg_mode", "cfg_interval_lo", "cfg_interval_hi", "cfg_schedule")
RUN_FIELDS = ("model", "class_name", "seed") + SAMPLER_FIELDS + GUIDANCE_FIELDS

CFG_MODE_LABELS = dict(CFG_MODES)

# (min, max) per numeric control; sliders and API calls share them
RANGES: dict[str, tuple[float, float]] = {
    "seed": (0, 2**31 - 1),
    "num_steps": (1, 64),
    "head_steps": (1, 50),
    "order_temperature": (0.0, 20.0),
    "temperature": (0.0, 3.0),
    "cfg_scale": (0.0, 10.0),
    "cfg_interval_lo": (0.0, 1.0),
    "cfg_interval_hi": (0.0, 1.0),
    "num_seeds": (1, 8),
    "num_tokens": (1, 4096),
    "branch_step": (1, 63),
}
INT_FIELDS = {"seed", "num_steps", "head_steps", "num_seeds", "num_tokens", "branch_step"}

_SAMPLER_DEFAULT = SamplerConfig()
# The opening preset tells the story: eMIGM's 16 steps, exp schedule, CFG only in (0.1, 0.3] -> 16 x 1.19
DEFAULTS: dict[str, Any] = {
    "seed": 0,
    **{f: getattr(_SAMPLER_DEFAULT, f) for f in SAMPLER_FIELDS},
    "cfg_scale": 3.0,
    "cfg_mode": "",
    "cfg_interval_lo": 0.1,
    "cfg_interval_hi": 0.3,
    "cfg_schedule": "constant",
    "num_seeds": 1,
    "num_tokens": 256,
}
# choices come from the config fields' registries (emigm.fields)
CHOICES: dict[str, tuple[str, ...]] = {f.name: spec.names() for cls in (SamplerConfig, GuidanceConfig)
                                       for f, spec in option_fields(cls) if spec.choices is not None}
SCHEDULE_NAMES = CHOICES["schedule"]


def as_number(name: str, value: Any) -> float | int:
    """A numeric control value, range-checked; ints must be whole numbers."""
    if value is None or isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {value!r}")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(x):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if name in INT_FIELDS:
        if not x.is_integer():
            raise ValueError(f"{name} must be a whole number, got {value!r}")
        x = int(x)
    lo, hi = RANGES[name]
    if not lo <= x <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {value!r}")
    return x


def as_choice(name: str, value: Any) -> str:
    value = "" if value is None and name == "cfg_mode" else value
    valid = CHOICES[name]
    if value not in valid:
        shown = ", ".join(repr(v) for v in valid)
        raise ValueError(f"unknown {name} {value!r}; valid: {shown}")
    return value


def sampler_config(num_steps, schedule, count_rule, order, order_temperature, order_anneal,
                   temperature, head_solver, head_steps) -> SamplerConfig:
    """Widget values -> a validated SamplerConfig (drafts on: the explorer always shows them)."""
    return SamplerConfig(
        num_steps=as_number("num_steps", num_steps), schedule=as_choice("schedule", schedule),
        count_rule=as_choice("count_rule", count_rule), order=as_choice("order", order),
        order_temperature=as_number("order_temperature", order_temperature),
        order_anneal=as_choice("order_anneal", order_anneal),
        temperature=as_number("temperature", temperature), head_solver=as_choice("head_solver", head_solver),
        head_steps=as_number("head_steps", head_steps), draft=True,
    )


def guidance_config(cfg_scale, cfg_mode, cfg_interval_lo, cfg_interval_hi, cfg_schedule) -> GuidanceConfig:
    """Widget values -> a validated GuidanceConfig."""
    lo, hi = as_number("cfg_interval_lo", cfg_interval_lo), as_number("cfg_interval_hi", cfg_interval_hi)
    if not lo < hi:
        raise ValueError(f"the CFG interval needs t_lo < t_hi, got ({lo}, {hi})")
    return GuidanceConfig(cfg_scale=as_number("cfg_scale", cfg_scale), cfg_mode=as_choice("cfg_mode", cfg_mode),
                          cfg_interval=(float(lo), float(hi)),
                          cfg_schedule=as_choice("cfg_schedule", cfg_schedule))


def split_run_values(values: dict[str, Any]) -> tuple[SamplerConfig, GuidanceConfig]:
    """{field: value} for SAMPLER_FIELDS + GUIDANCE_FIELDS -> (SamplerConfig, GuidanceConfig)."""
    return (sampler_config(*(values[f] for f in SAMPLER_FIELDS)),
            guidance_config(*(values[f] for f in GUIDANCE_FIELDS)))
