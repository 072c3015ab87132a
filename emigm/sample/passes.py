"""The network work of one sampling step, shared by the sampler's eager loop and its CUDA-graph replay
(emigm.sample.graphs): the transformer pass (with the references the active guides need: CFG's null
branch, batched into the same pass, and the smoother's prediction, a second, sequential pass) and the
head's sample for the selected tokens."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import torch

from emigm.core.guidance import Term

Tensor = torch.Tensor


class Networks(NamedTuple):
    """What the sampler runs: the generator network and, for self-guidance, its smoother (or None).
    A loaded model bundle (emigm.io.loading.Pipeline) has both as attributes and is accepted too."""

    model: Any
    smoother: Any = None


def as_networks(net: Any) -> Networks:
    """A MaskedGenerator (no smoother), a Networks, or anything with `.model` and `.smoother`."""
    if isinstance(net, Networks):
        return net
    if hasattr(net, "model") and hasattr(net, "smoother") and not isinstance(net, torch.nn.Module):
        return Networks(net.model, net.smoother)
    return Networks(net, None)


@dataclass(frozen=True)
class Conditions:
    """A run's fixed conditioning: the class condition (B, De), the null condition CFG uses (B, De), and
    the labels (B,) (the smoother's class anchor)."""

    cond: Tensor
    null_cond: Tensor
    labels: Tensor


@dataclass(frozen=True)
class HeadOptions:
    """How the head samples a token: temperature, solver name and solver steps (SamplerConfig fields), and
    the token score an order ranks by (an emigm.sample.orders score function; None: the head's default)."""

    temperature: float
    solver: str
    steps: int
    score: Callable[[Tensor, Tensor], Tensor] | None = None


def network_pass(nets: Networks, c: Conditions, tokens: Tensor, mask: Tensor, *, num_visible: int,
                 references: tuple[str, ...] = (), select: Tensor | None = None) -> tuple[Tensor, tuple[Tensor, ...]]:
    """z (B, L, Dd) of the conditional pass, and the reference z of each name in `references` (a Guide's
    reference: "null" from the null-class rows batched into the same pass, "smoothed" from the smoother's
    second pass, which needs the conditional pass's hidden states). select (B, n): the positions whose z
    is needed (each once per row); the last transformer block computes only those, and z is zero at the
    others. Self-guidance needs every position's hidden state, so it takes no `select`."""
    model, B = nets.model, tokens.shape[0]
    if select is not None and "smoothed" in references:
        raise ValueError("the smoother reads every position's hidden state: no select with self-guidance")
    if "null" in references:
        sel = None if select is None else torch.cat([select, select])
        hidden = model.features(torch.cat([tokens, tokens]), torch.cat([mask, mask]), torch.cat([c.cond, c.null_cond]),
                                num_visible=num_visible, select=sel).hidden
    else:
        sel = select
        hidden = model.features(tokens, mask, c.cond, num_visible=num_visible, select=sel).hidden
    z_all = model.to_z(hidden, sel)
    if sel is not None:
        full = z_all.new_zeros(z_all.shape[0], mask.shape[1], z_all.shape[-1])
        z_all = full.scatter(1, sel.unsqueeze(-1).expand(-1, -1, z_all.shape[-1]), z_all)
    found = {"null": lambda: z_all[B:], "smoothed": lambda: nets.smoother.smooth_z(model, hidden[:B], c.labels)}
    return z_all[:B], tuple(found[r]() for r in references)


def head_pass(head, z: Tensor, terms: tuple[Term, ...], noise: Callable[[int], Tensor],
              opts: HeadOptions) -> tuple[Tensor, ...]:
    """The head's sample for the selected rows, pushed by the guide `terms`: values (M, C) or codes (M,),
    and, for a categorical head, the log-probability of each code (the confidence order's score)."""
    out = head.sample(z, noise, guides=list(terms), temperature=opts.temperature, solver=opts.solver,
                      steps=opts.steps, score=opts.score)
    return tuple(out) if head.discrete else (out,)
