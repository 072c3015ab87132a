"""Handlers of the model-free tabs: Schedules (instant step arithmetic) and Results (claims.json).

claims.json (assets/results/claims.json), as read here:
    {"points": [{"setting": "eMIGM, CFG (0.1, 0.3]", "nfe": 19, "fd": 3.1}, ...],
     "claims": [{"claim": "interval CFG matches full CFG at fewer passes", "holds": true,
                 "evidence": "FD 3.1 at NFE 19 vs 3.0 at NFE 32"}, ...]}
A bare list is taken as the claims; "measurements" / "results" are accepted for "points", "FD" / "fid"
for "fd" and "name" / "label" for "setting".
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import gradio as gr

from emigm.checkpoint import ASSETS_DIR
from emigm.steps import step_table

from . import charts, controls, text
from .errors import user_errors

CLAIMS_PATH = ASSETS_DIR / "results" / "claims.json"
TABLE_HEADERS = ["step", "t", "s", "E[revealed]", "E[masked after]", "CFG", "passes", "cumulative passes"]


@user_errors
def schedules(num_tokens: float, num_steps: float, schedule: str, count_rule: str, cfg_scale: float,
              cfg_interval_lo: float, cfg_interval_hi: float):
    """Schedules tab: gamma and MDM-weight figure, expected reveals figure, per-step table, JSON, summary."""
    L = controls.as_number("num_tokens", num_tokens)
    sampler = controls.sampler_config(num_steps, schedule, count_rule, "random", 4.5, "linear", 1.0, "dpm", 8)
    guidance = controls.guidance_config(cfg_scale, "", cfg_interval_lo, cfg_interval_hi, "constant")
    tables = {name: step_table(replace(sampler, schedule=name), guidance, L) for name in controls.SCHEDULE_NAMES}
    table = tables[sampler.schedule]
    rows = [[r.step, round(r.t, 4), round(r.s, 4), round(r.expected_revealed, 2), round(r.expected_masked_after, 2),
             "yes" if r.cfg else "", r.passes, r.cumulative_passes] for r in table.rows]
    S = sampler.num_steps
    if guidance.cfg_scale == 1.0:
        summary = f"**{S} steps x 1 = {table.passes} passes.** CFG scale 1 means no guidance: one pass per step."
    else:
        lo, hi = guidance.cfg_interval
        summary = (f"**{S} x {table.nfe_per_step:.3g} = {table.passes} passes.** CFG runs at the "
                   f"{table.cfg_steps} steps whose time after the step, s, lies in ({lo:g}, {hi:g}]; each costs 2 "
                   f"passes (conditional and null branch), the other {S - table.cfg_steps} cost 1. "
                   f"Full-range CFG would cost {2 * S}.")
    interval = guidance.cfg_interval if guidance.cfg_scale != 1.0 else None
    doc = {name: tab.as_dict() for name, tab in tables.items()}
    doc["chosen"] = sampler.schedule
    return (charts.schedule_figure(sampler.schedule, interval), charts.steps_figure(tables, sampler.schedule),
            rows, doc, summary)


def _first(d: dict[str, Any], *keys: str) -> Any:
    for k in keys:
        if k in d:
            return d[k]
    return None


def read_claims(path: Path = CLAIMS_PATH) -> dict[str, Any] | None:
    """The parsed claims file, normalised to {"points": [...], "claims": [...]}; None when absent."""
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {path}: {e}") from None
    if isinstance(raw, list):
        raw = {"claims": raw}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected an object with 'points' and 'claims'")
    points = []
    for p in _first(raw, "points", "measurements", "results") or []:
        setting, nfe, fd = _first(p, "setting", "name", "label"), _first(p, "nfe", "NFE"), _first(p, "fd", "FD", "fid")
        if setting is not None and nfe is not None and fd is not None:
            points.append({"setting": str(setting), "nfe": float(nfe), "fd": float(fd)})
    claims = []
    for c in raw.get("claims") or []:
        holds = c.get("holds")
        verdict = "holds" if holds is True else "does not hold" if holds is False else "not measured"
        claims.append([str(_first(c, "claim", "name", "id") or "?"), verdict,
                       str(_first(c, "evidence", "detail", "value") or "")])
    try:
        shown = str(path.relative_to(ASSETS_DIR.parent))
    except ValueError:
        shown = str(path)
    return {"points": points, "claims": claims, "claims_file": shown, "note": str(raw.get("note") or "")}


@user_errors
def results():
    """Results tab: message, FD-vs-NFE figure (or None), claims table, parsed JSON."""
    doc = read_claims()
    if doc is None:
        hidden = gr.update(value=None, visible=False)
        return text.RESULTS_MISSING, hidden, hidden, {"available": False, "claims_file": "assets/results/claims.json"}
    fig = charts.results_figure(doc["points"]) if doc["points"] else gr.update(value=None, visible=False)
    held = sum(row[1] == "holds" for row in doc["claims"])
    msg = (f"Read `{doc['claims_file']}`: {len(doc['points'])} measurements, {len(doc['claims'])} claims "
           f"({held} hold)." + (f"\n\n{doc['note']}" if doc["note"] else ""))
    return msg, fig, gr.update(value=doc["claims"], visible=True), {"available": True, **doc}
