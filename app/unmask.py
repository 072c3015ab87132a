"""Handlers of the Unmasking tab: run (streamed), stop, branch from a step, a token's history, exports.

Run handlers take the control values as one dict keyed by control name (controls.keyword_handler gives
them their API parameters) and return, in this order, the outputs `OUTPUTS`:
    status (dict), player (stepper payload), timing (markdown), run JSON, the trajectory (gr.State).
Live yields give every output a value (a gr.skip() or gr.update() output makes Gradio build a new
component each time, which it keeps: memory grows with every run).
The per-user Trajectory travels in a gr.State; views are built from it, so scrubbing, a token's history
and exports never re-sample. A bad input leaves every view as it was and puts the message in the status.
"""
from __future__ import annotations

import atexit
import json
import random
import re
import shutil
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Iterator, Mapping

import gradio as gr
import numpy as np

from emigm.core.fields import FieldError
from emigm.core.fileio import write_bytes
from emigm.sample.trace import trace_dict

from . import controls, memory, render, stepper
from . import inpaint as ip
from .engine import LAB_MAPS, Engine
from .errors import message, user_errors
from .plots import steps_label
from .shared import NO_RUN, class_index, model_view, session_of
from .trajectory import Trajectory

OUTPUTS = ("status", "player", "timing", "run_json", "state")
INPAINT_OUTPUTS = OUTPUTS + ("views",)
# the inpainting controls beside the run's (app/inpaint.py)
INPAINT_FIELDS = ("ip_source", "ip_class", "ip_index", "ip_upload", "ip_mask", "ip_ring", "ip_seeds")
DISPLAY_SCALE_PX = 224
LIVE_EVERY_S = 0.12  # at most one live frame per this many seconds: each costs a message and a redraw



class ExportDir:
    """Files handed to the download buttons, in one temp folder removed at exit. Every request's file
    goes into a folder of its own (nothing is shared by name across sessions or requests: two clients
    exporting the same model, class, seed and steps at once each get their own files, never the
    other's and never one half-written), written atomically; the oldest folders are deleted beyond
    `keep`."""

    def __init__(self, keep: int = 60) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="emigm-explorer-"))
        atexit.register(shutil.rmtree, self.root, True)
        self._folders: deque[Path] = deque()
        self._lock = threading.Lock()
        self.keep = keep

    def write(self, name: str, data: bytes) -> str:
        folder = Path(tempfile.mkdtemp(dir=self.root, prefix="dl-"))  # unique: one per request
        path = write_bytes(folder / re.sub(r"[^A-Za-z0-9._-]+", "-", name), data)
        with self._lock:
            self._folders.append(folder)
            while len(self._folders) > self.keep:
                shutil.rmtree(self._folders.popleft(), ignore_errors=True)
        return str(path)


def run_summary(traj: Trajectory) -> dict[str, Any]:
    """The run as JSON: emigm.sample.trace's settings and per-step records plus labels, timings and the when map."""
    frames = traj.frames
    N = traj.num_steps
    doc = trace_dict(traj.states, traj.model, {
        "random_init": traj.random_init,
        "class_names": traj.label_names(),
        "grid": traj.grid,
        "num_steps": N,
        "steps_done": len(frames),
        "complete": traj.complete,
        "stopped": traj.stopped,
        "nfe": f"{N} x {traj.last.passes / N:.3g}" if traj.complete else None,
        "branched_from_step": traj.branched_from or None,
        "first_frame_s": round(traj.first_frame_s, 4),
        "wall_s": round(traj.wall_s, 4),
        "when": traj.when_map()[0].tolist(),
    })
    for rec, f in zip(doc["steps"], frames):
        rec["label"] = steps_label(rec["step"], N)
        rec["num_revealed"] = [len(r) for r in rec["revealed"]]
        rec["masked_after"] = f.state.mask_after.sum(1).tolist()
        rec["ms"] = round(1000 * (f.sample_s + f.decode_s), 2)
    return doc


