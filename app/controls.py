"""The explorer's controls, generated from the option fields (emigm.core.fields) of SamplerConfig and
GuidanceConfig and narrowed to what the loaded model can do (emigm.sample.capabilities).

Nothing here repeats a library name, default, choice list or range: a control's kind, range, choices,
labels and help come from the field's Spec. The app adds only
- the few app-only inputs (model, class, seed, ...), described by Specs of their own;
- display caps that narrow a slider (`DISPLAY_MAX`); they never narrow what the API accepts, so a value
  past a cap is accepted when the library accepts it, and refused with the library's own message when not;
- the opening story (`STORY`): CFG 3 in (0.1, 0.3], eMIGM's "16 x 1.2 NFE".

Widgets are "lenient" (no Gradio-side range or choice check, no rounding): every value reaches
`configs`, which builds the configs, so a bad value gets the library's one-line error whether it comes
from the page or from gradio_client. Tuple fields (cfg_interval, sg_interval) are two controls,
`<field>_lo` and `<field>_hi`.
"""
from __future__ import annotations

import functools
import inspect
import typing
from typing import Any, Callable, Iterable, Mapping, Sequence

import gradio as gr

from emigm.core.fields import Spec, check_value, describe
from emigm.core.guidance import GuidanceConfig
from emigm.core.seeds import MAX_SEED
from emigm.sample.capabilities import choice_reasons, limit_reasons, limits
from emigm.sample.sampler import SamplerConfig

CONFIG_CLASSES = (SamplerConfig, GuidanceConfig)
TUPLE_PARTS = ("lo", "hi")
DISPLAY_MAX = {"num_steps": 64, "head_steps": 50, "draft_steps": 50, "cfg_scale": 10.0, "order_temperature": 20.0,
               "temperature": 3.0, "sg_scale": 10.0}
STORY = {"cfg_scale": 3.0, "cfg_interval": (0.1, 0.3)}
UNAVAILABLE = "⊘"  # marks a disabled choice in its label; the page's script disables it
DICE_MAX_SEED = 2**31 - 1  # the dice's draws stay exact as browser (double) numbers; any seed is accepted

# app-only inputs, validated like option fields
APP_SPECS: dict[str, tuple[type, Spec]] = {
    "seed": (int, Spec("sample seed: the same seed gives the same image", low=0, high=MAX_SEED)),
    "num_seeds": (int, Spec("seeds per panel (seed, seed + 1, ...)", low=1, high=4)),
    "num_tokens": (int, Spec("tokens L of the sequence", low=1, high=4096)),
    "branch_step": (int, Spec("keep the first k steps", low=1, high=None)),
    "row": (int, Spec("token row", low=0)),
    "col": (int, Spec("token column", low=0)),
}


def _hints() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for cls in CONFIG_CLASSES:
        out.update(typing.get_type_hints(cls))
    return out


HINTS = _hints()
SPECS: dict[str, tuple[Any, Any, Spec]] = {name: (default, HINTS[name], spec) for cls in CONFIG_CLASSES
                                           for name, default, spec in describe(cls)}
SAMPLER_FIELDS = tuple(name for name, _, _ in describe(SamplerConfig))
GUIDANCE_FIELDS = tuple(name for name, _, _ in describe(GuidanceConfig))


def is_tuple(name: str) -> bool:
    return typing.get_origin(SPECS[name][1]) is tuple


def control_names(fields: Iterable[str]) -> tuple[str, ...]:
    """Field names -> control names (a tuple field becomes <field>_lo, <field>_hi)."""
    return tuple(n for f in fields for n in ((f"{f}_{p}" for p in TUPLE_PARTS) if is_tuple(f) else (f,)))


STEP_CONTROLS = control_names(SAMPLER_FIELDS + GUIDANCE_FIELDS)
RUN_FIELDS = ("model", "class_name", "seed") + STEP_CONTROLS


def default(name: str) -> Any:
    """The opening value of a control: the story's, else the field's default."""
    for f in SPECS:
        if is_tuple(f) and name.startswith(f + "_") and name[len(f) + 1:] in TUPLE_PARTS:
            value = STORY.get(f, SPECS[f][0])
            return value[TUPLE_PARTS.index(name[len(f) + 1:])]
    if name in SPECS:
        return STORY.get(name, SPECS[name][0])
    if name in APP_SPECS:
        return APP_SPECS[name][1].low or 0
    raise KeyError(name)


DEFAULTS = {n: default(n) for n in STEP_CONTROLS + ("seed",)}


# ----------------------------------------------------------------------------- values -> configs


