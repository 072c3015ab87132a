"""The step-by-step sampler: a generator that yields an immutable `StepState` after every step.

One loop serves MaskGIT, MAR and eMIGM (paper Sec. 2-3): a time grid t_k = linspace(1, t_end, S+1);
at step k (t = t_k -> s = t_{k+1}) some still-masked tokens are revealed:
- how many: `binomial` (eMIGM: each masked token independently with p = 1 - gamma(s)/gamma(t), at
  least one, all on the last step) or `exact` (MaskGIT/MAR: floor(L gamma(u)/gamma(1)) stay masked,
  u = 1 - (k+1)/S, clamped so one is revealed and one stays until the last step);
- which: `random` (uniform among masked), `confidence` (MaskGIT: log p of the sampled token plus
  annealed Gumbel noise), or `fixed` (a given permutation);
- what: the head's sample given the backbone's z, pushed by the active guides (emigm.core.guidance):
  classifier-free guidance and self-guidance, each on in its own time interval (t_lo, t_hi].

Randomness is addressed by (sample seed, stream, step, position) through emigm.core.rng: the "where"
stream decides counts and positions, the "what" stream the token values, so image k is the same at
any batch size and two guidance settings with the same seed reveal the same positions (for the
random and fixed orders).

Two loops share ONE step function (`_step`): `sample_steps`, the generator the explorer streams
(drafts, an immutable state per step), and `sample`, the fast path (no drafts: the head samples only
the tokens a step reveals, or every masked token under the confidence order; bf16 autocast on CUDA;
optional CUDA-graph replay, emigm.sample.graphs). Counts are planned from the seeds before either loop, with
one host sync; every shape inside a step (the MAE encoder's length, the head's rows) follows from the
plan and reaches `_step` as a Python int, so the steps never wait for the device.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator

import torch

from emigm.core import rng
from emigm.core.devices import autocast, memory_guard, resolve_precision
from emigm.core.fields import check_fields, option
from emigm.core.guidance import GuidanceConfig, Term
from emigm.core.schedules import SCHEDULES, get_schedule, time_grid
from emigm.core.seeds import MAX_SEED, check_seed
from emigm.nn.diffusion import SOLVERS
from emigm.sample.capabilities import check_capabilities
from emigm.sample.graphs import replayed
from emigm.sample.passes import (
    Conditions,
    HeadOptions,
    Networks,
    as_networks,
    head_pass,
    network_pass,
)

Tensor = torch.Tensor

COUNT_RULES = {"binomial": "each masked token revealed with p = 1 - gamma(s)/gamma(t), at least one (eMIGM)",
               "exact": "floor(L gamma(u)/gamma(1)) stay masked (MaskGIT / MAR)"}
ORDERS = {"random": "uniform among the masked tokens (eMIGM, MAR)",
          "confidence": "most confident first, with annealed Gumbel noise (MaskGIT; categorical heads)",
          "fixed": "a given permutation (raster order by default)"}


def _anneal_linear(tau0: float, k: int, num_steps: int) -> float:
    return tau0 * (1.0 - (k + 1) / num_steps)


def _anneal_compound(tau0: float, k: int, num_steps: int) -> float:
    return tau0 * math.prod(1.0 - j / num_steps for j in range(1, k + 2))


# Gumbel temperature of the confidence order at step k (0-based) of S: MaskGIT's linear
# tau0 (1 - (k+1)/S), or the compounding tau0 prod_{j=1}^{k+1} (1 - j/S) of the self-guidance public code
ANNEALS = {"linear": _anneal_linear, "compound": _anneal_compound}
MAX_STEPS, MAX_HEAD_STEPS = 1024, 250

# sub-keys inside the "where" stream
_KEY_COUNT, _KEY_POS = 1, 2


@dataclass(frozen=True)
class SamplerConfig:
    """How the sampler reveals tokens and samples them; validated at construction."""

    num_steps: int = option(16, "sampling steps S (at most the model's token count)", low=1, high=MAX_STEPS,
                            cli="--steps")
    schedule: str = option("exp", "mask schedule gamma(t)", choices=SCHEDULES)
    count_rule: str = option("binomial", "how many tokens each step reveals", choices=COUNT_RULES,
                             labels=COUNT_RULES)
    order: str = option("random", "which masked tokens each step reveals", choices=ORDERS, labels=ORDERS)
    order_temperature: float = option(4.5, "Gumbel temperature tau_0 of the confidence order", low=0.0,
                                      high=100.0)
    order_anneal: str = option("linear", "annealing of the confidence order's temperature", choices=ANNEALS)
    temperature: float = option(1.0, "token temperature (DDPM noise / categorical logits; 0 = argmax)",
                                low=0.0, high=10.0)
    head_solver: str = option("dpm", "diffusion head solver: dpm (DPM-Solver++ 3S), dpm2m, ddpm",
                              choices=SOLVERS)
    head_steps: int = option(8, "diffusion head solver steps", low=1, high=MAX_HEAD_STEPS)
    draft: bool = True  # predict every still-masked token each step (the "draft" view)
    t_end: float = 1e-5

    def __post_init__(self) -> None:
        check_fields(self)
        if not (isinstance(self.t_end, float) and 0.0 < self.t_end < 1.0):
            raise ValueError(f"t_end must be in (0, 1), got {self.t_end!r}")


@dataclass(frozen=True)
class StepState:
    """The sampler's state after step `step` (0-based) of `num_steps`. Tensors are never mutated.

    mask_before / mask_after / revealed: (B, L) bool (True = masked / revealed at this step);
    tokens: committed tokens, (B, L, C) float or (B, L) int64, zero where still masked;
    draft: committed tokens plus the model's current prediction at every position that was masked
    before this step (None when the sampler runs without drafts);
    cfg_scale: (B,) guidance scale used at this step (1 where CFG did not run);
    sg_active / sg_scale: whether self-guidance ran at this step, and its scale s;
    passes / head_evals: cumulative transformer passes and head network evaluations.
    """

    step: int
    num_steps: int
    t: float
    s: float
    mask_before: Tensor
    mask_after: Tensor
    revealed: Tensor
    tokens: Tensor
    draft: Tensor | None
    cfg_active: bool
    cfg_scale: Tensor
    sg_active: bool
    sg_scale: float
    passes: int
    head_evals: int
    seeds: Tensor
    labels: Tensor
    sampler: SamplerConfig = field(repr=False)
    guidance: GuidanceConfig = field(repr=False)

    @property
    def done(self) -> bool:
        return not bool(self.mask_after.any())

    def to(self, device: torch.device | str) -> "StepState":
        """A copy with every tensor moved to `device`."""
        moved = {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in self.__dict__.items()}
        return replace(self, **moved)


# ----------------------------------------------------------------------------- planning


def plan_counts(seeds: Tensor, num_tokens: int, cfg: SamplerConfig, masked: Tensor | None = None,
                start: int = 0) -> Tensor:
    """Tokens revealed per step and sample, (S - start, B) int64, decided before the loop.

    masked: (B,) tokens still masked before step `start` (default: all). Uses only the "where"
    stream, so it is the same for every guidance setting."""
    S, L, B = cfg.num_steps, num_tokens, seeds.shape[0]
    schedule = get_schedule(cfg.schedule)
    grid = time_grid(S, cfg.t_end)
    n = torch.full((B,), L, dtype=torch.long, device=seeds.device) if masked is None else masked.clone()
    j = torch.arange(L, device=seeds.device)
    out = []
    for k in range(start, S):
        if k == S - 1:
            count = n.clone()
        elif cfg.count_rule == "binomial":
            p = float(schedule.transfer_prob(grid[k], grid[k + 1]))
            u = rng.uniform(seeds, rng.STREAM_WHERE, k, _KEY_COUNT, tail=(L,))
            count = ((u < p) & (j < n.unsqueeze(1))).sum(1)
            count = torch.minimum(count.clamp(min=1), n)
        else:
            u_frac = torch.tensor(1.0 - (k + 1) / S, dtype=torch.float64)
            keep = math.floor(L * float(schedule.gamma(u_frac) / schedule.gamma(torch.tensor(1.0, dtype=torch.float64))))
            keep = torch.minimum(torch.full_like(n, keep), n - 1).clamp(min=1)
            count = torch.where(n > 1, n - keep, n)
        out.append(count)
        n = n - count
    return torch.stack(out) if out else torch.zeros(0, B, dtype=torch.long, device=seeds.device)


def anneal(cfg: SamplerConfig, k: int) -> float:
    """Gumbel temperature of the confidence order at step k under cfg.order_anneal (see ANNEALS)."""
    return ANNEALS[cfg.order_anneal](cfg.order_temperature, k, cfg.num_steps)


def _smallest(keys: Tensor, count: Tensor) -> Tensor:
    """(B, L) bool: the count[b] positions with the smallest keys in row b."""
    ranks = keys.argsort(dim=1, stable=True).argsort(dim=1)
    return ranks < count.unsqueeze(1)


def _flat_select(sel: Tensor, m: int) -> tuple[Tensor, Tensor]:
    """Row and column indices of the True entries of sel (B, L), m of them, without a host sync. An m
    above the number of True entries pads with False entries (callers discard their results)."""
    L = sel.shape[1]
    idx = (~sel).reshape(-1).to(torch.int8).argsort(stable=True)[:m]
    return idx // L, idx % L


# ----------------------------------------------------------------------------- one run, one step


def _as_seeds(seeds, batch: int | None, device) -> Tensor:
    """Per-sample seeds as an int64 tensor: an int (sample i gets seed + i), a sequence of ints or an
    integer tensor; whole numbers in [0, 2^63 - 1] (a one-line ValueError otherwise)."""

    if isinstance(seeds, Tensor):
        if seeds.is_floating_point() or seeds.is_complex() or seeds.dtype == torch.bool or \
                (seeds.numel() and int(seeds.min()) < 0):
            raise ValueError(f"seeds must be whole numbers in [0, {MAX_SEED}]")
        return seeds.to(device=device, dtype=torch.int64).reshape(-1)
    if not isinstance(seeds, (str, bytes)) and hasattr(seeds, "__iter__"):
        values = list(seeds)
    else:
        values = [seeds]
    try:
        values = [operator.index(v) for v in values]
    except TypeError:
        raise ValueError(f"seeds must be whole numbers in [0, {MAX_SEED}], got {values[:4]!r}") from None
    if len(values) == 1 and not hasattr(seeds, "__iter__"):
        check_seed("seed", values[0], batch or 1)
        values = [values[0] + i for i in range(batch or 1)]
    for v in values:
        check_seed("seed", v)
    return torch.as_tensor(values, dtype=torch.int64, device=device).reshape(-1)


@dataclass(frozen=True)
class _Plan:
    """Host-side facts of the steps start..S-1, known before the loop (one host sync builds them).

    counts: (S - start, B) tokens revealed per step and sample, on the device; num_visible[i]: the
    most visible tokens of any row before step start + i (the MAE encoder's length); head_rows[i]:
    rows the head samples at that step (every masked token with drafts or the confidence order, else
    the revealed ones)."""

    counts: Tensor
    num_visible: list[int]
    head_rows: list[int]


def _make_plan(seeds: Tensor, mask: Tensor, cfg: SamplerConfig, start: int, predict_all: bool) -> _Plan:
    L = mask.shape[1]
    counts = plan_counts(seeds, L, cfg, mask.sum(1), start)
    host = counts.cpu()  # the one sync: every shape of the loop follows from it
    masked = mask.sum(1).cpu() - torch.cat([torch.zeros_like(host[:1]), host.cumsum(0)[:-1]])
    visible = (L - masked).amax(1) if len(host) else host.new_zeros(0)
    rows = masked.sum(1) if predict_all else host.sum(1)
    return _Plan(counts, visible.tolist(), rows.tolist())


@dataclass
class _Run:
    """What stays fixed for a whole run: the networks, the configs, the per-sample inputs, and the two
    pieces of network work of a step as callables (eager, or replayed as CUDA graphs).

    network(tokens, mask, num_visible, references) -> (z, reference z's); head(z, terms, noise) -> the
    head's outputs; pad(size, cap): the padded size (identity unless replaying graphs); predict_all:
    whether the head samples every masked token (drafts, or the confidence order) or only those revealed."""

    nets: Networks
    sampler: SamplerConfig
    guidance: GuidanceConfig
    seeds: Tensor
    labels: Tensor
    fixed_keys: Tensor | None
    grid: list[float]
    predict_all: bool
    network: Callable
    head: Callable
    pad: Callable[[int, int], int]


@dataclass(frozen=True)
class _Carry:
    """What one step hands to the next: tokens, mask, and the cumulative costs so far."""

    tokens: Tensor
    mask: Tensor
    passes: int = 0
    head_evals: int = 0


@dataclass(frozen=True)
class _StepOut:
    tokens: Tensor
    mask: Tensor
    revealed: Tensor
    pred: Tensor
    scale: Tensor
    guides: tuple[str, ...]


def _per_row(w: Tensor | float, B: int, device) -> Tensor:
    return w.expand(B) if isinstance(w, Tensor) else torch.full((B,), float(w), device=device)


def _step(run: _Run, k: int, c: _Carry, count: Tensor, num_visible: int, head_rows: int) -> _StepOut:
    """One step, t_k -> t_{k+1}: where, the network, what. Host values (k, num_visible, head_rows)
    arrive as Python ints, so nothing here waits for the device."""
    sampler, guidance, seeds = run.sampler, run.guidance, run.seeds
    tokens, mask = c.tokens, c.mask
    head = run.nets.model.head
    B, L = mask.shape
    guides = guidance.guides_at(run.grid[k + 1])
    # the guides' weights lambda (B,); a Python float (constant) or a (B,) tensor, never a host value
    # copied to the device
    frac = 1.0 - (mask.sum(1) - count).float() / L
    weights = tuple(_per_row(g.weight(guidance, frac), B, mask.device) for g in guides)
    scale = 1.0 + weights[0] if guides and guides[0].name == "cfg" else torch.ones(B, device=mask.device)

    # where (random / fixed orders do not depend on the prediction)
    revealed = None
    if sampler.order == "random":
        keys = rng.uniform(seeds, rng.STREAM_WHERE, k, _KEY_POS, tail=(L,))
        revealed = _smallest(torch.where(mask, keys, 2.0), count) & mask
    elif sampler.order == "fixed":
        revealed = _smallest(torch.where(mask, run.fixed_keys, float("inf")), count) & mask

    z, refs = run.network(tokens, mask, run.pad(num_visible, L), tuple(g.reference for g in guides))

    # what: the head on the selected rows (padded rows, when graphs pad, are discarded below)
    sel = mask if run.predict_all else revealed
    rows, cols = _flat_select(sel, run.pad(head_rows, B * L))
    if head.discrete:
        noise = lambda i: rng.uniform(seeds[rows], rng.STREAM_WHAT, k, cols, i, tail=(head.codebook_size,))  # noqa: E731
    else:
        token_dim = tokens.shape[-1]
        noise = lambda i: rng.normal(seeds[rows], rng.STREAM_WHAT, k, cols, i, tail=(token_dim,))  # noqa: E731
    terms = tuple(Term(g.name, r[rows, cols], w[rows]) for g, r, w in zip(guides, refs, weights))
    values, *logp = run.head(z[rows, cols], terms, noise)
    pred = tokens.index_put((rows, cols), values.to(tokens.dtype))
    if sampler.order == "confidence":
        conf = torch.full((B, L), float("-inf"), device=mask.device).index_put((rows, cols), logp[0].float())
        score = conf + anneal(sampler, k) * rng.gumbel(seeds, rng.STREAM_WHERE, k, _KEY_POS, tail=(L,))
        revealed = _smallest(torch.where(mask, -score, float("inf")), count) & mask

    new_tokens = torch.where(revealed if head.discrete else revealed.unsqueeze(-1), pred, tokens)
    return _StepOut(new_tokens, mask & ~revealed, revealed, pred, scale, tuple(g.name for g in guides))


def _checked_inputs(nets: Networks, labels, seeds, sampler: SamplerConfig,
                    guidance: GuidanceConfig) -> tuple[Tensor, Tensor]:
    """(labels (B,), seeds (B,)) on the model's device, after every check that needs no work."""
    model = nets.model
    device = next(model.parameters()).device
    labels = torch.as_tensor(labels, dtype=torch.long, device=device).reshape(-1)
    B = labels.shape[0]
    seeds = _as_seeds(seeds, B, device)
    if seeds.shape[0] != B:
        raise ValueError(f"got {seeds.shape[0]} seeds for {B} labels")
    if B and (int(labels.min()) < 0 or int(labels.max()) >= model.num_classes):
        raise ValueError(f"class ids must be in [0, {model.num_classes - 1}], got {labels.tolist()}")
    check_capabilities(model, sampler, guidance, nets.smoother)
    return labels, seeds


def _initial(model, B: int, num_steps: int, init: StepState | None) -> tuple[int, _Carry]:
    """(first step, carry): all masked at step 0, or the state `init` branches from."""
    device = next(model.parameters()).device
    L = model.num_tokens
    if init is None:
        tokens = (torch.zeros(B, L, dtype=torch.long, device=device) if model.head.discrete
                  else torch.zeros(B, L, model.cfg.tokenizer.token_dim, device=device))
        return 0, _Carry(tokens, torch.ones(B, L, dtype=torch.bool, device=device))
    start = init.step + 1
    if start >= num_steps:
        raise ValueError(f"cannot branch after step {init.step + 1}: the new run has only {num_steps} steps")
    mask, tokens = init.mask_after.to(device), init.tokens.to(device)
    if mask.shape != (B, L):
        raise ValueError(f"branch state has shape {tuple(mask.shape)}, expected {(B, L)}")
    return start, _Carry(tokens, mask, init.passes, init.head_evals)


def _start(nets: Networks, labels, seeds, sampler: SamplerConfig, guidance: GuidanceConfig, opts: "_Options",
           predict_all: bool) -> tuple[_Run, int, _Carry]:
    """Checks, the run's fixed parts and its first state: (run, first step, carry)."""
    model = nets.model
    labels, seeds = _checked_inputs(nets, labels, seeds, sampler, guidance)
    device = labels.device
    dtype = resolve_precision(device, opts.precision)
    B, L = labels.shape[0], model.num_tokens
    fixed_keys = None
    if sampler.order == "fixed":
        order = (torch.arange(L, device=device) if opts.fixed_order is None
                 else torch.as_tensor(opts.fixed_order, device=device))
        fixed_keys = order.float().expand(B, L)
    start, carry = _initial(model, B, sampler.num_steps, opts.init)
    with torch.inference_mode():
        conds = Conditions(model.condition(labels),
                           model.condition(labels, torch.ones_like(labels, dtype=torch.bool), guidance.cfg_mode or None),
                           labels)
    head_opts = HeadOptions(sampler.temperature, sampler.head_solver, sampler.head_steps)

    def network(tokens, mask, num_visible, references):
        with autocast(device, dtype):
            return network_pass(nets, conds, tokens, mask, num_visible=num_visible, references=references)

    def head_fn(z, terms, noise):
        with autocast(device, dtype):
            return head_pass(model.head, z, terms, noise, head_opts)

    pad = _no_pad
    if opts.graphs:
        network, head_fn, pad = replayed(nets, conds, dtype, head_opts)
    run = _Run(nets, sampler, guidance, seeds, labels, fixed_keys, time_grid(sampler.num_steps, sampler.t_end).tolist(),
               predict_all, network, head_fn, pad)
    return run, start, carry


def _no_pad(size: int, cap: int) -> int:
    return size


def _advance(run: _Run, k: int, c: _Carry, out: _StepOut) -> _Carry:
    """The carry after step k: its tokens and mask, and the costs plus this step's (transformer passes,
    from the guidance settings; head network evaluations, one set per guide term and the conditional)."""
    sampler = run.sampler
    head_evals = run.nets.model.head.evals(sampler.head_solver, sampler.head_steps) * (1 + len(out.guides))
    return _Carry(out.tokens, out.mask, c.passes + run.guidance.passes(run.grid[k + 1]), c.head_evals + head_evals)


def _state(run: _Run, k: int, before: _Carry, after: _Carry, out: _StepOut, draft: bool) -> StepState:
    return StepState(
        step=k, num_steps=run.sampler.num_steps, t=run.grid[k], s=run.grid[k + 1], mask_before=before.mask,
        mask_after=out.mask, revealed=out.revealed, tokens=out.tokens, draft=out.pred if draft else None,
        cfg_active="cfg" in out.guides, cfg_scale=out.scale, sg_active="self-guidance" in out.guides,
        sg_scale=run.guidance.sg_scale, passes=after.passes, head_evals=after.head_evals, seeds=run.seeds,
        labels=run.labels, sampler=run.sampler, guidance=run.guidance)


@dataclass(frozen=True)
class _Options:
    """The keyword options of a run: init (a state to branch from), fixed_order, precision, graphs."""

    init: StepState | None = None
    fixed_order: Tensor | None = None
    precision: str = "fp32"
    graphs: bool = False


# ----------------------------------------------------------------------------- the two loops


def sample_steps(net, labels, seeds, sampler: SamplerConfig = SamplerConfig(),
                 guidance: GuidanceConfig = GuidanceConfig(), *, init: StepState | None = None,
                 fixed_order: Tensor | None = None, precision: str = "fp32") -> Iterator[StepState]:
    """Yield a StepState after every step.

    net: the networks to run: a loaded model bundle (emigm.io.loading.Pipeline: its network and, for
    self-guidance, its smoother), a `Networks(model, smoother)`, or a bare MaskedGenerator; the
    model's device decides where everything runs. labels: (B,) class ids; seeds: (B,) per-sample
    seeds, or one int (sample i gets seed + i); init: a state to branch from (the loop resumes at
    init.step + 1 with the given configs); fixed_order: (L,) or (B, L) reveal priority for order
    "fixed" (lower = earlier; default raster order); precision: fp32, or bf16 / fp16 autocast of the
    networks (CUDA only; "auto" = bf16 on CUDA, emigm.core.devices).
    """
    nets = as_networks(net)
    device = next(nets.model.parameters()).device
    batch = torch.as_tensor(labels).numel()  # for the out-of-memory message
    with memory_guard(batch, device, "sampling"):
        run, start, carry = _start(nets, labels, seeds, sampler, guidance, _Options(init, fixed_order, precision),
                                   predict_all=sampler.draft or sampler.order == "confidence")
        plan = _make_plan(run.seeds, carry.mask, sampler, start, run.predict_all)
    for i, k in enumerate(range(start, sampler.num_steps)):
        # inference mode only around the step's work: a suspended generator must not leave it on
        with torch.inference_mode(), memory_guard(batch, device, "sampling"):
            out = _step(run, k, carry, plan.counts[i], plan.num_visible[i], plan.head_rows[i])
        after = _advance(run, k, carry, out)
        yield _state(run, k, carry, after, out, sampler.draft)
        carry = after


def sample(net, labels, seeds, sampler: SamplerConfig = SamplerConfig(),
           guidance: GuidanceConfig = GuidanceConfig(), *, fast: bool = True, precision: str = "auto",
           graphs: bool = False, **kwargs) -> StepState:
    """Run the sampler to the end and return the last step's state (arguments as `sample_steps`).

    fast (default): the same `_step` as `sample_steps` in a plain loop: no drafts (the head samples
    only the tokens revealed at a step, or every masked token under the confidence order), no
    per-step state, no host sync after the plan; precision "auto" is bf16 autocast on CUDA and fp32
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
    return _sample_fast(as_networks(net), labels, seeds, sampler, guidance, _Options(precision=precision, graphs=graphs,
                                                                                     **kwargs))


def _sample_fast(nets: Networks, labels, seeds, sampler: SamplerConfig, guidance: GuidanceConfig,
                 opts: _Options) -> StepState:
    device = next(nets.model.parameters()).device
    batch = torch.as_tensor(labels).numel()  # for the out-of-memory message
    last = None
    with memory_guard(batch, device, "sampling"):
        run, start, carry = _start(nets, labels, seeds, sampler, guidance, opts,
                                   predict_all=sampler.order == "confidence")
        plan = _make_plan(run.seeds, carry.mask, sampler, start, run.predict_all)
        with torch.inference_mode():
            for i, k in enumerate(range(start, sampler.num_steps)):
                out = _step(run, k, carry, plan.counts[i], plan.num_visible[i], plan.head_rows[i])
                after = _advance(run, k, carry, out)
                last, carry = (k, carry, after, out), after
    if last is None:
        raise ValueError("nothing to sample: the branch state is already complete")
    return _state(run, *last, draft=False)