def timing_markdown(traj: Trajectory) -> str:
    new = traj.frames[traj.branched_from:]
    sample_ms = 1000 * sum(f.sample_s for f in new) / max(len(new), 1)
    decode_ms = 1000 * sum(f.decode_s for f in new) / max(len(new), 1)
    last = traj.last
    N = traj.num_steps
    nfe = f"{last.passes} ({N} x {last.passes / N:.3g})" if traj.complete else f"{last.passes} so far"
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

    def view(self, model: str) -> controls.ModelView:
        """What the controls may offer for `model`: capabilities, and warnings measured in Results."""
        return model_view(self.engine, model)

    def _check(self, values: Mapping[str, Any]) -> dict[str, str]:
        """{control: message} for every value a Run would refuse (the library's messages), shown by the
        page next to each control as the values change; {} when a Run would start."""
        try:
            model = self.engine.check_name(values["model"])
            view = self.view(model)
        except ValueError as e:
            return {"model": message(e)}
        notes = controls.problems(values, view, controls.STEP_CONTROLS)
        try:
            controls.app_value("seed", values["seed"])
        except ValueError as e:
            notes["seed"] = message(e)
        try:
            class_index(self.engine.class_names(model), values["class_name"])
        except ValueError as e:
            notes["class_name"] = message(e)
        try:
            ip.reveal_priority(values.get("order"), values.get(controls.REVEAL_ORDER), view.num_tokens)
        except ValueError as e:
            notes[controls.REVEAL_ORDER] = message(e)
        return notes

    check = controls.keyword_handler(controls.RUN_FIELDS, _check, lead=("self",))

    def randomise_seed(self) -> int:
        return random.SystemRandom().randrange(0, controls.DICE_MAX_SEED + 1)

    # ------------------------------------------------------------------ runs

    def _stream(self, runs: Iterator[Trajectory], warnings: list[str] = ()):
        """Per step: the status and the player with the newest frame; at the end every view."""
        run = stepper.new_run_id()
        warn = (" · ⚠ " + "; ".join(warnings)) if warnings else ""
        traj, last = None, 0.0
        for traj in runs:
            s = traj.last
            if traj.stopped:
                break
            if s.done:  # the views follow at once (a run may also end with steps that reveal nothing)
                continue
            now = time.perf_counter()
            if len(traj.frames) > traj.branched_from + 1 and now - last < LIVE_EVERY_S:
                continue
            last = now
            status = stepper.status("running", f"**Sampling… {steps_label(s.step + 1, s.num_steps)}** · NFE so far "
                                               f"{s.passes} · {traj.wall_s:.1f} s{warn}", run)
            # the state follows every step, so Stop still has what was sampled so far
            yield (status, stepper.unmask_payload(traj, run, live=True), f"sampling… {steps_label(s.step + 1, s.num_steps)}",
                   None, traj)
        if traj is None:
            raise ValueError("the sampler produced no steps")
        yield self.views(traj, run, warn)
        memory.release()

    def views(self, traj: Trajectory | None, run: str | None = None, warn: str = ""):
        """Every output of a run from its trajectory (see OUTPUTS)."""
        if traj is None or not traj.frames:
            raise ValueError(NO_RUN)
        run = run or stepper.new_run_id()
        s = traj.last
        done = len(traj.frames)
        about = f" · {traj.model} · class {traj.label_names()[0]} · seed {int(s.seeds[0])} · NFE {s.passes}{warn}"
        if traj.complete:
            status = stepper.status("done", f"**{steps_label(done, s.num_steps)}**{about}", run)
        else:
            status = stepper.status("stopped", f"**Stopped at {steps_label(done, s.num_steps)}** (scrub the "
                                               f"{done} sampled steps, or branch to finish){about}", run)
        cost = stepper.step_costs(traj, self.engine.load(traj.model)) if self.engine.is_oracle(traj.model) else None
        return (status, stepper.unmask_payload(traj, run, cost=cost), timing_markdown(traj), run_summary(traj),
                traj)

    def _run(self, values: Mapping[str, Any], request: gr.Request | None = None):
        """Sample one image, streaming the player after every step."""
        model = self.engine.check_name(values["model"])
        sampler, guidance = controls.configs(values)
        if not self.engine.is_loaded(model):  # the first run of a model loads it: say so, it may take a while
            yield (stepper.status("running", f"**Loading {model}…**"),) + (gr.skip(),) * (len(OUTPUTS) - 1)
        label = class_index(self.engine.class_names(model), values["class_name"])
        seed = controls.app_value("seed", values["seed"])
        session = session_of(request)
        warnings = controls.setting_warnings(self.view(model), sampler, guidance)
        fixed = ip.reveal_priority(sampler.order, values.get(controls.REVEAL_ORDER), self.view(model).num_tokens)
        stop = self.engine.stops.begin(session)
        try:
            yield from self._stream(self.engine.stream(model, [label], [seed], sampler, guidance, stop=stop,
                                                        anatomy=LAB_MAPS, fixed_order=_tuple(fixed)), warnings)
        finally:
            self.engine.stops.end(session, stop)

    def _branch(self, trajectory: Trajectory | None, values: Mapping[str, Any], request: gr.Request | None = None):
        """Re-run from the state after `branch_step` of the current run with the given settings."""
        if trajectory is None:
            raise ValueError(NO_RUN)
        k = controls.app_value("branch_step", values.pop("branch_step"))
        sampler, guidance = controls.configs(values)
        session = session_of(request)
        warnings = controls.setting_warnings(self.view(trajectory.model), sampler, guidance)
        stop = self.engine.stops.begin(session)
        try:
            yield from self._stream(self.engine.branch(trajectory, k, sampler, guidance, stop=stop, anatomy=LAB_MAPS),
                                    warnings)
        finally:
            self.engine.stops.end(session, stop)

    run = user_errors(controls.keyword_handler(controls.RUN_FIELDS, _run, lead=("self",), request=True),
                      on_error=stepper.keep_views(len(OUTPUTS)))
    branch = user_errors(controls.keyword_handler(("branch_step",) + controls.STEP_CONTROLS, _branch,
                                                  lead=("self", "trajectory"), request=True), on_error=stepper.keep_views(len(OUTPUTS)))

    # ------------------------------------------------------------------ inpainting

    def _picture(self, values: Mapping[str, Any]):
        """The picture the inpainting controls name, on the paint grid (with the painted tokens kept), the
        class it shows (a test image's) and the conversion notes."""
        model = self.engine.check_name(values["model"])
        gen = self.engine.load(model)
        names = self.engine.class_names(model)
        cls = class_index(names, values["ip_class"])
        pic = ip.picture(gen, values["ip_source"], cls, values["ip_index"], values["ip_upload"])
        painted, order = _painted(values.get("ip_mask"), gen.model.num_tokens), []
        klass = names[pic.label] if pic.label is not None else values.get("class_name") or names[0]
        notes = (f"{pic.what}: " + "; ".join(pic.notes)) if pic.notes else f"{pic.what}, as the model sees it"
        yield (stepper.status("", f"**{notes}** · paint the tokens to regenerate, then **Inpaint**"),
               ip.paint_payload(pic, gen.cfg.tokenizer.grid, painted, order), gr.update(value=klass))

    picture = user_errors(controls.keyword_handler(("model", "class_name") + INPAINT_FIELDS, _picture, lead=("self",)),
                          on_error=stepper.keep_views(3))

    @staticmethod
    def preset(name: str) -> str:
        """The mask control's value for a preset (the paint grid follows it)."""
        if name not in ip.PRESETS:
            raise gr.Error(f"unknown preset {name!r}; valid: {', '.join(ip.PRESETS)}", print_exception=False)
        return ip.PRESETS[name]

    def _inpaint(self, values: Mapping[str, Any], request: gr.Request | None = None):
        """Regenerate the painted tokens of the picture for every seed, streaming the player (seed 1's run)
        and, at the end, the views original | reconstruction | masked | a result per seed."""
        model = self.engine.check_name(values["model"])
        sampler, guidance = controls.configs(values)
        if not self.engine.is_loaded(model):
            yield (stepper.status("running", f"**Loading {model}…**"),) + (gr.skip(),) * (len(INPAINT_OUTPUTS) - 1)
        gen = self.engine.load(model)
        names = self.engine.class_names(model)
        pic = ip.picture(gen, values["ip_source"], class_index(names, values["ip_class"]), values["ip_index"],
                         values["ip_upload"])
        mask = ip.mask_of(values["ip_mask"], controls.as_int("ip_ring", values["ip_ring"]), gen.model.num_tokens)
        n = controls.as_int("ip_seeds", values["ip_seeds"])
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= ip.MAX_SEEDS:
            raise FieldError("ip_seeds", f"seeds must be a whole number in [1, {ip.MAX_SEEDS}], got {n!r}")
        seed = controls.app_value("seed", values["seed"])
        seeds = [seed + i for i in range(n)]
        label = class_index(names, values["class_name"])
        st = ip.start(gen, pic, mask, label, seeds, sampler, guidance)
        sampler = st.state.sampler
        fixed = ip.reveal_priority(sampler.order, values.get(controls.REVEAL_ORDER), gen.model.num_tokens)
        warnings = controls.setting_warnings(self.view(model), sampler, guidance)
        if st.num_steps < controls.as_int("num_steps", values["num_steps"]):
            warnings = [*warnings, f"{st.num_steps} steps: the mask paints {st.num_steps} tokens"]
        session = session_of(request)
        stop = self.engine.stops.begin(session)
        try:
            runs = self.engine.stream(model, [label] * n, seeds, sampler, guidance, stop=stop, anatomy=LAB_MAPS,
                                      fixed_order=_tuple(fixed), start=st.state)
            for out in self._stream(runs, warnings):
                traj = out[-1]
                results = list(traj.frames[-1].draft) if traj is not None and traj.complete else None
                yield (*out, ip.views_payload(st, results, seeds, gen.cfg.tokenizer.grid))
        finally:
            self.engine.stops.end(session, stop)

    inpaint = user_errors(controls.keyword_handler(controls.RUN_FIELDS + INPAINT_FIELDS, _inpaint, lead=("self",),
                                                   request=True), on_error=stepper.keep_views(len(INPAINT_OUTPUTS)))

    def stop(self, request: gr.Request) -> None:
        """Ask this session's run to end after the step in progress (it then shows what was sampled)."""
        self.engine.stops.stop(session_of(request))

    @user_errors
    def stopped(self, trajectory: Trajectory | None):
        """Views of whatever was sampled (after a Stop, or to redraw the session's run)."""
        return self.views(trajectory)

    # ------------------------------------------------------------------ tokens

    @user_errors
    def pick_token(self, trajectory: Trajectory | None, evt: gr.SelectData):
        """A click on the canvas (the page sends the token's row and column) -> (row, col)."""
        if trajectory is None:
            raise ValueError(NO_RUN)
        r, c = evt.index
        return self._coord("row", r, trajectory.grid), self._coord("col", c, trajectory.grid)

    @user_errors
    def token_history(self, trajectory: Trajectory | None, row: float, col: float):
        """A token's draft at each step until it was committed, as JSON."""
        if trajectory is None:
            raise ValueError(NO_RUN)
        g = trajectory.grid
        r, c = self._coord("row", row, g), self._coord("col", col, g)
        i = r * g + c
        when = int(trajectory.when_map()[0, r, c])
        steps = []
        for f in trajectory.frames:
            s = f.state
            if not bool(s.mask_before[0, i]):
                break
            steps.append({"step": s.step + 1, "committed": bool(s.revealed[0, i]),
                          "value": np.round(s.draft[0, i].float().numpy(), 4).reshape(-1).tolist()})
        return {"token": [r, c], "index": i, "grid": g, "num_steps": trajectory.num_steps,
                "revealed_at_step": when or None, "history": steps}

    @staticmethod
    def _coord(name: str, value: Any, grid: int) -> int:
        return controls.app_value(name, value, high=grid - 1)

    # ------------------------------------------------------------------ exports

    @user_errors
    def export(self, trajectory: Trajectory | None):
        """GIF of the unmasking, PNG strip (mask row over image row) and the JSON trace."""
        if trajectory is None:
            raise ValueError(NO_RUN)
        s = trajectory.last
        name = re.sub(r"[^A-Za-z0-9]+", "-", trajectory.label_names()[0]).strip("-").lower()
        stem = f"{trajectory.model.split('/')[-1]}-{name}-seed{int(s.seeds[0])}-{len(trajectory.frames)}of{s.num_steps}"
        scale = max(1, round(DISPLAY_SCALE_PX / trajectory.image_size))
        gif = self.exports.write(stem + ".gif", render.gif_bytes(trajectory, scale))
        png = self.exports.write(stem + "-strip.png", render.png_bytes(render.strip(trajectory)))
        trace = self.exports.write(stem + "-trace.json", json.dumps(run_summary(trajectory), indent=1).encode())
        return gif, png, trace


def _tuple(priority) -> tuple[float, ...] | None:
    return None if priority is None else tuple(float(x) for x in priority.tolist())


def _painted(spec: Any, num_tokens: int) -> list[int]:
    """The tokens a mask control's value paints ([] when it does not parse: the run says why)."""
    try:
        return ip.mask_of(spec, 0, num_tokens).nonzero().flatten().tolist()
    except ValueError:
        return []
