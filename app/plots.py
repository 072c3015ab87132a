"""Plotly figures of trajectories with a step scrubber that runs in the browser.

Every step owns a group of traces; a layout slider (method "update") and play/pause buttons toggle
their `visible` flags and the captions. gr.Plot drops `frames`, so play passes its frames inline to
Plotly.animate (updatemenus args) and moves the slider with "sliders[0].active". No server round trip.
"""
from __future__ import annotations

import textwrap
from typing import Callable, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from . import render
from .engine import Trajectory

WHEN_SCALE = "Viridis"  # perceptually uniform, colour-blind safe
DIFF_SCALE = "Cividis"
CFG_FILL = "rgba(230, 159, 0, 0.18)"  # CFG steps, shaded
BAR = "#0072B2"
LINE = "#D55E00"
FONT = dict(family="Inter, Arial, sans-serif", size=12)


def steps_label(k: int, n: int) -> str:
    return f"step {k} of {n}"


def add_player(fig: go.Figure, n_frames: int, num_steps: int, visible_at: Callable[[int], list[bool]],
               layout_at: Callable[[int], dict], y: float = -0.08) -> None:
    """A slider over frames 0..n_frames-1 ("step k of N") plus play / pause, all client-side."""
    steps, frames = [], []
    for k in range(n_frames):
        vis, lay = visible_at(k), layout_at(k)
        steps.append(dict(method="update", label=str(k + 1), args=[{"visible": vis}, lay]))
        frames.append(dict(name=str(k + 1), data=[{"visible": v} for v in vis], traces=list(range(len(vis))),
                           layout={**lay, "sliders[0].active": k}))
    play = dict(label="▶ play", method="animate",
                args=[frames, dict(frame=dict(duration=450, redraw=True), transition=dict(duration=0),
                                   mode="immediate", fromcurrent=False)])
    pause = dict(label="❚❚ pause", method="animate",
                 args=[[None], dict(frame=dict(duration=0, redraw=False), transition=dict(duration=0),
                                    mode="immediate")])
    fig.update_layout(
        sliders=[dict(active=n_frames - 1, steps=steps, x=0.17, len=0.83, y=y, yanchor="top", pad=dict(t=10),
                      currentvalue=dict(prefix="step ", suffix=f" of {num_steps}", xanchor="right",
                                        font=dict(size=13)))],
        updatemenus=[dict(type="buttons", direction="left", x=0.0, y=y, xanchor="left", yanchor="top",
                          pad=dict(t=14, r=6), showactive=False, buttons=[play, pause])],
    )


def _image_axes(fig: go.Figure, row: int, col: int) -> None:
    fig.update_xaxes(visible=False, row=row, col=col)
    fig.update_yaxes(visible=False, row=row, col=col)


def _when_heatmap(when: np.ndarray, k: int, n: int, coloraxis: str = "coloraxis") -> go.Heatmap:
    """Tokens revealed by step k coloured by their step (1..n); later ones blank."""
    g = when.shape[0]
    z = np.where((when >= 1) & (when <= k), when, np.nan).astype(float)
    text = [[(f"token ({r}, {c})<br>revealed at step {int(when[r, c])} of {n}" if when[r, c] and when[r, c] <= k
              else f"token ({r}, {c})<br>still masked at step {k} of {n}") for c in range(g)] for r in range(g)]
    return go.Heatmap(z=z, text=text, hovertemplate="%{text}<extra></extra>", coloraxis=coloraxis,
                      xgap=1, ygap=1)


def _when_coloraxis(n: int, **colorbar) -> dict:
    ticks = sorted(set(np.linspace(1, n, min(n, 9)).round().astype(int).tolist()))
    return dict(colorscale=WHEN_SCALE, cmin=1, cmax=max(n, 2) if n > 1 else 2,
                colorbar=dict(title="step", tickvals=ticks, **colorbar))


