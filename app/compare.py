"""Handlers of the Compare guidance tab: one seed and one reveal order, several guidance settings.

Panels: no guidance, CFG with the fake class (a model trained with null_mode "fake"), CFG with the mask
token, CFG only in an interval, and self-guidance (shown unavailable while no module is shipped). The
order is "random": where tokens are revealed comes from the sampler's "where" stream alone, so every
panel reveals the same positions at the same steps and differences come from guidance.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr
import numpy as np

from emigm.sampler import GuidanceConfig
from emigm.config import to_dict

from . import controls, plots, render
from .engine import Engine, Trajectory
from .errors import user_errors
from .unmask import class_index

PANELS = (("none", "no guidance"), ("fake", "CFG, fake class"), ("mask", "CFG, mask"),
          ("interval", "CFG in an interval"), ("self", "self-guidance"))
PANEL_TITLES = {k: t for k, t in PANELS}
NO_COMPARISON = "Run the comparison first: there are no panels in this session yet."


@dataclass(frozen=True)
class Panel:
    key: str
    title: str
    model: str | None
    guidance: GuidanceConfig | None
    note: str  # why a panel is unavailable, or what it runs
    traj: Trajectory | None = None


def panel_specs(engine: Engine, base: str, cfg_scale: float, interval: tuple[float, float],
                cfg_schedule: str) -> list[Panel]:
    fake, mask = engine.partner(base, "fake"), engine.partner(base, "mask")
    own = engine.config(base).backbone.null_mode
    out = [Panel("none", PANEL_TITLES["none"], base, GuidanceConfig(), f"{base}, CFG scale 1")]
    for key, model, mode in (("fake", fake, "fake"), ("mask", mask, "mask")):
        if model is None:
            out.append(Panel(key, PANEL_TITLES[key], None, None,
                             f"unavailable: no offered model like {base} was trained with null mode '{mode}'"))
        else:
            out.append(Panel(key, PANEL_TITLES[key], model,
                             GuidanceConfig(cfg_scale, mode, (0.0, 1.0), cfg_schedule), f"{model}, every step"))
    model = mask or base
    lo, hi = interval
    out.append(Panel("interval", PANEL_TITLES["interval"], model,
                     GuidanceConfig(cfg_scale, "", interval, cfg_schedule),
                     f"{model} (null: {'mask' if mask else own}), s in ({lo:g}, {hi:g}]"))
    out.append(Panel("self", PANEL_TITLES["self"], None, None,
                     "unavailable: no self-guidance module is shipped for this model"))
    return out


def token_diff(a: Trajectory, b: Trajectory, k: int) -> np.ndarray:
    """(B, g, g) mean |A - B| per token of the decoded committed images after frame k (pixel units)."""
    fa, fb = a.frames[k], b.frames[k]
    B, H, W, C = fa.image.shape
    g = a.grid
    d = np.abs(fa.image.astype(np.float32) - fb.image.astype(np.float32))
    return d.reshape(B, g, H // g, g, W // g, C).mean(axis=(2, 4, 5))


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
        for p in self.panels:
            if key_or_title in (p.key, p.title):
                if p.traj is None:
                    raise ValueError(f"panel {p.title!r} has no run: {p.note}")
                return p
        valid = ", ".join(p.key for p in self.panels)
        raise ValueError(f"unknown panel {key_or_title!r}; valid: {valid}")


def summary(cmp: Comparison, seeds: list[int], class_name: str) -> dict[str, Any]:
    live = [p for p in cmp.panels if p.traj is not None]
    reveal = [[f.state.revealed.numpy() for f in p.traj.frames] for p in live]
    same = all(all(np.array_equal(x, y) for x, y in zip(reveal[0], r)) for r in reveal[1:])
    return {
        "seeds": seeds, "class_name": class_name, "num_steps": cmp.num_steps, "same_reveal_order": same,
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

    @user_errors
    def class_choices(self, model: str):
        names = self.engine.class_names(model)
        return gr.update(choices=names, value=names[0])

    @user_errors
    def compare(self, model: str, class_name: str, seed: float, num_seeds: float, num_steps: float, schedule: str,
                count_rule: str, temperature: float, head_solver: str, head_steps: float, cfg_scale: float,
                cfg_interval_lo: float, cfg_interval_hi: float, cfg_schedule: str, panel_a: str, panel_b: str):
        """Run every available panel (streaming progress), then the figure, summary and difference."""
        base = self.engine.check_name(model)
        sampler = controls.sampler_config(num_steps, schedule, count_rule, "random", 4.5, "linear", temperature,
                                          head_solver, head_steps)
        guidance = controls.guidance_config(cfg_scale, "", cfg_interval_lo, cfg_interval_hi, cfg_schedule)
        label = class_index(self.engine.class_names(base), class_name)
        n = controls.as_number("num_seeds", num_seeds)
        seeds = [controls.as_number("seed", seed) + i for i in range(n)]
        specs = panel_specs(self.engine, base, guidance.cfg_scale, guidance.cfg_interval, guidance.cfg_schedule)
        todo = [p for p in specs if p.model is not None]
        done: list[Panel] = []
        for i, p in enumerate(specs):
            if p.model is None:
                done.append(p)
                continue
            traj = None
            for traj in self.engine.stream(p.model, [label] * n, seeds, sampler, p.guidance):
                s = traj.last
                yield (f"**Panel {todo.index(p) + 1} of {len(todo)} ({p.title}): "
                       f"{plots.steps_label(s.step + 1, s.num_steps)}**",) + (gr.skip(),) * 5
            done.append(Panel(p.key, p.title, p.model, p.guidance, p.note, traj))
        cmp = Comparison(tuple(done), sampler.num_steps)
        target = render.TARGET_PX if n == 1 else render.TARGET_PX // 2
        scale = render.display_scale(self.engine.config(base).tokenizer.image_size, target)
        fig = plots.compare_figure([(p.title, p.traj, p.note) for p in cmp.panels], scale)
        doc = summary(cmp, seeds, class_name)
        diff_fig, diff_doc = self.diff(cmp, panel_a, panel_b)
        nfe = ", ".join(f"{p.title} {p.traj.last.passes}" for p in cmp.panels if p.traj)
        status = f"**Done:** {len(todo)} panels, seeds {seeds[0]}..{seeds[-1]}; NFE: {nfe}."
        yield status, fig, doc, cmp, diff_fig, diff_doc

    @user_errors
    def diff(self, comparison: Comparison | None, panel_a: str, panel_b: str):
        """Difference map of two panels (keys or titles) and the step where they diverge."""
        if comparison is None:
            raise gr.Error(NO_COMPARISON)
        a, b = comparison.panel(panel_a), comparison.panel(panel_b)
        per_step, diverge = divergence(a.traj, b.traj)
        last = len(a.traj.frames) - 1
        tokens = token_diff(a.traj, b.traj, last)[0]
        fig = plots.diff_figure(tokens, per_step, diverge, a.title, b.title, comparison.num_steps)
        doc = {"a": a.key, "b": b.key, "diverge_step": diverge, "num_steps": comparison.num_steps,
               "mean_abs_diff_per_step": [round(x, 4) for x in per_step],
               "token_diff_last_step": np.round(tokens, 3).tolist()}
        return fig, doc
