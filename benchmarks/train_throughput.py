"""Training throughput: images/s and ms/step of `emigm.train.train` for a few presets.

Runs each preset for a few steps in a temporary run folder (checkpoint time excluded, the first step
excluded as warm-up) and prints a table. Presets whose data or tokenizer weights are missing are
reported as skipped.

    python benchmarks/train_throughput.py                       # fmnist-emigm, fmnist-maskgit
    python benchmarks/train_throughput.py --steps 20 --device cuda --presets fmnist-emigm
    python benchmarks/train_throughput.py --override train.batch_size 128 --override train.precision fp32
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from emigm.config import apply_overrides  # noqa: E402
from emigm.presets import get_preset  # noqa: E402
from emigm.train import train  # noqa: E402


def measure(preset: str, steps: int, device: str, overrides: list[tuple[str, str]]) -> dict:
    cfg = apply_overrides(get_preset(preset), [("train.steps", steps), ("train.log_every", steps),
                                               ("train.ckpt_every", steps), *overrides])
    with tempfile.TemporaryDirectory() as tmp:
        out = train(cfg, os.path.join(tmp, "run"), device=device, command="benchmark", progress=False)
    return {"preset": preset, "device": out["device"], "batch": cfg.train.batch_size,
            "precision": cfg.train.precision if out["device"] != "cpu" else "fp32",
            "images_per_s": out["images_per_s"], "ms_per_step": out["ms_per_step"], "loss": out["final_loss"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["fmnist-emigm", "fmnist-maskgit"])
    p.add_argument("--steps", type=int, default=20, help="steps per preset (the first is warm-up)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--override", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"))
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    rows = []
    for preset in a.presets:
        try:
            rows.append(measure(preset, a.steps, a.device, [tuple(o) for o in a.override]))
        except (FileNotFoundError, ValueError) as e:
            print(f"skipped {preset}: {e}", file=sys.stderr)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {a.steps} steps per preset")
    print(f"{'preset':<16} {'device':<28} {'batch':>5} {'prec':>5} {'images/s':>9} {'ms/step':>9}")
    for r in rows:
        print(f"{r['preset']:<16} {r['device']:<28} {r['batch']:>5} {r['precision']:>5} "
              f"{r['images_per_s']:>9.1f} {r['ms_per_step']:>9.1f}")


if __name__ == "__main__":
    main()
