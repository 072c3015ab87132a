"""A step, opened: why these tokens, what each guidance branch predicted, how sure the model was, and
one token's denoising path (emigm.sample.state.StepAnatomy). Computed only for `sample_steps(...,
anatomy=AnatomyOptions(...))`; it re-runs the head per branch (and K times for a diffusion head's
uncertainty), so it costs what it costs, and the fast path never calls it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from emigm.core import rng
from emigm.core.guidance import Term, combine
from emigm.sample.options import AnatomyOptions
from emigm.sample.orders import flat_select, ranks
from emigm.sample.passes import HeadOptions
from emigm.sample.state import StepAnatomy

Tensor = torch.Tensor

BRANCH_OF = {"null": "null", "smoothed": "smoothed"}  # a Guide's reference -> the branch it names
CONDITIONAL, COMBINED = "conditional", "combined"
# every branch an opened step may hold, in the order views show them; COMBINED is the run's draft
BRANCHES = (CONDITIONAL, *BRANCH_OF.values(), COMBINED)


@dataclass(frozen=True)
class StepFacts:
    """What the step computed, handed to `open_step`: the conditional z (B, L, D) and the reference z of
    each active guide, its weights, the masks, the order's keys, the planned probabilities, the draft."""

    k: int
    seeds: Tensor
    mask: Tensor
    revealed: Tensor
    remasked: Tensor
    count: Tensor
    remask_count: Tensor
    reveal_p: float
    sigma: float
    z: Tensor
    refs: dict[str, Tensor]
    guide_names: tuple[str, ...]
    weights: tuple[Tensor, ...]
    keys: Tensor  # (B, L): lower = earlier, among the masked tokens
    score: Tensor | None  # score orders: (B, L) the score, higher = earlier
    noise: Tensor | None  # score orders: (B, L) the Gumbel noise added
    pred: Tensor  # the draft: committed tokens plus a prediction at every masked position
    masked_rows: int


def _scatter(like: Tensor, rows: Tensor, cols: Tensor, values: Tensor, shape: tuple[int, ...]) -> Tensor:
    out = torch.zeros(shape, dtype=values.dtype, device=values.device)
    out[rows, cols] = values
    return out


