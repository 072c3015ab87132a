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

MIN_PX = 224  # the smallest image view; the page scales views up, in whole pixels, to fit the window
_ids = itertools.count(1)
_seq = itertools.count(1)


def new_run_id() -> str:
    return f"r{next(_ids)}"


def view_px(image_size: int) -> int:
    """The smallest display size of an image: the first whole multiple of its size that is at least
    MIN_PX (the page may use a larger multiple when the window has room)."""
    return image_size * max(1, math.ceil(MIN_PX / image_size))


def sprite(rows: Sequence[Sequence[np.ndarray]]) -> str:
    """rows[frame][image] (H, W, C) uint8 -> one PNG data URI (grey when C == 1)."""
    tiles = [np.concatenate(list(r), axis=1) for r in rows]
    arr = np.concatenate(tiles, axis=0)
    img = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def step_records(traj: Trajectory, b: int = 0, n: int | None = None) -> list[dict[str, Any]]:
    """Per step of sample b (the first n steps): t, s, CFG scale (0: off), self-guidance, passes this
    step, ms, revealed."""
    out, prev = [], 0
    for f in traj.frames[:n]:
        s = f.state
        out.append({"t": round(s.t, 4), "s": round(s.s, 4),
                    "cfg": round(float(s.cfg_scale[b]), 3) if s.cfg_active else 0,
                    "sg": round(float(s.sg_scale), 3) if s.sg_active else 0,
                    "passes": s.passes - prev, "nfe": s.passes, "ms": round(1000 * (f.sample_s + f.decode_s), 1),
                    "revealed": int(s.revealed[b].sum())})
        prev = s.passes
    return out


def when(traj: Trajectory, n: int) -> list[list[int]]:
    """Per sample, the 1-based step at which each token was revealed within the first n steps (0: not
    yet), flattened."""
    B, L = traj.last.mask_after.shape
    out = np.zeros((B, L), dtype=np.int64)
    for f in traj.frames[:n]:
        out[f.state.revealed.numpy()] = f.state.step + 1
    return out.tolist()


def unmask_payload(traj: Trajectory, run: str, live: bool = False, title: str = "") -> dict[str, Any]:
    """The Unmasking player for sample 0: every frame (or, while `live`, the newest one)."""
    frames = traj.frames[-1:] if live else traj.frames
    return {
        "kind": "unmask", "run": run, "live": live, "n": len(traj.frames), "N": traj.num_steps,
        "grid": traj.grid, "px": traj.image_size, "view": view_px(traj.image_size), "L": traj.grid ** 2,
        "first": len(traj.frames) - len(frames), "sprite": sprite([[f.draft[0]] for f in frames]),
        "panels": [{"title": traj.model, "cols": [0], "when": traj.when_map()[:1].reshape(1, -1).tolist()}],
        "steps": step_records(traj), "branched_from": traj.branched_from, "title": title,
        "complete": traj.complete and not live,
    }


def compare_payload(panels: Sequence[tuple[str, Trajectory | None, str]], run: str,
                    live: bool = False) -> dict[str, Any]:
    """Side-by-side panels (title, trajectory or None, note) sharing one step slider, at the steps
    every panel has (all of them, or, while `live`, the newest one). Each live panel contributes one
    sprite column per seed; its time is its own sampling and decoding (the panels run interleaved)."""
    live_panels = [p for p in panels if p[1] is not None]
    if not live_panels:
        raise ValueError("no panel has a run to show")
    n = min(len(p[1].frames) for p in live_panels)
    first = live_panels[0][1]
    shown = [n - 1] if live else range(n)
    rows = [[img for _, traj, _ in live_panels for img in traj.frames[k].draft] for k in shown]
    out_panels, col = [], 0
    for title, traj, note in panels:
        if traj is None:
            out_panels.append({"title": title, "note": note, "cols": []})
            continue
        B = traj.batch
        out_panels.append({"title": title, "note": note, "cols": list(range(col, col + B)),
                           "when": when(traj, n), "steps": step_records(traj, n=n),
                           "nfe": traj.frames[n - 1].state.passes,
                           "ms": round(1000 * sum(f.sample_s + f.decode_s for f in traj.frames[:n]))})
        col += B
    complete = not live and all(p[1].frames[n - 1].state.done for p in live_panels)
    return {"kind": "compare", "run": run, "live": live, "n": n, "N": first.num_steps, "grid": first.grid,
            "px": first.image_size, "view": view_px(first.image_size), "L": first.grid ** 2,
            "first": n - 1 if live else 0, "sprite": sprite(rows), "panels": out_panels, "complete": complete}


def keep_views(num_outputs: int):
    """The on_error handler of a tab whose first of `num_outputs` outputs is its status: on a bad input
    the status says what is wrong (and, for a refused value, which control: the page shows the message
    next to it) and every other view keeps what it showed."""
    def on_error(_owner, message: str, notes: dict[str, str] | None = None) -> tuple:
        return (status("error", message, notes=notes),) + (gr.skip(),) * (num_outputs - 1)
    return on_error


def status(phase: str, text: str, run: str = "", notes: dict[str, str] | None = None) -> dict[str, Any]:
    """The status line: phase running | done | stopped | error (the page shows done as "rendering"
    until the player has drawn run `run`, then "ready"); notes: {control: message} shown next to those
    controls (an error's refused value)."""
    # seq: every status differs from the last, so the page redraws it (also an error repeated as it was)
    out: dict[str, Any] = {"phase": phase, "text": text, "run": run, "seq": next(_seq)}
    if notes:
        out["notes"] = notes
    return out
