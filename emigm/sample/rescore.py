"""Re-score an opened step without re-running the network.

A step opened with `AnatomyOptions(rescore=True)` keeps what the network answered for each guidance
branch (StepAnatomy.z: the conditional, null and smoothed outputs the head read). From those, `rescore`
recomputes the step at other settings with the head alone (the sampler's own `choose`, so at the run's
settings it is the step, bit for bit): the guided distribution and its probabilities (categorical head),
which tokens the step reveals and with what values, and the change of the draft.

What can be re-scored (RESCORABLE): the token temperature, the CFG scale and its schedule, the self-
guidance scale, the order (any order the head allows: a categorical head's scores are recomputed, an
adaptive order's count with them, the priority orders' keys come from their streams), its Gumbel
temperature and annealing, and the adaptive orders' tau and gamma. A guide can be turned off, or its
scale changed, but not turned on at a step where it did not run (its branch was never computed).
Everything else (steps, schedule, count rule, remasking, the head's solver, the CFG mode or interval, the
class, the seed) changes the step's inputs or the plan: that needs a new run (`needs_new_run` says why).
And whenever re-scoring changes the tokens the step commits, every later step sees other visible tokens:
the rest of the run needs a new run (`Rescored.later_changed`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from emigm.core.guidance import GuidanceConfig, Term
from emigm.sample.options import SamplerConfig
from emigm.sample.orders import get_order, ranks, smallest
from emigm.sample.passes import HeadOptions, as_networks, head_pass
from emigm.sample.sampler import choose
from emigm.sample.state import StepState

Tensor = torch.Tensor

RESCORABLE = {"sampler": ("temperature", "order", "order_temperature", "order_anneal", "threshold_tau", "eb_gamma"),
              "guidance": ("cfg_scale", "cfg_schedule", "sg_scale")}
BRANCH_OF = {"null": "null", "smoothed": "smoothed"}


@dataclass(frozen=True)
class Rescored:
    """Step `step` at other settings. revealed (B, L); tokens: the committed tokens after the step;
    draft: committed tokens plus the prediction at every token masked before the step; draft_change
    (B, L): 1 where the draft's code changed (categorical), the mean absolute change of its value
    (continuous); probs (B, L, K): the tempered guided distribution of each masked token (categorical,
    one-hot at temperature 0; zero elsewhere), chosen_p (B, L): the probability of its drafted code, or
    None for a diffusion head; score / noise (B, L): a score order's score and Gumbel noise, else None;
    rank (B, L): the token's place in the selection (0 first), -1 where not masked; later_changed: the
    committed tokens differ from the run's, so every later step needs a new run."""

    step: int
    sampler: SamplerConfig
    guidance: GuidanceConfig
    revealed: Tensor
    tokens: Tensor
    draft: Tensor
    draft_change: Tensor
    probs: Tensor | None
    chosen_p: Tensor | None
    score: Tensor | None
    noise: Tensor | None
    rank: Tensor
    later_changed: bool


def _changed(old, new, names) -> list[str]:
    return [f.name for f in dataclasses.fields(old) if getattr(old, f.name) != getattr(new, f.name)
            and f.name not in names]


def needs_new_run(state: StepState, sampler: SamplerConfig, guidance: GuidanceConfig, discrete: bool) -> list[str]:
    """Why the step cannot be re-scored at these settings (empty: it can). One line per reason."""
    out = [f"{n} changes the step's inputs or plan: a new run"
           for n in _changed(state.sampler, sampler, RESCORABLE["sampler"])]
    out += [f"{n} changes the step's inputs or which steps guide: a new run"
            for n in _changed(state.guidance, guidance, RESCORABLE["guidance"])]
    if get_order(sampler.order).needs is not None and not discrete:
        out.append(f"the {sampler.order} order needs a categorical head's probabilities")
    have = set(state.anatomy.z or {}) if state.anatomy is not None else set()
    for g in guidance.guides_at(state.s):
        if BRANCH_OF[g.reference] not in have:
            out.append(f"{g.name} did not run at step {state.step + 1} (its {BRANCH_OF[g.reference]} branch was never "
                       "computed): a new run")
    return out


def _per_row(w, B: int, device) -> Tensor:
    return w.expand(B) if isinstance(w, Tensor) else torch.full((B,), float(w), device=device)