def as_int(name: str, value: Any) -> Any:
    """A whole float (a slider's 16.0) as int; anything else unchanged, for the library to judge."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def app_value(name: str, value: Any, high: float | None = None) -> int:
    """An app-only integer input, checked like an option field (same one-line messages)."""
    tp, spec = APP_SPECS[name]
    if high is not None:
        spec = Spec(spec.help, spec.low, high)
    value = as_int(name, value)
    check_value(name, value, tp, spec)
    return value


def field_value(name: str, values: Mapping[str, Any]) -> Any:
    """The config value of field `name` from control values (tuples from their two parts)."""
    tp = SPECS[name][1]
    if is_tuple(name):
        return tuple(values[f"{name}_{p}"] for p in TUPLE_PARTS)
    value = values[name]
    if tp is int:
        return as_int(name, value)
    if tp is str and value is None:
        return ""
    return value


def configs(values: Mapping[str, Any], **fixed: Any) -> tuple[SamplerConfig, GuidanceConfig]:
    """{control: value} -> (SamplerConfig, GuidanceConfig), keyword by field name; `fixed` overrides
    fields the caller decides (e.g. the comparison's order). Errors are the library's."""
    def build(cls, names):
        return cls(**{n: fixed[n] if n in fixed else field_value(n, values) for n in names})

    return build(SamplerConfig, SAMPLER_FIELDS), build(GuidanceConfig, GUIDANCE_FIELDS)


# ----------------------------------------------------------------------------- model-dependent views


class ModelView:
    """What the controls may offer for one model: disabled choices with reasons, caps with reasons,
    fields the model does not use."""

    def __init__(self, model, smoother=None, warnings: Mapping[str, Mapping[str, str]] | None = None) -> None:
        self.reasons = choice_reasons(model, smoother)
        self.warnings = dict(warnings or {})  # {field: {choice: why}}: runs, but measured to fail here
        self.limits = limits(model, smoother)
        self.limit_reasons = limit_reasons(model, smoother)
        self.unused: dict[str, str] = {}
        if model.head.discrete:
            why = "a categorical head samples its logits directly; no diffusion solver"
            self.unused.update(head_solver=why, head_steps=why, draft_steps=why)
        if smoother is None:
            why = self.limit_reasons.get("sg_scale", "no self-guidance smoother")
            self.unused.update(sg_scale=why, sg_interval=why)
        self.has_sg = smoother is not None
        self.num_tokens = model.num_tokens

    def refusing(self, field: str, reasons: Mapping[str, str]) -> "ModelView":
        """This view with more choices of `field` disabled (a tab that cannot use them), with reasons."""
        import copy

        out = copy.copy(self)
        out.reasons = {**self.reasons, field: {**self.reasons.get(field, {}), **reasons}}
        return out

    def high(self, name: str) -> float | None:
        spec = SPECS[name][2]
        model_cap = None if name in self.unused else self.limits.get(name, (None, None))[1]
        caps = [c for c in (spec.high, DISPLAY_MAX.get(name), model_cap) if c is not None]
        return min(caps) if caps else None


def _choices(name: str, view: ModelView | None) -> list[tuple[str, str]]:
    spec = SPECS[name][2]
    bad = view.reasons.get(name, {}) if view else {}
    warnings = view.warnings.get(name, {}) if view else {}
    out = []
    for value in spec.names():
        label = value or "model's own"
        if value in bad:
            label = f"{label} {UNAVAILABLE}"
        elif value in warnings:
            label = f"{label} ⚠"
        out.append((label, value))
    return out


def _info(name: str, view: ModelView | None) -> str:
    spec = SPECS[name][2]
    parts = [spec.help]
    warnings = view.warnings.get(name, {}) if view else {}
    if view is not None:
        parts += [f"{UNAVAILABLE} {v or 'own'}: {why}" for v, why in view.reasons.get(name, {}).items()]
        if name in view.limit_reasons and name in view.limits and name not in view.unused:
            parts.append(view.limit_reasons[name])
        if name in view.unused or name.rsplit("_", 1)[0] in view.unused:
            parts.append(f"not used by this model: {view.unused.get(name) or view.unused[name.rsplit('_', 1)[0]]}")
    parts += [f"⚠ {v}: {why}" for v, why in warnings.items()]
    return " · ".join(parts)


def _step(name: str, lo: float, hi: float) -> float:
    if SPECS[name][1] is int:
        return 1
    span = hi - lo
    return 0.01 if span <= 1 else 0.05 if span <= 5 else 0.1


class LenientSlider(gr.Slider):
    """A Slider whose value reaches the handler unchecked (the library checks it, with its message)."""

    is_template = True

    def preprocess(self, payload: Any) -> Any:
        return payload


class LenientRadio(gr.Radio):
    is_template = True

    def preprocess(self, payload: Any) -> Any:
        return payload


class LenientDropdown(gr.Dropdown):
    is_template = True

    def preprocess(self, payload: Any) -> Any:
        return payload


class LenientNumber(gr.Number):
    """A Number that neither rounds nor range-checks (1.5 is refused as not whole, not rounded to 2)."""

    is_template = True

    def preprocess(self, payload: Any) -> Any:
        return payload


def widget(name: str, view: ModelView | None = None, value: Any = None, label: str | None = None,
           **kw) -> gr.components.Component:
    """The widget of control `name` (a field, or one part of a tuple field), from its Spec."""
    field = name if name in SPECS else name.rsplit("_", 1)[0]
    default_, tp, spec = SPECS[field]
    value = default(name) if value is None else value
    interactive = not (view and field in view.unused)
    label = label or (name if field == name else f"{field} t_{name.rsplit('_', 1)[1]}")
    kw.setdefault("elem_id", f"ctl-{name}")
    common = dict(label=label, info=_info(field, view), interactive=interactive, visible=interactive, **kw)
    if spec.choices is not None:
        return LenientRadio(_choices(field, view), value=value, **common)
    lo = spec.low if spec.low is not None else 0
    hi = (view.high(field) if view else min(c for c in (spec.high, DISPLAY_MAX.get(field)) if c is not None))
    return LenientSlider(lo, hi, value=min(value, hi) if interactive else value, step=_step(field, lo, hi), **common)


def widget_update(name: str, view: ModelView, value: Any = None):
    """gr.update that re-narrows control `name` to `view` (after the model changed)."""
    field = name if name in SPECS else name.rsplit("_", 1)[0]
    spec = SPECS[field][2]
    interactive = field not in view.unused
    kw: dict[str, Any] = dict(info=_info(field, view), interactive=interactive, visible=interactive)
    if spec.choices is not None:
        kw["choices"] = _choices(field, view)
        if value is not None:
            kw["value"] = value
    else:
        hi = view.high(field)
        kw["maximum"] = hi
        if value is not None:
            kw["value"] = min(value, hi) if isinstance(value, (int, float)) and interactive else value
    return gr.update(**kw)


def narrowed(names: Iterable[str], view: ModelView, values: Mapping[str, Any]) -> list:
    """gr.updates that narrow controls `names` to a newly chosen model, keeping each current value
    the model can take (a choice it cannot take moves to the first it can; a number to its cap)."""
    out = []
    for n in names:
        v = values.get(n)
        if n in SPECS and SPECS[n][2].choices is not None:
            v = first_available(n, view, v)
        out.append(widget_update(n, view, v))
    return out


def setting_warnings(view: ModelView, sampler, guidance) -> list[str]:
    """The measured warnings that apply to this setting ("ddpm: FD 300 here ...")."""
    values = {**{f: getattr(sampler, f) for f in SAMPLER_FIELDS}, **{f: getattr(guidance, f) for f in GUIDANCE_FIELDS}}
    return [f"{name} {values[name]!r}: {why[values[name]]}" for name, why in view.warnings.items()
            if values.get(name) in why]


def first_available(name: str, view: ModelView, current: Any) -> Any:
    """`current` if the model can take it, else the first choice it can."""
    bad = view.reasons.get(name, {})
    if current not in bad:
        return current
    return next(v for v in SPECS[name][2].names() if v not in bad)


# ----------------------------------------------------------------------------- keyword handlers


def keyword_handler(names: Sequence[str], fn: Callable[..., Any], *, lead: Sequence[str] = (),
                    request: bool = False) -> Callable[..., Any]:
    """A Gradio handler with one parameter per control name (the API's parameter names) that calls
    fn(*lead_values, values: dict, [request]) with the control values in a dict keyed by name.

    lead: names of leading parameters passed positionally (e.g. the per-user trajectory)."""
    params = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in (*lead, *names)]
    annotations: dict[str, Any] = {}
    if request:
        params.append(inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None,
                                        annotation=gr.Request))
        annotations["request"] = gr.Request
    sig = inspect.Signature(params)

    def split(args, kwargs):
        bound = sig.bind(*args, **kwargs)
        bound.apply_defaults()
        a = dict(bound.arguments)
        extra = (a.pop("request"),) if request else ()
        return (*(a.pop(n) for n in lead), a, *extra)

    if inspect.isgeneratorfunction(fn):
        def handler(*args, **kwargs):
            yield from fn(*split(args, kwargs))
    else:
        def handler(*args, **kwargs):
            return fn(*split(args, kwargs))
    functools.update_wrapper(handler, fn, assigned=("__module__", "__name__", "__qualname__", "__doc__"),
                             updated=())
    handler.__signature__ = sig
    handler.__annotations__ = annotations
    return handler
