"""The step-by-step sampler: a generator that yields an immutable `StepState` after every step.

One loop serves MaskGIT, MAR and eMIGM (paper Sec. 2-3): a time grid t_k = linspace(1, t_end, S+1);
at step k (t = t_k -> s = t_{k+1}) some still-masked tokens are revealed:
- how many: the count rule (emigm.sample.plan: `binomial` as eMIGM, `exact` as MaskGIT / MAR), planned
  before the loop, or an adaptive order's own rule (`threshold`, `eb`) decided in the step, so that the
  steps vary per image and the loop ends when every image is done; with remasking (ReMDM) some committed
  tokens are re-masked at the same step;
- which: the order, an entry of the order registry (emigm.sample.orders.ORDERS): a priority that does
  not read token values (`random`, `checkerboard`; the fixed `halton`, `raster`, `fixed`), a score of
  the head's distribution plus annealed Gumbel noise (`confidence`, `margin`, `entropy`), or an adaptive
  order's score;
- what: the head's sample given the backbone's z, pushed by the active guides (emigm.core.guidance):
  classifier-free guidance and self-guidance, each on in its own time interval (t_lo, t_hi].

Randomness is addressed by (sample seed, stream, step, position) through emigm.core.rng: the "where"
stream decides counts and positions, the "what" stream the token values, so image k is the same at
any batch size and two guidance settings with the same seed reveal the same positions (for the
random and fixed orders).

Two loops share ONE step function (`_step`: guides, where, network, what (`choose`), commit):
`sample_steps`, the generator the explorer streams (drafts, an immutable state per step, optionally each
step's anatomy), and `sample`, the fast path (no drafts: the head samples only the tokens a step
reveals, or every masked token under a score order; bf16 autocast on CUDA; optional CUDA-graph replay,
emigm.sample.graphs). A draft samples the tokens a step reveals exactly as the fast path does (the same
call, so the same values) and previews the other masked tokens with a cheaper solver
(SamplerConfig.draft_steps). Counts are planned from the seeds before either loop, with one host sync;
every shape inside a step (the MAE encoder's length, the head's rows) follows from the plan and reaches
`_step` as a Python int, so the steps never wait for the device (an adaptive order reads its shapes from
the mask: one host sync per step).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable, Iterator

import torch

from emigm.core import rng
from emigm.core.devices import autocast, memory_guard, resolve_precision
from emigm.core.guidance import GuidanceConfig, Term
from emigm.core.schedules import time_grid
from emigm.sample.anatomy import StepFacts, open_step
from emigm.sample.capabilities import check_capabilities
from emigm.sample.graphs import replayed
from emigm.sample.options import (
    ANNEALS,
    COUNT_RULES,
    MAX_HEAD_STEPS,
    MAX_STEPS,
    ORDERS,
    REMASKS,
    AnatomyOptions,
    SamplerConfig,
    anneal,
)
from emigm.sample.orders import KEY_POS, KEY_REMASK_POS, Order, flat_select, get_order, remask_keys, smallest
from emigm.sample.passes import Conditions, HeadOptions, Networks, as_networks, head_pass, network_pass
from emigm.sample.plan import Plan, as_seeds, make_plan, plan_counts
from emigm.sample.state import StepAnatomy, StepState

Tensor = torch.Tensor
_INF = float("inf")

__all__ = ["ANNEALS", "COUNT_RULES", "MAX_HEAD_STEPS", "MAX_STEPS", "ORDERS", "REMASKS", "AnatomyOptions", "Choice",
           "GuidanceConfig", "Networks", "SamplerConfig", "StepAnatomy", "StepState", "anneal", "plan_counts",
           "sample", "sample_steps"]


@dataclass
class _Run:
    """What stays fixed for a whole run: the networks, the configs, the per-sample inputs, and the two
    pieces of network work of a step as callables (eager, or replayed as CUDA graphs).

    network(tokens, mask, num_visible, references) -> (z, reference z's); head(z, terms, noise, opts) ->
    the head's outputs; pad(size, cap): the padded size (identity unless replaying graphs); predict_all:
    whether the head predicts every masked token (drafts, or a score order) or only those revealed;
    full / draft: how the head samples revealed tokens and previews the others; anatomy: what to
    record about each step (None: nothing); order: the sampler's order (its registry entry)."""

    nets: Networks
    sampler: SamplerConfig
    guidance: GuidanceConfig
    order: Order
    seeds: Tensor
    labels: Tensor
    fixed_keys: Tensor | None
    grid: list[float]
    predict_all: bool
    network: Callable
    head: Callable
    pad: Callable[[int, int], int]
    full: HeadOptions
    draft: HeadOptions
    anatomy: AnatomyOptions | None = None
    frozen: Tensor | None = None  # (B, L) tokens given before the run that it never changes (inpainting)


@dataclass(frozen=True)
class _Carry:
    """What one step hands to the next: tokens, mask, revision counts and the cumulative costs so far;
    per image (B,) the steps it took (those that found it with a masked token) and their passes; for a
    categorical head each committed token's probability when it was committed (B, L) (0 where masked)."""

    tokens: Tensor
    mask: Tensor
    revisions: Tensor
    passes: int = 0
    head_evals: int = 0
    image_steps: Tensor | None = None
    image_passes: Tensor | None = None
    confidence: Tensor | None = None


@dataclass(frozen=True)
class _StepPlan:
    """Step k's share of the plan: counts (B,) revealed and re-masked, host ints for the shapes, and the
    planned probabilities (for the anatomy)."""

    count: Tensor
    remask_count: Tensor
    num_visible: int
    reveal_rows: int
    masked_rows: int
    max_revealed: int
    max_masked: int
    reveal_p: float
    sigma: float


def _plan_at(run: "_Run", plan: Plan, i: int, c: _Carry) -> _StepPlan | None:
    """Step i's plan: the planned counts and shapes; for an adaptive order, which decides its counts in the
    step, the shapes read from the mask (a host sync per step), and None once every image is done."""
    if run.order.kind != "adaptive":
        return _step_plan(plan, i)
    masked = c.mask.sum(1)
    n = masked.tolist()
    if not any(n):
        return None
    L = c.mask.shape[1]
    return _StepPlan((masked > 0).long(), torch.zeros_like(masked), L - min(n), 0, sum(n), 0, max(n),
                     float("nan"), 0.0)


def _step_plan(plan: Plan, i: int) -> _StepPlan:
    c = plan.counts
    return _StepPlan(c.revealed[i], c.remasked[i], plan.num_visible[i], plan.reveal_rows[i], plan.masked_rows[i],
                     plan.max_revealed[i], plan.max_masked[i], c.reveal_p[i], c.sigma[i])


@dataclass(frozen=True)
class _StepOut:
    tokens: Tensor
    mask: Tensor
    revealed: Tensor
    remasked: Tensor
    pred: Tensor
    scale: Tensor
    guides: tuple[str, ...]
    anatomy: StepAnatomy | None = None
    confidence: Tensor | None = None


def _per_row(w: Tensor | float, B: int, device) -> Tensor:
    return w.expand(B) if isinstance(w, Tensor) else torch.full((B,), float(w), device=device)


@dataclass(frozen=True)
class _Guides:
    """The guides active at a step, their weights lambda (B,) each, and the CFG scale (B,)."""

    active: tuple
    weights: tuple[Tensor, ...]
    scale: Tensor


@dataclass(frozen=True)
class _Where:
    """Where, before the network: a priority order's keys and revealed set (None for the orders that read
    the prediction), and the committed tokens re-masked."""

    keys: Tensor | None
    revealed: Tensor | None
    remasked: Tensor


@dataclass(frozen=True)
class Choice:
    """What a step chose once the network had answered: pred (the draft: committed tokens plus a
    prediction at every masked position, or at the revealed ones without drafts), revealed (B, L), the
    order's keys (lower = earlier), for the orders that read the prediction the score (B, L) and the
    Gumbel noise added (0 for an adaptive order), count (B,): the tokens revealed (an adaptive order
    decides it here), and confidence (B, L): a categorical head's probability of each sampled code (at
    the sampled positions; None for a diffusion head)."""

    pred: Tensor
    revealed: Tensor
    keys: Tensor | None
    score: Tensor | None
    noise: Tensor | None
    count: Tensor | None = None
    confidence: Tensor | None = None


def _step(run: _Run, k: int, c: _Carry, sp: _StepPlan) -> _StepOut:
    """One step, t_k -> t_{k+1}: where, the network, what, then the commit. Host values (k and the plan's
    sizes) arrive as Python ints, so nothing here waits for the device."""
    g = _guides(run, k, c.mask, sp)
    where = _where(run, k, c, sp)
    z, refs = _network(run, c, sp, where.revealed, g)
    terms = tuple(Term(x.name, r, w) for x, r, w in zip(g.active, refs, g.weights))
    what = choose(run.nets.model.head, run.head, run.pad, run.seeds, k, c.tokens, c.mask, sp.count, where.keys, z,
                  terms, run.sampler, run.full, run.draft, run.predict_all, sp.reveal_rows, sp.masked_rows)
    return _commit(run, k, c, sp, g, where, what, z, refs)


def _guides(run: _Run, k: int, mask: Tensor, sp: _StepPlan) -> _Guides:
    """The guides on at time t_{k+1} and their weights: a Python float (constant) or a (B,) tensor, never
    a host value copied to the device."""
    guidance, (B, L) = run.guidance, mask.shape
    active = guidance.guides_at(run.grid[k + 1])
    frac = 1.0 - (mask.sum(1) - sp.count).float() / L
    weights = tuple(_per_row(g.weight(guidance, frac), B, mask.device) for g in active)
    scale = 1.0 + weights[0] if active and active[0].name == "cfg" else torch.ones(B, device=mask.device)
    return _Guides(active, weights, scale)


def _where(run: _Run, k: int, c: _Carry, sp: _StepPlan) -> _Where:
    """The positions a priority order reveals (they do not depend on the prediction), and the committed
    tokens re-masked."""
    order, seeds, mask, L = run.order, run.seeds, c.mask, c.mask.shape[1]
    keys = revealed = None
    if order.kind == "priority":
        keys = run.fixed_keys if order.fixed else order.priority(seeds, k, L, None)
        revealed = smallest(torch.where(mask, keys, _INF), sp.count) & mask
    remasked = _remasked(run, k, c, sp) if run.sampler.remask != "off" else torch.zeros_like(mask)
    return _Where(keys, revealed, remasked)


def _remasked(run: _Run, k: int, c: _Carry, sp: _StepPlan) -> Tensor:
    """The committed tokens re-masked at step k: the planned count, chosen uniformly among them, or by
    ReMDM-conf with weights 1 - their probability when committed (emigm.sample.orders.remask_keys)."""
    committed = ~c.mask if run.frozen is None else ~c.mask & ~run.frozen
    keys = rng.uniform(run.seeds, rng.STREAM_WHERE, k, KEY_REMASK_POS, tail=(c.mask.shape[1],))
    if run.sampler.remask == "conf":
        keys = remask_keys(keys, c.confidence)
    return smallest(torch.where(committed, keys, _INF), sp.remask_count) & committed


def _network(run: _Run, c: _Carry, sp: _StepPlan, revealed: Tensor | None, g: _Guides) -> tuple[Tensor, tuple]:
    """z where the head reads it (the masked tokens with drafts or an order that reads the prediction, else
    the revealed ones), unless self-guidance needs every hidden state; and the guides' reference z's."""
    references = tuple(x.reference for x in g.active)
    L, select = c.mask.shape[1], None
    if "smoothed" not in references:
        everything = run.predict_all or revealed is None
        sel = c.mask if everything else revealed
        n = run.pad(sp.max_masked if everything else sp.max_revealed, L)
        select = (~sel).to(torch.int8).argsort(dim=1, stable=True)[:, :n]
    return run.network(c.tokens, c.mask, run.pad(sp.num_visible, L), references, select)


def _sample_rows(head, head_fn: Callable, pad: Callable[[int, int], int], seeds: Tensor, k: int, z: Tensor,
                 terms: tuple[Term, ...], dim: int, sel: Tensor, n: int,
                 opts: HeadOptions) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
    """The head on the n selected rows of sel (B, L) (padded rows, when graphs pad, are discarded by the
    caller); dim: a continuous token's channels."""
    rows, cols = flat_select(sel, pad(n, sel.numel()))
    if head.discrete:
        noise = lambda i: rng.uniform(seeds[rows], rng.STREAM_WHAT, k, cols, i, tail=(head.codebook_size,))  # noqa: E731
    else:
        noise = lambda i: rng.normal(seeds[rows], rng.STREAM_WHAT, k, cols, i, tail=(dim,))  # noqa: E731
    row_terms = tuple(Term(t.name, t.z[rows, cols], t.weight[rows]) for t in terms)
    return rows, cols, head_fn(z[rows, cols], row_terms, noise, opts)


def choose(head, head_fn: Callable, pad: Callable[[int, int], int], seeds: Tensor, k: int, tokens: Tensor,
           mask: Tensor, count: Tensor, keys: Tensor | None, z: Tensor, terms: tuple[Term, ...],
           sampler: SamplerConfig, full: HeadOptions, draft: HeadOptions, predict_all: bool, reveal_rows: int,
           masked_rows: int) -> Choice:
    """Step k's "what" (and, for an order that reads the prediction, "where") from the network's answer: z
    (B, L, D) of the conditional pass and each guide term's reference z with its weights (B,). keys: a
    priority order's keys (None for the others); count (B,): tokens to reveal (an adaptive order decides
    its own); reveal_rows / masked_rows: tokens revealed at this step / masked before it, over the batch
    (host ints). A priority order's revealed tokens are sampled exactly as the fast path does (the others
    previewed with the draft solver); otherwise every masked token is scored, then the best revealed. The
    sampler's step and the re-scoring of an opened step (emigm.sample.rescore) both call it."""
    order, rows_of = get_order(sampler.order), partial(_sample_rows, head, head_fn, pad, seeds, k, z, terms,
                                                       tokens.shape[-1])
    if order.kind == "priority":
        revealed = smallest(torch.where(mask, keys, _INF), count) & mask
        rows, cols, (values, *out) = rows_of(revealed, reveal_rows, full)
        pred = tokens.index_put((rows, cols), values.to(tokens.dtype))
        conf = _probabilities(mask, rows, cols, out)
        if predict_all:
            rows, cols, (values, *_) = rows_of(mask & ~revealed, masked_rows - reveal_rows, draft)
            pred = pred.index_put((rows, cols), values.to(tokens.dtype))
        return Choice(pred, revealed, keys, None, None, count, conf)
    rows, cols, (values, *out) = rows_of(mask, masked_rows, full)
    pred, conf = tokens.index_put((rows, cols), values.to(tokens.dtype)), _probabilities(mask, rows, cols, out)
    token_score = out[0]
    score = torch.full(mask.shape, -_INF, device=mask.device).index_put((rows, cols), token_score.float())
    if order.kind == "score":
        noise = anneal(sampler, k) * rng.gumbel(seeds, rng.STREAM_WHERE, k, KEY_POS, tail=(mask.shape[1],))
    else:  # adaptive: the order's own count, every remaining token at the last step
        noise = torch.zeros_like(score)
        count = mask.sum(1) if k == sampler.num_steps - 1 else order.count(score, mask, sampler)
    keys = -(score + noise)
    return Choice(pred, smallest(torch.where(mask, keys, _INF), count) & mask, keys, score, noise, count, conf)


def _probabilities(mask: Tensor, rows: Tensor, cols: Tensor, out: list[Tensor]) -> Tensor | None:
    """(B, L) probability of each sampled code at the sampled positions, from a categorical head's outputs
    after the codes, (score, log p); None for a head without them."""
    if len(out) < 2:
        return None
    return torch.zeros(mask.shape, device=mask.device).index_put((rows, cols), out[-1].float().exp())


def _commit(run: _Run, k: int, c: _Carry, sp: _StepPlan, g: _Guides, where: _Where, what: Choice, z: Tensor,
            refs: tuple) -> _StepOut:
    """The step's outcome: revealed tokens written, re-masked ones cleared, and the anatomy if asked for."""
    discrete, revealed, remasked = run.nets.model.head.discrete, what.revealed, where.remasked
    new_tokens = torch.where(revealed if discrete else revealed.unsqueeze(-1), what.pred, c.tokens)
    if run.sampler.remask != "off":
        new_tokens = torch.where(remasked if discrete else remasked.unsqueeze(-1), 0, new_tokens)
    anatomy = None
    if run.anatomy is not None:
        facts = StepFacts(k, run.seeds, c.mask, revealed, remasked, what.count, sp.remask_count, sp.reveal_p,
                          sp.sigma, z, {x.reference: r for x, r in zip(g.active, refs)},
                          tuple(x.name for x in g.active), g.weights, what.keys, what.score, what.noise, what.pred,
                          sp.masked_rows)
        anatomy = open_step(run.nets.model.head, facts, run.anatomy, run.full, run.draft, run.sampler.temperature)
    confidence = None
    if c.confidence is not None and what.confidence is not None:
        confidence = torch.where(revealed, what.confidence, c.confidence).masked_fill(remasked, 0.0)
    return _StepOut(new_tokens, (c.mask & ~revealed) | remasked, revealed, remasked, what.pred, g.scale,
                    tuple(x.name for x in g.active), anatomy, confidence)


def _checked_inputs(nets: Networks, labels, seeds, sampler: SamplerConfig,
                    guidance: GuidanceConfig) -> tuple[Tensor, Tensor]:
    """(labels (B,), seeds (B,)) on the model's device, after every check that needs no work."""
    model = nets.model
    device = next(model.parameters()).device
    labels = torch.as_tensor(labels, dtype=torch.long, device=device).reshape(-1)
    B = labels.shape[0]
    seeds = as_seeds(seeds, B, device)
    if seeds.shape[0] != B:
        raise ValueError(f"got {seeds.shape[0]} seeds for {B} labels")
    if B and (int(labels.min()) < 0 or int(labels.max()) >= model.num_classes):
        raise ValueError(f"class ids must be in [0, {model.num_classes - 1}], got {labels.tolist()}")
    check_capabilities(model, sampler, guidance, nets.smoother)
    return labels, seeds


def _initial(model, B: int, num_steps: int, init: StepState | None) -> tuple[int, _Carry]:
    """(first step, carry): all masked at step 0, or the state `init` branches from (its step + 1; a
    state with step -1 starts a run at step 0 from given tokens, as inpainting does)."""
    device = next(model.parameters()).device
    L = model.num_tokens
    if init is None:
        tokens = (torch.zeros(B, L, dtype=torch.long, device=device) if model.head.discrete
                  else torch.zeros(B, L, model.cfg.tokenizer.token_dim, device=device))
        return 0, _Carry(tokens, torch.ones(B, L, dtype=torch.bool, device=device),
                         torch.zeros(B, L, dtype=torch.long, device=device), 0, 0, *_ledger(model, B, L, None, device))
    start = init.step + 1
    if start >= num_steps:
        raise ValueError(f"cannot branch after step {init.step + 1}: the new run has only {num_steps} steps")
    mask, tokens = init.mask_after.to(device), init.tokens.to(device)
    if mask.shape != (B, L):
        raise ValueError(f"branch state has shape {tuple(mask.shape)}, expected {(B, L)}")
    if init.frozen is not None and tuple(init.frozen.shape) != (B, L):
        raise ValueError(f"branch state's frozen tokens have shape {tuple(init.frozen.shape)}, expected {(B, L)}")
    return start, _Carry(tokens, mask, init.revisions.to(device), init.passes, init.head_evals,
                         *_ledger(model, B, L, init, device))


def _ledger(model, B: int, L: int, init: StepState | None, device) -> tuple[Tensor, Tensor, Tensor | None]:
    """(image_steps, image_passes, confidence) to start from: zeros, or those of the state branched from."""
    def get(name: str, zeros: Tensor | None) -> Tensor | None:
        value = None if init is None else getattr(init, name)
        return zeros if value is None else value.to(device)
    zero = torch.zeros(B, dtype=torch.long, device=device)
    conf = torch.zeros(B, L, device=device) if model.head.discrete else None
    return get("image_steps", zero), get("image_passes", zero), get("confidence", conf)


def _start(nets: Networks, labels, seeds, sampler: SamplerConfig, guidance: GuidanceConfig, opts: "_Options",
           predict_all: bool) -> tuple[_Run, int, _Carry]:
    """Checks, the run's fixed parts and its first state: (run, first step, carry)."""
    model = nets.model
    labels, seeds = _checked_inputs(nets, labels, seeds, sampler, guidance)
    device = labels.device
    dtype = resolve_precision(device, opts.precision)
    B, L = labels.shape[0], model.num_tokens
    if opts.anatomy is not None and not sampler.draft:
        raise ValueError("the anatomy of a step needs drafts (SamplerConfig draft=True)")
    order = get_order(sampler.order)
    fixed_keys = None
    if order.fixed:
        fixed_keys = order.priority(seeds, -1, L, opts.fixed_order).expand(B, L)
    start, carry = _initial(model, B, sampler.num_steps, opts.init)
    with torch.inference_mode():
        conds = Conditions(model.condition(labels),
                           model.condition(labels, torch.ones_like(labels, dtype=torch.bool), guidance.cfg_mode or None),
                           labels)
    full = HeadOptions(sampler.temperature, sampler.head_solver, sampler.head_steps, order.score)
    draft = full if sampler.draft_steps == 0 or model.head.discrete else \
        HeadOptions(sampler.temperature, "dpm", sampler.draft_steps, order.score)

    def network(tokens, mask, num_visible, references, select):
        with autocast(device, dtype):
            return network_pass(nets, conds, tokens, mask, num_visible=num_visible, references=references,
                                select=select)

    def head_fn(z, terms, noise, head_opts):
        with autocast(device, dtype):
            return head_pass(model.head, z, terms, noise, head_opts)

    pad = _no_pad
    if opts.graphs:
        network, head_fn, pad = replayed(nets, conds, dtype, full)
    grid = time_grid(sampler.num_steps, sampler.t_end).tolist()
    frozen = None if opts.init is None or opts.init.frozen is None else opts.init.frozen.to(device)
    run = _Run(nets, sampler, guidance, order, seeds, labels, fixed_keys, grid, predict_all, network, head_fn, pad,
               full, draft, opts.anatomy, frozen)
    return run, start, carry


def _no_pad(size: int, cap: int) -> int:
    return size


def _advance(run: _Run, k: int, c: _Carry, out: _StepOut) -> _Carry:
    """The carry after step k: its tokens, mask and revisions, and the costs plus this step's (transformer
    passes, from the guidance settings; head network evaluations of the sampling, one set for the
    conditional and one per guide term; drafts and the anatomy are views and are not counted)."""
    sampler = run.sampler
    head_evals = run.nets.model.head.evals(sampler.head_solver, sampler.head_steps) * (1 + len(out.guides))
    passes, took = run.guidance.passes(run.grid[k + 1]), c.mask.any(1).long()
    return _Carry(out.tokens, out.mask, c.revisions + out.remasked.long(), c.passes + passes, c.head_evals + head_evals,
                  c.image_steps + took, c.image_passes + passes * took, out.confidence)


def _state(run: _Run, k: int, before: _Carry, after: _Carry, out: _StepOut, draft: bool) -> StepState:
    return StepState(
        step=k, num_steps=run.sampler.num_steps, t=run.grid[k], s=run.grid[k + 1], mask_before=before.mask,
        mask_after=out.mask, revealed=out.revealed, remasked=out.remasked, revisions=after.revisions,
        tokens=out.tokens, draft=out.pred if draft else None, cfg_active="cfg" in out.guides, cfg_scale=out.scale,
        sg_active="self-guidance" in out.guides, sg_scale=run.guidance.sg_scale, passes=after.passes,
        head_evals=after.head_evals, seeds=run.seeds, labels=run.labels, sampler=run.sampler,
        guidance=run.guidance, anatomy=out.anatomy, frozen=run.frozen, image_steps=after.image_steps,
        image_passes=after.image_passes, confidence=after.confidence)


@dataclass(frozen=True)
class _Options:
    """The keyword options of a run: init (a state to branch from), fixed_order, precision, graphs,
    anatomy (generator only)."""

    init: StepState | None = None
    fixed_order: Tensor | None = None
    precision: str = "fp32"
    graphs: bool = False
    anatomy: AnatomyOptions | None = None


# ----------------------------------------------------------------------------- the two loops


def sample_steps(net, labels, seeds, sampler: SamplerConfig = SamplerConfig(),
                 guidance: GuidanceConfig = GuidanceConfig(), *, init: StepState | None = None,
                 fixed_order: Tensor | None = None, precision: str = "fp32",
                 anatomy: AnatomyOptions | None = None) -> Iterator[StepState]:
    """Yield a StepState after every step.

    net: the networks to run: a loaded model bundle (emigm.io.loading.Pipeline: its network and, for
    self-guidance, its smoother), a `Networks(model, smoother)`, or a bare MaskedGenerator; the
    model's device decides where everything runs. labels: (B,) class ids; seeds: (B,) per-sample
    seeds, or one int (sample i gets seed + i); init: a state to branch from (the loop resumes at
    init.step + 1 with the given configs); fixed_order: (L,) or (B, L) reveal priority for order
    "fixed" (lower = earlier; default raster order); precision: fp32, or bf16 / fp16 autocast of the
    networks (CUDA only; "auto" = bf16 on CUDA, emigm.core.devices); anatomy: record each step's
    StepAnatomy (state.anatomy), at the cost of extra head work.
    """
    nets = as_networks(net)
    device = next(nets.model.parameters()).device
    batch = torch.as_tensor(labels).numel()  # for the out-of-memory message
    with memory_guard(batch, device, "sampling"):
        run, start, carry = _start(nets, labels, seeds, sampler, guidance,
                                   _Options(init, fixed_order, precision, anatomy=anatomy),
                                   predict_all=sampler.draft or get_order(sampler.order).kind != "priority")
        plan = make_plan(run.seeds, carry.mask, sampler, start, run.frozen)
    for i, k in enumerate(range(start, sampler.num_steps)):
        sp = _plan_at(run, plan, i, carry)
        if sp is None:
            break
        # inference mode only around the step's work: a suspended generator must not leave it on
        with torch.inference_mode(), memory_guard(batch, device, "sampling"):
            out = _step(run, k, carry, sp)
        after = _advance(run, k, carry, out)
        yield _state(run, k, carry, after, out, sampler.draft)
        carry = after


def sample(net, labels, seeds, sampler: SamplerConfig = SamplerConfig(),
           guidance: GuidanceConfig = GuidanceConfig(), *, fast: bool = True, precision: str = "auto",
           graphs: bool = False, **kwargs) -> StepState:
    """Run the sampler to the end and return the last step's state (arguments as `sample_steps`).

    fast (default): the same `_step` as `sample_steps` in a plain loop: no drafts (the head samples
    only the tokens revealed at a step, or every masked token under a score order), no per-step
    state, no host sync after the plan; precision "auto" is bf16 autocast on CUDA and fp32
    elsewhere. graphs: replay the network and the head as CUDA graphs, one per padded shape
    (emigm.sample.graphs). fast=False drains `sample_steps` (drafts as sampler.draft; precision fp32 unless
    given)."""
    if not fast:
        if graphs:
            raise ValueError("graphs=True needs the fast path (fast=True)")
        state = None
        for state in sample_steps(net, labels, seeds, sampler, guidance,
                                  precision="fp32" if precision == "auto" else precision, **kwargs):
            pass
        if state is None:
            raise ValueError("nothing to sample: the branch state is already complete")
        return state
    if kwargs.get("anatomy") is not None:
        raise ValueError("the anatomy of a step is recorded by sample_steps (or sample(fast=False)), not the fast path")
    kwargs.pop("anatomy", None)
    return _sample_fast(as_networks(net), labels, seeds, sampler, guidance,
                        _Options(precision=precision, graphs=graphs, **kwargs))


def _sample_fast(nets: Networks, labels, seeds, sampler: SamplerConfig, guidance: GuidanceConfig,
                 opts: _Options) -> StepState:
    device = next(nets.model.parameters()).device
    batch = torch.as_tensor(labels).numel()  # for the out-of-memory message
    last = None
    with memory_guard(batch, device, "sampling"):
        run, start, carry = _start(nets, labels, seeds, sampler, guidance, opts,
                                   predict_all=get_order(sampler.order).kind != "priority")
        plan = make_plan(run.seeds, carry.mask, sampler, start, run.frozen)
        with torch.inference_mode():
            for i, k in enumerate(range(start, sampler.num_steps)):
                sp = _plan_at(run, plan, i, carry)
                if sp is None:
                    break
                out = _step(run, k, carry, sp)
                after = _advance(run, k, carry, out)
                last, carry = (k, carry, after, out), after
    if last is None:
        raise ValueError("nothing to sample: the branch state is already complete")
    return _state(run, *last, draft=False)
