"""Handlers of the lab views under the Unmasking player: open a step (what each guidance branch
predicted, where guidance acted, why these tokens, how sure the model was, and, for a diffusion head,
one token's denoising path) and intervene and resume (erase or fix tokens after a step, continue
with the same seed streams, the two trajectories side by side with the step where they part).

Both work on the session's trajectory and never re-sample it: an opened step is the step re-run from
the state before it (Engine.open_step, the library's branching), which gives the run's own step; an
intervention resumes from an edited copy of the state after the step (Engine.resume). Payloads are
drawn by static/explorer.js (emigmAnatomy, and the step player for the two trajectories); hovering
and selecting tokens happen in the page.
"""
from __future__ import annotations

import math
import re
import weakref
from dataclasses import replace
from typing import Any

import gradio as gr
import numpy as np
import torch

from emigm.core.fields import NAME, FieldError, parse_float
from emigm.io.imaging import to_uint8
from emigm.nn.diffusion import dpm_orders
from emigm.sample.anatomy import BRANCHES
from emigm.sample.orders import ORDERS, fixed_priority, grid_shape
from emigm.sample.state import StepState

from . import controls, memory, stepper
from . import rescoring as rs
from .axes import SOLVER_TITLES
from .engine import Engine
from .errors import user_errors
from .payload import AnatomyPayload, Branch, Count, TokenMaps, TokenPath, to_json
from .shared import NO_RUN, divergence
from .trajectory import Trajectory

ANATOMY_OUTPUTS = ("status", "anatomy", "anatomy_json")
INTERVENE_OUTPUTS = ("status", "player", "intervention_json")
RESCORE_OUTPUTS = ("status", "rescored")
ACTIONS = {"erase": "re-mask the chosen tokens (any head)",
           "fix": "commit the chosen tokens to a code (categorical heads)"}
# the titles of the library's guidance branches (emigm.sample.anatomy.BRANCHES), in its order
BRANCH_TITLES = dict(zip(BRANCHES, ("conditional", "null branch (CFG)", "smoothed (self-guidance)",
                                    "combined = the run's draft")))


def _whole(name: str, value: Any, low: int, high: int, what: str) -> int:
    """An integer input in [low, high] (a whole float accepted), else a one-line FieldError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            (isinstance(value, float) and not math.isfinite(value)):
        raise FieldError(name, f"{NAME} must be a finite whole number, got {value!r}")
    if isinstance(value, float):
        if not value.is_integer():
            raise FieldError(name, f"{NAME} must be a whole number, got {value!r}")
        value = int(value)
    if not low <= value <= high:
        raise FieldError(name, f"{NAME} {value} is outside {what}: it must be in [{low}, {high}]")
    return value


def parse_tokens(text: Any, grid: int) -> list[int]:
    """Token positions from "r:c" pairs or row-major indices, separated by commas or spaces ("" = none)."""
    if text is None:
        return []
    if not isinstance(text, str):
        raise FieldError("tokens", f"{NAME} must be text such as '2:3, 10', got {text!r}")
    out = []
    for item in (x for x in re.split(r"[,\s;]+", text.strip()) if x):
        parts = item.split(":")
        try:
            nums = [parse_float(x) for x in parts]  # ASCII only, as the CLI: float() reads '８' and '1_0'
        except ValueError:
            raise FieldError("tokens", f"{NAME}: {item!r} is not a token (write row:col or an index)") from None
        if len(nums) == 2:
            r = _whole("tokens", nums[0], 0, grid - 1, f"the {grid}x{grid} token grid (row)")
            c = _whole("tokens", nums[1], 0, grid - 1, f"the {grid}x{grid} token grid (column)")
            out.append(r * grid + c)
        elif len(nums) == 1:
            out.append(_whole("tokens", nums[0], 0, grid * grid - 1, f"the {grid * grid} tokens of this run"))
        else:
            raise FieldError("tokens", f"{NAME}: {item!r} is not a token (write row:col or an index)")
    return sorted(set(out))


def _device(gen) -> torch.device:
    return next(gen.model.parameters()).device


def _map(t: torch.Tensor, digits: int = 4) -> list:
    """(L,) floats -> a list with NaN / inf as None (JSON)."""
    a = t.float().numpy().astype(np.float64)
    return [None if not math.isfinite(x) else round(x, digits) for x in a.tolist()]


def guidance_delta(state: StepState, discrete: bool) -> torch.Tensor:
    """(L,) where guidance changed the prediction of sample 0: the total-variation distance between the
    combined and the conditional distributions (categorical), or the mean |combined - conditional|
    over the token's channels (continuous); 0 at tokens committed before the step."""
    a = state.anatomy
    mask = state.mask_before[0]
    if discrete:
        p, q = (torch.softmax(a.raw[n][0].float(), -1) for n in ("combined", "conditional"))
        d = 0.5 * (p - q).abs().sum(-1)
    else:
        d = (a.branches["combined"][0].float() - a.branches["conditional"][0].float()).abs().mean(-1)
    return torch.where(mask, d, torch.zeros_like(d))


