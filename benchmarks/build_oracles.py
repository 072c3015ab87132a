"""Build an oracle model's reference set (emigm.nn.oracle): encode the first P Fashion-MNIST training images
of each class with the shipped tokenizer and write references.safetensors + oracle.json.

    python3 benchmarks/build_oracles.py --kind codes --per-class 6000 --eps 0.1 --out assets/fmnist-oracle
    python3 benchmarks/build_oracles.py --kind latents --per-class 1000 --sigma 0.3 --out assets/fmnist-oracle-kl

Training images 50000-59999 are never references (the scans in README score held-out reconstructions
from them as the tokenizer's own FD)."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emigm.core.presets import get_preset  # noqa: E402
from emigm.data.datasets import load_fashion_mnist, to_unit_range  # noqa: E402
from emigm.io.loading import build_model_tokenizer  # noqa: E402
from emigm.nn.oracle import ReferenceSet, write_oracle  # noqa: E402

HELD_OUT = 50000  # training images from here on are never references


def encode_references(kind: str, per_class: int, data_root: str | None = None) -> ReferenceSet:
    images, labels = load_fashion_mnist(data_root, "train")
    labels_t = torch.from_numpy(labels[:HELD_OUT])
    idx = torch.cat([torch.nonzero(labels_t == c).squeeze(1)[:per_class] for c in range(10)]).sort().values
    cfg = get_preset("fmnist-maskgit" if kind == "codes" else "fmnist-emigm")
    tok = build_model_tokenizer(cfg, None, "cpu")
    out = [tok.encode(to_unit_range(images[idx[i:i + 1000].numpy()])) for i in range(0, len(idx), 1000)]
    return ReferenceSet(torch.cat(out), labels_t[idx], 10, tok.codebook_size if kind == "codes" else 0)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--kind", choices=("codes", "latents"), required=True)
    p.add_argument("--per-class", type=int, required=True)
    p.add_argument("--eps", type=float, default=None)
    p.add_argument("--sigma", type=float, default=None)
    p.add_argument("--why", default="", help="one line: why this kernel width and size (stored in oracle.json)")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    kernel = a.eps if a.kind == "codes" else a.sigma
    if kernel is None:
        sys.exit("error: give --eps for codes, --sigma for latents")
    start = time.perf_counter()
    refs = encode_references(a.kind, a.per_class)
    write_oracle(a.out, refs, kernel, {"built_by": "python3 benchmarks/build_oracles.py " + " ".join(sys.argv[1:]),
                                       "why": a.why})
    print(f"wrote {a.out}: {len(refs.labels)} references ({a.per_class} per class), {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
