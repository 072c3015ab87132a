"""The explorer's controls, generated from the option fields (emigm.core.fields) of SamplerConfig and
GuidanceConfig and narrowed to what the loaded model can do (emigm.sample.capabilities).

Nothing here repeats a library name, default, choice list or range: a control's kind, range, choices,
labels and help come from the field's Spec, its opening value from the field's default or, for the
guidance, from emigm.sample.capabilities.SUGGESTED_GUIDANCE (what the CLI uses too). The app adds only
the few app-only inputs (model, class, seed, ...), described by Specs of their own. A slider's range is
what the library accepts, narrowed by what the loaded model accepts (`ModelView.high`), so a slider
never holds a value it would silently clamp.

Widgets are "lenient" (no Gradio-side range or choice check, no rounding): every value reaches
`configs`, which builds the configs, so a bad value gets the library's one-line error whether it comes
from the page or from gradio_client; `problems` gives every such message keyed by control, which the
page shows next to that control. Tuple fields (cfg_interval, sg_interval) are two controls,
`<field>_lo` and `<field>_hi`.

A control the model does not use is hidden, and its value is fitted to what the model accepts
(`fit`: sg_scale 0 without a smoother), so no value a person cannot see can refuse a run.
"""
from __future__ import annotations

import copy
import functools
import inspect
import typing
from typing import Any, Callable, Iterable, Mapping, Sequence

import gradio as gr

from emigm.core.fields import FieldError, Spec, check_value, describe
from emigm.core.guidance import GuidanceConfig
from emigm.core.seeds import MAX_SEED
from emigm.sample.capabilities import SUGGESTED_GUIDANCE, choice_reasons, limit_reasons, limits, refusals
from emigm.sample.sampler import SamplerConfig

CONFIG_CLASSES = (SamplerConfig, GuidanceConfig)
TUPLE_PARTS = ("lo", "hi")
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
REVEAL_ORDER = "reveal_order"  # a painted reveal order, token indices "I,J,..." (order fixed; "" = raster)
RUN_FIELDS = ("model", "class_name", "seed") + STEP_CONTROLS + (REVEAL_ORDER,)


def split(values: Mapping[str, Any]) -> dict[str, Any]:
    """{field: value} -> {control: value} (a tuple field's value goes to its two parts)."""
    out: dict[str, Any] = {}
    for f, v in values.items():
        if f in SPECS and is_tuple(f):
            out.update({f"{f}_{p}": x for p, x in zip(TUPLE_PARTS, v)})
        else:
            out[f] = v
    return out


OPENING = split(SUGGESTED_GUIDANCE)  # the library's suggested guidance, as control values


def default(name: str) -> Any:
    """The opening value of a control: the library's suggested guidance, else the field's default."""
    if name in OPENING:
        return OPENING[name]
    for f in SPECS:
        if is_tuple(f) and name.startswith(f + "_") and name[len(f) + 1:] in TUPLE_PARTS:
            return SPECS[f][0][TUPLE_PARTS.index(name[len(f) + 1:])]
    if name in SPECS:
        return SPECS[name][0]
    if name in APP_SPECS:
        return APP_SPECS[name][1].low or 0
    raise KeyError(name)


DEFAULTS = {n: default(n) for n in STEP_CONTROLS + ("seed",)} | {REVEAL_ORDER: ""}


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
        self.model, self.smoother = model, smoother
        self.reasons = choice_reasons(model, smoother)
        self.extra: dict[str, dict[str, str]] = {}  # choices a tab refuses on top of the library's
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
        out = copy.copy(self)
        out.reasons = {**self.reasons, field: {**self.reasons.get(field, {}), **reasons}}
        out.extra = {**self.extra, field: {**self.extra.get(field, {}), **reasons}}
        return out

    def high(self, name: str) -> float | None:
        """A slider's top: what the library accepts, narrowed by what this model accepts."""
        spec = SPECS[name][2]
        model_cap = None if name in self.unused else self.limits.get(name, (None, None))[1]
        caps = [c for c in (spec.high, model_cap) if c is not None]
        return min(caps) if caps else None


def field_of(control: str) -> str:
    """The option field a control sets (cfg_interval_lo -> cfg_interval)."""
    return control if control in SPECS or control in APP_SPECS else control.rsplit("_", 1)[0]


