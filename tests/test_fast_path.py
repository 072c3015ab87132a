"""The fast path of `sample()` against the step generator: the same tokens (fp32, CPU) at any batch
size, for the eMIGM-like and the MaskGIT-like settings, with CFG and self-guidance; no host sync
after the plan; the head only on the tokens a step reveals; the graph-replay path (emulated on the
CPU: static buffers and padded shapes, no capture) equal to the eager one; device and memory errors."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch.overrides import TorchFunctionMode

from emigm.core.devices import DeviceMemoryError, resolve_precision
from emigm.core.guidance import GuidanceConfig
from emigm.core.presets import get_preset
from emigm.nn.model import MaskedGenerator
from emigm.nn.smoother import Smoother, config_for
from emigm.sample import sampler as sampler_mod
from emigm.sample.graphs import bucket, cache_for
from emigm.sample.passes import Networks
from emigm.sample.sampler import SamplerConfig, sample, sample_steps


def make(preset: str, seed: int = 0, **backbone) -> MaskedGenerator:
    cfg = get_preset(preset)
    if backbone:
        cfg = replace(cfg, backbone=replace(cfg.backbone, **backbone))
    torch.manual_seed(seed)
    model = MaskedGenerator(cfg).eval()
    with torch.no_grad():  # zero-initialised AdaLN layers would make every output ignore its input
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def smoother_for(model: MaskedGenerator, seed: int = 1) -> Smoother:
    torch.manual_seed(seed)
    sm = Smoother(config_for(model)).eval()
    with torch.no_grad():  # away from the identity start, so that self-guidance changes the sample
        for p in sm.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return sm


@pytest.fixture(scope="module")
def emigm_like():
    return make("test-tiny")


@pytest.fixture(scope="module")
def maskgit_like():
    model = make("test-tiny-vq", mae=False)  # MaskGIT: a plain bidirectional transformer
    return model, smoother_for(model)


EMIGM = (SamplerConfig(num_steps=8, schedule="exp", count_rule="binomial", order="random", head_steps=5),
         GuidanceConfig(cfg_scale=3.0, cfg_interval=(0.1, 0.6)))
MASKGIT = (SamplerConfig(num_steps=6, schedule="cosine", count_rule="exact", order="confidence"),
           GuidanceConfig(cfg_scale=2.0, sg_scale=1.0, sg_interval=(0.0, 0.7)))


def assert_tokens_close(got: torch.Tensor, want: torch.Tensor, tol: float = 1e-5) -> None:
    """Equal to float rounding: max |got - want| <= tol x max |want| (a norm-wise bound, as the head's
    matrix products over a different set of rows round differently, and random-weight heads make
    tokens of very different sizes)."""
    assert got.shape == want.shape and got.dtype == want.dtype
    err, ref = (got - want).abs().max().item(), max(1.0, want.abs().max().item())
    assert err <= tol * ref, f"max error {err:.3g} vs {tol} x {ref:.3g}"


def _inputs(batch: int):
    return [(3 * i + 1) % 10 for i in range(batch)], [100 + 7 * i for i in range(batch)]


@pytest.mark.parametrize("batch", [1, 3, 5])
@pytest.mark.parametrize("draft", [True, False])
def test_fast_equals_generator_emigm_like(emigm_like, batch, draft):
    cfg, g = EMIGM
    cfg = replace(cfg, draft=draft)
    labels, seeds = _inputs(batch)
    states = list(sample_steps(emigm_like, labels, seeds, cfg, g))
    fast = sample(emigm_like, labels, seeds, cfg, g)
    assert fast.draft is None and fast.step == states[-1].step
    for name in ("mask_before", "mask_after", "revealed"):
        assert torch.equal(getattr(fast, name), getattr(states[-1], name)), name
    assert_tokens_close(fast.tokens, states[-1].tokens)
    assert (fast.passes, fast.head_evals) == (states[-1].passes, states[-1].head_evals)
    assert states[-1].passes == 8 + sum(st.cfg_active for st in states)


@pytest.mark.parametrize("batch", [1, 3, 5])
def test_fast_equals_generator_maskgit_like(maskgit_like, batch):
    model, sm = maskgit_like
    cfg, g = MASKGIT
    labels, seeds = _inputs(batch)
    states = list(sample_steps(Networks(model, sm), labels, seeds, cfg, g))
    fast = sample(Networks(model, sm), labels, seeds, cfg, g)
    assert torch.equal(fast.tokens, states[-1].tokens) and torch.equal(fast.mask_after, states[-1].mask_after)
    assert fast.passes == states[-1].passes and any(st.sg_active for st in states)
    # self-guidance acts: the same run without it differs
    plain = sample(model, labels, seeds, cfg, replace(g, sg_scale=0.0))
    assert batch == 1 or not torch.equal(plain.tokens, fast.tokens)


def test_fast_path_is_batch_invariant(emigm_like, maskgit_like):
    cfg, g = EMIGM
    labels, seeds = _inputs(5)
    big = sample(emigm_like, labels, seeds, cfg, g)
    for i in (0, 4):
        one = sample(emigm_like, labels[i:i + 1], seeds[i:i + 1], cfg, g)
        assert_tokens_close(one.tokens[0], big.tokens[i])
    model, sm = maskgit_like
    big = sample(Networks(model, sm), labels, seeds, *MASKGIT)
    one = sample(Networks(model, sm), labels[2:3], seeds[2:3], *MASKGIT)
    assert torch.equal(one.tokens[0], big.tokens[2])


@pytest.mark.parametrize("cfg", [
    SamplerConfig(num_steps=5, order="fixed", count_rule="exact", head_solver="ddpm", head_steps=4),
    SamplerConfig(num_steps=6, schedule="linear", head_solver="dpm2m", head_steps=3),
])
def test_fast_equals_generator_other_orders_and_solvers(emigm_like, cfg):
    g = GuidanceConfig(cfg_scale=2.0, cfg_schedule="linear")
    states = list(sample_steps(emigm_like, [2, 5], [9, 10], cfg, g))
    fast = sample(emigm_like, [2, 5], [9, 10], cfg, g)
    assert torch.equal(fast.mask_after, states[-1].mask_after)
    assert_tokens_close(fast.tokens, states[-1].tokens)


class SyncSpy(TorchFunctionMode):
    """Records calls that make the host wait for the device on CUDA: reading values (item, bool, int,
    float, index, tolist), copies to the host (cpu, numpy, to("cpu")), data-dependent shapes (nonzero,
    masked_select, unique, boolean-mask indexing), and tensors made from Python data on a device
    (torch.tensor / as_tensor copy from pageable host memory and wait for the stream)."""

    READS = {"item", "__bool__", "__int__", "__float__", "__index__", "tolist", "cpu", "numpy", "nonzero",
             "masked_select", "unique", "unique_consecutive", "repeat_interleave"}

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        if name in self.READS:
            self.calls.append(name)
        elif name in ("tensor", "as_tensor") and args and not isinstance(args[0], torch.Tensor):
            self.calls.append(f"{name}(python data)")
        elif name in ("to", "copy_") and any(str(a) == "cpu" for a in (*args[1:], *kwargs.values())):
            self.calls.append(f"{name}(cpu)")
        elif name in ("__getitem__", "__setitem__", "index_put") and len(args) > 1:
            index = args[1] if isinstance(args[1], tuple) else (args[1],)
            if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in index):
                self.calls.append(f"{name}(bool mask)")
        return func(*args, **kwargs)


@pytest.mark.parametrize("which", ["emigm", "maskgit", "emigm-graphs"])
def test_no_host_sync_after_the_plan(emigm_like, maskgit_like, monkeypatch, which):
    spy = SyncSpy()
    plan = sampler_mod.make_plan

    def plan_then_spy(*args, **kwargs):
        out = plan(*args, **kwargs)
        spy.__enter__()  # from here to the end of sample(): the loop and the final state
        return out

    monkeypatch.setattr(sampler_mod, "make_plan", plan_then_spy)
    labels, seeds = _inputs(3)
    try:
        if which == "maskgit":
            model, sm = maskgit_like
            sample(Networks(model, sm), labels, seeds, *MASKGIT)
        else:
            sample(emigm_like, labels, seeds, *EMIGM, graphs=which.endswith("graphs"))
    finally:
        spy.__exit__(None, None, None)
    assert spy.calls == []


def test_the_plain_generator_checks_itself_too(emigm_like):
    """The sync spy does see a sync: reading a value inside the loop is reported."""
    spy = SyncSpy()
    with spy:
        for st in sample_steps(emigm_like, [1], [2], SamplerConfig(num_steps=3)):
            st.done  # bool(mask.any()): a host read
    assert "__bool__" in spy.calls


def _count_head_rows(model):
    rows = []
    handle = model.head.net.input_proj.register_forward_hook(lambda m, a, out: rows.append(a[0].shape[0]))
    return rows, handle


def test_head_runs_only_on_revealed_tokens(emigm_like):
    cfg, g = EMIGM
    labels, seeds = _inputs(4)
    states = list(sample_steps(emigm_like, labels, seeds, replace(cfg, draft=False), g))
    rows, handle = _count_head_rows(emigm_like)
    try:
        sample(emigm_like, labels, seeds, cfg, g)
    finally:
        handle.remove()
    evals = cfg.head_steps
    want = [int(st.revealed.sum()) * (2 if st.cfg_active else 1) for st in states for _ in range(evals)]
    assert rows == want
    # the explorer's drafts sample every masked token instead
    rows, handle = _count_head_rows(emigm_like)
    try:
        list(sample_steps(emigm_like, labels, seeds, cfg, g))
    finally:
        handle.remove()
    assert sum(rows) > sum(want)


def test_graph_replay_equals_eager_with_padded_shapes(emigm_like, maskgit_like):
    """graphs=True on the CPU: static buffers, shapes padded to buckets, no capture. The same tokens
    as the eager fast path; a second run with other seeds reuses captured shapes and is still right."""
    assert [bucket(n, 10**6) for n in (0, 1, 16, 17, 130, 1000)] == [0, 16, 16, 32, 144, 1024]
    assert bucket(40, 16) == 16
    cfg, g = EMIGM
    for labels, seeds in (_inputs(3), ([4, 4, 1], [7, 8, 9])):
        eager = sample(emigm_like, labels, seeds, cfg, g)
        replay = sample(emigm_like, labels, seeds, cfg, g, graphs=True)
        assert torch.equal(replay.mask_after, eager.mask_after)
        assert_tokens_close(replay.tokens, eager.tokens)
    cache = cache_for(emigm_like, torch.device("cpu"))
    assert 0 < cache.captures < 2 * 2 * cfg.num_steps  # shapes were shared across steps and runs
    model, sm = maskgit_like
    labels, seeds = _inputs(3)
    eager = sample(Networks(model, sm), labels, seeds, *MASKGIT)
    replay = sample(Networks(model, sm), labels, seeds, *MASKGIT, graphs=True)
    assert torch.equal(replay.tokens, eager.tokens)
    ddpm = replace(cfg, head_solver="ddpm", head_steps=3)  # more than one noise draw per head call
    assert_tokens_close(sample(emigm_like, [1], [3], ddpm, graphs=True).tokens, sample(emigm_like, [1], [3], ddpm).tokens)


def test_precision_choices_and_errors():
    cpu = torch.device("cpu")
    assert resolve_precision(cpu, "auto") is None and resolve_precision(cpu, "fp32") is None
    with pytest.raises(ValueError, match=r"^precision bf16 \(autocast\) runs on CUDA devices only, not on cpu; "
                                         r"use precision fp32 \(or auto\) there$"):
        resolve_precision(cpu, "bf16")
    with pytest.raises(ValueError, match="unknown precision 'fp8'; valid: auto, fp32, bf16, fp16"):
        resolve_precision(cpu, "fp8")
    model = make("test-tiny")
    with pytest.raises(ValueError, match="runs on CUDA devices only"):
        sample(model, [1], [0], SamplerConfig(num_steps=2), precision="bf16")
    with pytest.raises(ValueError, match="graphs=True needs the fast path"):
        sample(model, [1], [0], SamplerConfig(num_steps=2), fast=False, graphs=True)


def test_out_of_memory_is_one_line_naming_the_batch(emigm_like, monkeypatch):
    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB ...")

    monkeypatch.setattr(sampler_mod, "_step", oom)
    for run in (lambda: sample(emigm_like, [1] * 6, 0, SamplerConfig(num_steps=2)),
                lambda: list(sample_steps(emigm_like, [1] * 6, 0, SamplerConfig(num_steps=2)))):
        with pytest.raises(DeviceMemoryError) as e:
            run()
        assert str(e.value) == "sampling with batch 6 does not fit in the memory of cpu; use a smaller batch (e.g. 3)"


@pytest.mark.parametrize("k", [0, 3])
def test_fast_branch_equals_generator_branch(emigm_like, maskgit_like, k):
    """Branching with the fast path from step k continues exactly as the generator does from that state,
    and as the unbranched run (same settings): the fast path's init= handling, in the fast suite."""
    model, sm = maskgit_like
    for net, (cfg, g) in ((emigm_like, EMIGM), (Networks(model, sm), MASKGIT)):
        labels, seeds = _inputs(3)
        states = list(sample_steps(net, labels, seeds, cfg, g))
        fast = sample(net, labels, seeds, cfg, g, init=states[k])
        gen = list(sample_steps(net, labels, seeds, cfg, g, init=states[k]))
        assert [st.step for st in gen] == list(range(k + 1, cfg.num_steps))
        for want in (gen[-1], states[-1]):
            assert torch.equal(fast.mask_before, want.mask_before) and torch.equal(fast.revealed, want.revealed)
            assert_tokens_close(fast.tokens, want.tokens)
            assert (fast.passes, fast.head_evals) == (want.passes, want.head_evals)
