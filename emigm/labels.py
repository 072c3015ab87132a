"""Class names for a run: Fashion-MNIST names, or plain ids for other data."""
from __future__ import annotations

from .config import RunConfig
from .data import FASHION_MNIST_CLASSES


def class_names(cfg: RunConfig) -> list[str]:
    if cfg.data.name in ("fashion-mnist", "synthetic") and cfg.backbone.num_classes == 10:
        return list(FASHION_MNIST_CLASSES)
    return [str(i) for i in range(cfg.backbone.num_classes)]
