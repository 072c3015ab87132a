"""GPU sampler benchmark: the paper presets with random weights, the plain loop and the fast path side
by side, images/s, ms/step, useful TFLOP/s and the fraction of the chip's measured bf16 matrix rate.

    python benchmarks/gpu_sampler.py --device cuda                      # in256-b and in256-l, all settings
    python benchmarks/gpu_sampler.py --device cuda --presets in256-b --paths fast graphs
    python benchmarks/gpu_sampler.py --smoke                            # tiny CPU dry run of the same code

Settings (eMIGM's released sampling settings, 256 tokens of KL-16 latents):
  16 x 1.2: 16 steps, exp schedule, DPM-Solver++ 8 head steps, CFG 4.0 in (0.1, 0.3] (19 passes),
            batch 64 and 256;
  128 steps: DPM-Solver++ 14 head steps, CFG 4.0 in (0.05, 0.4] (173 passes), batch 64.
Paths: plain = the step generator (`sample_steps`, drafts off, the same precision); fast = `sample()`;
graphs = `sample(graphs=True)` (CUDA graphs per padded shape). Each row: one warm-up run with its FLOPs
counted (torch.utils.flop_counter: matrix products and attention, i.e. the useful work; padding
excluded), then `repeats` timed runs with other seeds, median reported. The reference sampler (ML-GSAI/
eMIGM, fp16 autocast, one H100) measured 33 / 65 img/s for eMIGM-B at 16 x 1.2 (batch 64 / 256), 3.3 img/s
at 128 steps, and 45 img/s for eMIGM-L at 16 x 1.2, batch 256.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from emigm.core.devices import device_name, memory_guard, resolve_device, resolve_precision  # noqa: E402
from emigm.core.guidance import GuidanceConfig  # noqa: E402
from emigm.core.presets import get_preset  # noqa: E402
from emigm.nn.model import MaskedGenerator  # noqa: E402
from emigm.sample.sampler import SamplerConfig, sample  # noqa: E402


@dataclass(frozen=True)
class Setting:
    name: str
    batch: int
    sampler: SamplerConfig
    guidance: GuidanceConfig


def settings(smoke: bool = False) -> list[Setting]:
    if smoke:  # the same three shapes of run, tiny
        s16 = SamplerConfig(num_steps=4, head_steps=2, draft=False)
        s128 = SamplerConfig(num_steps=8, head_steps=3, draft=False)
        return [Setting("16x1.2", 2, s16, GuidanceConfig(cfg_scale=4.0, cfg_interval=(0.1, 0.5))),
                Setting("16x1.2", 4, s16, GuidanceConfig(cfg_scale=4.0, cfg_interval=(0.1, 0.5))),
                Setting("128", 2, s128, GuidanceConfig(cfg_scale=4.0, cfg_interval=(0.05, 0.4)))]
    s16 = SamplerConfig(num_steps=16, schedule="exp", head_solver="dpm", head_steps=8, draft=False)
    s128 = SamplerConfig(num_steps=128, schedule="exp", head_solver="dpm", head_steps=14, draft=False)
    g16 = GuidanceConfig(cfg_scale=4.0, cfg_interval=(0.1, 0.3))
    return [Setting("16x1.2", 64, s16, g16), Setting("16x1.2", 256, s16, g16),
            Setting("128", 64, s128, GuidanceConfig(cfg_scale=4.0, cfg_interval=(0.05, 0.4)))]


# (preset, setting, batch) -> (reference img/s, our target img/s), one H100 (spec: measured reference speed)
REFERENCE = {("in256-b", "16x1.2", 64): (33.0, 100.0), ("in256-b", "16x1.2", 256): (65.0, 230.0),
             ("in256-b", "128", 64): (3.3, 33.0), ("in256-l", "16x1.2", 256): (45.0, None)}
PATHS = ("fast", "plain", "graphs")  # graphs last: a capture that fails costs no other row


def random_model(preset: str, device: torch.device, seed: int = 0) -> MaskedGenerator:
    """The preset with random weights, every tensor nudged by N(0, 0.02) so that no layer is all zeros
    (zero-initialised layers compute faster than real ones on some chips)."""
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        model = MaskedGenerator(get_preset(preset)).eval().requires_grad_(False)
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(device: torch.device, precision: str) -> float:
    """Measured TFLOP/s of a large matrix product in the run's precision: the ceiling we compare to."""
    n = 8192 if device.type == "cuda" else 512
    dtype = resolve_precision(device, precision) or torch.float32
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    _sync(device)
    reps, t0 = (20 if device.type == "cuda" else 3), time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12


def run_once(model, st: Setting, path: str, seed: int, precision: str):
    labels = torch.arange(st.batch) % model.num_classes
    seeds = [seed + i for i in range(st.batch)]
    if path == "plain":
        return sample(model, labels, seeds, st.sampler, st.guidance, fast=False, precision=precision)
    return sample(model, labels, seeds, st.sampler, st.guidance, precision=precision, graphs=path == "graphs")