@torch.inference_mode()
def rescore(net, state: StepState, sampler: SamplerConfig | None = None, guidance: GuidanceConfig | None = None,
            fixed_order: Tensor | None = None) -> Rescored:
    """Step `state` (opened with AnatomyOptions(rescore=True)) re-scored at `sampler` / `guidance` (default:
    the run's), with the head of `net` (a Pipeline, Networks or MaskedGenerator) and no network pass.
    fixed_order: the priority of order "fixed" (as sample_steps; default: the run's own when the order is
    unchanged, else raster). Settings that need a new run raise a ValueError naming each."""
    a = state.anatomy
    if a is None or a.z is None:
        raise ValueError("this step was not opened for re-scoring: open it with AnatomyOptions(rescore=True)")
    if state.draft is None:
        raise ValueError("re-scoring needs the step's draft (a run with drafts)")
    sampler = state.sampler if sampler is None else sampler
    guidance = state.guidance if guidance is None else guidance
    head = as_networks(net).model.head
    reasons = needs_new_run(state, sampler, guidance, head.discrete)
    if reasons:
        raise ValueError("; ".join(reasons))
    device = a.z["conditional"].device
    mask, count, k = state.mask_before.to(device), a.drawn.to(device), state.step
    seeds = state.seeds.to(device)
    B, L = mask.shape
    draft = state.draft.to(device)
    before = torch.where(mask if head.discrete else mask.unsqueeze(-1), torch.zeros_like(draft), draft)

    guides = guidance.guides_at(state.s)
    frac = 1.0 - (mask.sum(1) - count).float() / L
    terms = tuple(Term(g.name, a.z[BRANCH_OF[g.reference]], _per_row(g.weight(guidance, frac), B, device))
                  for g in guides)
    order, keys = get_order(sampler.order), None
    if order.fixed and sampler.order == state.sampler.order and fixed_order is None:
        keys = torch.where(mask, -a.score.to(device), float("inf"))  # the run's own priority
    elif order.kind == "priority":  # a fixed order's priority, or the per-step keys from the "where" stream
        keys = order.priority(seeds, -1 if order.fixed else k, L, fixed_order).expand(B, L)
    full = HeadOptions(sampler.temperature, sampler.head_solver, sampler.head_steps, order.score)
    draft_opts = full if sampler.draft_steps == 0 or head.discrete else \
        HeadOptions(sampler.temperature, "dpm", sampler.draft_steps, order.score)
    reveal_rows = int((smallest(torch.where(mask, keys, float("inf")), count) & mask).sum()) if keys is not None else 0

    def head_fn(z, row_terms, noise, opts):
        return head_pass(head, z, row_terms, noise, opts)

    what = choose(head, head_fn, lambda n, cap: n, seeds, k, before, mask, count, keys, a.z["conditional"], terms,
                  sampler, full, draft_opts, True, reveal_rows, int(mask.sum()))
    revealed = what.revealed
    sel = revealed if head.discrete else revealed.unsqueeze(-1)
    tokens = torch.where(sel, what.pred, before)
    remasked = state.remasked.to(device)
    tokens = torch.where(remasked if head.discrete else remasked.unsqueeze(-1), torch.zeros_like(tokens), tokens)
    if head.discrete:
        change = (what.pred != draft).float()
    else:
        change = (what.pred - draft).abs().float().mean(-1)
    probs = chosen = None
    if head.discrete:
        rows, cols = mask.nonzero(as_tuple=True)
        row_terms = [Term(t.name, t.z[rows, cols], t.weight[rows]) for t in terms]
        logits = head.guided_logits(a.z["conditional"][rows, cols], row_terms)
        p = (torch.softmax(logits / sampler.temperature, -1) if sampler.temperature > 0
             else torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float())
        probs = torch.zeros(B, L, p.shape[-1], device=device).index_put((rows, cols), p)
        picked = p.gather(1, what.pred[rows, cols, None])[:, 0]
        chosen = torch.zeros(B, L, device=device).index_put((rows, cols), picked)
    order_keys = torch.where(mask, what.keys, float("inf"))
    rank = torch.where(mask, ranks(order_keys), torch.full_like(count[:, None], -1))
    return Rescored(k, sampler, guidance, revealed, tokens, what.pred, change, probs, chosen, what.score, what.noise,
                    rank, not torch.equal(tokens, state.tokens.to(device)))
