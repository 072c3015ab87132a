"""Explorer speed on this machine: time to first frame, a full 16-step single-image run with interval
CFG (sampling, then every view built), exports, and the guidance comparison, through the app's handlers,
for the app's default model (fmnist-emigm when shipped) or --model NAME (and its -fakecfg twin).

    python benchmarks/app_speed.py [--repeats 3] [--threads 1] [--model NAME]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app import controls  # noqa: E402
from app.compare import CONTROLS as COMPARE_CONTROLS  # noqa: E402
from app.compare import Compare
from app.engine import Engine  # noqa: E402
from app.unmask import Unmasking  # noqa: E402

MODELS = ["fmnist-emigm", "fmnist-emigm-fakecfg"]  # --model NAME replaces them by NAME and NAME-fakecfg


def run_values(**over):
    values = {"model": MODELS[0], "class_name": "Sneaker", **controls.DEFAULTS}
    values.update(num_steps=16, cfg_scale=3.0, cfg_interval_lo=0.1, cfg_interval_hi=0.3)
    values.update(over)
    return values


def timed_run(h: Unmasking, values):
    """-> (first frame s, last step sampled s, every view built s, trajectory), through the app's handler."""
    outs = None
    t0 = time.perf_counter()
    stamps = []
    for outs in h.run(**values):
        stamps.append(time.perf_counter() - t0)
    # live yields (at most one per LIVE_EVERY_S), then one with every view
    return stamps[0], stamps[-2], stamps[-1], outs[4]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads while sampling (the app's default: 1; "
                                                          "0: torch's default)")
    p.add_argument("--model", default="", help="a shipped model, export folder or preset; its -fakecfg "
                                                           "twin is the fake-class panel")
    a = p.parse_args()
    if a.model:
        engine = Engine([a.model, a.model + "-fakecfg"], num_threads=a.threads or None)
    else:  # what the app offers by default: fmnist-emigm when shipped, else the first shipped model
        engine = Engine(num_threads=a.threads or None)
    MODELS[:] = engine.names[:2]
    weights = "random init" if engine.is_random(MODELS[0]) else "shipped weights"
    t = time.perf_counter()
    for m in MODELS:
        engine.load(m)
    load_s = time.perf_counter() - t
    h, cmp = Unmasking(engine), Compare(engine)
    med = statistics.median
    rows = []

    runs = [timed_run(h, run_values(seed=i)) for i in range(a.repeats)]
    nfe = runs[0][3].last.passes
    rows.append(("time to first frame (16 steps, interval CFG)", f"{1000 * med(r[0] for r in runs):.0f} ms"))
    sampled = med(r[1] for r in runs)
    rows.append((f"16-step run, CFG 3 in (0.1, 0.3], NFE {nfe} = 16 x {nfe / 16:.3g}: sampled",
                 f"{sampled:.2f} s ({1000 * sampled / 16:.0f} ms/step)"))
    rows.append(("  ... with every view built (scrubber figure, JSON)", f"{med(r[2] for r in runs):.2f} s"))
    full = [timed_run(h, run_values(seed=i, cfg_interval_lo=0.0, cfg_interval_hi=1.0)) for i in range(a.repeats)]
    rows.append((f"16-step run, CFG 3 at every step, NFE {full[0][3].last.passes}: sampled",
                 f"{med(r[1] for r in full):.2f} s"))
    t = time.perf_counter()
    h.export(runs[-1][3])
    rows.append(("exports (GIF, PNG strip, JSON trace)", f"{time.perf_counter() - t:.2f} s"))
    for n in (1, 4):
        times = []
        for i in range(a.repeats if n == 1 else 1):
            t = time.perf_counter()
            values = {**controls.DEFAULTS, "model": MODELS[0], "class_name": "Sneaker", "seed": i, "num_seeds": n,
                      "panel_a": "none", "panel_b": "interval"}
            out = list(cmp.compare(**{k: values[k] for k in COMPARE_CONTROLS}))
            times.append(time.perf_counter() - t)
        nfes = "+".join(str(p["nfe"]) for p in out[-1][2]["panels"] if p["available"])
        rows.append((f"compare: 4 panels x {n} seed{'s' if n > 1 else ''} (NFE {nfes}), views included",
                     f"{med(times):.2f} s"))

    load = os.getloadavg()
    print(f"{MODELS[0]} ({weights}) on CPU, {a.threads or 'default'} torch thread(s) of {os.cpu_count()} cores, "
          f"load average {load[0]:.1f}; both models loaded in {load_s:.2f} s; median of {a.repeats} runs")
    width = max(len(r[0]) for r in rows)
    print(f"{'measurement':<{width}}  time")
    print("-" * (width + 24))
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()
