"""Training the Fashion-MNIST classifier behind FD and class accuracy (emigm.eval.evaluation), the command
`python -m emigm train-classifier`."""
from __future__ import annotations

import dataclasses
import json
import os
import time

import torch
import torch.nn.functional as F
from torch import nn

from emigm.core.fields import check_number
from emigm.core.fileio import command_line, ensure_writable_dir
from emigm.core.progress import track
from emigm.core.seeds import check_seed
from emigm.data.datasets import load_fashion_mnist, to_unit_range
from emigm.eval.evaluation import CLASSIFIER_NAME, Classifier, class_accuracy, classifier_outputs, save_classifier
from emigm.io.runs import check_target
from emigm.train.optim import lr_at, one_cycle

CLASSIFIER_FILES = frozenset({f"{CLASSIFIER_NAME}.safetensors", f"{CLASSIFIER_NAME}.json"})

Tensor = torch.Tensor


def init_weights(model: nn.Module, generator: torch.Generator) -> None:
    """Kaiming-uniform weights and zero biases drawn from `generator` (no global RNG)."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_uniform_(m.weight, nonlinearity="relu", generator=generator)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _augment(x: Tensor, generator: torch.Generator, max_shift: int = 0) -> Tensor:
    """Per-sample random horizontal flips and shifts of up to max_shift pixels (background padding):
    (B, 1, 28, 28) -> (B, 1, 28, 28)."""
    b, s = x.shape[0], max_shift
    out = x
    if s > 0:
        padded = F.pad(x, (s, s, s, s), value=-1.0)
        dy, dx = torch.randint(0, 2 * s + 1, (2, b), generator=generator).to(x.device)
        ar = torch.arange(28, device=x.device)
        rows, cols = (dy[:, None] + ar)[:, :, None], (dx[:, None] + ar)[:, None, :]
        out = padded[torch.arange(b, device=x.device)[:, None, None], 0, rows, cols].unsqueeze(1)
    flip = (torch.rand(b, generator=generator) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], out.flip(-1), out)


def train_classifier(root: str | None, out_dir: str | os.PathLike = "runs/classifier", epochs: int = 6,
                     batch_size: int = 256, seed: int = 0, device: str | torch.device = "cpu",
                     lr: float = 3e-3, max_shift: int = 0, progress: bool = True, overwrite: bool = False) -> dict:
    """Train the Fashion-MNIST classifier (Adam with a one-cycle schedule of the learning rate and of
    beta1, as torch's OneCycleLR; flip + optional shift augmentation),
    measure test accuracy, and write out_dir/fmnist-classifier.safetensors and .json atomically.
    An existing classifier in `out_dir` is replaced only with `overwrite`.
    Returns the JSON record (config, test_accuracy, epochs, command, seconds, ...)."""

    check_number("epochs", epochs, 1, 1000, integer=True)
    check_number("batch_size", batch_size, 1, 10000, integer=True)
    check_number("lr", lr, 0.0, 10.0, open_low=True)
    check_number("max_shift", max_shift, 0, 14, integer=True)
    check_seed("seed", seed)
    start = time.time()
    # not a run, an export, a tokenizer, a shipped asset or a folder of other files
    check_target(out_dir, "output folder", files=CLASSIFIER_FILES, overwrite=overwrite)
    ensure_writable_dir(out_dir, "output folder")  # before minutes of training, not after
    device = torch.device(device)
    g = torch.Generator().manual_seed(seed)
    train_x, train_y = load_fashion_mnist(root, "train")
    test_x, test_y = load_fashion_mnist(root, "test")
    x_all, y_all = to_unit_range(train_x), torch.from_numpy(train_y)
    model = Classifier()
    init_weights(model, g)
    model.to(device)
    steps_per_epoch = len(x_all) // batch_size
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    lr_sched = one_cycle(lr, epochs * steps_per_epoch)
    # beta1 runs the same cycle the other way, 0.95 -> 0.85 -> 0.95 (OneCycleLR's cycle_momentum)
    beta1_sched = dataclasses.replace(lr_sched, initial=0.95, peak=0.85, final=0.95)
    step = 0
    log: list[dict] = []
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(x_all), generator=g)
        total, correct, loss_sum = 0, 0, 0.0
        batches = track(range(steps_per_epoch), f"training the classifier, epoch {epoch + 1}/{epochs}",
                        unit="batch", enabled=progress)
        for i in batches:
            idx = perm[i * batch_size:(i + 1) * batch_size]
            x = _augment(x_all[idx].to(device), g, max_shift)
            y = y_all[idx].to(device)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            for group in opt.param_groups:
                group["lr"] = lr_at(step, lr_sched)
                group["betas"] = (lr_at(step, beta1_sched), group["betas"][1])
            opt.step()
            step += 1
            total += len(y)
            correct += int((logits.argmax(1) == y).sum())
            loss_sum += float(loss.detach()) * len(y)
        model.eval()
        acc = class_accuracy(classifier_outputs(model, to_unit_range(test_x))[1], torch.from_numpy(test_y))
        log.append({"epoch": epoch + 1, "train_loss": loss_sum / total, "train_accuracy": correct / total,
                    "test_accuracy": acc, "seconds": round(time.time() - start, 1)})
        if progress:
            print(json.dumps(log[-1]), flush=True)
    record = {
        "test_accuracy": log[-1]["test_accuracy"],
        "epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed,
        "max_shift": max_shift, "optimizer": "Adam, OneCycle cosine LR; augmentation: horizontal flips, "
        f"shifts of up to {max_shift} px",
        "torch": torch.__version__, "device": str(device), "num_threads": torch.get_num_threads(),
        "command": command_line(),
        "call": (f"emigm.train.classifier.train_classifier(root={root!r}, out_dir={str(out_dir)!r}, epochs={epochs}, "
                 f"batch_size={batch_size}, seed={seed}, device={str(device)!r}, lr={lr}, "
                 f"max_shift={max_shift})"),
        "seconds": round(time.time() - start, 1),
        "log": log,
    }
    save_classifier(model, out_dir, record)
    return record
