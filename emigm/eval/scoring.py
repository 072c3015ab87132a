"""Scoring a generator: sample N class-balanced images and measure them with the shipped
Fashion-MNIST classifier (FD on its penultimate features, class accuracy, k-NN precision/recall),
beside the real-data floor at the same N. Backs `python -m emigm evaluate` and the benchmarks.

Under torchrun (a process group started by emigm.core.distributed.init_from_env) the N samples are
split over the ranks by index: rank r makes samples [r N / W, (r + 1) N / W), each with its own seed
(seed + index), so the union is the one-process sample set; each rank runs the classifier on its
share and rank 0 gathers the features, in index order, and computes the metrics."""
from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import torch

from emigm.core import distributed as dist
from emigm.core.fields import check_number
from emigm.core.fileio import ASSETS_DIR
from emigm.core.guidance import GuidanceConfig
from emigm.core.progress import Stage
from emigm.core.seeds import check_seed
from emigm.data.datasets import load_fashion_mnist, to_unit_range
from emigm.eval.evaluation import (
    classifier_outputs,
    dataset_features,
    load_classifier,
    real_data_floor,
    score_features,
    seam_ratio,
    seam_ratio_of_sums,
    seam_sums,
)
from emigm.nn.budget import MAX_IMAGES, MAX_SAMPLES, check_sampling_size
from emigm.sample.checks import check_finite
from emigm.sample.passes import as_networks
from emigm.sample.sampler import SamplerConfig, sample, sample_steps