def anatomy_payload(traj: Trajectory, step: int, state: StepState, gen, run: str,
                    path: TokenPath | None = None) -> dict[str, Any]:
    """The opened step for the page (static/explorer.js emigmAnatomy) and for gradio_client."""
    a, s = state.anatomy, state.sampler
    discrete = gen.model.head.discrete
    names = [n for n in BRANCH_TITLES if n in a.branches]
    with torch.inference_mode():
        images = to_uint8(gen.tokenizer.decode(torch.cat([a.branches[n][:1] for n in names]).to(_device(gen))))
    L, g = traj.grid ** 2, traj.grid
    halton = None
    if s.order == "halton":  # the order's own priority of every token (the other orders have none)
        try:
            halton = fixed_priority("halton", L, None, "cpu").long().tolist()
            grid_shape(L)
        except ValueError:
            halton = None
    masked = int(state.mask_before[0].sum())
    p, expected, drawn = float(a.reveal_p[0]), float(a.expected[0]), int(a.drawn[0])
    guides = []
    if state.cfg_active:
        guides.append(f"CFG ×{float(state.cfg_scale[0]):.3g}")
    if state.sg_active:
        guides.append(f"self-guidance {state.sg_scale:g}")
    tokens = TokenMaps(masked=state.mask_before[0].int().tolist(), after=state.mask_after[0].int().tolist(),
                       revealed=state.revealed[0].int().tolist(), score=_map(a.score[0]), noise=_map(a.noise[0]),
                       rank=a.rank[0].tolist(), halton=halton, unc=_map(a.uncertainty[0]),
                       delta=_map(guidance_delta(state, discrete)))
    return to_json(AnatomyPayload(
        run=run, step=step, N=state.num_steps, grid=g, px=traj.image_size, view=stepper.view_px(traj.image_size),
        L=L, model=traj.model, discrete=discrete, sprite=stepper.sprite([list(images)]),
        branches=[Branch(n, BRANCH_TITLES[n]) for n in names],
        headline=f"{masked} masked × {p:.3g} → expected {expected:.3g}, drew {drawn}",
        order=s.order, order_kind=ORDERS[s.order].kind, order_fixed=ORDERS[s.order].fixed,
        count_rule=s.count_rule, guidance=" + ".join(guides) or "none",
        weights={k: round(float(v[0]), 4) for k, v in a.weights.items()},
        count=Count(masked=masked, p=p, expected=expected, drawn=drawn, remask_sigma=a.remask_sigma,
                    remasked=int(a.remasked_count[0])),
        tokens=tokens, unc_label="entropy (nats)" if discrete else "spread of 4 head draws",
        delta_label="total variation |p_combined - p_conditional| / 2" if discrete else
        "mean |combined - conditional| over channels", path=path))


def path_payload(state: StepState, gen, token: tuple[int, int], grid: int) -> TokenPath:
    """One token's denoising path at this step: its channels after each solver step and the image
    decoded with the token at each (the rest of the draft as the step left it)."""
    r, c = token
    pos = r * grid + c
    path = state.anatomy.path
    if path is None:
        return TokenPath(token=[r, c], note=f"token ({r}, {c}) was committed before step {state.step + 1}: it is not "
                                            "denoised at this step (pick a token that was masked, grey on the canvas)")
    draft = state.draft[:1].repeat(path.shape[0], 1, 1).clone()
    draft[:, pos] = path.to(draft.dtype)
    with torch.inference_mode():
        images = to_uint8(gen.tokenizer.decode(draft.to(_device(gen))))
    s = state.sampler
    full = bool(state.revealed[0, pos]) or s.draft_steps == 0
    solver, calls = (s.head_solver, s.head_steps) if full else ("dpm", s.draft_steps)
    solver_text, captions = solver_points(solver, calls)
    return TokenPath(token=[r, c], values=np.round(path.float().numpy(), 4).tolist(), solver=solver_text,
                     captions=captions, revealed=bool(state.revealed[0, pos]), sprite=stepper.sprite([list(images)]),
                     note="")


