"""Images as files: [-1, 1] tensors -> uint8 arrays, grids, PNGs with nearest-neighbour upscaling."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from emigm.core.fileio import atomic_write


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) in [-1, 1] -> (B, H, W, C) uint8."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def grid(images: torch.Tensor, cols: int | None = None, pad: int = 2) -> np.ndarray:
    """(B, C, H, W) -> one (H', W', 3) uint8 grid with `pad` pixels of white between tiles."""
    arr = to_uint8(images)
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    B, H, W, _ = arr.shape
    cols = cols or math.ceil(math.sqrt(B))
    rows = math.ceil(B / cols)
    out = np.full((rows * (H + pad) + pad, cols * (W + pad) + pad, 3), 255, np.uint8)
    for i in range(B):
        r, c = divmod(i, cols)
        out[pad + r * (H + pad): pad + r * (H + pad) + H, pad + c * (W + pad): pad + c * (W + pad) + W] = arr[i]
    return out


def upscale(arr: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upscaling of an (H, W, C) array."""
    return arr.repeat(factor, axis=0).repeat(factor, axis=1)


def save_grid(images: torch.Tensor, path: str | Path, scale: int = 4, cols: int | None = None) -> None:
    """Write the images as one PNG grid, atomically (emigm.core.fileio: the old file or the new, never a torn one)."""

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"output must be a .png file, got {path}")
    picture = Image.fromarray(upscale(grid(images, cols), scale))
    atomic_write(path, lambda f: picture.save(f, format="PNG"))