def generate(net, tokenizer, num_samples: int, sampler: SamplerConfig, guidance: GuidanceConfig,
             batch_size: int = 250, seed: int = 0, part: tuple[int, int] | None = None, progress: bool = True
             ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Class-balanced samples: image i has class i % classes and seed seed + i (so any batch size
    gives the same images). net: what the sampler runs (a loaded model bundle, Networks or a bare
    model). part (lo, hi): only images lo .. hi - 1 of the N (a rank's share; default all).
    Returns images (n, C, H, W) on the CPU, labels (n,), and cost figures."""
    nets = as_networks(net)
    model = nets.model
    label = getattr(net, "label", "") or model.cfg.name
    check_request(model, num_samples, sampler, guidance, batch_size, seed)
    lo, hi = (0, num_samples) if part is None else part
    if not 0 <= lo <= hi <= num_samples:
        raise ValueError(f"part ({lo}, {hi}) is not a range of the {num_samples} samples")
    device = next(model.parameters()).device
    labels = torch.arange(lo, hi) % model.num_classes
    images, passes, head_evals = [], 0, 0
    sampler = replace(sampler, draft=False)
    start = time.perf_counter()
    with Stage(f"sampling {label}", total=hi - lo, unit="img", enabled=progress and dist.info_from_env().is_main,
               detail=f"{sampler.num_steps} steps, batches of {batch_size}") as stage:
        for b in range(lo, hi, batch_size):
            e = min(hi, b + batch_size)
            batch_labels, batch_seeds = labels[b - lo:e - lo], [seed + i for i in range(b, e)]
            state = sample(nets, batch_labels, batch_seeds, sampler, guidance)
            with torch.inference_mode():
                images.append(tokenizer.decode(state.tokens).float().cpu())
            check_finite(label, state.tokens, images[-1],  # the step is found only after a failure
                         rerun=lambda: sample_steps(nets, batch_labels, batch_seeds, sampler, guidance))
            passes, head_evals = state.passes, state.head_evals
            stage.update(e - b)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    images = torch.cat(images) if images else torch.zeros(0, tokenizer.channels, tokenizer.image_size,
                                                          tokenizer.image_size)
    return images, labels, {"passes": passes, "head_evals": head_evals, "seconds": seconds,
                            "images_per_s": (hi - lo) / seconds if seconds > 0 else 0.0}


def shard(num_samples: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rank `rank`'s share (lo, hi) of N sample indices: contiguous, sizes differing by at most one."""
    return rank * num_samples // world_size, (rank + 1) * num_samples // world_size


def check_request(model, num_samples: int, sampler: SamplerConfig, guidance: GuidanceConfig, batch_size: int,
                  seed: int, names: tuple[str, str, str] = ("num_samples", "batch_size", "seed")) -> None:
    """Refuse, before any work, a sample count, batch size or seed out of range, or a batch whose
    memory estimate does not fit (emigm.nn.budget). `names`: how the caller spells the three."""

    check_number(names[0], num_samples, 1, MAX_SAMPLES, integer=True)
    check_number(names[1], batch_size, 1, MAX_IMAGES, integer=True)
    check_seed(names[2], seed, num_samples)
    batch = min(batch_size, num_samples)
    check_sampling_size(model.cfg, batch, replace(sampler, draft=False), guidance, next(model.parameters()).device,
                        f"{names[1]} {batch}", keep_steps=False)


def evaluate_generator(net, tokenizer, num_samples: int, sampler: SamplerConfig, guidance: GuidanceConfig,
                       data_root: str | None = None, classifier_path: str | None = None,
                       batch_size: int = 250, seed: int = 0, floor: bool = True, progress: bool = True
                       ) -> dict[str, Any]:
    """FD, class accuracy, precision, recall of N samples of `net` (as `generate`) vs the test set; NFE;
    images/s; and the real-data floor (N training images vs the test set) at the same N.

    With a process group running, every rank calls this with the same arguments: each samples and
    classifies its `shard`, rank 0 gathers the features and scores them, and every rank returns rank
    0's result (equal to a one-process run's up to float rounding; bit for bit where the shards fall
    on the one-process batch boundaries). images/s: N over the slowest rank's sampling time."""
    check_request(as_networks(net).model, num_samples, sampler, guidance, batch_size, seed)
    if (tokenizer.channels, tokenizer.image_size) != (1, 28):
        raise ValueError(f"the Fashion-MNIST classifier scores 1 x 28 x 28 images; this model makes "
                         f"{tokenizer.channels} x {tokenizer.image_size} x {tokenizer.image_size}")
    classifier = load_classifier(classifier_path or ASSETS_DIR / "classifier")
    # every input is checked before sampling, on every rank (so no rank waits on one that failed): the
    # data (test split, and the training split for the floor) and the classifier's features of it
    with Stage("scoring the test images (the reference)", enabled=progress and dist.is_main()):
        ref, _ = dataset_features(classifier, data_root, "test", min(num_samples, 10000))
    if floor:
        load_fashion_mnist(data_root, "train")
    part = shard(num_samples, dist.rank(), dist.world_size())
    images, labels, cost = generate(net, tokenizer, num_samples, sampler, guidance, batch_size, seed, part, progress)
    period = tokenizer.image_size // tokenizer.grid  # pixels per token side: where token seams would show
    with Stage("scoring the samples with the classifier", total=len(images), unit="img",
               enabled=progress and dist.is_main()) as stage:
        feats, logits = classifier_outputs(classifier, images) if len(images) else (None, None)
        stage.update(len(images))
    mine = {"part": part, "feats": feats, "logits": logits, "labels": labels, "cost": cost,
            "seams": seam_sums(images, period) if len(images) else (0.0, 0, 0.0, 0)}
    del images
    shares = sorted((s for s in dist.all_gather_objects(mine) if s["feats"] is not None), key=lambda s: s["part"])
    result = None
    if dist.is_main():
        scores = score_features(torch.cat([s["feats"] for s in shares]), torch.cat([s["logits"] for s in shares]),
                                torch.cat([s["labels"] for s in shares]), ref)
        seconds = max(s["cost"]["seconds"] for s in shares)
        seams = tuple(sum(s["seams"][i] for s in shares) for i in range(4))
        result = {**scores, "passes": shares[0]["cost"]["passes"], "head_evals": shares[0]["cost"]["head_evals"],
                  "seconds": seconds, "images_per_s": num_samples / seconds if seconds > 0 else 0.0,
                  "seam_ratio": seam_ratio_of_sums(seams), "ranks": dist.world_size(),
                  "shards": [list(s["part"]) for s in shares]}
        if floor:
            n = min(num_samples, 10000)
            with Stage(f"scoring {n} training images (the real-data floor)", enabled=progress):
                fl = real_data_floor(classifier, data_root, n)
            real = to_unit_range(load_fashion_mnist(data_root, "test")[0][:n])
            result["floor"] = {**{k: fl[k] for k in ("fd", "class_accuracy", "precision", "recall")},
                               "seam_ratio": seam_ratio(real, period)}
    return dist.all_gather_objects(result)[0]
