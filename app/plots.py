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








def diff_figure(token_diff: np.ndarray, per_step: Sequence[float], diverge: int | None, a: str, b: str,
                num_steps: int) -> go.Figure:
    """Per-token mean |A - B| at the last step (sample 0) and mean |A - B| of committed tokens per step."""
    g = token_diff.shape[0]
    fig = make_subplots(rows=1, cols=2, column_widths=[0.42, 0.58], horizontal_spacing=0.2,
                        subplot_titles=("mean |A − B| per token, last step", "mean |A − B| over committed tokens"))
    text = [[f"token ({r}, {c})<br>mean |A − B| {token_diff[r, c]:.1f}" for c in range(g)] for r in range(g)]
    vmax = max(float(token_diff.max()), 1e-6)
    fig.add_trace(go.Heatmap(z=token_diff, text=text, hovertemplate="%{text}<extra></extra>", colorscale=DIFF_SCALE,
                             zmin=0, zmax=vmax, colorbar=dict(title="|Δ|", x=0.35, xanchor="left", thickness=12, len=0.9)), row=1, col=1)
    steps = list(range(1, len(per_step) + 1))
    fig.add_trace(go.Scatter(x=steps, y=list(per_step), mode="lines+markers", line=dict(color=LINE),
                             hovertemplate="step %{x} of " + str(num_steps) + "<br>mean |Δ| %{y:.2f}<extra></extra>"),
                  row=1, col=2)
    if diverge is not None:
        fig.add_vline(x=diverge, line=dict(color="black", dash="dot"), row=1, col=2)
    fig.update_yaxes(autorange="reversed", scaleanchor="x", visible=False, row=1, col=1)
    fig.update_xaxes(visible=False, row=1, col=1)
    fig.update_xaxes(title_text=f"step (of {num_steps})", row=1, col=2)
    fig.update_yaxes(title_text="mean |Δ| (pixel units)", rangemode="tozero", row=1, col=2)
    verdict = ("identical at every step" if diverge is None
               else f"identical through step {diverge - 1}, diverge at {steps_label(diverge, num_steps)}")
    fig.update_layout(height=360, margin=dict(l=10, r=20, t=80, b=40), font=FONT, showlegend=False,
                      title=dict(text=f"<b>{a}</b> vs <b>{b}</b>: {verdict}", x=0.01, font=dict(size=14)))
    return fig
