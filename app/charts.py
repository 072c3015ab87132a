"""Model-free figures: the mask schedules, the expected reveals and passes of a setting (from
emigm.sample.steps.step_table), and the measured claims (FD, mean +- sd over seed sets, against each
claim's own x axis)."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from emigm.core.schedules import SCHEDULES
from emigm.sample.steps import StepTable

from .plots import CFG_FILL, FONT

# Okabe-Ito colours, one per schedule
SCHEDULE_COLORS = {"linear": "#009E73", "cosine": "#CC79A7", "exp": "#0072B2"}


def schedule_figure(chosen: str, interval: tuple[float, float] | None) -> go.Figure:
    """gamma(t) for every schedule and the MDM weight gamma'(t)/gamma(t); the CFG interval shaded."""
    t = torch.linspace(0.0, 1.0, 201, dtype=torch.float64)
    tw = torch.linspace(0.01, 1.0, 200, dtype=torch.float64)
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1,
                        subplot_titles=("gamma(t): fraction still masked at time t", "MDM weight gamma'(t) / gamma(t)"))
    for name, sched in SCHEDULES.items():
        width = 4 if name == chosen else 1.8
        color = SCHEDULE_COLORS.get(name)
        fig.add_trace(go.Scatter(x=t.numpy(), y=sched.gamma(t).numpy(), name=f"{name}: {sched.formula}",
                                 line=dict(width=width, color=color), legendgroup=name,
                                 hovertemplate=f"{name}<br>t %{{x:.3f}}<br>gamma %{{y:.3f}}<extra></extra>"),
                      row=1, col=1)
        fig.add_trace(go.Scatter(x=tw.numpy(), y=sched.mdm_weight(tw).numpy(), name=name, showlegend=False,
                                 line=dict(width=width, color=color), legendgroup=name,
                                 hovertemplate=f"{name}<br>t %{{x:.3f}}<br>weight %{{y:.3g}}<extra></extra>"),
                      row=1, col=2)
    if interval is not None:
        for col in (1, 2):
            fig.add_vrect(x0=interval[0], x1=interval[1], fillcolor=CFG_FILL, line_width=0, layer="below",
                          row=1, col=col)
        fig.add_annotation(x=(interval[0] + interval[1]) / 2, y=1.02, text="CFG interval", showarrow=False,
                           xref="x", yref="y", font=dict(size=11))
    fig.update_xaxes(title_text="t (sampling runs from 1 to 0)", range=[1, 0])
    fig.update_yaxes(range=[0, 1.05], row=1, col=1)
    fig.update_yaxes(type="log", row=1, col=2)
    fig.update_layout(height=360, margin=dict(l=40, r=20, t=60, b=40), font=FONT,
                      legend=dict(orientation="h", y=-0.22))
    return fig


def steps_figure(tables: dict[str, StepTable], chosen: str, run: dict[str, Any] | None = None) -> go.Figure:
    """Tokens revealed per step as the sampler plans them (bars: the chosen schedule's mean with its
    5-95 % range; lines: the other schedules' means), the schedule's L x (gamma(t) - gamma(s)) as a thin
    reference line, the cumulative fraction revealed, the CFG steps shaded; and, when `run` is given
    ({"label", "counts": per image the tokens revealed at each step}), that run's reveals as points."""
    table = tables[chosen]
    S, L = len(table.rows), table.num_tokens
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    x = [r.step for r in table.rows]
    how = "exact" if not table.draws else f"over {table.draws} seeds"
    for name, tab in tables.items():
        y = [r.planned_mean for r in tab.rows]
        hover = [f"{name}<br>step {r.step} of {S}<br>t {r.t:.3f} → s {r.s:.3f}<br>revealed {r.planned_mean:.2f} "
                 f"(5-95 %: {r.planned_lo}-{r.planned_hi})<br>schedule alone: {r.expected_revealed:.2f}"
                 f"<br>{r.passes} pass{'es' if r.passes > 1 else ''}" for r in tab.rows]
        color = SCHEDULE_COLORS.get(name)
        if name == chosen:
            fig.add_trace(go.Bar(x=x, y=y, name=f"{name}: revealed (as planned, 5-95 %)", marker_color=color,
                                 hovertext=hover, hoverinfo="text",
                                 error_y=dict(type="data", symmetric=False,
                                              array=[r.planned_hi - r.planned_mean for r in tab.rows],
                                              arrayminus=[r.planned_mean - r.planned_lo for r in tab.rows],
                                              thickness=1.2, width=3, color="#333")))
            fig.add_trace(go.Scatter(x=x, y=[r.expected_revealed for r in tab.rows],
                                     name=f"{name}: L x Δγ (the schedule alone)", mode="lines",
                                     line=dict(color="#333", width=1, dash="dash"),
                                     hovertemplate="L x Δγ %{y:.2f}<extra></extra>"))
        else:
            fig.add_trace(go.Scatter(x=x, y=y, name=f"{name}: revealed (as planned)", mode="lines+markers",
                                     line=dict(color=color, width=1.5), hovertext=hover, hoverinfo="text"))
        cum = 1.0 - np.array([r.planned_masked_after for r in tab.rows]) / L
        fig.add_trace(go.Scatter(x=x, y=cum, name=f"{name}: cumulative", mode="lines",
                                 line=dict(color=color, dash="dot", width=3 if name == chosen else 1.2),
                                 hovertemplate=f"{name}<br>step %{{x}} of {S}<br>revealed %{{y:.1%}}<extra></extra>"),
                      secondary_y=True)
    if run is not None:
        xs = [k + 1 for counts in run["counts"] for k in range(len(counts))]
        ys = [c for counts in run["counts"] for c in counts]
        fig.add_trace(go.Scatter(x=xs, y=ys, name=run["label"], mode="markers",
                                 marker=dict(symbol="x", size=8, color="#000"),
                                 hovertemplate="this run: step %{x}, %{y} revealed<extra></extra>"))
    fig.add_trace(go.Bar(x=[None], y=[None], name="CFG step (2 passes)", marker_color=CFG_FILL))
    for r in table.rows:
        if r.cfg:
            fig.add_vrect(x0=r.step - 0.5, x1=r.step + 0.5, fillcolor=CFG_FILL, line_width=0, layer="below")
    fig.update_xaxes(title_text=f"step (of {S})", dtick=1 if S <= 32 else None)
    fig.update_yaxes(title_text=f"tokens revealed (of {L})", rangemode="tozero")
    fig.update_yaxes(title_text="cumulative", tickformat=".0%", range=[0, 1.05], secondary_y=True)
    fig.update_layout(height=380, margin=dict(l=40, r=20, t=50, b=40), font=FONT, bargap=0.2,
                      title=dict(text=f"<b>{chosen}</b>, {S} steps, {L} tokens, as the sampler plans them ({how}) · "
                                      f"NFE {table.passes} = {S} x {table.nfe_per_step:.3g} ({table.cfg_steps} CFG "
                                      "steps)", x=0.01, font=dict(size=14)),
                      legend=dict(orientation="h", y=-0.2))
    return fig


PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442"]
SYMBOLS = ["circle", "square", "diamond", "triangle-up"]


def results_figure(claims: Sequence[dict[str, Any]]) -> go.Figure:
    """One panel per claim of claims.json, in its order: FD (mean, error bars +- 1 sd over seed sets)
    against the claim's own x axis (steps, head steps, NFE, CFG scale, self-guidance scale, Gumbel
    temperature), one line per series; the title gives the verdict. A panel whose FDs span more than
    5x (an outlier such as a diverging solver) gets a log FD axis, so the other points stay apart."""
    cols = min(len(claims), 3)
    rows = -(-len(claims) // cols)
    titles = [f"{c.get('short') or c.get('claim', '?')}: <b>{c.get('verdict', '?')}</b>" for c in claims]
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles, horizontal_spacing=0.08,
                        vertical_spacing=min(0.3 / rows + 0.04, 0.2))
    style: dict[str, tuple[str, str]] = {}  # series name -> (colour, marker): the same in every panel
    shown: set[str] = set()
    for i, c in enumerate(claims):
        r, col = i // cols + 1, i % cols + 1
        plot = c["plot"]
        fds, xs_all = [], []
        for line in plot.get("series") or []:
            name = str(line.get("name", "?"))
            k = len(style)
            color, symbol = style.setdefault(name, (PALETTE[k % len(PALETTE)], SYMBOLS[k // len(PALETTE) % len(SYMBOLS)]))
            xs, ys = list(line.get("x") or []), list(line.get("y") or [])
            sds = [s if isinstance(s, (int, float)) else 0.0 for s in (line.get("sd") or [None] * len(ys))]
            labels = list(line.get("labels") or [""] * len(ys))
            fds += ys
            xs_all += xs
            many_labels = not line.get("line", True) and len(ys) > 1  # separate settings on one axis: name them
            fig.add_trace(go.Scatter(
                x=xs, y=ys, name=name, legendgroup=name, showlegend=name not in shown,
                mode=("lines+markers" if line.get("line", True) else "markers") + ("+text" if many_labels else ""),
                text=labels if many_labels else None, textposition="top center", textfont=dict(size=9), cliponaxis=False,
                error_y=dict(type="data", array=sds, visible=any(sds), thickness=1.2, width=4),
                marker=dict(color=color, symbol=symbol, size=8), line=dict(color=color),
                customdata=[[lab, sd] for lab, sd in zip(labels, sds)],
                hovertemplate=f"{name}<br>%{{customdata[0]}}<br>{plot.get('x', 'x')} %{{x}}<br>"
                              "FD %{y:.3f} ± %{customdata[1]:.2g}<extra></extra>"), row=r, col=col)
            shown.add(name)
        positive = [y for y in fds if isinstance(y, (int, float)) and y > 0]
        log = bool(positive) and max(positive) / min(positive) > 5
        fig.update_yaxes(type="log" if log else "linear", title_text=f"{plot.get('y', 'FD')}" + (" (log)" if log else ""),
                         dtick="D2" if log else None, row=r, col=col)
        ticks = sorted({x for x in xs_all if isinstance(x, (int, float))})
        fig.update_xaxes(title_text=str(plot.get("x", "")), type="log" if plot.get("x_log") else "linear",
                         tickvals=ticks if plot.get("x_log") or len(ticks) <= 6 else None, row=r, col=col)
    for a in fig.layout.annotations:  # subplot titles: smaller, they are sentences
        a.font = dict(size=11)
    fig.update_layout(height=290 * rows + 110, margin=dict(l=40, r=20, t=70, b=20), font=FONT,
                      title=dict(text="FD (lower is better), mean ± sd over seed sets, one panel per claim of "
                                      "claims.json; a log axis where one setting is far off", x=0.01,
                                 font=dict(size=14)),
                      legend=dict(orientation="h", yanchor="top", y=-0.25 / rows, font=dict(size=10)))
    return fig
