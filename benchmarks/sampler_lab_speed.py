"""Sampler speed, side by side: the fast path, the step generator with drafts (what the explorer runs) and
with each step's anatomy, against the fast path of an earlier commit, on the same random weights.

    python benchmarks/sampler_lab_speed.py                          # against commit 1a03afb, 5 repeats
    python benchmarks/sampler_lab_speed.py --baseline 1a03afb --repeats 7 --threads 1

Settings (as the issue that set the targets): the fmnist-emigm network (width 192, 3 + 3 blocks, head
2 x 128) on 4 x 4 pixel-patch tokens of 32 x 32 and 64 x 64 images, i.e. 64 and 256 tokens; batch 4 and
16; 16 steps, CFG 4 in (0.1, 0.3] (19 passes), DPM-Solver++ 8 head steps; fp32, one torch thread.
The baseline commit is exported (git archive) into a temporary folder and runs in its own process; both
processes hold the same weights (this tree's random init, passed as a file). Repeats are interleaved
(one run of every variant, then the next round) and each cell is the median over the rounds.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

WORKER = r'''
import json, sys, time, torch
sys.path.insert(0, sys.argv[1])
torch.set_num_threads(int(sys.argv[3]))
new = sys.argv[2] == "new"
if new:
    from emigm.core.config import apply_overrides
    from emigm.core.presets import get_preset
    from emigm.nn.model import MaskedGenerator
    from emigm.sample.options import AnatomyOptions
    from emigm.sample.sampler import GuidanceConfig, SamplerConfig, sample, sample_steps
else:
    from emigm.config import apply_overrides
    from emigm.presets import get_preset
    from emigm.model import MaskedGenerator
    from emigm.sampler import GuidanceConfig, SamplerConfig, sample, sample_steps
models = {}
def model(L):
    if L not in models:
        side = {64: 32, 256: 64}[L]
        cfg = apply_overrides(get_preset("fmnist-emigm"), [("tokenizer.kind", "patch"), ("tokenizer.path", ""),
                              ("tokenizer.image_size", str(side)), ("tokenizer.patch_size", "4"),
                              ("tokenizer.latent_channels", "0"), ("data.image_size", str(side))])
        m = MaskedGenerator(cfg).eval()
        m.load_state_dict(torch.load(sys.argv[4] + f"-{L}.pt"))
        models[L] = m
    return models[L]
for line in sys.stdin:
    job = json.loads(line)
    m, B = model(job["L"]), job["B"]
    g = GuidanceConfig(cfg_scale=4.0, cfg_interval=(0.1, 0.3))
    labels = torch.arange(B) % 10
    v = job["variant"]
    sc = SamplerConfig(num_steps=16, head_steps=8, draft=v != "fast", **({"draft_steps": 1} if v == "drafts1" else {}))
    t0 = time.perf_counter()
    if v == "fast":
        sample(m, labels, job["seed"], sc, g)
    else:
        kw = {"anatomy": AnatomyOptions()} if v == "anatomy" else {}
        for _ in sample_steps(m, labels, job["seed"], sc, g, **kw):
            pass
    print(json.dumps({"s": time.perf_counter() - t0}), flush=True)
'''


def weights(prefix: str) -> None:
    """This tree's random init of both networks, saved for both workers."""
    import torch

    sys.path.insert(0, str(ROOT))
    from emigm.core.config import apply_overrides
    from emigm.core.presets import get_preset
    from emigm.nn.model import MaskedGenerator

    for L, side in ((64, 32), (256, 64)):
        cfg = apply_overrides(get_preset("fmnist-emigm"), [("tokenizer.kind", "patch"), ("tokenizer.path", ""),
                              ("tokenizer.image_size", str(side)), ("tokenizer.patch_size", "4"),
                              ("tokenizer.latent_channels", "0"), ("data.image_size", str(side))])
        torch.manual_seed(0)
        model = MaskedGenerator(cfg)
        with torch.no_grad():  # zero-initialised output layers would make the head trivially cheap to skip
            for p in model.parameters():
                p.add_(0.02 * torch.randn_like(p))
        torch.save(model.state_dict(), f"{prefix}-{L}.pt")


class Worker:
    def __init__(self, tree: Path, kind: str, threads: int, prefix: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", WORKER, str(tree), kind, str(threads), prefix],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env={**os.environ, "OMP_NUM_THREADS": str(threads)})

    def run(self, **job) -> float:
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("a benchmark worker died (see its error above)")
        return json.loads(line)["s"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", default="1a03afb", help="the commit whose fast path is the baseline")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tokens", type=int, nargs="+", default=[64, 256])
    p.add_argument("--batch", type=int, nargs="+", default=[4, 16])
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "baseline"
        old.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", a.baseline], capture_output=True, check=True)
        subprocess.run(["tar", "x", "-C", str(old)], input=archive.stdout, check=True)
        prefix = str(Path(tmp) / "weights")
        weights(prefix)
        workers = {"new": Worker(ROOT, "new", a.threads, prefix), "old": Worker(old, "old", a.threads, prefix)}
        variants = [("new", "fast"), ("new", "drafts"), ("new", "drafts1"), ("new", "anatomy"), ("old", "fast")]
        cells = [(L, B) for L in a.tokens for B in a.batch]
        times: dict = {}
        for L, B in cells:  # warm-up: first calls build the models and allocate
            for w, v in variants:
                workers[w].run(L=L, B=B, variant=v, seed=0)
        for r in range(a.repeats):
            for L, B in cells:
                for w, v in variants:
                    times.setdefault((L, B, w, v), []).append(workers[w].run(L=L, B=B, variant=v, seed=1000 * (r + 1)))
        for w in workers.values():
            w.close()
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"medians of {a.repeats} interleaved repeats, {a.threads} thread(s); baseline {a.baseline}")
    print("drafts: draft_steps 2 (the default); drafts1: draft_steps 1 (one head evaluation per preview)")
    print(f"{'tokens':>6} {'batch':>5} {'fast s':>8} {'drafts s':>9} {'drafts/fast':>11} {'drafts1/fast':>12} "
          f"{'anatomy s':>10} {'anat/fast':>9} {'base fast s':>11} {'base/fast':>9}")
    for L, B in cells:
        f, d, d1, an, o = (med[(L, B, w, v)] for w, v in variants)
        print(f"{L:>6} {B:>5} {f:>8.3f} {d:>9.3f} {d / f:>11.2f} {d1 / f:>12.2f} {an:>10.3f} {an / f:>9.2f} "
              f"{o:>11.3f} {o / f:>9.2f}")


if __name__ == "__main__":
    main()
