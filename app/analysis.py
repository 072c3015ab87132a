"""Handlers of the model-free tabs: Schedules (instant step arithmetic) and Results (the measured claims,
app/claims.py): a table row and a panel (mean +- sd against the claim's own x axis) for each claim."""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import gradio as gr

from emigm.core.fields import NAME, FieldError
from emigm.sample.steps import step_table

from . import charts, controls, text
from . import claims as claims_mod
from .claims import METRICS, VERDICTS, read_claims
from .errors import user_errors
from .trajectory import Trajectory

TABLE_HEADERS = ["step", "t", "s", "revealed (as planned)", "5-95 %", "L x Δγ (schedule alone)",
                 "masked after (as planned)", "CFG", "passes", "cumulative passes"]


SCHEDULE_CONTROLS = ("num_tokens", "num_steps", "schedule", "count_rule", "cfg_scale", "cfg_interval_lo",
                     "cfg_interval_hi")


def run_reveals(traj: Trajectory | None, sampler, num_tokens: int) -> dict[str, Any] | None:
    """The Unmasking run's tokens revealed at each step, per image, when it ran the plan the Schedules tab
    shows (same L, steps, schedule, count rule, no remasking, a fresh unedited run); else None."""
    if traj is None or not traj.frames or traj.edited or traj.branched_from:
        return None
    st = traj.last
    s = st.sampler
    same = (st.mask_after.shape[1] == num_tokens and s.num_steps == sampler.num_steps and s.schedule == sampler.schedule
            and s.count_rule == sampler.count_rule and s.remask == "off" and s.t_end == sampler.t_end
            and (st.frozen is None or not bool(st.frozen.any())))
    if not same:
        return None
    counts = [[int(f.state.revealed[b].sum()) for f in traj.frames] for b in range(traj.batch)]
    n = len(counts)
    return {"label": f"the Unmasking run ({n} image{'s' if n > 1 else ''}, {traj.model})", "counts": counts}


def _schedules(values: dict[str, Any], traj: Trajectory | None = None):
    """Schedules tab: gamma and MDM-weight figure, the reveals per step as planned (with the Unmasking
    run's when its settings match), per-step table, JSON, summary."""
    L = controls.app_value("num_tokens", values["num_tokens"])
    sampler, guidance = controls.configs({**controls.DEFAULTS, **values, "cfg_mode": "", "cfg_schedule": "constant"})
    if sampler.num_steps > L:
        raise FieldError("num_steps", f"{NAME} {sampler.num_steps} is not available: at most {L} steps for {L} "
                                      "tokens (a step reveals at least one token while any is masked)")
    tables = {name: step_table(replace(sampler, schedule=name), guidance, L)
              for name in controls.SPECS["schedule"][2].names()}
    table = tables[sampler.schedule]
    rows = [[r.step, round(r.t, 4), round(r.s, 4), round(r.planned_mean, 2),
             f"{r.planned_lo}" if r.planned_lo == r.planned_hi else f"{r.planned_lo}-{r.planned_hi}",
             round(r.expected_revealed, 2), round(r.planned_masked_after, 2), "yes" if r.cfg else "", r.passes,
             r.cumulative_passes] for r in table.rows]
    run = run_reveals(traj, sampler, L)
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
    doc["run"] = run
    first = table.rows[0]
    summary += (f" Step 1 reveals {first.planned_mean:.2f} tokens on average as the sampler plans it (at least one; "
                f"the schedule alone would give {first.expected_revealed:.2f})."
                + (" The crosses are the Unmasking run's reveals." if run else ""))
    return (charts.schedule_figure(sampler.schedule, interval), charts.steps_figure(tables, sampler.schedule, run),
            rows, doc, summary)


schedules = user_errors(controls.keyword_handler(SCHEDULE_CONTROLS, lambda values: _schedules(values)))


def _schedules_view(traj: Trajectory | None, values: dict[str, Any]):
    """The Schedules tab's event (with the session's Unmasking run): the views and no notes; or, for a
    refused value, its message next to its control and in the summary, the plots left as they were (the
    summary says so)."""
    yield (*_schedules(values, traj), {})


def _stale(_owner, msg: str, notes: dict[str, str]) -> tuple:
    summary = f"**Not redrawn:** {msg}. The plots below still show the last setting that could be drawn."
    return (gr.skip(),) * 4 + (summary, notes)


schedules_view = user_errors(controls.keyword_handler(SCHEDULE_CONTROLS, _schedules_view, lead=("trajectory",)),
                             on_error=_stale)


def steps_cap(num_tokens: Any):
    """The steps slider of the Schedules tab narrowed to the token count (a step reveals at least one
    token while any is masked): its top is L. Its value stays as it is: one above L is refused next to
    the box, never moved behind the person's back."""
    try:
        L = controls.app_value("num_tokens", num_tokens)
    except ValueError:
        return gr.update()
    return gr.update(maximum=min(L, controls.SPECS["num_steps"][2].high))


POINT_HEADERS = ["group", "setting", "model", "NFE", "FD", "class acc", "precision", "recall"]
CLAIM_HEADERS = ["claim", "verdict", "FD (mean ± sd over seed sets) · tests (margin vs 2 sd)"]


def _pm(mean: Any, sd: Any, digits: int) -> Any:
    if not isinstance(mean, (int, float)):
        return mean
    return f"{mean:.{digits}f}" + ("" if not isinstance(sd, (int, float)) else f" ± {sd:.2g}")




def point_rows(points: list[dict[str, Any]]) -> list[list[Any]]:
    """The measurements table: FD and the other metrics as "mean ± sd" where the file has an sd."""
    return [[p["group"], p["label"], p["model"], int(p["nfe"]), _pm(p["fd"], p.get("fd_sd"), 2),
             *(_pm(p.get(m), p.get(f"{m}_sd"), 3) for m in METRICS[1:])] for p in points]


@user_errors
def results():
    """Results tab: message, the claims' figure (a panel per claim, or None), claims table, measurements
    table, parsed JSON."""
    doc = read_claims()
    if doc is not None and not doc["claim_docs"] and doc["problem"]:  # damaged or older: one line, no numbers
        hidden = gr.update(value=None, visible=False)
        return (f"**{doc['problem']}**", hidden, gr.update(value=doc["claims"], visible=bool(doc["claims"])),
                hidden, {"available": False, "claims_file": doc["claims_file"], "problem": doc["problem"]})
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
    rows, extra = list(doc["claims"]), {}
    oracle = read_claims(claims_mod.ORACLE_CLAIMS_PATH)
    if oracle is not None:  # the oracle's claims, each row marked, after the learned models' ones
        rows += [[f"oracle: {c}", v, e] for c, v, e in oracle["claims"]]
        o_counts = ", ".join(f"{sum(row[1] == v for row in oracle['claims'])} {v}" for v in VERDICTS)
        msg += (f"\n\nAnd `{oracle['claims_file']}`, the sampler's exact error on the oracle models: "
                f"{len(oracle['claims'])} claims ({o_counts}), listed after these, marked \"oracle:\"."
                + (f" {oracle['problem']}" if oracle["problem"] else ""))
        extra = {"oracle": {k: oracle[k] for k in ("claims_file", "claims", "problem", "note")}}
    return (msg, fig, gr.update(value=rows, visible=True),
            gr.update(value=point_rows(doc["points"]), visible=bool(doc["points"])), {"available": True, **doc, **extra})
