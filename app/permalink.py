"""Permalinks: the Unmasking settings in the URL query string (same names as the config fields), and
back. A link with bad or unknown values still opens: those fields fall back to defaults, with a note."""
from __future__ import annotations

from typing import Any, Mapping
from urllib.parse import urlencode, urlsplit, urlunsplit

import gradio as gr

from . import controls

NUMERIC = {"seed", "num_steps", "order_temperature", "temperature", "head_steps", "cfg_scale",
           "cfg_interval_lo", "cfg_interval_hi"}


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else f"{value:.6g}"
    return str(value)


def encode(values: Mapping[str, Any]) -> str:
    """{field: value} for controls.RUN_FIELDS -> a query string (no leading '?')."""
    return urlencode({k: _fmt(values[k]) for k in controls.RUN_FIELDS if k in values})


def decode(query: Mapping[str, str], models: list[str], class_names_of) -> tuple[dict[str, Any], list[str]]:
    """Query parameters -> ({field: value} for every RUN_FIELD, problems).

    models: the offered model names (the first is the default); class_names_of(model) -> its classes."""
    values = {"model": models[0], **{k: controls.DEFAULTS[k] for k in controls.RUN_FIELDS if k in controls.DEFAULTS}}
    problems = []
    for key, raw in query.items():
        if key not in controls.RUN_FIELDS:
            continue
        try:
            if key == "model":
                if raw not in models:
                    raise ValueError(f"unknown model {raw!r}")
                values[key] = raw
            elif key in NUMERIC:
                values[key] = controls.as_number(key, raw)
            elif key != "class_name":
                values[key] = controls.as_choice(key, raw)
        except ValueError as e:
            problems.append(f"{key}: {e}")
    names = class_names_of(values["model"])
    raw_class = query.get("class_name")
    values["class_name"] = names[0]
    if raw_class is not None:
        match = [n for n in names if n.lower() == raw_class.lower()]
        if match:
            values["class_name"] = match[0]
        else:
            problems.append(f"class_name: unknown class {raw_class!r}")
    if not values["cfg_interval_lo"] < values["cfg_interval_hi"]:
        problems.append("cfg_interval: t_lo must be below t_hi")
        values["cfg_interval_lo"], values["cfg_interval_hi"] = (controls.DEFAULTS["cfg_interval_lo"],
                                                                controls.DEFAULTS["cfg_interval_hi"])
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
    """Handlers: restore the settings from the page's URL on load, and show the link for the current ones."""

    def __init__(self, engine) -> None:
        self.engine = engine

    def restore(self, request: gr.Request):
        """-> every RUN_FIELD value (class_name as a dropdown update), the link, the banner and a note."""
        query = dict(request.query_params) if request is not None else {}
        values, problems = decode(query, self.engine.names, self.engine.class_names)
        model = values["model"]
        out = [gr.update(choices=self.engine.class_names(model), value=values[f]) if f == "class_name" else values[f]
               for f in controls.RUN_FIELDS]
        base = page_url(dict(request.headers) if request is not None else None)
        note = ("Some link settings were not understood and use defaults: " + "; ".join(problems)) if problems else ""
        return (*out, link(base, values), self.engine.banner(model), note)

    def link(self, model: str, class_name: str, seed: float, num_steps: float, schedule: str, count_rule: str,
             order: str, order_temperature: float, order_anneal: str, temperature: float, head_solver: str,
             head_steps: float, cfg_scale: float, cfg_mode: str, cfg_interval_lo: float, cfg_interval_hi: float,
             cfg_schedule: str, request: gr.Request) -> str:
        """The permalink of these settings."""
        values = {k: v for k, v in locals().items() if k in controls.RUN_FIELDS}
        base = page_url(dict(request.headers) if request is not None else None)
        return link(base, values)
