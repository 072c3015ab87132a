"""Handlers of the Unmasking tab: run (streamed), stop, branch from a step, pick a token, exports.

Each handler takes widget values named like the SamplerConfig / GuidanceConfig fields and returns
plain values (arrays, figures, dicts); the per-user Trajectory travels in a gr.State. Views are
built from the cached trajectory, so scrubbing, picking and exporting never re-sample.
"""
from __future__ import annotations

import json
import random
import re
import tempfile
from collections import deque
from pathlib import Path
from typing import Any, Iterator

import gradio as gr
import numpy as np

from emigm.trace import trace_dict

from . import controls, plots, render
from .engine import Engine, Trajectory
from .errors import user_errors

NO_RUN = "Run the sampler first: there is no trajectory in this session yet."


class ExportDir:
    """Files handed to gr.File, in one temp folder; the oldest are deleted beyond `keep`."""

    def __init__(self, keep: int = 90) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="emigm-explorer-"))
        self._files: deque[Path] = deque()
        self.keep = keep

    def write(self, name: str, data: bytes) -> str:
        path = self.root / re.sub(r"[^A-Za-z0-9._-]+", "-", name)
        path.write_bytes(data)
        self._files.append(path)
        while len(self._files) > self.keep:
            self._files.popleft().unlink(missing_ok=True)
        return str(path)


def class_index(names: list[str], class_name: Any) -> int:
    """A class given by name (case-insensitive) or by id."""
    if isinstance(class_name, (int, np.integer)) or (isinstance(class_name, str) and class_name.strip().isdigit()):
        idx = int(class_name)
        if not 0 <= idx < len(names):
            raise ValueError(f"class id {idx} out of range; valid: 0..{len(names) - 1}")
        return idx
    lowered = [n.lower() for n in names]
    if not isinstance(class_name, str) or class_name.strip().lower() not in lowered:
        raise ValueError(f"unknown class {class_name!r}; valid: {', '.join(names)}")
    return lowered.index(class_name.strip().lower())


def run_summary(traj: Trajectory) -> dict[str, Any]:
    """The run as JSON: emigm.trace's settings and per-step records plus labels, timings and the when map."""
    frames = traj.frames
    N = traj.num_steps
    doc = trace_dict(traj.states, traj.model, {
        "random_init": traj.random_init,
        "class_names": traj.label_names(),
        "grid": traj.grid,
        "num_steps": N,
        "steps_done": len(frames),
        "complete": traj.complete,
        "nfe": f"{N} x {traj.last.passes / N:.3g}" if traj.complete else None,
        "branched_from_step": traj.branched_from or None,
        "first_frame_s": round(traj.first_frame_s, 4),
        "wall_s": round(traj.wall_s, 4),
        "when": traj.when_map()[0].tolist(),
    })
    for rec, f in zip(doc["steps"], frames):
        rec["label"] = plots.steps_label(rec["step"], N)
        rec["num_revealed"] = [len(r) for r in rec["revealed"]]
        rec["masked_after"] = f.state.mask_after.sum(1).tolist()
        rec["ms"] = round(1000 * (f.sample_s + f.decode_s), 2)
    return doc


def timing_markdown(traj: Trajectory) -> str:
    new = traj.frames[traj.branched_from:]
    sample_ms = 1000 * sum(f.sample_s for f in new) / max(len(new), 1)
    decode_ms = 1000 * sum(f.decode_s for f in new) / max(len(new), 1)
    last = traj.last
    nfe = f"{last.passes} ({last.num_steps} x {last.passes / last.num_steps:.3g})" if traj.complete else f"{last.passes} so far"
    rows = [("steps", f"{len(traj.frames)} of {last.num_steps}" + ("" if traj.complete else " (stopped early)")),
            ("transformer passes (NFE)", nfe), ("head evaluations", str(last.head_evals)),
            ("wall time", f"{traj.wall_s:.2f} s" + (f" for the {len(new)} new steps" if traj.branched_from else "")),
            ("time to first frame", f"{traj.first_frame_s:.2f} s"),
            ("per step", f"{sample_ms:.0f} ms sampling + {decode_ms:.0f} ms decoding")]
    if traj.branched_from:
        rows.insert(0, ("branched", f"after step {traj.branched_from}; steps 1-{traj.branched_from} are the parent's"))
    return "| timing | |\n|---|---|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows)


