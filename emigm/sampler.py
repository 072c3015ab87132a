"""The step-by-step sampler: a generator that yields an immutable `StepState` after every step.

One loop serves MaskGIT, MAR and eMIGM (paper Sec. 2-3): a time grid t_k = linspace(1, t_end, S+1);
at step k (t = t_k -> s = t_{k+1}) some still-masked tokens are revealed:
- how many: `binomial` (eMIGM: each masked token independently with p = 1 - gamma(s)/gamma(t), at
  least one, all on the last step) or `exact` (MaskGIT/MAR: floor(L gamma(u)/gamma(1)) stay masked,
  u = 1 - (k+1)/S, clamped so one is revealed and one stays until the last step);
- which: `random` (uniform among masked), `confidence` (MaskGIT: log p of the sampled token plus
  annealed Gumbel noise), or `fixed` (a given permutation);
- what: the head's sample given the backbone's z, pushed by the active guides (emigm.guidance):
  classifier-free guidance and self-guidance, each on in its own time interval (t_lo, t_hi].

Randomness is addressed by (sample seed, stream, step, position) through emigm.rng: the "where"
stream decides counts and positions, the "what" stream the token values, so image k is the same at
any batch size and two guidance settings with the same seed reveal the same positions (for the
random and fixed orders). Counts are planned before the loop; the loop itself never syncs with the
host except to build the yielded state.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field, replace
from typing import Iterator

import torch

from . import rng
from .diffusion import SOLVERS
from .fields import check_fields, option
from .guidance import GuidanceConfig, Term, cfg_scale_at
from .schedules import SCHEDULES, get_schedule, time_grid

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
    """Row and column indices of the m True entries of sel (B, L), without a host sync."""
    L = sel.shape[1]
    idx = (~sel).reshape(-1).to(torch.int8).argsort(stable=True)[:m]
    return idx // L, idx % L


# ----------------------------------------------------------------------------- the loop


def _as_seeds(seeds, batch: int | None, device) -> Tensor:
    """Per-sample seeds as an int64 tensor: an int (sample i gets seed + i), a sequence of ints or an
    integer tensor; whole numbers in [0, 2^63 - 1] (a one-line ValueError otherwise)."""
    from .seeds import MAX_SEED, check_seed

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


def sample_steps(model, labels, seeds, sampler: SamplerConfig = SamplerConfig(),
                 guidance: GuidanceConfig = GuidanceConfig(), *, smoother=None, init: StepState | None = None,
                 fixed_order: Tensor | None = None) -> Iterator[StepState]:
    """Yield a StepState after every step.

    model: a MaskedGenerator (its device decides where everything runs); labels: (B,) class ids;
    seeds: (B,) per-sample seeds, or one int (sample i gets seed + i); smoother: the model's
    self-guidance module (emigm.self_guidance), needed when guidance.sg_scale > 0; init: a state to
    branch from (the loop resumes at init.step + 1 with the given configs); fixed_order: (L,) or (B, L)
    reveal priority for order "fixed" (lower = earlier; default raster order).
    """
    from .capabilities import check_capabilities

    device = next(model.parameters()).device
    labels = torch.as_tensor(labels, dtype=torch.long, device=device).reshape(-1)
    B, L = labels.shape[0], model.num_tokens
    seeds = _as_seeds(seeds, B, device)
    if seeds.shape[0] != B:
        raise ValueError(f"got {seeds.shape[0]} seeds for {B} labels")
    if B and (int(labels.min()) < 0 or int(labels.max()) >= model.num_classes):
        raise ValueError(f"class ids must be in [0, {model.num_classes - 1}], got {labels.tolist()}")
    check_capabilities(model, sampler, guidance, smoother)
    head = model.head
    if sampler.order == "fixed":
        order = torch.arange(L, device=device) if fixed_order is None else torch.as_tensor(fixed_order, device=device)
        fixed_order = order.float().expand(B, L)
    null_mode = guidance.cfg_mode or None

    S = sampler.num_steps
    grid = time_grid(S, sampler.t_end).tolist()
    token_dim = model.cfg.tokenizer.token_dim
    if init is None:
        start, passes, head_evals = 0, 0, 0
        mask = torch.ones(B, L, dtype=torch.bool, device=device)
        tokens = (torch.zeros(B, L, dtype=torch.long, device=device) if head.discrete
                  else torch.zeros(B, L, token_dim, device=device))
    else:
        start, passes, head_evals = init.step + 1, init.passes, init.head_evals
        if start >= S:
            raise ValueError(f"cannot branch after step {init.step + 1}: the new run has only {S} steps")
        mask, tokens = init.mask_after.to(device), init.tokens.to(device)
        if mask.shape != (B, L):
            raise ValueError(f"branch state has shape {tuple(mask.shape)}, expected {(B, L)}")
    counts = plan_counts(seeds, L, sampler, mask.sum(1), start)
    host_counts = counts.cpu()  # one sync before the loop: shapes of the gathers below
    masked_host = mask.sum(1).cpu()
    with torch.inference_mode():
        cond = model.condition(labels)
        null_cond = model.condition(labels, torch.ones_like(labels, dtype=torch.bool), null_mode)
    head_kwargs = dict(temperature=sampler.temperature, solver=sampler.head_solver, steps=sampler.head_steps)
    predict_all = sampler.draft or sampler.order == "confidence"

    for k in range(start, S):
        # inference mode only around the step's work: a suspended generator must not leave it on
        with torch.inference_mode():
            t, s = grid[k], grid[k + 1]
            count, count_host = counts[k - start], host_counts[k - start]
            num_visible = int((L - masked_host).max())
            use_cfg, use_sg = guidance.cfg_active(s), guidance.sg_active(s)
            n_after = mask.sum(1) - count
            frac = (1.0 - n_after.float() / L)
            scale = torch.as_tensor(cfg_scale_at(guidance.cfg_scale, guidance.cfg_schedule, frac),
                                    dtype=torch.float32, device=device).expand(B)
            scale = scale if use_cfg else torch.ones(B, device=device)

            # where (random / fixed orders do not depend on the prediction)
            if sampler.order == "random":
                keys = rng.uniform(seeds, rng.STREAM_WHERE, k, _KEY_POS, tail=(L,))
                revealed = _smallest(torch.where(mask, keys, 2.0), count) & mask
            elif sampler.order == "fixed":
                revealed = _smallest(torch.where(mask, fixed_order, float("inf")), count) & mask

            # the network: the conditional pass with CFG's null branch batched into it, then
            # self-guidance's smoothed pass (it needs the conditional pass's hidden states)
            if use_cfg:
                hidden = model.features(torch.cat([tokens, tokens]), torch.cat([mask, mask]),
                                        torch.cat([cond, null_cond]), num_visible=num_visible).hidden
            else:
                hidden = model.features(tokens, mask, cond, num_visible=num_visible).hidden
            z_all = model.to_z(hidden)
            z = z_all[:B]
            refs: list[tuple[str, Tensor, Tensor]] = []
            if use_cfg:
                refs.append(("cfg", z_all[B:], scale - 1.0))
            if use_sg:
                z_smooth = smoother.smooth_z(model, hidden[:B], labels)
                refs.append(("sg", z_smooth, torch.full((B,), guidance.sg_scale, device=device)))

            # what
            sel = mask if predict_all else revealed
            m = int(masked_host.sum()) if predict_all else int(count_host.sum())
            rows, cols = _flat_select(sel, m)
            if head.discrete:
                noise = lambda i: rng.uniform(seeds[rows], rng.STREAM_WHAT, k, cols, i, tail=(head.codebook_size,))
            else:
                noise = lambda i: rng.normal(seeds[rows], rng.STREAM_WHAT, k, cols, i, tail=(token_dim,))
            terms = [Term(name, zr[rows, cols], w[rows]) for name, zr, w in refs]
            out = head.sample(z[rows, cols], noise, guides=terms, **head_kwargs)
            values, logp = out if head.discrete else (out, None)

            pred = tokens.clone()
            pred[rows, cols] = values.to(pred.dtype)
            if sampler.order == "confidence":
                conf = torch.full((B, L), float("-inf"), device=device)
                conf[rows, cols] = logp.float()
                gum = rng.gumbel(seeds, rng.STREAM_WHERE, k, _KEY_POS, tail=(L,))
                score = conf + anneal(sampler, k) * gum
                revealed = _smallest(torch.where(mask, -score, float("inf")), count) & mask

            sel_dims = revealed if head.discrete else revealed.unsqueeze(-1)
            new_tokens = torch.where(sel_dims, pred, tokens)
            new_mask = mask & ~revealed
            passes += guidance.passes(s)
            head_evals += head.evals(sampler.head_solver, sampler.head_steps) * (1 + len(terms))
            state = StepState(
                step=k, num_steps=S, t=t, s=s, mask_before=mask, mask_after=new_mask, revealed=revealed,
                tokens=new_tokens, draft=pred if sampler.draft else None, cfg_active=use_cfg,
                cfg_scale=scale, sg_active=use_sg, sg_scale=guidance.sg_scale, passes=passes,
                head_evals=head_evals, seeds=seeds, labels=labels, sampler=sampler, guidance=guidance,
            )
        yield state
        tokens, mask = new_tokens, new_mask
        masked_host = masked_host - count_host


def sample(model, labels, seeds, sampler: SamplerConfig = SamplerConfig(),
           guidance: GuidanceConfig = GuidanceConfig(), **kwargs) -> StepState:
    """Run the sampler to the end and return the last state."""
    state = None
    for state in sample_steps(model, labels, seeds, sampler, guidance, **kwargs):
        pass
    if state is None:
        raise ValueError("nothing to sample: the branch state is already complete")
    return state
