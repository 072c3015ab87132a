"""Handlers of the model-free tabs: Schedules (instant step arithmetic) and Results (claims.json).

claims.json (assets/results/claims.json, written by benchmarks/paper_claims.py; the README's claims
table is generated from the same file), as read here:
    {"num_samples": 1000, "seed_sets": [[0, 999], [1000, 1999], [2000, 2999]], "note": "...",
     "points": [{"group": "cfg", "label": "CFG in (0.1, 0.3]", "model": "fmnist-emigm", "nfe": 19,
                 "fd": 11.8, "fd_sd": 0.06, "class_accuracy": 0.89, "class_accuracy_sd": 0.01, ...}, ...],
     "claims": [{"claim": "...", "short": "...", "verdict": "holds" | "does not hold" | "undecided",
                 "evidence": "...", "tests": [{"test": "...", "margin": 0.6, "sd": 0.08, "verdict": ...}],
                 "plot": {"x": "head steps", "x_log": false, "y": "FD",
                          "series": [{"name": ..., "x": [...], "y": [...], "sd": [...], "labels": [...],
                                      "line": true}]}}, ...]}
The Results tab shows exactly these claims: a table row and a panel (mean +- sd against the claim's own
x axis) for each. A file from before seed sets (claims with "holds": true / false, no sd) still reads.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import gradio as gr

from emigm.core.fields import NAME, FieldError
from emigm.core.fileio import ASSETS_DIR
from emigm.sample.steps import step_table

from . import charts, controls, text
from .errors import user_errors

CLAIMS_PATH = ASSETS_DIR / "results" / "claims.json"
TABLE_HEADERS = ["step", "t", "s", "E[revealed]", "E[masked after]", "CFG", "passes", "cumulative passes"]


SCHEDULE_CONTROLS = ("num_tokens", "num_steps", "schedule", "count_rule", "cfg_scale", "cfg_interval_lo",
                     "cfg_interval_hi")


def _schedules(values: dict[str, Any]):
    """Schedules tab: gamma and MDM-weight figure, expected reveals figure, per-step table, JSON, summary."""
    L = controls.app_value("num_tokens", values["num_tokens"])
    sampler, guidance = controls.configs({**controls.DEFAULTS, **values, "cfg_mode": "", "cfg_schedule": "constant"})
    if sampler.num_steps > L:
        raise FieldError("num_steps", f"{NAME} {sampler.num_steps} is not available: at most {L} steps for {L} "
                                      "tokens (a step reveals at least one token while any is masked)")
    tables = {name: step_table(replace(sampler, schedule=name), guidance, L)
              for name in controls.SPECS["schedule"][2].names()}
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


schedules = user_errors(controls.keyword_handler(SCHEDULE_CONTROLS, _schedules))


def _schedules_view(values: dict[str, Any]):
    """The Schedules tab's event: the views and no notes; or, for a refused value, its message next to
    its control and in the summary, the plots left as they were (the summary says so)."""
    yield (*_schedules(values), {})


def _stale(_owner, msg: str, notes: dict[str, str]) -> tuple:
    summary = f"**Not redrawn:** {msg}. The plots below still show the last setting that could be drawn."
    return (gr.skip(),) * 4 + (summary, notes)


schedules_view = user_errors(controls.keyword_handler(SCHEDULE_CONTROLS, _schedules_view), on_error=_stale)


def steps_cap(num_tokens: Any):
    """The steps slider of the Schedules tab narrowed to the token count (a step reveals at least one
    token while any is masked): its top is L. Its value stays as it is: one above L is refused next to
    the box, never moved behind the person's back."""
    try:
        L = controls.app_value("num_tokens", num_tokens)
    except ValueError:
        return gr.update()
    return gr.update(maximum=min(L, controls.SPECS["num_steps"][2].high))


def _first(d: dict[str, Any], *keys: str) -> Any:
    for k in keys:
        if k in d:
            return d[k]
    return None


POINT_HEADERS = ["group", "setting", "model", "NFE", "FD", "class acc", "precision", "recall"]
CLAIM_HEADERS = ["claim", "verdict", "FD (mean ± sd over seed sets) · tests (margin vs 2 sd)"]
VERDICTS = ("holds", "does not hold", "undecided")
METRICS = ("fd", "class_accuracy", "precision", "recall")


def _number(x: Any) -> str:
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return f"{x:.4g}" if isinstance(x, float) else str(x)
    if isinstance(x, dict) and "mean" in x:
        return _number(x["mean"]) + ("" if x.get("sd") is None else f" ± {x['sd']:.2g}")
    if isinstance(x, (list, tuple)) and len(x) == 2 and all(isinstance(v, (int, float)) for v in x):
        return f"FD {_number(x[0])} at NFE {_number(x[1])}"  # older files' [fd, nfe] pairs
    return str(x)


def evidence_text(c: dict[str, Any]) -> str:
    """A claim's numbers as one line: the file's "evidence" text, else its "numbers" joined
    ("linear 29.48 · cosine 25.93 · exp 26.39")."""
    raw = _first(c, "evidence", "detail", "value")
    if isinstance(raw, str) and raw and not raw.lstrip().startswith("{"):
        return raw
    numbers = c.get("numbers")
    if isinstance(numbers, dict) and numbers:
        return " · ".join(f"{k} {_number(v)}" for k, v in numbers.items())
    if isinstance(raw, str):
        try:
            parsed = json.loads(raw)
        except json.JSONDecodeError:
            return raw
        if isinstance(parsed, dict):
            return " · ".join(f"{k} {_number(v)}" for k, v in parsed.items())
    return "" if raw is None else str(raw)


def verdict_of(c: dict[str, Any]) -> str:
    v = c.get("verdict")
    if v in VERDICTS:
        return v
    holds = c.get("holds")
    return "holds" if holds is True else "does not hold" if holds is False else "not measured"


