"""Scoring a generator: sample N class-balanced images and measure them with the shipped
Fashion-MNIST classifier (FD on its penultimate features, class accuracy, k-NN precision/recall),
beside the real-data floor at the same N. Backs `python -m emigm evaluate` and the benchmarks."""
from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import torch

from emigm.core.fields import check_number
from emigm.core.fileio import ASSETS_DIR
from emigm.core.guidance import GuidanceConfig
from emigm.core.seeds import check_seed
from emigm.data.datasets import load_fashion_mnist, to_unit_range
from emigm.eval.evaluation import (
    dataset_features,
    evaluate_images,
    load_classifier,
    real_data_floor,
    seam_ratio,
)
from emigm.nn.budget import MAX_IMAGES, MAX_SAMPLES, check_sampling_size
from emigm.sample.checks import check_finite
from emigm.sample.passes import as_networks
from emigm.sample.sampler import SamplerConfig, sample, sample_steps


def generate(net, tokenizer, num_samples: int, sampler: SamplerConfig, guidance: GuidanceConfig,
             batch_size: int = 250, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Class-balanced samples: image i has class i % classes and seed seed + i (so any batch size
    gives the same images). net: what the sampler runs (a loaded model bundle, Networks or a bare
    model). Returns images (N, C, H, W) on the CPU, labels (N,), and cost figures."""
    nets = as_networks(net)
    model = nets.model
    label = getattr(net, "label", "") or model.cfg.name
    check_request(model, num_samples, sampler, guidance, batch_size, seed)
    device = next(model.parameters()).device
    labels = torch.arange(num_samples) % model.num_classes
    images, passes, head_evals = [], 0, 0
    sampler = replace(sampler, draft=False)
    start = time.perf_counter()
    for lo in range(0, num_samples, batch_size):
        hi = min(num_samples, lo + batch_size)
        batch_labels, batch_seeds = labels[lo:hi], [seed + i for i in range(lo, hi)]
        state = sample(nets, batch_labels, batch_seeds, sampler, guidance)
        with torch.inference_mode():
            images.append(tokenizer.decode(state.tokens).float().cpu())
        check_finite(label, state.tokens, images[-1],  # the step is found only after a failure
                     rerun=lambda: sample_steps(nets, batch_labels, batch_seeds, sampler, guidance))
        passes, head_evals = state.passes, state.head_evals
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return torch.cat(images), labels, {"passes": passes, "head_evals": head_evals, "seconds": seconds,
                                       "images_per_s": num_samples / seconds}


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
                       batch_size: int = 250, seed: int = 0, floor: bool = True) -> dict[str, Any]:
    """FD, class accuracy, precision, recall of N samples of `net` (as `generate`) vs the test set; NFE;
    images/s; and the real-data floor (N training images vs the test set) at the same N."""
    check_request(as_networks(net).model, num_samples, sampler, guidance, batch_size, seed)
    if (tokenizer.channels, tokenizer.image_size) != (1, 28):
        raise ValueError(f"the Fashion-MNIST classifier scores 1 x 28 x 28 images; this model makes "
                         f"{tokenizer.channels} x {tokenizer.image_size} x {tokenizer.image_size}")
    classifier = load_classifier(classifier_path or ASSETS_DIR / "classifier")
    ref, _ = dataset_features(classifier, data_root, "test", min(num_samples, 10000))
    images, labels, cost = generate(net, tokenizer, num_samples, sampler, guidance, batch_size, seed)
    period = tokenizer.image_size // tokenizer.grid  # pixels per token side: where token seams would show
    result = {**evaluate_images(images, labels, classifier, ref), **cost, "seam_ratio": seam_ratio(images, period)}
    if floor:
        n = min(num_samples, 10000)
        fl = real_data_floor(classifier, data_root, n)
        real = to_unit_range(load_fashion_mnist(data_root, "test")[0][:n])
        result["floor"] = {**{k: fl[k] for k in ("fd", "class_accuracy", "precision", "recall")},
                           "seam_ratio": seam_ratio(real, period)}
    return result
