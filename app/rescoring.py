"""Re-scoring an opened step in the explorer, below the tabs: the step at another temperature, CFG scale,
self-guidance scale, order, Gumbel temperature or adaptive threshold tau / entropy bound gamma, recomputed from the branch outputs the opened step kept
(emigm.sample.rescore: the head alone, no transformer pass), drawn as the new draft beside the run's, the
tokens it would reveal, how much each token's draft changed and, for a categorical head, the probability
of each drafted code. What needs a new run is said, next to the control that asked for it."""
from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np
import torch

from emigm.core.fields import FieldError
from emigm.io.imaging import to_uint8
from emigm.sample.rescore import needs_new_run, rescore
from emigm.sample.state import StepState

from .inpaint import data_url

# the re-score controls: control name -> (config, field)
CONTROLS = {"rs_temperature": ("sampler", "temperature"), "rs_cfg_scale": ("guidance", "cfg_scale"),
            "rs_sg_scale": ("guidance", "sg_scale"), "rs_order": ("sampler", "order"),
            "rs_order_temperature": ("sampler", "order_temperature"),
            "rs_threshold_tau": ("sampler", "threshold_tau"), "rs_eb_gamma": ("sampler", "eb_gamma")}
NEW_RUN = ("Re-scoring redraws this step only. Whenever it commits other tokens than the run did, every later "
           "step would see other visible tokens: that needs a new run (Branch from a step, with these settings).")


def controls_of(state: StepState) -> dict[str, Any]:
    """The re-score controls' values for a step: the settings it ran with."""
    out = {}
    for name, (which, field) in CONTROLS.items():
        out[name] = getattr(state.sampler if which == "sampler" else state.guidance, field)
    return out


def configs(state: StepState, values: dict[str, Any]):
    """(sampler, guidance) of the step with the re-score controls' values, each refused next to its control."""
    changes: dict[str, dict[str, Any]] = {"sampler": {}, "guidance": {}}
    for name, (which, field) in CONTROLS.items():
        if name in values and values[name] is not None:
            changes[which][field] = values[name]
    try:
        sampler = dataclasses.replace(state.sampler, **changes["sampler"])
        guidance = dataclasses.replace(state.guidance, **changes["guidance"])
    except FieldError as e:
        raise FieldError("rs_" + e.field, str(e)) from None
    return sampler, guidance


def _heat(values: np.ndarray, grid: int, top: float) -> np.ndarray:
    """A (grid, grid) map in [0, top] as an (grid, grid, 3) uint8 image, white (0) to vermillion (top)."""
    f = np.clip(values.reshape(grid, grid) / (top or 1.0), 0.0, 1.0)[..., None]
    low, high = np.array([255, 255, 255]), np.array([213, 94, 0])
    return (low + f * (high - low)).round().astype(np.uint8)


def payload(gen, state: StepState, values: dict[str, Any], b: int = 0) -> dict[str, Any]:
    """The re-scored step as tiles (the run's draft, the new draft with the tokens it reveals, the draft
    change, the chosen code's probability) and a text; settings that need a new run raise a FieldError."""
    sampler, guidance = configs(state, values)
    reasons = needs_new_run(state, sampler, guidance, gen.model.head.discrete)
    if reasons:
        field = next((n for n, (_, f) in CONTROLS.items() if reasons[0].startswith(f) or f in reasons[0]),
                     "rs_cfg_scale")
        raise FieldError(field, "; ".join(reasons))
    t0 = time.perf_counter()
    r = rescore(gen, state, sampler, guidance)
    ms_score = (time.perf_counter() - t0) * 1000
    grid = gen.cfg.tokenizer.grid
    with torch.inference_mode():
        drafts = to_uint8(gen.tokenizer.decode(torch.stack([state.draft[b], r.draft[b]]).to(gen.device)))
    ms = (time.perf_counter() - t0) * 1000
    change = r.draft_change[b].float().numpy()
    discrete = gen.model.head.discrete
    top = 1.0 if discrete else max(float(change.max()), 1e-6)
    tiles = [{"title": f"the run's draft, step {state.step + 1}", "src": data_url(drafts[0])},
             {"title": "re-scored draft", "src": data_url(drafts[1])},
             {"title": "draft change per token" + (" (code changed)" if discrete else " (mean |change|)"),
              "src": data_url(_heat(change, grid, top))}]
    if r.chosen_p is not None:
        chosen = _heat(r.chosen_p[b].numpy(), grid, 1.0)
        tiles.append({"title": "probability of each drafted code", "src": data_url(chosen)})
    same = torch.equal(r.revealed[b], state.revealed[b])
    text = (f"Re-scored in {ms_score:.0f} ms (+ {ms - ms_score:.0f} ms decoding the two drafts), no transformer pass. "
            f"Reveals {int(r.revealed[b].sum())} tokens: " + ("the same positions as the run" if same else
                                                               "other positions than the run") +
            f"; {int((change > 0).sum())} of {int(state.mask_before[b].sum())} drafted tokens changed. ")
    text += (NEW_RUN if r.later_changed else "It commits the same tokens as the run: the later steps would not change.")
    revealed = r.revealed[b].nonzero().flatten().tolist()
    return {"tiles": tiles, "text": text, "revealed": revealed, "later_changed": r.later_changed, "ms": round(ms, 1),
            "grid": grid}
