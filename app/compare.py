"""Handlers of the Compare guidance tab: one seed and one reveal rule, several guidance settings.

The panels depend on the model (`panel_specs`):
- a categorical (MaskGIT-style) model: no guidance, CFG, CFG in an interval, self-guidance, both;
- a diffusion-head (eMIGM) model: no guidance, CFG with the fake class (its `-fakecfg` twin), CFG with
  the mask, CFG in an interval, and self-guidance when the model has a module.
A panel the model cannot run shows why (emigm.sample.capabilities' reason, or the missing partner). With the
random order, where tokens are revealed comes from the sampler's "where" stream alone, so every panel
reveals the same positions at the same steps and differences come from guidance.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from emigm.core.config import to_dict
from emigm.core.guidance import GuidanceConfig
from emigm.sample.capabilities import unavailable

from . import controls, memory, plots, stepper
from .engine import Engine, Trajectory
from .errors import user_errors
from .unmask import class_index

PANEL_TITLES = {"none": "no guidance", "cfg": "CFG", "fake": "CFG, fake class", "mask": "CFG, mask",
                "interval": "CFG in an interval", "self": "self-guidance", "both": "CFG + self-guidance"}
PANEL_KEYS = tuple(PANEL_TITLES)
STATUS_EVERY_S = 0.25  # progress messages at most this often
NO_COMPARISON = "Run the comparison first: there are no panels in this session yet."
OUTPUTS = ("status", "player", "doc", "state", "diff", "diff_doc")
# controls of this tab: the model's sampler fields but the order (random or confidence only) and guidance scales
FIELDS = ("num_steps", "schedule", "count_rule", "order", "temperature", "head_solver", "head_steps",
          "cfg_scale", "cfg_interval", "cfg_schedule", "sg_scale", "sg_interval")
CONTROLS = ("model", "class_name", "seed", "num_seeds") + controls.control_names(FIELDS) + ("panel_a", "panel_b")


def compare_view(view: controls.ModelView) -> controls.ModelView:
    """The Compare tab offers the random and confidence reveal rules only."""
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

    def titled(self) -> str:
        if self.traj is None:
            return self.title
        return f"{self.title} · NFE {self.traj.last.passes}"


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


def token_diff(a: Trajectory, b: Trajectory, k: int) -> np.ndarray:
    """(B, g, g) mean |A - B| per token of the decoded drafts after frame k, committed tokens only
    (pixel units; still-masked tokens count 0)."""
    fa, fb = a.frames[k], b.frames[k]
    B, H, W, C = fa.draft.shape
    g = a.grid
    d = np.abs(fa.draft.astype(np.float32) - fb.draft.astype(np.float32))
    d = d.reshape(B, g, H // g, g, W // g, C).mean(axis=(2, 4, 5))
    both = (~fa.state.mask_after & ~fb.state.mask_after).numpy().reshape(B, g, g)
    return np.where(both, d, 0.0)


def divergence(a: Trajectory, b: Trajectory, tol: float = 1e-6) -> tuple[list[float], int | None]:
    """Mean |A - B| over tokens committed in both, per step, and the first (1-based) step at which
    their committed tokens differ (None: identical at every step)."""
    per_step, diverge = [], None
    for k, (fa, fb) in enumerate(zip(a.frames, b.frames)):
        both = (~fa.state.mask_after & ~fb.state.mask_after).numpy().reshape(-1, a.grid, a.grid)
        d = token_diff(a, b, k)
        per_step.append(float(d[both].mean()) if both.any() else 0.0)
        ta, tb = fa.state.tokens.float(), fb.state.tokens.float()
        if diverge is None and (ta - tb).abs().max().item() > tol:
            diverge = k + 1
    return per_step, diverge


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


def summary(cmp: Comparison, seeds: list[int], class_name: str, order: str) -> dict[str, Any]:
    live = [p for p in cmp.panels if p.traj is not None]
    reveal = [[f.state.revealed.numpy() for f in p.traj.frames] for p in live]
    same = all(all(np.array_equal(x, y) for x, y in zip(reveal[0], r)) for r in reveal[1:])
    return {
        "seeds": seeds, "class_name": class_name, "num_steps": cmp.num_steps, "order": order,
        "same_reveal_order": same,
        "panels": [{
            "key": p.key, "title": p.title, "model": p.model, "available": p.traj is not None, "note": p.note,
            "guidance": to_dict(p.guidance) if p.guidance else None,
            "nfe": p.traj.last.passes if p.traj else None,
            "wall_s": round(p.traj.wall_s, 4) if p.traj else None,
            "revealed": [[row.nonzero().flatten().tolist() for row in f.state.revealed] for f in p.traj.frames]
            if p.traj else None,
        } for p in cmp.panels],
    }


class Compare:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _compare(self, values: Mapping[str, Any]):
        """Run every available panel (streaming progress), then the player, summary and difference."""
        base = self.engine.check_name(values["model"])
        panel_a, panel_b = check_panel_name(values["panel_a"]), check_panel_name(values["panel_b"])
        gen = self.engine.load(base)
        view = compare_view(controls.ModelView(gen.model, gen.smoother))
        order = values["order"]
        if order in view.reasons.get("order", {}):
            raise ValueError(f"order {order!r} is not available: {view.reasons['order'][order]}")
        fixed = {f: controls.SPECS[f][0] for f in ("head_solver", "head_steps") if f in view.unused}
        # fields this tab has no control for run at their defaults
        sampler, guidance = controls.configs({**controls.DEFAULTS, **values, "cfg_mode": "", "order_temperature": 4.5,
                                              "order_anneal": "linear"}, **fixed)
        label = class_index(self.engine.class_names(base), values["class_name"])
        n = controls.app_value("num_seeds", values["num_seeds"])
        seeds = [controls.app_value("seed", values["seed"]) + i for i in range(n)]
        specs = panel_specs(self.engine, base, guidance)
        # every input is checked before the first panel runs
        for p in specs:
            if p.model is not None:
                g = self.engine.load(p.model)
                reasons = unavailable(g.model, g.smoother, sampler, p.guidance)
                if reasons:
                    raise ValueError(reasons[0])
        todo = [p for p in specs if p.model is not None]
        done: list[Panel] = []
        run = stepper.new_run_id()
        last = 0.0
        for p in specs:
            if p.model is None:
                done.append(p)
                continue
            traj = None
            for traj in self.engine.stream(p.model, [label] * n, seeds, sampler, p.guidance):
                s = traj.last
                if time.perf_counter() - last < STATUS_EVERY_S:
                    continue
                last = time.perf_counter()
                msg = (f"**Panel {todo.index(p) + 1} of {len(todo)} ({p.title}): "
                       f"{plots.steps_label(s.step + 1, s.num_steps)}**")
                # every output gets a value: gr.skip() would make Gradio build (and keep) a component each time
                yield stepper.status("running", msg, run), None, None, None, None, None
            done.append(Panel(p.key, p.title, p.model, p.guidance, p.note, traj))
        cmp = Comparison(tuple(done), sampler.num_steps)
        player = stepper.compare_payload([(p.titled(), p.traj, p.note) for p in cmp.panels], run)
        doc = summary(cmp, seeds, values["class_name"], order)
        try:
            diff_fig, diff_doc = self._diff(cmp, panel_a, panel_b)
        except ValueError as e:  # e.g. an unavailable panel picked for the difference
            diff_fig, diff_doc = None, {"error": str(e)}
        nfe = ", ".join(f"{p.title} {p.traj.last.passes}" for p in cmp.panels if p.traj)
        status = stepper.status("done", f"**{len(todo)} panels**, seeds {seeds[0]}..{seeds[-1]}; NFE: {nfe}", run)
        yield status, player, doc, cmp, diff_fig, diff_doc
        memory.release()

    compare = user_errors(controls.keyword_handler(CONTROLS, _compare, lead=("self",)), on_error=stepper.keep_views(len(OUTPUTS)))

    def _diff(self, comparison: Comparison, panel_a: str, panel_b: str):
        a, b = comparison.panel(panel_a), comparison.panel(panel_b)
        per_step, diverge = divergence(a.traj, b.traj)
        last = len(a.traj.frames) - 1
        tokens = token_diff(a.traj, b.traj, last)[0]
        fig = plots.diff_figure(tokens, per_step, diverge, a.title, b.title, comparison.num_steps)
        doc = {"a": a.key, "b": b.key, "diverge_step": diverge, "num_steps": comparison.num_steps,
               "mean_abs_diff_per_step": [round(x, 4) for x in per_step],
               "token_diff_last_step": np.round(tokens, 3).tolist()}
        return fig, doc

    @user_errors
    def diff(self, comparison: Comparison | None, panel_a: str, panel_b: str):
        """Difference map of two panels (keys or titles) and the step where they diverge."""
        check_panel_name(panel_a), check_panel_name(panel_b)
        if comparison is None:
            raise ValueError(NO_COMPARISON)
        return self._diff(comparison, panel_a, panel_b)
