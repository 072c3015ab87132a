"""Sampler speed: images/s and ms per step, random weights, printed as a table.

    python benchmarks/sampler.py                     # CPU suite: fmnist-emigm, batch 1 / 16 / 64
    python benchmarks/sampler.py --device cuda       # GPU suite: in256-b, 16 steps x 1.2, batch 64 / 256
    python benchmarks/sampler.py --preset fmnist-emigm --batch 1 --steps 16 --repeats 5

Each row times full runs of the sampler (16 steps, CFG 4.0 in (0.1, 0.3] -> 19 passes unless
overridden) after one warm-up run, by three paths: fast = `sample()` (no drafts, no per-step state, no
host sync after the plan); plain = the step generator `sample_steps` without drafts; explorer = the
step generator with drafts (the head on every masked token), as the app runs it. The precision is the
same for all three (fp32 on the CPU, bf16 autocast on CUDA). benchmarks/gpu_sampler.py is the GPU suite
with FLOP counts and CUDA graphs.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from emigm.core.presets import get_preset  # noqa: E402
from emigm.nn.model import MaskedGenerator  # noqa: E402
from emigm.sample.sampler import GuidanceConfig, SamplerConfig, sample  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


PATHS = ("fast", "plain", "explorer")


def bench(preset: str, batch: int, steps: int, head_steps: int, path: str, device: torch.device,
          dtype: str, repeats: int, interval: tuple[float, float]) -> dict:
    torch.manual_seed(0)
    model = MaskedGenerator(get_preset(preset)).to(device).eval()
    sampler = SamplerConfig(num_steps=steps, head_steps=head_steps, draft=path == "explorer")
    guidance = GuidanceConfig(cfg_scale=4.0, cfg_interval=interval)
    labels = torch.arange(batch) % model.num_classes

    def run(seed: int):
        return sample(model, labels, seed, sampler, guidance, fast=path == "fast", precision=dtype)

    state = run(0)  # warm-up
    _sync(device)
    times = []
    for r in range(repeats):
        t0 = time.perf_counter()
        state = run(1000 * (r + 1))
        _sync(device)
        times.append(time.perf_counter() - t0)
    best = min(times)
    return {"preset": preset, "device": str(device), "dtype": dtype, "batch": batch, "steps": steps,
            "passes": state.passes, "path": path, "s_per_run": best, "images_per_s": batch / best,
            "ms_per_step": 1000 * best / steps}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--preset", default="")
    p.add_argument("--batch", type=int, nargs="*", default=None)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--head-steps", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dtype", default="", help="fp32 or bf16 (default: fp32 on CPU, bf16 on CUDA)")
    p.add_argument("--cfg-interval", nargs=2, type=float, default=(0.1, 0.3))
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda requested but CUDA is not available")
    preset = a.preset or ("in256-b" if device.type == "cuda" else "fmnist-emigm")
    batches = a.batch or ([64, 256] if device.type == "cuda" else [1, 16, 64])
    dtype = a.dtype or ("bf16" if device.type == "cuda" else "fp32")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    print(f"{'preset':<14} {'dtype':<5} {'batch':>5} {'steps':>5} {'passes':>6} {'path':>8} "
          f"{'s/run':>8} {'img/s':>8} {'ms/step':>8}")
    for b in batches:
        for path in a.paths:
            r = bench(preset, b, a.steps, a.head_steps, path, device, dtype, a.repeats, tuple(a.cfg_interval))
            print(f"{r['preset']:<14} {r['dtype']:<5} {r['batch']:>5} {r['steps']:>5} {r['passes']:>6} "
                  f"{r['path']:>8} {r['s_per_run']:>8.3f} {r['images_per_s']:>8.2f} {r['ms_per_step']:>8.2f}",
                  flush=True)


if __name__ == "__main__":
    main()
