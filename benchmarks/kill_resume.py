"""A `train-sg` run killed (SIGKILL) several times and resumed, against an uninterrupted one.

    python3 benchmarks/kill_resume.py [--kills 3] [--steps 12] [--base fmnist-maskgit]

Runs `python -m emigm train-sg` on a small config (batch 8, a checkpoint every 2 steps) in a temporary
folder: once straight through, and once killed with SIGKILL after the metrics log reaches given steps
(each kill lands between checkpoints, so the resumed run repeats the steps since its last checkpoint),
then re-run with the same command until it finishes. Prints, per attempt, the step it was killed at
and the checkpoint it resumed from, and whether the two exports' weights are byte-identical and the
metrics (loss, lr, grad norm per step; not the timings) equal. Exit code 1 if they differ.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def command(base: str, run_dir: Path, steps: int) -> list[str]:
    return [sys.executable, "-m", "emigm", "train-sg", "--base", base, "--device", "cpu", "--out-dir", str(run_dir),
            "--no-progress", "--train.steps", str(steps), "--train.batch_size", "8", "--train.warmup_steps", "1",
            "--train.log_every", "1", "--train.ckpt_every", "2"]


def metric_steps(run_dir: Path) -> int:
    try:
        return len((run_dir / "metrics.jsonl").read_text().splitlines())
    except OSError:
        return 0


def metrics(run_dir: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [{k: v for k, v in r.items() if k not in ("images_per_s", "elapsed")} for r in rows]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=3)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--base", default="fmnist-maskgit")
    a = p.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        whole, killed = Path(tmp) / "whole", Path(tmp) / "killed"
        subprocess.run(command(a.base, whole, a.steps), cwd=ROOT, env=env, check=True, capture_output=True)
        targets = [round(a.steps * (i + 1) / (a.kills + 1)) + (1 if i % 2 == 0 else 0) for i in range(a.kills)]
        print(f"train-sg --base {a.base}, {a.steps} steps of 8, a checkpoint every 2 steps; "
              f"{a.kills} SIGKILLs then a plain re-run")
        print(f"{'attempt':>7} {'resumed from':>15} {'killed at step':>15}")
        for i, target in enumerate(targets + [None]):
            ckpts = sorted(n for n in os.listdir(killed) if n.startswith("ckpt-")) if killed.is_dir() else []
            proc = subprocess.Popen(command(a.base, killed, a.steps), cwd=ROOT, env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            at = "(finished)"
            if target is not None:
                while metric_steps(killed) < target and proc.poll() is None:
                    time.sleep(0.02)
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                at = str(metric_steps(killed))
            else:
                _, err = proc.communicate()
                if proc.returncode != 0:
                    print(err.decode()[-2000:])
                    return 1
            print(f"{i + 1:>7} {ckpts[-1] if ckpts else '(start)':>15} {at:>15}")
        same_weights = (whole / "export" / "model.safetensors").read_bytes() == \
            (killed / "export" / "model.safetensors").read_bytes()
        same_metrics = metrics(whole) == metrics(killed)
        print(f"export weights byte-identical to the uninterrupted run: {same_weights}")
        print(f"metrics (loss, lr, grad norm at each of {a.steps} steps) equal: {same_metrics}")
        return 0 if same_weights and same_metrics else 1


if __name__ == "__main__":
    sys.exit(main())