def solver_points(solver: str, calls: int) -> tuple[str, list[str]]:
    """What a diffusion solver's path shows: its name with the model calls and the points it passes
    (DPM-Solver++ takes intervals of up to 3 calls, emigm.nn.diffusion.dpm_orders; the others one call
    a step), and a caption per point: the starting noise, then the calls made so far."""
    per_point = dpm_orders(calls) if solver == "dpm" else [1] * calls
    done = np.cumsum(per_point).tolist()
    captions = ["noise"] + [f"after {n} call{'s' if n > 1 else ''}" for n in done]
    what = "interval" if solver == "dpm" else "step"
    many = len(per_point)
    text = f"{SOLVER_TITLES.get(solver, solver)}: {calls} model calls in {many} {what}{'s' if many != 1 else ''}"
    if solver == "dpm":
        text += f" (orders {', '.join(map(str, per_point))})"
    return text, captions


def _committed(state: StepState, positions: list[int], k: int) -> tuple[list[int], list[int]]:
    """The chosen tokens committed after step k (erasing them re-masks them) and those still masked (erasing
    them would change nothing); a choice of masked tokens only is refused next to the tokens box."""
    masked = state.mask_after[0]
    committed = [p for p in positions if not bool(masked[p])]
    still = [p for p in positions if bool(masked[p])]
    if still and not committed:
        raise FieldError("tokens", f"{NAME}: the chosen tokens are still masked after step {k} (grey): erasing them "
                                   "changes nothing; choose committed tokens")
    return committed, still


def _edit_text(action: str, positions: list[int], value: int | None, ignored: list[int], k: int) -> str:
    what = ("nothing erased" if action == "erase" and not positions else
            f"{'erased' if action == 'erase' else f'fixed to code {value}'}: {len(positions)} token(s)")
    if ignored:
        what += f"; {len(ignored)} chosen tokens were still masked after step {k} (nothing to erase there)"
    return what


