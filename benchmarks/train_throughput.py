"""Training throughput: images/s and ms/step of `emigm.train.generator.train` for a few presets.

Runs each preset for a few steps in a temporary run folder (checkpoint time excluded, the first step
excluded as warm-up) and prints a table. Presets whose data or tokenizer weights are missing are
reported as skipped.

    python benchmarks/train_throughput.py                       # fmnist-emigm, fmnist-maskgit
    python benchmarks/train_throughput.py --steps 20 --device cuda --presets fmnist-emigm
    python benchmarks/train_throughput.py --override train.batch_size 128 --override train.precision fp32
    python benchmarks/train_throughput.py --presets in256-b --latents synthetic --device cuda  # no data set needed
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from emigm.core.config import apply_overrides  # noqa: E402
from emigm.core.presets import get_preset  # noqa: E402
from emigm.train.generator import train  # noqa: E402


def synthetic_latents(folder: str, cfg, n: int = 0) -> str:
    """A latent cache of random encoder moments shaped for cfg's tokenizer (kl16 / dcae), so that the
    ImageNet presets' training speed can be measured without ImageNet or the VAE."""
    from emigm.data.datasets import SyntheticDataset, cache_latents

    tk = cfg.tokenizer
    shape = (tk.latent_channels, tk.grid, tk.grid)
    gen = torch.Generator().manual_seed(0)

    def encode(x):
        mean = torch.randn(x.shape[0], *shape, generator=gen)
        return mean, torch.full_like(mean, -4.0)

    return str(cache_latents(SyntheticDataset(n or 2 * cfg.train.batch_size, 8, 3), encode, folder, batch_size=64))


def measure(preset: str, steps: int, device: str, overrides: list[tuple[str, str]], latents: str = "") -> dict:
    base = get_preset(preset)  # a short run: the warm-up may not outlast it (train.warmup_steps <= train.steps)
    cfg = apply_overrides(base, [("train.steps", steps), ("train.warmup_steps", min(base.train.warmup_steps, steps)),
                                 ("train.log_every", steps), ("train.ckpt_every", steps), *overrides])
    if latents == "synthetic":
        folder = tempfile.mkdtemp(prefix="latents-")
        cfg = apply_overrides(cfg, [("data.cache_latents", synthetic_latents(folder, cfg))])
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
    p.add_argument("--threads", type=int, nargs="+", default=[0],
                   help="torch intra-op threads, one row each (0: torch's default)")
    p.add_argument("--compile", nargs="+", default=["off"], choices=["off", "on"],
                   help="train.compile off / on (torch.compile of the backbone and the head), one row each")
    p.add_argument("--override", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"))
    p.add_argument("--latents", default="", choices=["", "synthetic"],
                   help="synthetic: random KL-16 / DC-AE latents for the ImageNet presets (speed only)")
    p.add_argument("--json", default="", help="also write the rows here")
    a = p.parse_args()
    rows = []
    default_threads = torch.get_num_threads()
    for preset in a.presets:
        for threads in a.threads:
            for comp in a.compile:
                torch.set_num_threads(threads or default_threads)
                overrides = [tuple(o) for o in a.override] + [("train.compile", comp == "on")]
                try:
                    r = measure(preset, a.steps, a.device, overrides, a.latents)
                except (FileNotFoundError, ValueError, RuntimeError) as e:
                    print(f"skipped {preset} (threads {threads}, compile {comp}): {str(e).splitlines()[0]}",
                          file=sys.stderr)
                    continue
                rows.append({**r, "threads": torch.get_num_threads(), "compile": comp})
    print(f"torch {torch.__version__}, {a.steps} steps per row (the first is warm-up)")
    print(f"{'preset':<16} {'device':<28} {'thr':>3} {'compile':>7} {'batch':>5} {'prec':>5} {'images/s':>9} {'ms/step':>9}")
    for r in rows:
        print(f"{r['preset']:<16} {r['device']:<28} {r['threads']:>3} {r['compile']:>7} {r['batch']:>5} {r['precision']:>5} "
              f"{r['images_per_s']:>9.1f} {r['ms_per_step']:>9.1f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
