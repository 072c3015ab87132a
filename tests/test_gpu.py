"""GPU checks (marked `gpu`; skipped without CUDA): the sampler and training step run on the device
of the model and agree with the CPU; the fast path on CUDA (bf16 autocast, CUDA graphs, no host sync
after the plan); the device errors. benchmarks/gpu_run.py runs these first on a lent GPU."""
import pytest
import torch

from emigm.core.devices import DeviceMemoryError, resolve_precision
from emigm.core.presets import get_preset
from emigm.nn.model import MaskedGenerator
from emigm.nn.smoother import Smoother, config_for
from emigm.sample import sampler as sampler_mod
from emigm.sample.graphs import cache_for
from emigm.sample.passes import Networks
from emigm.sample.sampler import GuidanceConfig, SamplerConfig, sample, sample_steps

pytestmark = pytest.mark.gpu
DEV = "cuda"


def _model(preset: str, **backbone) -> MaskedGenerator:
    from dataclasses import replace

    cfg = get_preset(preset)
    if backbone:
        cfg = replace(cfg, backbone=replace(cfg.backbone, **backbone))
    torch.manual_seed(0)
    model = MaskedGenerator(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _smoother(model: MaskedGenerator) -> Smoother:
    torch.manual_seed(1)
    sm = Smoother(config_for(model)).eval()
    with torch.no_grad():
        for p in sm.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return sm


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.detach().float().cpu() - want.float().cpu()).norm() / want.float().cpu().norm().clamp(min=1e-12))


EMIGM = (SamplerConfig(num_steps=8, head_steps=5), GuidanceConfig(cfg_scale=3.0, cfg_interval=(0.1, 0.6)))
MASKGIT = (SamplerConfig(num_steps=6, schedule="cosine", count_rule="exact", order="confidence"),
           GuidanceConfig(cfg_scale=2.0, sg_scale=1.0, sg_interval=(0.0, 0.7)))
LABELS, SEEDS = [1, 4, 7, 2, 9], [10, 11, 12, 13, 14]


@pytest.mark.parametrize("preset,order", [("test-tiny", "random"), ("test-tiny-vq", "confidence")])
def test_sampler_on_cuda_matches_cpu(preset, order):
    cpu = _model(preset)
    gpu = _model(preset).to(DEV)
    cfg, g = SamplerConfig(num_steps=6, order=order), GuidanceConfig(cfg_scale=3.0, cfg_interval=(0.1, 0.6))
    a = sample(cpu, [1, 2, 3], [5, 6, 7], cfg, g, fast=False)
    b = sample(gpu, [1, 2, 3], [5, 6, 7], cfg, g, fast=False)
    assert b.tokens.device.type == "cuda" and b.mask_after.device.type == "cuda"
    assert torch.equal(a.mask_after, b.mask_after.cpu())
    if order == "random":  # the where-stream is device independent: the same positions every step
        torch.testing.assert_close(a.tokens, b.tokens.cpu(), atol=1e-3, rtol=1e-3)


def test_fast_path_on_cuda_matches_the_cpu_generator():
    """Random order: the same positions exactly (the where-stream does not depend on the values) and the
    same tokens to fp32 rounding, or to bf16 rounding under bf16 autocast."""
    cpu, gpu = _model("test-tiny"), _model("test-tiny").to(DEV)
    ref = list(sample_steps(cpu, LABELS, SEEDS, *EMIGM))[-1]
    for precision, tol in (("fp32", 1e-4), ("bf16", 0.1)):
        st = sample(gpu, LABELS, SEEDS, *EMIGM, precision=precision)
        assert torch.equal(st.revealed.cpu(), ref.revealed) and torch.equal(st.mask_after.cpu(), ref.mask_after)
        assert torch.isfinite(st.tokens).all() and _rel(st.tokens, ref.tokens) < tol, precision
        assert (st.passes, st.head_evals) == (ref.passes, ref.head_evals)


def test_fast_path_on_cuda_matches_the_cpu_generator_maskgit_like():
    cpu = _model("test-tiny-vq", mae=False)
    gpu = _model("test-tiny-vq", mae=False).to(DEV)
    sm_cpu, sm_gpu = _smoother(cpu), _smoother(gpu).to(DEV)
    ref = list(sample_steps(Networks(cpu, sm_cpu), LABELS, SEEDS, *MASKGIT))[-1]
    st = sample(Networks(gpu, sm_gpu), LABELS, SEEDS, *MASKGIT, precision="fp32")
    assert torch.equal(st.tokens.cpu(), ref.tokens) and torch.equal(st.mask_after.cpu(), ref.mask_after)
    st = sample(Networks(gpu, sm_gpu), LABELS, SEEDS, *MASKGIT)  # bf16: a valid run, every token revealed
    assert not st.mask_after.any() and int(st.tokens.max()) < 16


