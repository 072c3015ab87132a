"""The step player: trajectories as one small JSON payload that the page's script (static/explorer.js)
draws and scrubs with no server call.

A payload holds one PNG "sprite" at the images' own resolution (row = frame, column = image) and, per
image, the step at which each token was revealed; the browser upscales nearest-neighbour and draws the
overlays (masked tokens grey, this step's reveals outlined, the "when" colours), the per-step chart and
a token's history from it. So a 64-step run is a few tens of kilobytes, and a scrub step is a redraw of
three small canvases.

The canvas at step k is the decoded DRAFT with the still-masked tokens greyed: for pixel-patch tokens
that equals the decoded committed tokens; for latent tokens (VQ, KL) a token's pixels depend on its
neighbours, and decoding the draft shows each committed token in the context the model predicts
instead of next to zeros (text.UNMASKING_HELP says so).
"""
from __future__ import annotations

import base64
import io
import itertools
import math
from typing import Any, Sequence

import gradio as gr
import numpy as np
from PIL import Image

from .engine import Trajectory

TARGET_PX = 224  # a view's size on the Unmasking tab
MIN_PX = 160  # the smallest view anywhere
_ids = itertools.count(1)


def new_run_id() -> str:
    return f"r{next(_ids)}"


def view_px(image_size: int, target: int = TARGET_PX) -> int:
    """Display size: an integer multiple of the image size near `target`, at least MIN_PX."""
    scale = max(1, round(target / image_size), math.ceil(MIN_PX / image_size))
    return image_size * scale


def sprite(rows: Sequence[Sequence[np.ndarray]]) -> str:
    """rows[frame][image] (H, W, C) uint8 -> one PNG data URI (grey when C == 1)."""
    tiles = [np.concatenate(list(r), axis=1) for r in rows]
    arr = np.concatenate(tiles, axis=0)
    img = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def step_records(traj: Trajectory, b: int = 0) -> list[dict[str, Any]]:
    """Per step of sample b: t, s, CFG scale (0: off), self-guidance, passes this step, ms, revealed."""
    out, prev = [], 0
    for f in traj.frames:
        s = f.state
        out.append({"t": round(s.t, 4), "s": round(s.s, 4),
                    "cfg": round(float(s.cfg_scale[b]), 3) if s.cfg_active else 0,
                    "sg": round(float(s.sg_scale), 3) if s.sg_active else 0,
                    "passes": s.passes - prev, "nfe": s.passes, "ms": round(1000 * (f.sample_s + f.decode_s), 1),
                    "revealed": int(s.revealed[b].sum())})
        prev = s.passes
    return out


def unmask_payload(traj: Trajectory, run: str, live: bool = False, title: str = "") -> dict[str, Any]:
    """The Unmasking player for sample 0: every frame (or, while `live`, the newest one)."""
    frames = traj.frames[-1:] if live else traj.frames
    return {
        "kind": "unmask", "run": run, "live": live, "n": len(traj.frames), "N": traj.num_steps,
        "grid": traj.grid, "px": traj.image_size, "view": view_px(traj.image_size), "L": traj.grid ** 2,
        "first": len(traj.frames) - len(frames), "sprite": sprite([[f.draft[0]] for f in frames]),
        "panels": [{"title": traj.model, "cols": [0], "when": traj.when_map()[:1].reshape(1, -1).tolist()}],
        "steps": step_records(traj), "branched_from": traj.branched_from, "title": title,
        "complete": traj.complete,
    }


def compare_payload(panels: Sequence[tuple[str, Trajectory | None, str]], run: str) -> dict[str, Any]:
    """Side-by-side panels (title, trajectory or None, note) sharing one step slider. Each live panel
    contributes one sprite column per seed."""
    live = [p for p in panels if p[1] is not None]
    if not live:
        raise ValueError("no panel has a run to show")
    n = min(len(p[1].frames) for p in live)
    first = live[0][1]
    rows = [[img for _, traj, _ in live for img in traj.frames[k].draft] for k in range(n)]
    out_panels, col = [], 0
    for title, traj, note in panels:
        if traj is None:
            out_panels.append({"title": title, "note": note, "cols": []})
            continue
        B = traj.batch
        out_panels.append({"title": title, "note": note, "cols": list(range(col, col + B)),
                           "when": traj.when_map().reshape(B, -1).tolist(),
                           "steps": step_records(traj), "nfe": traj.last.passes,
                           "ms": round(1000 * traj.wall_s)})
        col += B
    return {"kind": "compare", "run": run, "live": False, "n": n, "N": first.num_steps, "grid": first.grid,
            "px": first.image_size, "view": view_px(first.image_size, MIN_PX), "L": first.grid ** 2, "first": 0,
            "sprite": sprite(rows), "panels": out_panels, "complete": True}


def keep_views(num_outputs: int):
    """The on_error handler of a tab whose first of `num_outputs` outputs is its status: on a bad input
    the status says what is wrong and every other view keeps what it showed."""
    def on_error(_owner, message: str) -> tuple:
        return (status("error", message),) + (gr.skip(),) * (num_outputs - 1)
    return on_error


def status(phase: str, text: str, run: str = "") -> dict[str, str]:
    """The status line: phase running | done | stopped | error (the page shows done as "rendering"
    until the player has drawn run `run`, then "ready")."""
    return {"phase": phase, "text": text, "run": run}