class Lab:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # the last opened step of each trajectory (by id, dropped with it): what re-scoring starts from
        self._opened: dict[int, tuple[int, StepState]] = {}

    # ------------------------------------------------------------------ open a step

    def _open(self, trajectory: Trajectory | None, step: Any, row: Any = None, col: Any = None):
        """Open step `step` (1-based) of the session's run; with (row, col), also that token's denoising path
        (a diffusion head). Outputs: ANATOMY_OUTPUTS."""
        if trajectory is None:
            raise ValueError(NO_RUN)
        n = len(trajectory.frames)
        k = _whole("step", step, 1, n, f"this run's {n} steps")
        token = None
        if row is not None or col is not None:
            g = trajectory.grid
            token = (_whole("row", row, 0, g - 1, f"the {g}x{g} token grid"),
                     _whole("col", col, 0, g - 1, f"the {g}x{g} token grid"))
            if self.engine.load(trajectory.model).model.head.discrete:
                raise FieldError("step", "a categorical head has no denoising path: it samples a code from its "
                                         "logits in one go (open a diffusion-head model's step for a path)")
        pos = (0, token[0] * trajectory.grid + token[1]) if token else None
        state, gen = self.engine.open_step(trajectory, k, pos)
        self._remember(trajectory, k, state)
        run = stepper.new_run_id()
        path = path_payload(state, gen, token, trajectory.grid) if token is not None else None
        payload = anatomy_payload(trajectory, k, state, gen, run, path)
        doc = {key: v for key, v in payload.items() if key != "sprite"}
        if doc["path"]:
            doc["path"] = {key: v for key, v in doc["path"].items() if key != "sprite"}
        text = (f"**Step {k} of {state.num_steps} opened** · {payload['headline']} · order {payload['order']} · "
                f"guidance {payload['guidance']}")
        if token is not None:
            text += f" · token ({token[0]}, {token[1]}): " + (payload["path"]["note"] or "its denoising path below")
        yield stepper.status("done", text, run), payload, doc

    anatomy = user_errors(_open, on_error=stepper.keep_views(len(ANATOMY_OUTPUTS)))

    def _open_token(self, trajectory: Trajectory | None, step: Any, evt: gr.SelectData):
        """A click on a token of the opened step (the page sends its row and column): its denoising path."""
        r, c = evt.index
        yield from self._open(trajectory, step, r, c)

    anatomy_token = user_errors(_open_token, on_error=stepper.keep_views(len(ANATOMY_OUTPUTS)))

    # ------------------------------------------------------------------ re-score the opened step

    def _remember(self, trajectory: Trajectory, k: int, state: StepState) -> None:
        key = id(trajectory)
        if key not in self._opened:
            weakref.finalize(trajectory, self._opened.pop, key, None)
        self._opened[key] = (k, state)

    def _rescore(self, trajectory: Trajectory | None, values: dict[str, Any]):
        """The opened step re-scored at the re-score controls' values, from the branch outputs it kept (no
        transformer pass). Outputs: RESCORE_OUTPUTS."""
        if trajectory is None:
            raise ValueError(NO_RUN)
        if id(trajectory) not in self._opened:
            raise FieldError("rs_temperature", "open a step first (Open the step shown in the player): re-scoring "
                                               "starts from the branch outputs of an opened step")
        k, state = self._opened[id(trajectory)]
        gen = self.engine.load(trajectory.model)
        payload = rs.payload(gen, state, values)
        run = stepper.new_run_id()
        yield stepper.status("", f"**Step {k} re-scored** · " + payload.pop("text"), run), payload

    rescore = user_errors(controls.keyword_handler(tuple(rs.CONTROLS), _rescore, lead=("self", "trajectory")),
                          on_error=stepper.keep_views(len(RESCORE_OUTPUTS)))

    def rescore_controls(self, trajectory: Trajectory | None) -> tuple:
        """The re-score controls set to the opened step's own settings (after a step is opened)."""
        opened = self._opened.get(id(trajectory)) if trajectory is not None else None
        if opened is None:
            return tuple(gr.skip() for _ in rs.CONTROLS)
        return tuple(rs.controls_of(opened[1]).values())

    # ------------------------------------------------------------------ intervene and resume

    def _intervene(self, trajectory: Trajectory | None, step: Any, tokens: Any, action: Any, code: Any):
        """Edit the state after step `step` (erase `tokens`, or fix them to `code`) and resume with the run's
        configs and seed streams. Outputs: INTERVENE_OUTPUTS."""
        if trajectory is None:
            raise ValueError(NO_RUN)
        n = len(trajectory.frames)
        last = n - 1 if trajectory.complete else n
        if last < 1:
            raise FieldError("step", f"{NAME}: this run has no step after which to resume")
        k = _whole("step", step, 1, last, "the steps after which this run can resume")
        positions = parse_tokens(tokens, trajectory.grid)
        if action not in ACTIONS:
            raise FieldError("action", f"unknown {NAME} {action!r}; valid: {', '.join(ACTIONS)}")
        gen = self.engine.load(trajectory.model)
        state = trajectory.frames[k - 1].state
        mask, values = state.mask_after.clone(), state.tokens.clone()
        value, ignored = None, []
        if action == "fix":
            if not gen.model.head.discrete:
                raise FieldError("action", f"{NAME} 'fix' needs a categorical head (a code to fix a token to); "
                                           "a diffusion head's tokens are continuous: erase them instead")
            K = gen.model.head.codebook_size
            value = _whole("code", code, 0, K - 1, f"the codebook of {K} codes")
            if not positions:
                raise FieldError("tokens", f"{NAME}: choose the tokens to fix (click them on the opened step, "
                                           "or write row:col)")
            mask[0, positions] = False
            values[0, positions] = value
        else:
            positions, ignored = _committed(state, positions, k)
            mask[0, positions] = True
            values[0, positions] = 0
        if not bool(mask.any()):
            raise FieldError("tokens", f"{NAME}: nothing would be left masked, so there is nothing to resume")
        edited = replace(state, mask_after=mask, tokens=values)
        resumed = None
        for resumed in self.engine.resume(trajectory, k, edited):
            pass
        resumed = replace(resumed, edited=True)
        d = divergence(trajectory, resumed)
        same = len(trajectory.frames) == len(resumed.frames) and all(
            np.array_equal(fa.state.tokens.numpy(), fb.state.tokens.numpy())
            for fa, fb in zip(trajectory.frames, resumed.frames))
        what = _edit_text(action, positions, value, ignored, k)
        where = ("identical at every step" if same and d.step is None else
                 f"identical through step {d.step - 1}, differ from step {d.step}" if d.step else
                 "the committed tokens never differ (the drafts may)")
        run = stepper.new_run_id()
        player = stepper.compare_payload([("original", trajectory, ""), (f"intervened after step {k}", resumed, "")],
                                         run)
        doc = {"step": k, "action": action, "tokens": positions, "ignored": ignored, "code": value, "identical": same,
               "diverge_step": d.step, "image_diverge_step": d.image_step,
               "tokens_differ_per_step": [round(x, 4) for x in d.tokens], "headline": where,
               "wall_s": round(resumed.wall_s, 4)}
        status = stepper.status("done", f"**Resumed after step {k}** ({what}) · {where} · "
                                        f"{resumed.wall_s:.2f} s for the {len(resumed.frames) - k} resumed steps", run)
        memory.release()
        yield status, player, doc

    intervene = user_errors(_intervene, on_error=stepper.keep_views(len(INTERVENE_OUTPUTS)))
