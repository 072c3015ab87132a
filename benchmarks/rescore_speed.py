"""Re-scoring an opened step (emigm.sample.rescore) against opening it again: wall time per shipped model.

    python benchmarks/rescore_speed.py                       # every shipped model, 9 repeats, 1 thread
    python benchmarks/rescore_speed.py --load 2 --repeats 15 # with 2 busy-loop processes beside it

For each model at its suggested settings (16 steps; fmnist-maskgit also with self-guidance 0.5), batch 1:
the step at half the run is opened once with AnatomyOptions(rescore=True) (a network pass: the cost of
re-running the step), then re-scored at the run's settings and at each change (temperature, CFG scale,
order, Gumbel temperature), each timed as the median of the repeats. `--load N` starts N busy-loop
processes first (the target: the step view redrawn in <= 150 ms at load 2) and prints the 1-minute load
average seen. Re-scoring includes the probabilities of a categorical head.
"""
from __future__ import annotations

import argparse
import dataclasses
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
from emigm.sample.options import AnatomyOptions  # noqa: E402
from emigm.sample.rescore import rescore  # noqa: E402
from emigm.sample.sampler import SamplerConfig, sample_steps  # noqa: E402

MODELS = ("fmnist-emigm", "fmnist-emigm-mini", "fmnist-maskgit")


def _burn(stop) -> None:
    x = 0
    while not stop.is_set():
        x = (x * 1103515245 + 12345) % 2**31


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--load", type=int, default=0, help="busy-loop processes beside the measurement")
    p.add_argument("--models", nargs="*", default=list(MODELS))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    stop = mp.Event()
    burners = [mp.Process(target=_burn, args=(stop,), daemon=True) for _ in range(a.load)]
    for b in burners:
        b.start()
    try:
        rows = []
        for name in a.models:
            pipe = load_pipeline(name)
            rule = pipe.sampling_rule
            sampler = SamplerConfig(num_steps=16, **rule)
            guidance = GuidanceConfig(cfg_scale=3.0, cfg_interval=(0.0, 1.0),
                                      sg_scale=0.5 if pipe.smoother is not None else 0.0)
            k = 8
            states = []
            for st in sample_steps(pipe, [0], [0], sampler, guidance):
                states.append(st)
                if len(states) == k:
                    break

            def open_step():
                it = sample_steps(pipe, [0], [0], sampler, guidance, init=states[k - 1],
                                  anatomy=AnatomyOptions(rescore=True))
                out = next(it)
                it.close()
                return out

            opened = open_step()
            t_open = _median_ms(open_step, a.repeats)
            changes = {"own settings": (sampler, guidance),
                       "temperature 0.5": (dataclasses.replace(sampler, temperature=0.5), guidance),
                       "CFG 5": (sampler, dataclasses.replace(guidance, cfg_scale=5.0))}
            if pipe.model.head.discrete:
                margin = dataclasses.replace(sampler, order="margin", order_temperature=0.0)
                changes["order margin"] = (margin, guidance)
                changes["Gumbel tau 1"] = (dataclasses.replace(sampler, order_temperature=1.0), guidance)
            else:
                changes["order halton"] = (dataclasses.replace(sampler, order="halton"), guidance)
            for what, (s, g) in changes.items():
                ms = _median_ms(lambda: rescore(pipe, opened, s, g), a.repeats)
                rows.append((name, what, ms, t_open))
        load = os.getloadavg()[0]
    finally:
        stop.set()
        for b in burners:
            b.join()
    print(f"re-scoring one opened step, batch 1, {a.threads} thread(s), median of {a.repeats}; "
          f"{a.load} busy process(es) beside it, 1-min load average {load:.2f}")
    print("| model | change | re-score ms | re-open the step (network pass) ms |")
    print("|---|---|---|---|")
    for name, what, ms, t_open in rows:
        print(f"| {name} | {what} | {ms:.1f} | {t_open:.1f} |")


if __name__ == "__main__":
    main()