def control_of(field: str) -> str:
    """The control where a message about `field` is shown (a tuple field's: its upper part, the last
    of the two)."""
    return f"{field}_{TUPLE_PARTS[-1]}" if field in SPECS and is_tuple(field) else field


def fit(name: str, view: ModelView, value: Any) -> Any:
    """The value control `name` takes when narrowed to `view`'s model: a choice the model cannot take
    moves to the first it can; a number outside the model's limits moves to the nearest one it accepts.
    Hidden controls too (sg_scale 0 without a smoother): what nobody sees must not refuse a run."""
    field = field_of(name)
    if field not in SPECS or value is None:
        return value
    if SPECS[field][2].choices is not None:
        return first_available(field, view, value)
    if field in view.limits and isinstance(value, (int, float)) and not isinstance(value, bool):
        lo, hi = view.limits[field]
        fitted = min(max(value, lo), hi)
        return type(value)(fitted) if fitted != value else value
    return value


def problems(values: Mapping[str, Any], view: ModelView | None = None,
             names: Sequence[str] | None = None) -> dict[str, str]:
    """{control: the library's one-line message} for every control among `names` (default: all in
    `values`) whose value would be refused, alone or, once each is valid, with the others on this
    model (`view`). Empty when a run of these values would start."""
    names = [n for n in (names or values) if field_of(n) in SPECS]
    out: dict[str, str] = {}
    for n in names:
        field = field_of(n)
        tp = float if is_tuple(field) else SPECS[field][1]
        value = values[n]
        if tp is int:
            value = as_int(n, value)
        elif tp is str and value is None:  # as `field_value` reads it
            value = ""
        try:
            check_value(field, value, tp, SPECS[field][2])
        except FieldError as e:
            out[n] = str(e)
    fields = {field_of(n) for n in names}
    if out or not set(SAMPLER_FIELDS + GUIDANCE_FIELDS) <= fields:
        return out
    try:
        sampler, guidance = configs(values)
    except FieldError as e:  # a combination, e.g. t_lo >= t_hi
        return {control_of(e.field): str(e)}
    if view is not None:
        for e in refusals(view.model, view.smoother, sampler, guidance):
            out.setdefault(control_of(e.field), str(e))
        for field, bad in view.extra.items():
            v = getattr(sampler, field, getattr(guidance, field, None))
            if v in bad:
                out.setdefault(control_of(field), f"{field} {v!r} is not available: {bad[v]}")
    return out


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
           high: float | None = None, **kw) -> gr.components.Component:
    """The widget of control `name` (a field, or one part of a tuple field), from its Spec, with a value
    `view`'s model accepts (`fit`); `high`: a slider's top where another control narrows it."""
    field = field_of(name)
    default_, tp, spec = SPECS[field]
    value = default(name) if value is None else value
    if view is not None:
        value = fit(name, view, value)
    interactive = not (view and field in view.unused)
    label = label or (name if field == name else f"{field} t_{name.rsplit('_', 1)[1]}")
    kw.setdefault("elem_id", f"ctl-{name}")
    common = dict(label=label, info=_info(field, view), interactive=interactive, visible=interactive, **kw)
    if spec.choices is not None:
        return LenientRadio(_choices(field, view), value=value, **common)
    lo = spec.low if spec.low is not None else 0
    hi = high if high is not None else view.high(field) if view else spec.high
    return LenientSlider(lo, hi, value=value, step=_step(field, lo, hi), **common)


def widget_update(name: str, view: ModelView, value: Any = None):
    """gr.update that re-narrows control `name` to `view` (after the model changed), its value fitted
    to what the model accepts (`fit`)."""
    field = field_of(name)
    spec = SPECS[field][2]
    interactive = field not in view.unused
    kw: dict[str, Any] = dict(info=_info(field, view), interactive=interactive, visible=interactive)
    if spec.choices is not None:
        kw["choices"] = _choices(field, view)
    else:
        kw["maximum"] = view.high(field)
    if value is not None:
        kw["value"] = fit(name, view, value)
    return gr.update(**kw)


def narrowed(names: Iterable[str], view: ModelView, values: Mapping[str, Any]) -> list:
    """gr.updates that narrow controls `names` to a newly chosen model, keeping each current value
    the model can take (a choice it cannot take moves to the first it can; a number into its limits)."""
    return [widget_update(n, view, values.get(n)) for n in names]


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
