"""Permalinks: the Unmasking settings in the URL query string (the control names, which are the config
field names), and back. A link with bad or unknown values still opens: those fields fall back to
defaults, with a note. The link follows the controls as they change."""
from __future__ import annotations

from typing import Any, Mapping
from urllib.parse import urlencode, urlsplit, urlunsplit

import gradio as gr

from emigm.core.config import MAX_TOKENS
from emigm.core.fields import check_value
from emigm.core.labels import parse_class
from emigm.core.seeds import parse_seed
from emigm.sample.orders import parse_reveal_order

from . import controls


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else f"{value:.6g}"
    return str(value)


def encode(values: Mapping[str, Any]) -> str:
    """{control: value} for controls.RUN_FIELDS -> a query string (no leading '?')."""
    return urlencode({k: _fmt(values[k]) for k in controls.RUN_FIELDS if k in values and values[k] is not None})


def parse(name: str, raw: str) -> Any:
    """One query value -> the control's value, checked against its field's Spec (library messages)."""
    if name == "seed":
        return parse_seed("seed", raw)  # the library's range and message, read exactly (no float)
    if name == controls.REVEAL_ORDER:  # token indices; the run checks them against its model's tokens
        if raw.strip():
            parse_reveal_order(raw, MAX_TOKENS)
        return raw.strip()
    field = name if name in controls.SPECS else name.rsplit("_", 1)[0]
    _, tp, spec = controls.SPECS[field]
    if spec.choices is not None:
        check_value(field, raw, tp, spec)
        return raw
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{field} must be a number, got {raw!r}") from None
    tp = float if controls.is_tuple(field) else tp
    value = controls.as_int(field, value) if tp is int else value
    check_value(field, value, tp, spec)
    return value


def decode(query: Mapping[str, str], models: list[str], class_names_of, view_of=None,
           suggested_of=None) -> tuple[dict[str, Any], list[str]]:
    """Query parameters -> ({control: value} for every RUN_FIELD, problems).

    models: the offered model names (the first is the default); class_names_of(model) -> its classes;
    view_of(model) -> its controls.ModelView (choices and numbers it cannot take, also of controls it
    hides, fall back to what it can, with a note); suggested_of(model) -> the control values it runs with
    unless told otherwise (its sampler rule and guidance), used where the query says nothing."""
    values: dict[str, Any] = {"model": models[0], **controls.DEFAULTS}
    problems = []
    for key, raw in query.items():
        if key not in controls.RUN_FIELDS or key == "class_name":
            continue
        try:
            if key == "model":
                if raw not in models:
                    raise ValueError(f"unknown model {raw!r}")
                values[key] = raw
            else:
                values[key] = parse(key, raw)
        except ValueError as e:
            problems.append(f"{key}: {e}")
    if suggested_of is not None:
        values.update({k: v for k, v in suggested_of(values["model"]).items() if k not in query})
    names = class_names_of(values["model"])
    raw_class = query.get("class_name")
    values["class_name"] = names[0]
    if raw_class is not None:
        try:  # a name or an id, parsed as the CLI and the app parse it
            values["class_name"] = names[parse_class(raw_class, names)]
        except ValueError as e:
            problems.append(f"class_name: {e}")
    try:
        controls.configs(values)
    except ValueError as e:  # a combination of values, e.g. t_lo >= t_hi: that field falls back
        problems.append(str(e))
        for f in controls.SPECS:
            if controls.is_tuple(f):
                for p in controls.TUPLE_PARTS:
                    values[f"{f}_{p}"] = controls.DEFAULTS[f"{f}_{p}"]
    if view_of is not None:  # what the model cannot take (hidden controls included) moves to what it can
        view = view_of(values["model"])
        for name in controls.STEP_CONTROLS:
            fitted = controls.fit(name, view, values[name])
            if fitted != values[name]:
                field = controls.field_of(name)
                why = view.reasons.get(field, {}).get(values[name]) or view.limit_reasons.get(field, "")
                problems.append(f"{name}: {why}")
                values[name] = fitted
    return values, problems


def page_url(headers: Mapping[str, str] | None, fallback: str = "") -> str:
    """The page's address without its query: the Referer of the browser's request, else `fallback`."""
    ref = (headers or {}).get("referer") or fallback
    if not ref:
        return ""
    parts = urlsplit(ref)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def link(base: str, values: Mapping[str, Any]) -> str:
    return f"{base}?{encode(values)}" if base else f"?{encode(values)}"


class Permalinks:
    """Handlers: restore the settings from the page's URL on load, and the link of the current ones."""

    def __init__(self, engine, view_of) -> None:
        self.engine = engine
        self.view_of = view_of

    def decode(self, query: Mapping[str, str]):
        return decode(query, self.engine.names, self.engine.class_names, self.view_of, self.engine.suggested)

    def _link(self, values: Mapping[str, Any], request: gr.Request | None = None) -> str:
        """The permalink of these settings."""
        base = page_url(dict(request.headers) if request is not None else None)
        return link(base, values)

    link = controls.keyword_handler(controls.RUN_FIELDS, _link, lead=("self",), request=True)
