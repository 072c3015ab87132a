"""Handlers of the Compare tab: one seed (or 1-4 per panel), panels along one axis (guidance, schedule,
steps, order, head, remasking, temperature; app/axes.py), one step player for all of them.

The guidance panels depend on the model (`panel_specs`):
- a categorical (MaskGIT-style) model: no guidance, CFG, CFG in an interval, self-guidance, both;
- a diffusion-head (eMIGM) model: no guidance, CFG with the fake class (its `-fakecfg` twin), CFG with
  the mask, CFG in an interval, and self-guidance when the model has a module.
A panel the model cannot run shows why (emigm.sample.capabilities' reason, or the missing partner). With the
random order, where tokens are revealed comes from the sampler's "where" stream alone, so every panel
reveals the same positions at the same steps and differences come from guidance. Under each panel
whose setting was measured (assets/results/claims.json) its FD is shown with its error bar.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any, Mapping

import numpy as np
from gradio.components.plot import PlotData

from emigm.core.config import to_dict
from emigm.core.fields import FieldError
from emigm.core.guidance import GuidanceConfig
from emigm.core.seeds import check_seed
from emigm.sample.capabilities import refusals
from emigm.sample.options import SamplerConfig

from . import axes, controls, memory, plots, stepper
from .claims import measured_fd, weights_of
from .engine import Engine
from .errors import message, user_errors
from .shared import class_index, divergence, token_diff
from .trajectory import Trajectory

PANEL_TITLES = {"none": "no guidance", "cfg": "CFG", "fake": "CFG, fake class", "mask": "CFG, mask",
                "interval": "CFG in an interval", "self": "self-guidance", "both": "CFG + self-guidance"}
PANEL_KEYS = tuple(PANEL_TITLES)
LIVE_EVERY_S = 0.12  # at most one live frame of every panel per this many seconds
# ... and of the difference figure: the page redraws a plotly figure in 50-300 ms, and would fall behind
DIFF_EVERY_S = 0.5
NO_COMPARISON = "Run the comparison first: there are no panels in this session yet."
OUTPUTS = ("status", "player", "doc", "state", "diff", "diff_doc")
# controls of this tab: the sampler fields it varies or holds (every order but "fixed") and the guidance scales
FIELDS = ("num_steps", "schedule", "count_rule", "order", "temperature", "head_solver", "head_steps",
          "cfg_scale", "cfg_interval", "cfg_schedule", "sg_scale", "sg_interval")
CONTROLS = (("model", "class_name", "seed", "num_seeds", "axis") + controls.control_names(FIELDS)
            + ("panel_a", "panel_b"))


def compare_view(view: controls.ModelView) -> controls.ModelView:
    """The Compare tab offers every reveal order but the given permutation ("fixed")."""
    return view.refusing("order", {"fixed": "the comparison reveals by the random or the confidence rule "
                                            "(a fixed raster order would hide what guidance changes)"})



@dataclass(frozen=True)
class Panel:
    key: str
    title: str
    model: str | None
    guidance: GuidanceConfig | None
    note: str  # why a panel is unavailable, or what it runs
    traj: Trajectory | None = None
    sampler: SamplerConfig | None = None  # the panel's own sampler (an axis panel); None: the tab's
    weights: dict[str, Any] | None = None  # the fingerprint of its model's files (emigm.io.fingerprint)

    def titled(self) -> str:
        if self.traj is None:
            return self.title
        so_far = "" if self.traj.complete else " so far"
        ms = 1000 * sum(f.sample_s + f.decode_s for f in self.traj.frames)
        last, per_seed = self.traj.last, ""
        if last.image_steps is not None and len(set(last.image_steps.tolist())) > 1:  # an adaptive order's
            per_seed = (f" (per seed: {', '.join(map(str, last.image_steps.tolist()))} steps, "
                        f"NFE {', '.join(map(str, last.image_passes.tolist()))})")
        return f"{self.title} · NFE {self.traj.last.passes}{so_far}{per_seed} · {ms:.0f} ms"

    def measured(self, sampler: SamplerConfig) -> dict[str, Any] | None:
        return measured_fd(self.model, replace(self.sampler or sampler, draft=False), self.guidance, self.weights)


def panel_specs(engine: Engine, base: str, g: GuidanceConfig) -> list[Panel]:
    """The panels for model `base` with the CFG scale / interval / schedule and the self-guidance
    scale / interval of `g`. Panels the model (or a partner) cannot run carry the reason."""
    gen = engine.load(base)
    w, interval, sched = g.cfg_scale, g.cfg_interval, g.cfg_schedule
    s = g.sg_scale
    sg = gen.smoother is not None and s > 0
    full = (0.0, 1.0)
    lo, hi = interval
    no_sg = "unavailable: self-guidance needs a self-guidance smoother; this model has none"
    out = [Panel("none", PANEL_TITLES["none"], base, GuidanceConfig(), "no guidance: 1 pass per step")]

    def add(key: str, model: str | None, guidance: GuidanceConfig | None, note: str, missing: str = "") -> None:
        if key in ("self", "both"):  # the panels that need the model's self-guidance smoother
            if gen.smoother is None:
                model, missing = None, no_sg
            elif s <= 0:
                model, missing = None, "unavailable: set sg_scale above 0"
        out.append(Panel(key, PANEL_TITLES[key], model, guidance if model else None, note if model else missing))

    if gen.model.head.discrete:
        add("cfg", base, GuidanceConfig(w, "", full, sched), f"CFG ×{w:g} at every step")
        add("interval", base, GuidanceConfig(w, "", interval, sched), f"CFG ×{w:g} at s in ({lo:g}, {hi:g}]")
        add("self", base, sg and GuidanceConfig(sg_scale=s, sg_interval=g.sg_interval), f"self-guidance s = {s:g}")
        add("both", base, sg and GuidanceConfig(w, "", interval, sched, s, g.sg_interval),
            f"CFG ×{w:g} in ({lo:g}, {hi:g}] + self-guidance {s:g}")
        return out
    for key, mode in (("fake", "fake"), ("mask", "mask")):
        partner = engine.partner(base, mode)
        add(key, partner, GuidanceConfig(w, mode, full, sched), f"{partner}, CFG ×{w:g} at every step",
            missing=f"unavailable: no offered model like {base} was trained with null mode '{mode}'")
    mask = engine.partner(base, "mask")
    model = mask or base
    add("interval", model, GuidanceConfig(w, "", interval, sched), f"{model}, CFG ×{w:g} at s in ({lo:g}, {hi:g}]")
    add("self", base, sg and GuidanceConfig(sg_scale=s, sg_interval=g.sg_interval), f"self-guidance s = {s:g}")
    return out


@dataclass(frozen=True)
class Comparison:
    panels: tuple[Panel, ...]
    num_steps: int

    def panel(self, key_or_title: str) -> Panel:
        p = self.find(key_or_title)
        if p.traj is None:
            raise ValueError(f"panel {p.title!r} has no run: {p.note}")
        return p

    def find(self, key_or_title: str) -> Panel:
        for p in self.panels:
            if key_or_title in (p.key, p.title):
                return p
        raise ValueError(f"unknown panel {key_or_title!r}; valid: {', '.join(p.key for p in self.panels)}")


def check_panel_name(name: Any) -> str:
    if name not in PANEL_KEYS and name not in PANEL_TITLES.values():
        raise ValueError(f"unknown panel {name!r}; valid: {', '.join(PANEL_KEYS)}")
    return name


def summary(cmp: Comparison, seeds: list[int], class_name: str, order: str, axis: str = "guidance",
            sampler: SamplerConfig | None = None) -> dict[str, Any]:
    live = [p for p in cmp.panels if p.traj is not None]
    reveal = [[f.state.revealed.numpy() for f in p.traj.frames] for p in live]
    same = all(len(r) == len(reveal[0]) and all(np.array_equal(x, y) for x, y in zip(reveal[0], r))
               for r in reveal[1:])
    return {
        "seeds": seeds, "class_name": class_name, "num_steps": cmp.num_steps, "order": order, "axis": axis,
        "same_reveal_order": same,
        "panels": [{
            "key": p.key, "title": p.title, "model": p.model, "available": p.traj is not None, "note": p.note,
            "guidance": to_dict(p.guidance) if p.guidance else None,
            "sampler": to_dict(p.sampler) if p.sampler else None,
            "num_steps": p.traj.num_steps if p.traj else None,
            "measured": p.measured(sampler) if sampler is not None else None,
            "nfe": p.traj.last.passes if p.traj else None,
            "wall_s": round(sum(f.sample_s + f.decode_s for f in p.traj.frames), 4) if p.traj else None,
            "revealed": [[row.nonzero().flatten().tolist() for row in f.state.revealed] for f in p.traj.frames]
            if p.traj else None,
        } for p in cmp.panels],
    }


class Compare:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def defaults(self, model: str, values: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The controls of this tab for a newly chosen `model`: the settings it runs with unless told
        otherwise (engine.suggested), and self-guidance at s = 1 where it has a smoother (its panels
        need s > 0; 1 is the scale measured best, see Results)."""
        out = {**controls.DEFAULTS, **(values or {}), **self.engine.suggested(model)}
        try:
            has_sg = self.engine.load(model).smoother is not None
        except ValueError:
            has_sg = False
        if has_sg and not out.get("sg_scale"):
            out["sg_scale"] = 1.0
        return out

    def _check(self, values: Mapping[str, Any]) -> dict[str, str]:
        """{control: message} for every value Compare would refuse, shown next to each control."""
        try:
            model = self.engine.check_name(values["model"])
            gen = self.engine.load(model)
        except ValueError as e:
            return {"model": message(e)}
        view = compare_view(controls.ModelView(gen.model, gen.smoother))
        full = {**controls.DEFAULTS, **values, "cfg_mode": ""}
        names = [n for n in CONTROLS if n in controls.STEP_CONTROLS]
        notes = {k: v for k, v in controls.problems(full, view, controls.STEP_CONTROLS).items() if k in names}
        for name in ("seed", "num_seeds"):
            try:
                controls.app_value(name, values[name])
            except ValueError as e:
                notes[name] = message(e)
        if not notes.get("seed") and not notes.get("num_seeds"):
            try:  # the last of the seeds seed .. seed + num_seeds - 1 within range, said of the typed seed
                check_seed("seed", controls.app_value("seed", values["seed"]),
                           controls.app_value("num_seeds", values["num_seeds"]))
            except ValueError as e:
                notes["seed"] = message(e)
        try:
            axes.check_axis(values["axis"], gen.model)
        except ValueError as e:
            notes["axis"] = message(e)
        for name in ("panel_a", "panel_b"):
            try:
                check_panel_name(values[name])
            except ValueError as e:
                notes[name] = message(e)
        return notes

    check = controls.keyword_handler(CONTROLS, _check, lead=("self",))

    def _plan(self, values: Mapping[str, Any]):
        """The panels of a comparison, every input checked before the first panel runs: (panels, the
        tab's sampler and guidance, class label, seeds, axis)."""
        base = self.engine.check_name(values["model"])
        gen = self.engine.load(base)
        view = compare_view(controls.ModelView(gen.model, gen.smoother))
        order = values["order"]
        if order in view.reasons.get("order", {}):
            raise FieldError("order", f"{{name}} {order!r} is not available: {view.reasons['order'][order]}")
        fixed = {f: controls.SPECS[f][0] for f in ("head_solver", "head_steps") if f in view.unused}
        # fields this tab has no control for (an option added later included) keep their defaults
        sampler, guidance = controls.configs({**controls.DEFAULTS, **values, "cfg_mode": "", "order_temperature": 4.5,
                                              "order_anneal": "linear"}, **fixed)
        label = class_index(self.engine.class_names(base), values["class_name"])
        n = controls.app_value("num_seeds", values["num_seeds"])
        first = controls.app_value("seed", values["seed"])
        check_seed("seed", first, n)  # names the seed as typed and the count, not a seed nobody typed
        seeds = [first + i for i in range(n)]
        axis = axes.check_axis(values["axis"], gen.model)
        if axis == "guidance":
            specs = panel_specs(self.engine, base, guidance)
        elif axis == "model":  # the same seed and settings on the oracle and on the learned model
            other = axes.MODEL_PAIRS.get(base)
            if other not in self.engine.names:
                raise FieldError("axis", f"{{name}} 'model' needs one of {', '.join(axes.MODEL_PAIRS)} with its "
                                         f"partner offered; {base!r} has none here")
            specs = [Panel(f"model={m}", m, m, guidance, f"model {m}", sampler=sampler) for m in (base, other)]
        else:  # the tab's setting with one choice varied; a value the model cannot run says why
            specs = [Panel(key, title, base if s else None, guidance if s else None, note, sampler=s)
                     for key, title, s, note in axes.axis_settings(axis, gen.model, gen.smoother, sampler, guidance)]
        # a measured FD is shown only for the files it was measured on
        specs = [replace(p, weights=weights_of(self.engine.load(p.model))) if p.model else p for p in specs]
        for p in specs:
            if p.model is not None:
                g = self.engine.load(p.model)
                reasons = refusals(g.model, g.smoother, p.sampler or sampler, p.guidance)
                if reasons:
                    raise reasons[0]
        return specs, sampler, label, seeds, axis

    def _compare(self, values: Mapping[str, Any]):
        """Run every available panel, streaming: the panels advance together one step at a time, so each
        appears with its first frame after one round and fills in step by step, with the difference
        view beside them; at the end every view is complete and scrubbable."""
        panel_a, panel_b = check_panel_name(values["panel_a"]), check_panel_name(values["panel_b"])
        specs, sampler, label, seeds, axis = self._plan(values)
        n, order = len(seeds), values["order"]
        todo = [p for p in specs if p.model is not None]
        run = stepper.new_run_id()
        streams = {p.key: self.engine.stream(p.model, [label] * n, seeds, p.sampler or sampler, p.guidance)
                   for p in todo}
        num_steps = max((p.sampler or sampler).num_steps for p in todo)
        context = dict(seeds=seeds, class_name=values["class_name"], order=order, axis=axis, sampler=sampler)
        trajs: dict[str, Trajectory] = {}
        last, fig = 0.0, [None, None, 0.0]  # the difference figure, its last live snapshot, when taken
        while streams:
            for key, it in list(streams.items()):  # one step of every panel
                traj = next(it, None)
                if traj is None:
                    del streams[key]
                else:
                    trajs[key] = traj
            if not streams or all(t.complete for t in trajs.values()):
                continue  # the complete views follow
            if time.perf_counter() - last < LIVE_EVERY_S:
                continue
            last = time.perf_counter()
            cmp = self._assemble(specs, trajs, num_steps)
            k = min(len(t.frames) for t in trajs.values())
            msg = f"**Comparing {len(todo)} panels… {plots.steps_label(k, num_steps)}**"
            yield self._outputs(cmp, run, context, panel_a, panel_b, stepper.status("running", msg, run),
                                live=True, fig=fig)
        cmp = self._assemble(specs, trajs, num_steps)
        nfe = ", ".join(f"{p.title} {p.traj.last.passes}" for p in cmp.panels if p.traj)
        status = stepper.status("done", f"**{len(todo)} panels** along {axis}, seeds {seeds[0]}..{seeds[-1]}; "
                                        f"NFE: {nfe}", run)
        yield self._outputs(cmp, run, context, panel_a, panel_b, status, fig=fig)
        memory.release()

    compare = user_errors(controls.keyword_handler(CONTROLS, _compare, lead=("self",)),
                          on_error=stepper.keep_views(len(OUTPUTS)))

    @staticmethod
    def _assemble(specs: list[Panel], trajs: Mapping[str, Trajectory], num_steps: int) -> Comparison:
        return Comparison(tuple(replace(p, traj=trajs.get(p.key)) for p in specs), num_steps)

    def _outputs(self, cmp: Comparison, run: str, context: dict[str, Any], panel_a: str, panel_b: str,
                 status: dict, live: bool = False, fig: list | None = None) -> tuple:
        """OUTPUTS of a comparison so far: every output gets a value (a gr.skip() would make Gradio
        build, and keep, a component each time). fig: [the comparison's difference figure, its last live
        snapshot, when taken]: the figure is built at the first frame and updated in place after; a live
        output carries a snapshot of it, renewed every DIFF_EVERY_S."""
        sampler = context["sampler"]
        extras = [{"key": p.key, "measured": p.measured(sampler)} for p in cmp.panels]
        player = stepper.compare_payload([(p.titled(), p.traj, p.note) for p in cmp.panels], run, live=live,
                                         extras=extras)
        keys = {p.key for p in cmp.panels} | {p.title for p in cmp.panels}
        if panel_a not in keys or panel_b not in keys:  # an axis' panels: the first two that ran
            ran = [p.key for p in cmp.panels if p.traj is not None] * 2
            panel_a, panel_b = ran[0], ran[1]
        fig = fig if fig is not None else [None, None, 0.0]
        now = time.perf_counter()
        if live and fig[1] is not None and now - fig[2] < DIFF_EVERY_S:
            diff_fig, diff_doc = fig[1]  # the same snapshot: the page does not redraw it
        else:
            try:
                fig[0], diff_doc = self._diff(cmp, panel_a, panel_b, fig[0])
                diff_fig = PlotData(type="plotly", plot=fig[0].to_json()) if live else fig[0]
            except ValueError as e:  # e.g. an unavailable panel picked for the difference
                diff_fig, diff_doc = None, {"error": str(e)}
            fig[1], fig[2] = (diff_fig, diff_doc), now
        # the panels' JSON (every reveal of every panel) comes with the complete comparison only
        doc = None if live else summary(cmp, **context)
        return status, player, doc, cmp, diff_fig, diff_doc

    def _diff(self, comparison: Comparison, panel_a: str, panel_b: str, fig=None):
        a, b = comparison.panel(panel_a), comparison.panel(panel_b)
        d = divergence(a.traj, b.traj)
        k = min(len(a.traj.frames), len(b.traj.frames))
        tokens = token_diff(a.traj, b.traj, k - 1)[0]
        args = (tokens, d.image, d.tokens, d.step, d.image_step, a.title, b.title, comparison.num_steps)
        fig = plots.diff_figure(*args) if fig is None else plots.update_diff_figure(fig, *args)
        doc = {"a": a.key, "b": b.key, "steps_compared": k, "num_steps": comparison.num_steps,
               "diverge_step": d.step, "image_diverge_step": d.image_step,
               "headline": plots.divergence_text(d.step, d.image_step, k, comparison.num_steps),
               "tokens_differ_per_step": [round(x, 4) for x in d.tokens],
               "mean_abs_diff_per_step": [round(x, 4) for x in d.image],
               "token_diff_last_step": np.round(tokens, 3).tolist()}
        return fig, doc

    @user_errors
    def diff(self, comparison: Comparison | None, panel_a: str, panel_b: str):
        """Difference map of two panels (keys or titles) and the step where they diverge. The names are
        checked against the comparison on the page (an axis comparison's panels are its axis values),
        or against the guidance panels when there is none yet."""
        for name in (panel_a, panel_b):
            if not isinstance(name, str):
                raise ValueError(f"a panel is named by its key or title (text), got {type(name).__name__} {name!r}")
        if comparison is None:
            check_panel_name(panel_a), check_panel_name(panel_b)
            raise ValueError(NO_COMPARISON)
        comparison.find(panel_a), comparison.find(panel_b)  # "unknown panel ...; valid: " this comparison's
        return self._diff(comparison, panel_a, panel_b)
