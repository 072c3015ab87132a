"""Plotly figures of comparisons (the difference of two panels) and the shared colours. The step
players themselves are drawn by the page (app/stepper.py, static/explorer.js)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

DIFF_SCALE = "Cividis"
CFG_FILL = "rgba(230, 159, 0, 0.18)"  # CFG steps, shaded
BAR = "#0072B2"
LINE = "#D55E00"
FONT = dict(family="Inter, Arial, sans-serif", size=12)


def steps_label(k: int, n: int) -> str:
    return f"step {k} of {n}"


def divergence_text(diverge: int | None, image_diverge: int | None, steps_done: int, num_steps: int) -> str:
    """The headline of a difference, from the same series the chart draws (app.compare.divergence)."""
    if diverge is None:
        tokens = ("committed tokens identical at every step" if steps_done >= num_steps else
                  f"committed tokens identical so far ({steps_label(steps_done, num_steps)})")
    elif diverge == 1:
        tokens = "committed tokens differ from step 1"
    else:
        tokens = f"committed tokens identical through step {diverge - 1}, differ from {steps_label(diverge, num_steps)}"
    if image_diverge is not None and (diverge is None or image_diverge < diverge):
        tokens += (f"; the shown images differ from step {image_diverge} (a latent decoder mixes in the "
                   "drafts of still-masked neighbours)")
    return tokens


def diff_figure(token_diff: np.ndarray, image_per_step: Sequence[float], tokens_per_step: Sequence[float],
                diverge: int | None, image_diverge: int | None, a: str, b: str, num_steps: int) -> go.Figure:
    """Per-token mean |A - B| at the newest step (sample 0); per step, the mean |A - B| of the shown
    images over tokens committed in both, and the fraction of those tokens whose committed values
    differ. The headline is computed from the same two series."""
    fig = make_subplots(rows=1, cols=2, column_widths=[0.42, 0.58], horizontal_spacing=0.2,
                        specs=[[{}, {"secondary_y": True}]],
                        subplot_titles=("mean |A − B| per token", "per step, tokens committed in both"))
    fig.add_trace(go.Heatmap(z=token_diff, hovertemplate="%{text}<extra></extra>", colorscale=DIFF_SCALE, zmin=0,
                             colorbar=dict(title="|Δ|", x=0.35, xanchor="left", thickness=12, len=0.9)), row=1, col=1)
    fig.add_trace(go.Scatter(mode="lines+markers", line=dict(color=LINE), name="mean |A − B| of the shown images",
                             hovertemplate="step %{x} of " + str(num_steps) + "<br>mean |Δ| %{y:.2f}<extra></extra>"),
                  row=1, col=2)
    fig.add_trace(go.Scatter(mode="lines+markers", line=dict(color=BAR, dash="dot"), name="committed tokens that differ (%)",
                             hovertemplate="step %{x} of " + str(num_steps) + "<br>%{y:.0f}% differ<extra></extra>"),
                  row=1, col=2, secondary_y=True)
    fig.update_yaxes(autorange="reversed", scaleanchor="x", visible=False, row=1, col=1)
    fig.update_xaxes(visible=False, row=1, col=1)
    fig.update_xaxes(title_text=f"step (of {num_steps})", range=[0.5, num_steps + 0.5], row=1, col=2)
    fig.update_yaxes(title_text="mean |Δ| (pixel units)", rangemode="tozero", row=1, col=2)
    fig.update_yaxes(title_text="tokens differ", range=[0, 105], ticksuffix="%", secondary_y=True, row=1, col=2)
    fig.update_layout(height=360, margin=dict(l=10, r=20, t=80, b=40), font=FONT,
                      legend=dict(orientation="h", x=0.45, y=-0.18, font=dict(size=10)), title=dict(x=0.01, font=dict(size=13)))
    update_diff_figure(fig, token_diff, image_per_step, tokens_per_step, diverge, image_diverge, a, b, num_steps)
    return fig


def update_diff_figure(fig: go.Figure, token_diff: np.ndarray, image_per_step: Sequence[float],
                       tokens_per_step: Sequence[float], diverge: int | None, image_diverge: int | None,
                       a: str, b: str, num_steps: int) -> go.Figure:
    """`fig` (a diff_figure) showing new numbers, in place: a comparison that streams updates one
    figure instead of building one per step (building costs 50-100 ms, this well under one)."""
    g = token_diff.shape[0]
    k = len(image_per_step)
    steps = list(range(1, k + 1))
    with fig.batch_update():
        fig.data[0].z = token_diff
        fig.data[0].zmax = max(float(token_diff.max()), 1e-6)
        fig.data[0].text = [[f"token ({r}, {c})<br>mean |A − B| {token_diff[r, c]:.1f}" for c in range(g)] for r in range(g)]
        fig.data[1].x, fig.data[1].y = steps, list(image_per_step)
        fig.data[2].x, fig.data[2].y = steps, [100 * x for x in tokens_per_step]
        fig.layout.annotations[0].text = f"mean |A − B| per token, step {k}"
        fig.layout.shapes = [] if diverge is None else [dict(type="line", xref="x2", yref="y2 domain", x0=diverge,
                                                             x1=diverge, y0=0, y1=1, line=dict(color="black", dash="dot"))]
        fig.layout.title.text = f"<b>{a}</b> vs <b>{b}</b>: {divergence_text(diverge, image_diverge, k, num_steps)}"
    return fig
