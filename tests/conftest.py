import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from emigm.data import datasets  # noqa: E402

# Tiny test models gain nothing from intra-op threads; a second thread only adds contention.
torch.set_num_threads(1)


def fashion_mnist_missing() -> str | None:
    """Why the Fashion-MNIST files are not where the data loader looks by default, or None when they are."""
    root = Path(datasets.DEFAULT_FASHION_MNIST)
    for prefix in ("train", "t10k"):
        for part in ("images-idx3-ubyte", "labels-idx1-ubyte"):
            if not any((root / f"{prefix}-{part}{ext}").is_file() for ext in ("", ".gz")):
                return f"needs Fashion-MNIST in {root} (apt-get install dataset-fashion-mnist)"
    return None


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` need CUDA, tests marked `needs_fashion_mnist` the dataset; without them they skip
    with a reason."""
    import pytest

    missing = {"gpu": None if torch.cuda.is_available() else "needs a CUDA device",
               "needs_fashion_mnist": fashion_mnist_missing()}
    for item in items:
        for marker, reason in missing.items():
            if reason and marker in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))