def scrubber_figure(traj: Trajectory, scale: int) -> go.Figure:
    """Unmasking view of sample 0: canvas, draft and "when" map per step over the per-step counts."""
    frames, N, g = traj.frames, traj.num_steps, traj.grid
    L = g * g
    when = traj.when_map()[0]
    fig = make_subplots(rows=2, cols=3, row_heights=[0.64, 0.36], vertical_spacing=0.16, horizontal_spacing=0.05,
                        specs=[[{}, {}, {}], [{"colspan": 3, "secondary_y": True}, None, None]],
                        subplot_titles=("canvas · grey masked, orange new", "draft · blue = not committed",
                                        "when · step of reveal", "per-step counts"))
    fig.update_annotations(font_size=12)
    per_step = 4
    for k, f in enumerate(frames):
        vis = k == len(frames) - 1
        fig.add_trace(go.Image(source=render.data_uri(render.frame_canvas(f, g, scale)), hoverinfo="skip",
                               visible=vis), row=1, col=1)
        fig.add_trace(go.Image(source=render.data_uri(render.frame_draft(f, g, scale)), hoverinfo="skip",
                               visible=vis), row=1, col=2)
        fig.add_trace(_when_heatmap(when, k + 1, N).update(visible=vis), row=1, col=3)
        fig.add_trace(go.Scatter(x=[k + 1, k + 1], y=[0, 1], mode="lines", visible=vis,
                                 line=dict(color="black", width=2, dash="dot"), hoverinfo="skip",
                                 showlegend=False), row=2, col=1, secondary_y=True)
    dynamic = per_step * len(frames)

    # static: counts per step, cumulative fraction, CFG steps
    x = [f.state.step + 1 for f in frames]
    counts = [int(f.state.revealed[0].sum()) for f in frames]
    passes = [f.state.passes - (frames[i - 1].state.passes if i else 0) for i, f in enumerate(frames)]
    ms = [1000 * (f.sample_s + f.decode_s) for f in frames]
    cum = np.cumsum(counts) / L
    hover = [f"step {s} of {N}<br>revealed {c} tokens ({cf:.0%} so far)<br>{p} pass{'es' if p > 1 else ''}"
             f"{' (CFG)' if p > 1 else ''}<br>{t:.0f} ms" for s, c, cf, p, t in zip(x, counts, cum, passes, ms)]
    fig.add_trace(go.Bar(x=x, y=counts, name="tokens revealed", marker_color=BAR,
                         text=[f"×{p}" for p in passes] if N <= 24 else None,
                         textposition="outside", hovertext=hover, hoverinfo="text"), row=2, col=1)
    fig.add_trace(go.Scatter(x=x, y=cum, name="cumulative fraction", mode="lines+markers",
                             line=dict(color=LINE), hovertext=hover, hoverinfo="text"), row=2, col=1, secondary_y=True)
    fig.add_trace(go.Bar(x=[None], y=[None], name="CFG step (2 passes)", marker_color=CFG_FILL), row=2, col=1)
    for s, p in zip(x, passes):
        if p > 1:
            fig.add_vrect(x0=s - 0.5, x1=s + 0.5, fillcolor=CFG_FILL, line_width=0, layer="below", row=2, col=1)
    n_static = 3

    last = traj.last
    nfe = f"{last.passes} = {N} x {last.passes / N:.3g}" if traj.complete else f"{last.passes} so far"
    fig.layout.annotations[3].text = f"per-step counts · NFE {nfe}" + (" · bars labelled with passes" if N <= 24 else "")

    def visible_at(k: int) -> list[bool]:
        return [i // per_step == k for i in range(dynamic)] + [True] * n_static

    def layout_at(k: int) -> dict:
        f = frames[k]
        s = f.state
        cfg = f"CFG x{float(s.cfg_scale[0]):.2g}" if s.cfg_active else "no CFG"
        return {"title.text": (f"<b>{steps_label(s.step + 1, N)}</b> · t {s.t:.3f} → s {s.s:.3f} · {cfg} · "
                               f"revealed {counts[k]} ({cum[k]:.0%} of {L} tokens)<br>"
                               f"NFE so far {s.passes} · {ms[k]:.0f} ms this step · {traj.model}")}

    for c in (1, 2, 3):
        _image_axes(fig, 1, c)
    fig.update_yaxes(autorange="reversed", scaleanchor="x3", row=1, col=3)
    fig.update_xaxes(title_text=f"step (of {N})", range=[0.4, N + 0.6], dtick=1 if N <= 32 else None, row=2, col=1)
    fig.update_yaxes(title_text="tokens", rangemode="tozero", row=2, col=1)
    fig.update_yaxes(title_text="cumulative", range=[0, 1.05], tickformat=".0%", secondary_y=True, row=2, col=1)
    fig.update_layout(height=720, margin=dict(l=40, r=30, t=90, b=110), font=FONT, bargap=0.25,
                      coloraxis=_when_coloraxis(N, len=0.5, y=0.8, x=1.0),
                      legend=dict(orientation="h", x=0.0, y=0.37, yanchor="bottom", bgcolor="rgba(255,255,255,0.6)"),
                      title=dict(text=layout_at(len(frames) - 1)["title.text"], x=0.01, font=dict(size=14)))
    add_player(fig, len(frames), N, visible_at, layout_at)
    return fig


def compare_figure(panels: Sequence[tuple[str, Trajectory | None, str]], scale: int) -> go.Figure:
    """Side-by-side panels (title, trajectory or None, note) with one step slider for all.
    Panels without a trajectory show their note (e.g. why they are unavailable)."""
    live = [p for p in panels if p[1] is not None]
    if not live:
        raise ValueError("no panel has a run to show")
    n = min(len(p[1].frames) for p in live)
    N = live[0][1].num_steps
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[p[0] for p in panels], horizontal_spacing=0.02)
    for k in range(n):
        for c, (title, traj, _) in enumerate(panels, start=1):
            if traj is not None:
                f = traj.frames[k]
                fig.add_trace(go.Image(source=render.data_uri(render.frame_canvas(f, traj.grid, scale)),
                                       hoverinfo="skip", visible=k == n - 1, name=title), row=1, col=c)
    for c, (title, traj, note) in enumerate(panels, start=1):
        _image_axes(fig, 1, c)
        if traj is None:
            xd = fig.get_subplot(1, c).xaxis.domain
            fig.add_annotation(text="<br>".join(textwrap.wrap(note, 22)), x=(xd[0] + xd[1]) / 2, y=0.5,
                               xref="paper", yref="paper", xanchor="center", showarrow=False,
                               font=dict(size=12, color="#555"))
    per_step = len(live)

    def caption(title: str, traj: Trajectory, k: int) -> str:
        s = traj.frames[k].state
        ms = 1000 * sum(f.sample_s for f in traj.frames[: k + 1])
        return f"<b>{title}</b><br>NFE {s.passes} of {traj.last.passes} · {ms:.0f} ms"

    def layout_at(k: int) -> dict:
        out = {"title.text": f"<b>{steps_label(k + 1, N)}</b> · same seed, same reveal order in every panel"}
        for i, (title, traj, note) in enumerate(panels):
            if traj is not None:
                out[f"annotations[{i}].text"] = caption(title, traj, k)
        return out

    def visible_at(k: int) -> list[bool]:
        return [i // per_step == k for i in range(per_step * n)]

    fig.update_layout(height=420, margin=dict(l=10, r=10, t=110, b=90), font=FONT, showlegend=False,
                      title=dict(x=0.01, font=dict(size=14)))
    fig.layout.title.text = layout_at(n - 1)["title.text"]
    for i, (title, traj, _) in enumerate(panels):
        if traj is not None:
            fig.layout.annotations[i].text = caption(title, traj, n - 1)
    add_player(fig, n, N, visible_at, layout_at, y=-0.02)
    return fig


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
