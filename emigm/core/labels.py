"""Class names for a run: Fashion-MNIST names, ImageNet-1k names (assets/imagenet-classes.txt, one a
line in class-id order) for 1000-class ImageNet models, or plain ids for other data."""
from __future__ import annotations

from functools import lru_cache

from emigm.core.config import RunConfig
from emigm.core.fileio import ASSETS_DIR
from emigm.core.names import FASHION_MNIST_CLASSES

IMAGENET_CLASSES = ASSETS_DIR / "imagenet-classes.txt"


@lru_cache(maxsize=1)
def imagenet_classes() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names, or () when the file is not there."""
    try:
        names = tuple(line.strip() for line in IMAGENET_CLASSES.read_text().splitlines() if line.strip())
    except OSError:
        return ()
    return names if len(names) == 1000 else ()


def class_names(cfg: RunConfig) -> list[str]:
    if cfg.data.name in ("fashion-mnist", "synthetic") and cfg.backbone.num_classes == 10:
        return list(FASHION_MNIST_CLASSES)
    if cfg.data.name == "imagefolder" and cfg.backbone.num_classes == 1000 and imagenet_classes():
        return list(imagenet_classes())
    return [str(i) for i in range(cfg.backbone.num_classes)]