class Unmasking:
    def __init__(self, engine: Engine, exports: ExportDir | None = None) -> None:
        self.engine = engine
        self.exports = exports or ExportDir()

    # ------------------------------------------------------------------ small controls

    @user_errors
    def model_info(self, model: str):
        """Class choices and the banner for a model."""
        names = self.engine.class_names(model)
        return gr.update(choices=names, value=names[0]), self.engine.banner(model)

    def randomise_seed(self) -> int:
        return random.SystemRandom().randrange(0, int(controls.RANGES["seed"][1]) + 1)

    # ------------------------------------------------------------------ runs

    def _scale(self, traj: Trajectory) -> int:
        return render.display_scale(traj.image_size)

    def _stream(self, runs: Iterator[Trajectory]):
        """Per step: the live canvas | draft and a status line; at the end every view."""
        traj = None
        for traj in runs:
            s = traj.last
            status = (f"**Sampling… {plots.steps_label(s.step + 1, s.num_steps)}** · NFE so far {s.passes} · "
                      f"{traj.wall_s:.1f} s")
            # the state follows every step, so Stop can show what was sampled so far
            yield (render.live_view(traj, self._scale(traj)), status) + (gr.skip(),) * 4 + (traj, gr.skip())
        if traj is None:
            raise ValueError("the sampler produced no steps")
        yield self.views(traj)

    def views(self, traj: Trajectory | None):
        """Every output of a run from its trajectory: live image, status, scrubber figure, timing,
        pick image, run JSON, the state itself and the branch slider."""
        if traj is None or not traj.frames:
            raise gr.Error(NO_RUN)
        scale = self._scale(traj)
        s = traj.last
        status = (f"**Done: {plots.steps_label(len(traj.frames), s.num_steps)}**" if traj.complete else
                  f"**Stopped at {plots.steps_label(len(traj.frames), s.num_steps)}**") + \
            f" · {traj.model} · class {traj.label_names()[0]} · seed {int(s.seeds[0])} · NFE {s.passes}"
        last_ok = max(1, len(traj.frames) - (1 if traj.complete else 0))
        branch = gr.update(maximum=last_ok, value=min(max(1, last_ok // 2), last_ok))
        return (render.live_view(traj, scale), status, plots.scrubber_figure(traj, scale), timing_markdown(traj),
                render.pick_view(traj, scale), run_summary(traj), traj, branch)

    @user_errors
    def run(self, model: str, class_name: str, seed: float, num_steps: float, schedule: str, count_rule: str,
            order: str, order_temperature: float, order_anneal: str, temperature: float, head_solver: str,
            head_steps: float, cfg_scale: float, cfg_mode: str, cfg_interval_lo: float, cfg_interval_hi: float,
            cfg_schedule: str):
        """Sample one image, streaming the canvas after every step."""
        values = dict(locals())
        sampler, guidance = controls.split_run_values(values)
        label = class_index(self.engine.class_names(model), class_name)
        seed = controls.as_number("seed", seed)
        yield from self._stream(self.engine.stream(model, [label], [seed], sampler, guidance))

    @user_errors
    def branch(self, trajectory: Trajectory | None, branch_step: float, num_steps: float, schedule: str,
               count_rule: str, order: str, order_temperature: float, order_anneal: str, temperature: float,
               head_solver: str, head_steps: float, cfg_scale: float, cfg_mode: str, cfg_interval_lo: float,
               cfg_interval_hi: float, cfg_schedule: str):
        """Re-run from the state after `branch_step` of the current run with the given settings."""
        if trajectory is None:
            raise gr.Error(NO_RUN)
        values = dict(locals())
        k = controls.as_number("branch_step", branch_step)
        sampler, guidance = controls.split_run_values(values)
        yield from self._stream(self.engine.branch(trajectory, k, sampler, guidance))

    @user_errors
    def stopped(self, trajectory: Trajectory | None):
        """Views of whatever was sampled before Stop."""
        return self.views(trajectory)

    # ------------------------------------------------------------------ tokens

    def pick_token(self, trajectory: Trajectory | None, evt: gr.SelectData):
        """A click on the canvas -> (row, col) of the token under it."""
        if trajectory is None:
            raise gr.Error(NO_RUN)
        x, y = evt.index
        cell = trajectory.image_size * self._scale(trajectory) // trajectory.grid
        g = trajectory.grid
        return min(int(y) // cell, g - 1), min(int(x) // cell, g - 1)

    @user_errors
    def token_history(self, trajectory: Trajectory | None, row: float, col: float):
        """A token's draft at each step until it was committed: gallery, JSON and the outlined canvas."""
        if trajectory is None:
            raise gr.Error(NO_RUN)
        g = trajectory.grid
        r, c = (self._token_coord(name, v, g) for name, v in (("row", row), ("col", col)))
        i = r * g + c
        history = render.token_history(trajectory, r, c)
        when = int(trajectory.when_map()[0, r, c])
        steps = []
        for f in trajectory.frames[: len(history)]:
            s = f.state
            steps.append({"step": s.step + 1, "committed": bool(s.revealed[0, i]),
                          "value": np.round(s.draft[0, i].float().numpy(), 4).reshape(-1).tolist()})
        doc = {"token": [r, c], "index": i, "grid": g, "num_steps": trajectory.num_steps,
               "revealed_at_step": when or None, "history": steps}
        return history, doc, render.pick_view(trajectory, self._scale(trajectory), (r, c))

    @staticmethod
    def _token_coord(name: str, value: Any, grid: int) -> int:
        try:
            x = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"token {name} must be a number, got {value!r}") from None
        if not x.is_integer() or not 0 <= x < grid:
            raise ValueError(f"token {name} must be a whole number in [0, {grid - 1}], got {value!r}")
        return int(x)

    # ------------------------------------------------------------------ exports

    @user_errors
    def export(self, trajectory: Trajectory | None):
        """GIF of the unmasking, PNG strip (mask row over image row) and the JSON trace."""
        if trajectory is None:
            raise gr.Error(NO_RUN)
        s = trajectory.last
        stem = f"{trajectory.model}-c{int(s.labels[0])}-seed{int(s.seeds[0])}-{s.sampler.schedule}{s.num_steps}-{id(trajectory):x}"
        gif = self.exports.write(stem + ".gif", render.gif_bytes(trajectory, self._scale(trajectory)))
        png = self.exports.write(stem + "-strip.png", render.png_bytes(render.strip(trajectory)))
        trace = self.exports.write(stem + "-trace.json", json.dumps(run_summary(trajectory), indent=1).encode())
        return gif, png, trace
