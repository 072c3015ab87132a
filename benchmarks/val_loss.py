"""Validation loss of training runs: the recipe-pilot yardstick.

For each run folder, loads its newest checkpoint (EMA weights) and computes the training loss on a
fixed set of Fashion-MNIST TEST images with fixed masks and noise, at several fixed masking times t
(ceil(L gamma(t)) tokens masked), so runs of different sizes and lengths compare on exactly the same numbers. Prints one row
per run: steps, wall seconds, the loss at each t and their mean.

    python benchmarks/val_loss.py runs/pilot-a runs/pilot-b --images 512
"""
from __future__ import annotations

import argparse
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from emigm.core.config import RunConfig, from_dict  # noqa: E402
from emigm.core.fileio import ASSETS_DIR
from emigm.core.schedules import get_schedule  # noqa: E402
from emigm.core.statedict import load_state_dict_strict  # noqa: E402
from emigm.data.datasets import build_dataset  # noqa: E402
from emigm.io.runs import list_checkpoints, load_checkpoint  # noqa: E402
from emigm.nn.model import MaskedGenerator  # noqa: E402
from emigm.tokenize.tokenizers import build_tokenizer  # noqa: E402

TIMES = (0.3, 0.5, 0.7, 0.9)


@torch.no_grad()
def val_loss(run_dir: str, images: int, seed: int = 0) -> dict:
    ckpts = list_checkpoints(run_dir)
    if not ckpts:
        raise SystemExit(f"{run_dir}: no checkpoints")
    ck = load_checkpoint(ckpts[-1][1])
    cfg = from_dict(RunConfig, ck["config"])
    model = MaskedGenerator(cfg)
    load_state_dict_strict(model, ck["ema"], "EMA")
    model.eval()
    tok = build_tokenizer(cfg.tokenizer, str(ASSETS_DIR)).eval()
    data = build_dataset(cfg.data, cfg.tokenizer, "test")
    x = torch.stack([data[i][0] for i in range(images)])
    y = torch.stack([torch.as_tensor(data[i][1]) for i in range(images)])
    tokens = tok.encode(x)
    out = {"run": os.path.basename(run_dir.rstrip("/")), "steps": ck["step"], "seconds": ck["elapsed"]}
    L = cfg.tokenizer.num_tokens
    schedule = get_schedule(cfg.masking.schedule)
    for t in TIMES:
        g = torch.Generator().manual_seed(seed)
        count = math.ceil(L * float(schedule.gamma(torch.tensor(0.999 * t + 0.001))))
        losses = []
        for lo in range(0, images, 128):
            hi = min(images, lo + 128)
            keys = torch.rand(hi - lo, L, generator=g)
            mask = keys.argsort(1).argsort(1) < count  # `count` positions per image, fixed by the seed
            loss = model.loss(tokens[lo:hi], mask, y[lo:hi], torch.zeros(hi - lo, dtype=torch.bool),
                              None, generator=g)
            losses.append(float(loss) * (hi - lo))
        out[f"t={t}"] = sum(losses) / images
    out["mean"] = sum(out[f"t={t}"] for t in TIMES) / len(TIMES)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    rows = [val_loss(r, a.images) for r in a.runs]
    cols = ["run", "steps", "seconds", *[f"t={t}" for t in TIMES], "mean"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{r[c]:.4f}" if isinstance(r[c], float) and c != "seconds" else
                                f"{r[c]:.0f}" if c == "seconds" else str(r[c]) for c in cols) + " |")


if __name__ == "__main__":
    main()
