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
import torch
from PIL import Image

from emigm.eval.sampler_error import path_is_fixed, run_errors

from .payload import PlayerPanel, PlayerPayload, StepCost, StepRecord, to_json
from .payload import Status as StatusPayload
from .trajectory import Trajectory

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


def step_records(traj: Trajectory, b: int = 0, n: int | None = None) -> list[StepRecord]:
    """Per step of sample b (the first n steps): t, s, CFG scale (0: off), self-guidance, passes this
    step, ms, revealed."""
    out, prev = [], 0
    for f in traj.frames[:n]:
        s = f.state
        out.append(StepRecord(t=round(s.t, 4), s=round(s.s, 4),
                              cfg=round(float(s.cfg_scale[b]), 3) if s.cfg_active else 0,
                              sg=round(float(s.sg_scale), 3) if s.sg_active else 0,
                              passes=s.passes - prev, nfe=s.passes, ms=round(1000 * (f.sample_s + f.decode_s), 1),
                              revealed=int(s.revealed[b].sum()), masked=int(s.mask_after[b].sum())))
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


def masks(traj: Trajectory, n: int | None = None, b: int = 0) -> list[str] | None:
    """Per step of sample b, the mask after it as a string of L '0' / '1' (1 = masked), for a run with
    remasking (a token may be masked again after its commit, so its reveal step alone does not say) and
    for an inpainting run (its kept tokens are never revealed: they are there from the start); None for
    a run without."""
    if not traj.edited and traj.start is None and all(f.state.sampler.remask == "off" for f in traj.frames):
        return None
    return ["".join("1" if m else "0" for m in f.state.mask_after[b].tolist()) for f in traj.frames[:n]]


def lab_maps(traj: Trajectory, frames, b: int = 0) -> dict[str, Any]:
    """The per-token maps of the shown frames a run recorded (engine.LAB_MAPS): "unc", the uncertainty of
    the draft at every still-masked token (0 elsewhere) with its meaning in "unc_label"; for a
    remasking run "revisions", how often each token was re-masked after its commit so far, and "masked"."""
    out: dict[str, Any] = {}
    if frames and all(f.state.anatomy is not None for f in frames):
        out["unc"] = [np.round(f.state.anatomy.uncertainty[b].float().numpy(), 4).tolist() for f in frames]
        out["unc_label"] = ("entropy of the token's distribution (nats)" if traj.frames[0].state.tokens.dim() == 2
                            else "spread of 4 head draws (mean sd over channels)")
    m = masks(traj)
    if m is not None:
        first = len(traj.frames) - len(frames)
        out["masked"] = m[first:]
        out["revisions"] = [f.state.revisions[b].tolist() for f in frames]
    return out


def step_costs(traj: Trajectory, net: Any) -> StepCost:
    """The sampler's own error per step of a finished run on an oracle model `net` (sample 0): the
    library's run_errors re-runs the run's sampler with its labels, seeds and settings (the sampler is
    deterministic in them) and its draws are checked to be the run's own before any number is shown."""
    s = traj.last
    fixed = path_is_fixed(s.sampler)
    guided = s.guidance.cfg_scale != 1.0
    measure = "KL" if fixed else "dependence cost"
    why = ""
    if traj.branched_from or traj.edited:
        why = "not computed for a branched run (its path mixes two settings)"
    elif not traj.complete:
        why = "not computed for a stopped run"
    if not why:
        try:
            out = run_errors(net, s.labels[:1], s.seeds[:1], s.sampler, s.guidance)
        except ValueError as e:
            why = str(e).splitlines()[0]
        else:
            if not torch.equal(out["tokens"][0].cpu(), s.tokens[0].cpu()):
                why = "not computed: the re-run's draws differ from this run's"
    if why:
        return StepCost(measure=measure, fixed=fixed, guided=guided, note=why)
    per = out["per_step"][0].tolist()
    note = ("KL of the sampler from the oracle, by the chain rule: each bar is what revealing that step's tokens "
            "together cost" if fixed else
            "dependence cost of the path taken (the order reads token values, so it is not a KL)")
    if guided:
        note += "; guidance is on, so the target is not the unguided p(x | c)"
    return StepCost(measure=measure, fixed=fixed, guided=guided, note=note, per_step=[round(v, 6) for v in per],
                    total=round(sum(per), 6), effective=[round(v, 3) for v in out["effective"][0].tolist()])