def bench(model, preset: str, st: Setting, path: str, repeats: int, precision: str) -> dict:
    """One row: a counted warm-up run, then `repeats` timed runs (median)."""
    from torch.utils.flop_counter import FlopCounterMode

    device = next(model.parameters()).device
    with memory_guard(st.batch, device, f"{preset} sampling"):
        counter = FlopCounterMode(display=False)
        if path == "graphs":  # replays are invisible to the counter: count the eager fast path
            with counter:
                run_once(model, st, "fast", 0, precision)
        else:
            counter.__enter__()
        try:
            state = run_once(model, st, path, 0, precision)
        finally:
            if path != "graphs":
                counter.__exit__(None, None, None)
        _sync(device)
        times = []
        for r in range(repeats):
            t0 = time.perf_counter()
            state = run_once(model, st, path, 1000 * (r + 1), precision)
            _sync(device)
            times.append(time.perf_counter() - t0)
    sec = statistics.median(times)
    flops = counter.get_total_flops()
    ref, target = REFERENCE.get((preset, st.name, st.batch), (None, None))
    return {"preset": preset, "setting": st.name, "batch": st.batch, "steps": st.sampler.num_steps,
            "head_steps": st.sampler.head_steps, "passes": state.passes, "path": path, "precision": precision,
            "s_per_run": sec, "images_per_s": st.batch / sec, "ms_per_step": 1000 * sec / st.sampler.num_steps,
            "tflop_per_image": flops / st.batch / 1e12, "tflops": flops / sec / 1e12, "repeats": repeats,
            "reference_images_per_s": ref, "target_images_per_s": target}


def run_suite(device: torch.device, presets: list[str], paths: list[str], repeats: int, precision: str,
              smoke: bool = False, deadline: float | None = None, log=print) -> dict:
    """Every (preset, setting, path) row that fits before `deadline` (time.monotonic()); the rest are
    listed as skipped."""
    peak = matmul_rate(device, precision)
    rows, skipped = [], []
    for preset in presets:
        model = random_model(preset, device)
        for st in settings(smoke):
            for path in paths:
                if deadline is not None and time.monotonic() > deadline:
                    skipped.append(f"{preset} {st.name} batch {st.batch} {path}")
                    continue
                try:
                    r = bench(model, preset, st, path, repeats, precision)
                except (RuntimeError, ValueError) as e:  # one failed row (say, a graph capture) is reported
                    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                    skipped.append(f"{preset} {st.name} batch {st.batch} {path}: {type(e).__name__}: {msg[:200]}")
                    log(f"failed: {skipped[-1]}", flush=True)
                    continue
                r["fraction_of_peak"] = r["tflops"] / peak
                rows.append(r)
                log(format_row(r), flush=True)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return {"device": device_name(device), "torch": torch.__version__, "precision": precision,
            "matmul_tflops": peak, "rows": rows, "skipped": skipped}


HEADER = ("| preset | setting | batch | passes | path | img/s | ms/step | TFLOP/img | TFLOP/s | of peak "
          "| reference | target |\n|---|---|---|---|---|---|---|---|---|---|---|---|")


def format_row(r: dict) -> str:
    ref = f"{r['reference_images_per_s']:g}" if r["reference_images_per_s"] else ""
    tgt = r["target_images_per_s"]
    target = f">= {tgt:g}: {'met' if r['images_per_s'] >= tgt else 'missed'}" if tgt and r["path"] != "plain" else ""
    return (f"| {r['preset']} | {r['setting']} | {r['batch']} | {r['passes']} | {r['path']} | "
            f"{r['images_per_s']:.2f} | {r['ms_per_step']:.1f} | {r['tflop_per_image']:.3g} | {r['tflops']:.3g} | "
            f"{100 * r.get('fraction_of_peak', 0):.0f}% | {ref} | {target} |")


def table(result: dict) -> str:
    lines = [f"Sampler on {result['device']}, torch {result['torch']}, {result['precision']}; measured matrix "
             f"rate {result['matmul_tflops']:.0f} TFLOP/s (the 'of peak' column); random weights.", "", HEADER]
    lines += [format_row(r) for r in result["rows"]]
    if result["skipped"]:
        lines += ["", "skipped (time budget) or failed: " + "; ".join(result["skipped"])]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--presets", nargs="+", default=["in256-b", "in256-l"])
    p.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--precision", default="auto", help="auto (bf16 on CUDA), bf16, fp16 or fp32")
    p.add_argument("--budget", type=float, default=0.0, help="seconds; rows past it are skipped (0: none)")
    p.add_argument("--json", default="", help="also write the results here")
    p.add_argument("--smoke", action="store_true", help="tiny CPU dry run: test-tiny, tiny settings")
    a = p.parse_args(argv)
    try:
        if a.smoke:
            a.device, a.presets, a.repeats = "cpu", ["test-tiny"], 1
        device = resolve_device(a.device)
        precision = "bf16" if a.precision == "auto" and device.type == "cuda" else a.precision
        resolve_precision(device, precision)
        deadline = time.monotonic() + a.budget if a.budget > 0 else None
        result = run_suite(device, a.presets, a.paths, a.repeats, precision, a.smoke, deadline)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print()
    print(table(result))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