def check_text(t: dict[str, Any]) -> str:
    """A claim's test as the file words it ("text"), else from its fields."""
    if isinstance(t.get("text"), str):
        return t["text"]
    sd = t.get("sd")
    two = ", no sd" if sd is None else f" vs 2 sd {2 * sd:.2g}"
    return f"{t.get('test', '?')}: margin {t.get('margin', float('nan')):.3g}{two} ({t.get('verdict', '?')})"


def _pm(mean: Any, sd: Any, digits: int) -> Any:
    if not isinstance(mean, (int, float)):
        return mean
    return f"{mean:.{digits}f}" + ("" if not isinstance(sd, (int, float)) else f" ± {sd:.2g}")


def read_claims(path: Path = CLAIMS_PATH) -> dict[str, Any] | None:
    """The parsed claims file: {"points": [...], "claims": [[claim, verdict, numbers · tests], ...],
    "claim_docs": the claims as written (with their plots), "claims_file", "note", "samples"};
    None when absent."""
    if not path.is_file():
        return None
    try:
        shown = str(path.relative_to(ASSETS_DIR.parent))
    except ValueError:
        shown = path.name
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {shown}: {e}") from None
    if isinstance(raw, list):
        raw = {"claims": raw}
    if not isinstance(raw, dict):
        raise ValueError(f"{shown}: expected an object with 'points' and 'claims'")
    points = []
    for p in _first(raw, "points", "measurements", "results") or []:
        label, nfe, fd = _first(p, "label", "name", "setting"), _first(p, "nfe", "NFE"), _first(p, "fd", "FD", "fid")
        if label is not None and nfe is not None and fd is not None:
            points.append({"group": str(p.get("group") or p.get("claim") or ""), "label": str(label),
                           "model": str(p.get("model") or ""), "nfe": float(nfe), "fd": float(fd),
                           **{k: p[k] for m in METRICS for k in (m, f"{m}_sd") if k in p and k != "fd"}})
    claims, docs = [], []
    for c in raw.get("claims") or []:
        tests = [check_text(t) for t in c.get("tests") or [] if isinstance(t, dict)]
        text = evidence_text(c) + ("".join(f" · {t}" for t in tests) if tests else "")
        claims.append([str(_first(c, "claim", "name", "id") or "?"), verdict_of(c), text])
        docs.append({**c, "verdict": verdict_of(c)})
    sets = raw.get("seed_sets") or []
    n = raw.get("num_samples")
    samples = (f"{n} samples per seed set, {len(sets)} disjoint seed sets" if n and len(sets) > 1
               else f"{n} samples per setting, one seed set" if n else "")
    return {"points": points, "claims": claims, "claim_docs": docs, "claims_file": shown,
            "note": str(raw.get("note") or ""), "samples": samples, "verdict_rule": str(raw.get("verdict_rule") or "")}


def measured_warnings(model: str, path: Path = CLAIMS_PATH, factor: float = 3.0) -> dict[str, dict[str, str]]:
    """{"head_solver": {solver: why}} for solvers whose best measured FD on `model` is more than `factor`
    times the model's best FD (e.g. DDPM diverging on a briefly trained head): they run, but give noise."""
    try:
        raw = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return {}
    pts = [p for p in (raw.get("points") or []) if isinstance(p, dict) and p.get("model") == model
           and isinstance(p.get("fd"), (int, float)) and isinstance(p.get("sampler"), dict)]
    if not pts:
        return {}
    best = min(p["fd"] for p in pts)
    by_solver: dict[str, dict[str, Any]] = {}
    for p in pts:
        name = p["sampler"].get("head_solver")
        if name and (name not in by_solver or p["fd"] < by_solver[name]["fd"]):
            by_solver[name] = p
    out = {name: (f"measured FD {p['fd']:.0f} on this model ({p.get('label', name)}) against {best:.1f} at best: "
                  "it runs, but gives noise here (see Results)")
           for name, p in by_solver.items() if p["fd"] > factor * best}
    return {"head_solver": out} if out else {}


def point_rows(points: list[dict[str, Any]]) -> list[list[Any]]:
    """The measurements table: FD and the other metrics as "mean ± sd" where the file has an sd."""
    return [[p["group"], p["label"], p["model"], int(p["nfe"]), _pm(p["fd"], p.get("fd_sd"), 2),
             *(_pm(p.get(m), p.get(f"{m}_sd"), 3) for m in METRICS[1:])] for p in points]


@user_errors
def results():
    """Results tab: message, the claims' figure (a panel per claim, or None), claims table, measurements
    table, parsed JSON."""
    doc = read_claims()
    if doc is None:
        hidden = gr.update(value=None, visible=False)
        return (text.RESULTS_MISSING, hidden, hidden, hidden,
                {"available": False, "claims_file": "assets/results/claims.json"})
    plotted = [c for c in doc["claim_docs"] if isinstance(c.get("plot"), dict)]
    fig = charts.results_figure(plotted) if plotted else gr.update(value=None, visible=False)
    counts = ", ".join(f"{sum(row[1] == v for row in doc['claims'])} {v}" for v in VERDICTS)
    msg = (f"Read `{doc['claims_file']}`: {len(doc['points'])} measurements"
           + (f" ({doc['samples']})" if doc["samples"] else "") + f", {len(doc['claims'])} claims: {counts}."
           + (f"\n\n{doc['verdict_rule']}" if doc["verdict_rule"] else "")
           + (f"\n\n{doc['note']}" if doc["note"] else ""))
    return (msg, fig, gr.update(value=doc["claims"], visible=True),
            gr.update(value=point_rows(doc["points"]), visible=bool(doc["points"])), {"available": True, **doc})