def unmask_payload(traj: Trajectory, run: str, live: bool = False, title: str = "",
                   cost: StepCost | None = None) -> dict[str, Any]:
    """The Unmasking player for sample 0: every frame (or, while `live`, the newest one), with the lab maps
    (and, on an oracle model, the sampler's own error per step)."""
    frames = traj.frames[-1:] if live else traj.frames
    panel = PlayerPanel(title=traj.model, note="", cols=[0], when=traj.when_map()[:1].reshape(1, -1).tolist())
    return to_json(PlayerPayload(
        kind="unmask", run=run, live=live, n=len(traj.frames), N=traj.num_steps,
        grid=traj.grid, px=traj.image_size, view=view_px(traj.image_size), L=traj.grid ** 2,
        first=len(traj.frames) - len(frames), sprite=sprite([[f.draft[0]] for f in frames]),
        panels=[panel], steps=step_records(traj), branched_from=traj.branched_from, title=title,
        complete=traj.complete and not live, cost=cost, **lab_maps(traj, frames)))


def frame_of(length: int, n: int) -> list[int]:
    """For a player of n steps, the frame of a run of `length` steps shown at each: the same fraction of
    the run (runs of different step counts scrub together, start to end)."""
    return [min(length - 1, math.ceil((k + 1) * length / n) - 1) for k in range(n)]


def _ledger(state) -> dict[str, list[int]]:
    """Per seed, the steps its image took and their passes (the NFE ledger; an adaptive order's vary)."""
    if state.image_steps is None:
        return {}
    return {"image_steps": state.image_steps.tolist(), "image_nfe": state.image_passes.tolist()}


def compare_payload(panels: Sequence[tuple[str, Trajectory | None, str]], run: str,
                    live: bool = False, extras: Sequence[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Side-by-side panels (title, trajectory or None, note) sharing one step slider. Complete: the slider
    runs over the longest run and every panel shows the same fraction of its own run (`frame_of`; the
    same step when the runs have the same steps); `live`: one frame, each panel's newest. Each live
    panel contributes one sprite column per seed; its time is its own sampling and decoding (the panels
    run interleaved). extras[i]: more fields of panel i (e.g. its measured FD)."""
    live_panels = [p for p in panels if p[1] is not None]
    if not live_panels:
        raise ValueError("no panel has a run to show")
    lengths = [len(p[1].frames) for p in live_panels]
    n = min(lengths) if live else max(lengths)
    first = max((p[1] for p in live_panels), key=lambda t: t.num_steps)
    shown = {id(t): ([len(t.frames) - 1] * n if live else frame_of(len(t.frames), n)) for _, t, _ in live_panels}
    rows = [[img for _, traj, _ in live_panels for img in traj.frames[shown[id(traj)][k]].draft]
            for k in ([n - 1] if live else range(n))]
    out_panels, col = [], 0
    for i, (title, traj, note) in enumerate(panels):
        extra = dict(extras[i]) if extras else {}
        if traj is None:
            out_panels.append(PlayerPanel(title=title, note=note, cols=[], **extra))
            continue
        B, m = traj.batch, len(traj.frames)
        out_panels.append(PlayerPanel(
            title=title, note=note, cols=list(range(col, col + B)), when=when(traj, m), steps=step_records(traj, n=m),
            N=traj.num_steps, frame_of=shown[id(traj)],
            masked=[masks(traj, m, b) for b in range(B)] if masks(traj, m) is not None else None,
            nfe=traj.frames[m - 1].state.passes, **_ledger(traj.frames[m - 1].state),
            ms=round(1000 * sum(f.sample_s + f.decode_s for f in traj.frames[:m])), **extra))
        col += B
    complete = not live and all(p[1].last.done for p in live_panels)
    return to_json(PlayerPayload(
        kind="compare", run=run, live=live, n=n, N=first.num_steps if live else n, grid=first.grid,
        px=first.image_size, view=view_px(first.image_size), L=first.grid ** 2, first=n - 1 if live else 0,
        sprite=sprite(rows), panels=out_panels, complete=complete,
        same_steps=len({t.num_steps for _, t, _ in live_panels}) == 1))


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
    return to_json(StatusPayload(phase=phase, text=text, run=run, seq=next(_seq), notes=notes or None))
