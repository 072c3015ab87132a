"""Replaying the sampler's network pass and head solver as CUDA graphs, one per padded shape.

Why: a step launches hundreds of small kernels (every transformer block; a head solver of 8 network
calls of a few layers each); at small batches the GPU waits for Python. Every shape inside a step is
known on the host before the loop (emigm.sample.sampler plans the counts), so each piece is captured once
per shape and replayed. Shapes are padded to buckets (`bucket`) so that runs with other seeds meet
graphs already captured: the MAE encoder's length (padding is hidden from attention, as rows of
unequal length already are) and the head's rows (padded rows are sampled and discarded).

Graphs are kept per (model, device) for the life of the model, with one shared memory pool. Inside a
graph, autocast runs without its weight cache (a replay must not read a cache freed after capture).
On a CPU the same static-buffer replay runs eagerly, without capture: the CPU tests check it
(padding, static buffers, outputs consumed before the next replay of their shape).
"""
from __future__ import annotations

import math
import weakref
from typing import Callable

import torch

from emigm.core.devices import autocast
from emigm.core.guidance import Term
from emigm.sample.passes import Conditions, HeadOptions, Networks, head_pass, network_pass

Tensor = torch.Tensor
_CACHES: "weakref.WeakKeyDictionary[torch.nn.Module, dict[str, GraphCache]]" = weakref.WeakKeyDictionary()


def bucket(size: int, cap: int) -> int:
    """size rounded up to a multiple of max(16, 2^(bits - 4)) (at most 1/8 more, past 128), at most cap."""
    q = max(16, 1 << max(0, size.bit_length() - 4))
    return min(cap, math.ceil(size / q) * q)


class GraphCache:
    """fn(*inputs) per key, replayed from static input buffers; the outputs are static buffers too,
    overwritten by the next call with the same key."""

    def __init__(self, device: torch.device, warmup: int = 1) -> None:
        self.device, self.warmup = device, warmup
        self.entries: dict = {}
        self.pool = None
        self.captures = 0

    def __call__(self, key, fn: Callable[..., tuple[Tensor, ...]], inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        key = (key, tuple((tuple(x.shape), x.dtype) for x in inputs))
        entry = self.entries.get(key)
        if entry is None:
            static = tuple(x.clone() for x in inputs)
            graph, out = self._capture(fn, static) if self.device.type == "cuda" else (None, fn(*static))
            entry = self.entries[key] = (static, graph, out, fn)
            self.captures += 1
        static, graph, out, _ = entry
        for buf, x in zip(static, inputs):
            buf.copy_(x)
        if graph is not None:
            graph.replay()
        else:
            for buf, fresh in zip(out, fn(*static)):
                buf.copy_(fresh)
        return out

    def _capture(self, fn, static):
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):  # warm-up off the capture: library handles, autotuning
            for _ in range(self.warmup):
                fn(*static)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            out = fn(*static)
        if self.pool is None:
            self.pool = graph.pool()
        return graph, tuple(out)


def cache_for(model: torch.nn.Module, device: torch.device) -> GraphCache:
    """The graphs of `model` on `device` (kept while the model lives)."""
    per_model = _CACHES.setdefault(model, {})
    return per_model.setdefault(str(device), GraphCache(device))


def replayed(nets: Networks, conds: Conditions, dtype, head_opts: HeadOptions):
    """(network, head, pad) for emigm.sample.sampler's step: the same network_pass / head_pass, replayed
    per padded shape. The head's noise draws are made before the replay (they are addressed by
    sample, step and position, so the values do not depend on padding)."""
    model = nets.model
    device = conds.cond.device
    cache = cache_for(model, device)
    head = model.head
    draws = head.noise_draws(head_opts.solver, head_opts.steps)
    fixed = (id(nets.smoother), dtype, head_opts)

    def network(tokens: Tensor, mask: Tensor, num_visible: int, references: tuple[str, ...],
                select: Tensor | None):
        def fn(tokens, mask, cond, null_cond, labels, *select):
            with autocast(device, dtype, cache=False):
                z, refs = network_pass(nets, Conditions(cond, null_cond, labels), tokens, mask,
                                       num_visible=num_visible, references=references,
                                       select=select[0] if select else None)
                return (z, *refs)
        extra = () if select is None else (select,)
        z, *refs = cache(("network", num_visible, references, fixed), fn,
                         (tokens, mask, conds.cond, conds.null_cond, conds.labels, *extra))
        return z, tuple(refs)

    def head_fn(z: Tensor, terms: tuple[Term, ...], noise: Callable[[int], Tensor], opts: HeadOptions):
        if opts != head_opts:
            raise ValueError("CUDA-graph replay samples with one head setting (the fast path's)")
        n, names = len(terms), tuple(t.name for t in terms)
        stack = torch.stack([noise(i) for i in range(draws)])

        def fn(z, stack, *rest):
            with autocast(device, dtype, cache=False):
                return head_pass(head, z, tuple(Term(nm, r, w) for nm, r, w in zip(names, rest[:n], rest[n:])),
                                 lambda i: stack[i], head_opts)
        return cache(("head", names, fixed), fn, (z, stack, *(t.z for t in terms), *(t.weight for t in terms)))

    return network, head_fn, bucket
