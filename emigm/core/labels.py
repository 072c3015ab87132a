"""Class names for a run: Fashion-MNIST names, ImageNet-1k names (assets/imagenet-classes.txt, one a
line in class-id order) for 1000-class ImageNet models, or plain ids for other data; and the one
parser of a class given by the user (the CLI's --class, the explorer and its permalinks)."""
from __future__ import annotations

import numbers
import re
from functools import lru_cache
from typing import Any, Sequence

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


_CLASS_ID = re.compile(r"-?[0-9]+")


def parse_class(value: Any, names: Sequence[str]) -> int:
    """A class given by id or by name -> its id in [0, len(names)). An id is an integer or a string of
    ASCII digits (an optional minus; '²' or a fullwidth '３' are not ids); a name matches one of
    `names` ignoring case and surrounding spaces. ValueError, one line: "class id 12 out of range;
    valid: 0..9" or "unknown class 'x'; valid: 0..9 or one of: ..."."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        idx = int(value)
    elif isinstance(value, str) and _CLASS_ID.fullmatch(value.strip()):
        idx = int(value.strip())
    else:
        lowered = [n.lower() for n in names]
        key = value.strip().lower() if isinstance(value, str) else None
        if key is None or key not in lowered:
            shown = ", ".join(names) if len(names) <= 20 else ", ".join(names[:8]) + f", ... ({len(names)} classes)"
            raise ValueError(f"unknown class {value!r}; valid: 0..{len(names) - 1} or one of: {shown}")
        return lowered.index(key)
    if not 0 <= idx < len(names):
        raise ValueError(f"class id {idx} out of range; valid: 0..{len(names) - 1}")
    return idx
