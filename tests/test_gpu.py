"""GPU checks (marked `gpu`; skipped without CUDA): the sampler and training step run on the device
of the model and agree with the CPU."""
import pytest
import torch

from emigm.model import MaskedGenerator
from emigm.presets import get_preset
from emigm.sampler import GuidanceConfig, SamplerConfig, sample

pytestmark = pytest.mark.gpu


def _model(preset: str) -> MaskedGenerator:
    torch.manual_seed(0)
    model = MaskedGenerator(get_preset(preset)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("preset,order", [("test-tiny", "random"), ("test-tiny-vq", "confidence")])
def test_sampler_on_cuda_matches_cpu(preset, order):
    cpu = _model(preset)
    gpu = _model(preset).cuda()
    cfg, g = SamplerConfig(num_steps=6, order=order), GuidanceConfig(cfg_scale=3.0, cfg_interval=(0.1, 0.6))
    a = sample(cpu, [1, 2, 3], [5, 6, 7], cfg, g)
    b = sample(gpu, [1, 2, 3], [5, 6, 7], cfg, g)
    assert b.tokens.device.type == "cuda" and b.mask_after.device.type == "cuda"
    assert torch.equal(a.mask_after, b.mask_after.cpu())
    if order == "random":  # the where-stream is device independent: the same positions every step
        torch.testing.assert_close(a.tokens, b.tokens.cpu(), atol=1e-3, rtol=1e-3)


def test_training_runs_on_cuda(tmp_path):
    import math

    from emigm.config import apply_overrides
    from emigm.train import train

    cfg = apply_overrides(get_preset("test-tiny"), [("train.steps", 3), ("data.limit", 16), ("train.precision", "bf16")])
    out = train(cfg, tmp_path / "run", device="cuda", progress=False)
    assert out["step"] == 3 and math.isfinite(out["final_loss"]) and out["device"].startswith("cuda")