def test_graph_replay_on_cuda_equals_eager():
    gpu = _model("test-tiny").to(DEV)
    for precision, tol in (("fp32", 1e-4), ("bf16", 2e-2)):
        for seeds in (SEEDS, [s + 100 for s in SEEDS]):  # the second run meets graphs already captured
            eager = sample(gpu, LABELS, seeds, *EMIGM, precision=precision)
            replay = sample(gpu, LABELS, seeds, *EMIGM, precision=precision, graphs=True)
            assert torch.equal(replay.mask_after, eager.mask_after)
            assert _rel(replay.tokens, eager.tokens) < tol, precision
    assert cache_for(gpu, torch.device(DEV, torch.cuda.current_device())).captures > 0
    vq = _model("test-tiny-vq", mae=False).to(DEV)
    sm = _smoother(vq).to(DEV)
    eager = sample(Networks(vq, sm), LABELS, SEEDS, *MASKGIT, precision="fp32")
    replay = sample(Networks(vq, sm), LABELS, SEEDS, *MASKGIT, precision="fp32", graphs=True)
    assert torch.equal(replay.tokens, eager.tokens)


def test_fast_path_has_no_host_sync_on_cuda(monkeypatch):
    """torch's sync debug mode raises on any synchronising call from after the plan to the end."""
    gpu = _model("test-tiny").to(DEV)
    vq = _model("test-tiny-vq", mae=False).to(DEV)
    sm = _smoother(vq).to(DEV)
    runs = [lambda graphs: sample(gpu, LABELS, SEEDS, *EMIGM, graphs=graphs),
            lambda graphs: sample(Networks(vq, sm), LABELS, SEEDS, *MASKGIT, graphs=graphs)]
    for run in runs:
        run(True)  # capture the graphs first (capture itself synchronises)
    plan = sampler_mod._make_plan

    def plan_then_strict(*args, **kwargs):
        out = plan(*args, **kwargs)
        torch.cuda.set_sync_debug_mode("error")
        return out

    monkeypatch.setattr(sampler_mod, "_make_plan", plan_then_strict)
    try:
        for run in runs:
            for graphs in (False, True):
                run(graphs)
                torch.cuda.set_sync_debug_mode(0)
    finally:
        torch.cuda.set_sync_debug_mode(0)


def test_training_runs_on_cuda(tmp_path):
    import math

    from emigm.core.config import apply_overrides
    from emigm.train.generator import train

    cfg = apply_overrides(get_preset("test-tiny"), [("train.steps", 3), ("data.limit", 16), ("train.precision", "bf16")])
    out = train(cfg, tmp_path / "run", device="cuda", progress=False)
    assert out["step"] == 3 and math.isfinite(out["final_loss"]) and out["device"].startswith("cuda")


def test_bf16_on_a_device_without_it_is_refused(monkeypatch):
    dev = torch.device(DEV, torch.cuda.current_device())
    assert resolve_precision(dev, "auto") is torch.bfloat16 and resolve_precision(dev, "fp16") is torch.float16
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    with pytest.raises(ValueError, match=r"^device cuda:\d \(.+\) has no bf16 support \(compute capability 7\.0 "
                                         r"< 8\.0\); use precision fp16 or fp32$"):
        resolve_precision(dev, "bf16")
    assert resolve_precision(dev, "auto") is None


def test_out_of_memory_is_one_line_on_cuda():
    """A batch far beyond the card: one line naming the batch and the device, not a CUDA trace."""
    gpu = _model("test-tiny").to(DEV)
    n = 2**27
    labels = torch.zeros(n, dtype=torch.long, device=DEV)
    with pytest.raises(DeviceMemoryError, match=rf"^sampling with batch {n} does not fit in the memory of "
                                                rf"cuda:\d \(.+\), \d+ GiB; use a smaller batch \(e\.g\. {n // 2}\)$"):
        sample(gpu, labels, torch.arange(n, device=DEV), SamplerConfig(num_steps=2))
