"""Inpainting wall time per shipped model, as the explorer runs it: encode the picture, stream the run with
drafts, decode every step's draft (what the player shows), until the last step.

    python benchmarks/inpaint_speed.py                     # every shipped model, test image 0, mask left, ring 1
    python benchmarks/inpaint_speed.py --seeds 4 --repeats 5 --load 2

Each cell is the median of the repeats, one torch thread. `--load N` starts N busy-loop processes first
and the 1-minute load average seen is printed (the machine's other work counts too).
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emigm.core.guidance import GuidanceConfig  # noqa: E402
from emigm.io.loading import load_pipeline  # noqa: E402
from emigm.io.pictures import encode_picture, fmnist_picture  # noqa: E402
from emigm.sample.inpaint import add_ring, inpaint_state, painted_count, parse_mask, steps_for  # noqa: E402
from emigm.sample.sampler import SamplerConfig, sample_steps  # noqa: E402

MODELS = ("fmnist-emigm", "fmnist-emigm-fakecfg", "fmnist-emigm-mini", "fmnist-emigm-mini-fakecfg", "fmnist-maskgit")


def _burn(stop) -> None:
    x = 0
    while not stop.is_set():
        x = (x * 1103515245 + 12345) % 2**31


def once(pipe, index: int, spec: str, ring: int, seeds: int) -> tuple[float, float, int]:
    """(seconds to the first decoded frame, seconds to the last, steps) of one inpainting run."""
    t0 = time.perf_counter()
    picture = fmnist_picture(index)
    tokens = encode_picture(pipe, picture)
    tokens = tokens.expand(seeds, *tokens.shape[1:]).clone()
    mask = add_ring(parse_mask(spec, pipe.model.num_tokens), ring)
    sampler = SamplerConfig(num_steps=steps_for(painted_count(mask), None), **pipe.sampling_rule)
    guidance = GuidanceConfig(**pipe.guidance_rule)
    labels, seed_list = [picture.label] * seeds, list(range(seeds))
    init = inpaint_state(tokens, mask, labels, seed_list, sampler, guidance)
    first = None
    with torch.inference_mode():
        for st in sample_steps(pipe, labels, seed_list, sampler, guidance, init=init):
            pipe.tokenizer.decode(st.draft)
            first = first or time.perf_counter() - t0
    return first, time.perf_counter() - t0, sampler.num_steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="*", default=list(MODELS))
    p.add_argument("--index", type=int, default=0)
    p.add_argument("--mask", default="left")
    p.add_argument("--ring", type=int, default=1)
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--load", type=int, default=0)
    a = p.parse_args()
    torch.set_num_threads(1)
    stop = mp.Event()
    burners = [mp.Process(target=_burn, args=(stop,), daemon=True) for _ in range(a.load)]
    for b in burners:
        b.start()
    rows = []
    try:
        for name in a.models:
            pipe = load_pipeline(name)
            once(pipe, a.index, a.mask, a.ring, a.seeds)  # warm-up
            runs = [once(pipe, a.index, a.mask, a.ring, a.seeds) for _ in range(a.repeats)]
            rows.append((name, runs[0][2], statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)))
        load = os.getloadavg()[0]
    finally:
        stop.set()
        for b in burners:
            b.join()
    print(f"inpainting test image {a.index}, mask {a.mask}, ring {a.ring}, {a.seeds} seed(s), one thread, median of "
          f"{a.repeats}; {a.load} busy process(es) beside it, 1-min load average {load:.2f}")
    print("| model | steps | first frame s | last frame s |")
    print("|---|---|---|---|")
    for name, steps, first, last in rows:
        print(f"| {name} | {steps} | {first:.3f} | {last:.3f} |")


if __name__ == "__main__":
    main()