def open_step(head, facts: StepFacts, opts: AnatomyOptions, full: HeadOptions, draft: HeadOptions,
              temperature: float) -> StepAnatomy:
    """The StepAnatomy of one step (see emigm.sample.state.StepAnatomy for every field)."""
    f = facts
    B, L = f.mask.shape
    mask = f.mask
    masked = mask.sum(1)
    drawn = f.count
    if f.reveal_p != f.reveal_p:  # NaN: the exact rule's deterministic count
        p = torch.where(masked > 0, drawn.float() / masked.clamp(min=1).float(), torch.zeros_like(drawn.float()))
    else:
        p = torch.full((B,), f.reveal_p, device=mask.device)
    nan = torch.full((B, L), float("nan"), device=mask.device)
    if f.score is not None:
        score, noise = torch.where(mask, f.score, nan), torch.where(mask, f.noise, torch.zeros_like(nan))
    else:
        score, noise = torch.where(mask, -f.keys.float(), nan), torch.zeros_like(nan)
    rank = torch.where(mask, ranks(torch.where(mask, f.keys.float(), float("inf"))), torch.full_like(drawn[:, None], -1))

    rows, cols = flat_select(mask, f.masked_rows)
    names = ("conditional",) + tuple(BRANCH_OF[r] for r in f.refs)
    zs = {"conditional": f.z[rows, cols], **{BRANCH_OF[r]: v[rows, cols] for r, v in f.refs.items()}}
    weights = {n: w for n, w in zip(f.guide_names, f.weights)}
    terms = tuple(Term(n, v[rows, cols], w[rows]) for n, v, w in zip(f.guide_names, f.refs.values(), f.weights))
    revealed_row = f.revealed[rows, cols]
    branches, raw = {}, {}
    if head.discrete:
        uniform = lambda i: rng.uniform(f.seeds[rows], rng.STREAM_WHAT, f.k, cols, i, tail=(head.codebook_size,))  # noqa: E731
        logits = {n: head.logits(zs[n]) for n in names}
        logits["combined"] = combine(logits["conditional"], [logits[n] for n in names[1:]], [t.weight for t in terms])
        for n, lg in logits.items():
            raw[n] = _scatter(lg, rows, cols, lg, (B, L, lg.shape[-1]))
            codes = head.sample_logits(lg, uniform, temperature)[0]
            branches[n] = torch.where(mask, _scatter(codes, rows, cols, codes, (B, L)), f.pred)
        lp = torch.log_softmax(logits["combined"], -1)
        unc = -(lp.exp() * lp).sum(-1)
    else:
        C = f.pred.shape[-1]
        normal = lambda i: rng.normal(f.seeds[rows], rng.STREAM_WHAT, f.k, cols, i, tail=(C,))  # noqa: E731
        for n in names:
            vals = _split_sample(head, zs[n], (), normal, revealed_row, full, draft)
            branches[n] = torch.where(mask.unsqueeze(-1), _scatter(vals, rows, cols, vals, (B, L, C)), f.pred)
        branches["combined"] = f.pred
        draws = []
        for j in range(opts.uncertainty_draws):
            probe = lambda i, j=j: rng.normal(f.seeds[rows], rng.STREAM_PROBE, f.k, cols, j, i, tail=(C,))  # noqa: E731
            draws.append(_sample(head, zs["conditional"], terms, probe, draft))
        unc = torch.stack(draws).std(0).mean(-1)
    if head.discrete:
        branches["combined"] = f.pred
    uncertainty = _scatter(unc, rows, cols, unc.float(), (B, L))
    path = None
    if opts.path_token is not None and not head.discrete:
        b, pos = opts.path_token
        if b >= B or pos >= L:
            raise ValueError(f"path_token ({b}, {pos}) is outside the run: {B} samples of {L} tokens")
        if bool(mask[b, pos]):
            path = _path(head, f, b, pos, terms, rows, cols, full if bool(f.revealed[b, pos]) else draft)
    return StepAnatomy(p, masked.float() * p, drawn, f.sigma, f.remask_count, score, noise, rank, branches, raw,
                       weights, uncertainty, path,
                       {"conditional": f.z, **{BRANCH_OF[r]: v for r, v in f.refs.items()}} if opts.rescore else None)


def _sample(head, z: Tensor, terms, noise: Callable[[int], Tensor], opts: HeadOptions) -> Tensor:
    return head.sample(z, noise, guides=list(terms), temperature=opts.temperature, solver=opts.solver,
                       steps=opts.steps)


def _split_sample(head, z, terms, noise, revealed_row: Tensor, full: HeadOptions, draft: HeadOptions) -> Tensor:
    """Values for the selected rows with the draft's solver choice: the full solver for the rows revealed
    at this step, the draft solver for the others (as the step's draft)."""
    out = _sample(head, z, terms, noise, full)
    if draft == full:
        return out
    return torch.where(revealed_row.unsqueeze(-1), out, _sample(head, z, terms, noise, draft))


def _path(head, f: StepFacts, b: int, pos: int, terms, rows: Tensor, cols: Tensor, opts: HeadOptions) -> Tensor:
    """The requested token's value after each solver step, with its own guide terms and noise."""
    i = int(((rows == b) & (cols == pos)).nonzero()[0, 0])
    C = f.pred.shape[-1]
    noise = lambda j: rng.normal(f.seeds[b:b + 1], rng.STREAM_WHAT, f.k, cols[i:i + 1], j, tail=(C,))  # noqa: E731
    seen: list[Tensor] = []
    one = tuple(Term(t.name, t.z[i:i + 1], t.weight[i:i + 1]) for t in terms)
    head.sample(f.z[b:b + 1, pos], noise, guides=list(one), temperature=opts.temperature, solver=opts.solver,
                steps=opts.steps, on_step=lambda _, x: seen.append(x[0].clone()))
    return torch.stack(seen)
