"""The image an inpainting run starts from: a Fashion-MNIST test image, or a PNG / JPEG file converted to
the model's image size and channels (28 x 28 grayscale for the Fashion-MNIST models), and its tokens.

Files are checked before they are decoded in full: at most MAX_FILE_BYTES, a PNG or JPEG, at most
MAX_SIDE x MAX_SIDE pixels as the header declares them (a decompression bomb is refused from its header);
a truncated or corrupt file is refused when decoded. What is converted is said (`Picture.notes`): an
animated PNG (its first frame), a 16-bit image (to 8 bits), transparency (composited on black), colour
(to grayscale), a light background (inverted: Fashion-MNIST garments are light on black), a non-square
image (padded with the background to a square) and the resize.
"""
from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from emigm.data.datasets import load_fashion_mnist, to_unit_range

MAX_SIDE = 4096
MAX_FILE_BYTES = 32 * 1024 * 1024
FORMATS = ("PNG", "JPEG")


class PictureError(ValueError):
    """An image that cannot be used: one line naming the file and why."""


@dataclass(frozen=True)
class Picture:
    """pixels: (H, W) or (H, W, 3) uint8 at the model's size; label: the class it shows when known (a test
    image), else None; what: where it came from, for titles; notes: what the conversion did."""

    pixels: np.ndarray
    label: int | None
    what: str
    notes: tuple[str, ...] = ()

    def tensor(self) -> torch.Tensor:
        """(1, C, H, W) float in [-1, 1]."""
        arr = self.pixels if self.pixels.ndim == 3 else self.pixels[..., None]
        return to_unit_range(np.ascontiguousarray(arr.transpose(2, 0, 1))[None])


_TEST: dict[str, tuple[np.ndarray, np.ndarray]] = {}


def fmnist_test_set(root: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The Fashion-MNIST test images (N, 28, 28) uint8 and labels (N,), read once per root."""
    key = root or ""
    if key not in _TEST:
        _TEST[key] = load_fashion_mnist(root, "test")
    return _TEST[key]


def class_test_index(label: int, k: int, root: str | None = None) -> int:
    """The test-set index of the k-th (0-based) test image of class `label`."""
    _, labels = fmnist_test_set(root)
    where = np.flatnonzero(labels == label)
    if not (0 <= k < len(where)):
        raise PictureError(f"class {label} has {len(where)} test images: the index within it must be in "
                           f"[0, {len(where) - 1}], got {k}")
    return int(where[k])


def fmnist_picture(index: int, root: str | None = None, size: int = 28, channels: int = 1) -> Picture:
    """Fashion-MNIST test image `index` (its class is its label)."""
    images, labels = fmnist_test_set(root)
    if isinstance(index, bool) or not isinstance(index, int) or not (0 <= index < len(images)):
        raise PictureError(f"the test index must be in [0, {len(images) - 1}], got {index!r}")
    px = images[index]
    if (size, channels) != (28, 1):
        px = _fit(Image.fromarray(px), size, channels, [])
    return Picture(px, int(labels[index]), f"test image {index}")


def read_picture(source: str | os.PathLike | bytes, name: str = "", size: int = 28, channels: int = 1) -> Picture:
    """A PNG or JPEG (a path or its bytes) converted to size x size with `channels` (see the module
    docstring). Refused with a PictureError naming the file: not a PNG / JPEG, larger than MAX_SIDE on a
    side or MAX_FILE_BYTES, truncated or corrupt."""
    if isinstance(source, (bytes, bytearray)):
        data, name = bytes(source), name or "the upload"
    else:
        path = Path(source)
        name = name or path.name
        try:
            if path.is_dir():
                raise PictureError(f"{name} is a folder, not an image")
            with open(path, "rb") as f:
                data = f.read(MAX_FILE_BYTES + 1)
        except OSError as e:
            raise PictureError(f"{name}: {e.strerror or e}") from None
    if len(data) > MAX_FILE_BYTES:
        raise PictureError(f"{name} is larger than {MAX_FILE_BYTES // 2**20} MiB: not read")
    if not data:
        raise PictureError(f"{name} is empty: not an image")
    notes: list[str] = []
    try:
        with warnings.catch_warnings():  # PIL warns above 89M pixels; the size check below refuses those
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError:
        raise PictureError(f"{name} declares more pixels than {MAX_SIDE} x {MAX_SIDE}: refused before decoding") \
            from None
    except UnidentifiedImageError:
        raise PictureError(f"{name} is not a PNG or JPEG image") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise PictureError(f"{name} is not a readable PNG or JPEG image ({_short(e)})") from None
    w, h = im.size
    if w > MAX_SIDE or h > MAX_SIDE or w < 1 or h < 1:
        raise PictureError(f"{name} is {w} x {h} pixels; the limit is {MAX_SIDE} x {MAX_SIDE} (refused before "
                           "decoding)")
    frames = getattr(im, "n_frames", 1)
    if frames > 1:
        notes.append(f"animated ({frames} frames): converted, the first frame used")
        im.seek(0)
    try:
        im.load()
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        raise PictureError(f"{name} is truncated or corrupt ({_short(e)})") from None
    return Picture(_fit(im, size, channels, notes), None, name, tuple(notes))


def _short(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0][:120]


def _fit(im: Image.Image, size: int, channels: int, notes: list[str]) -> np.ndarray:
    """Any decoded PIL image -> (size, size) or (size, size, 3) uint8, saying what was converted."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
        notes.append("16-bit: converted to 8 bits" if top > 255 else "32-bit integer pixels: converted to 8 bits")
        im = Image.fromarray(np.clip(np.round(arr * 255.0 / top), 0, 255).astype(np.uint8), "L")
    elif im.mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        notes.append("floating-point pixels: converted to 8 bits")
        im = Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8), "L")
    if im.mode in ("P", "PA"):
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "La", "RGBa"):
        base = Image.new("RGBA", im.size, (0, 0, 0, 255))
        alpha = np.asarray(im.getchannel("A"))
        if alpha.min() < 255:
            notes.append("transparency composited on black")
        im = Image.alpha_composite(base, im.convert("RGBA")).convert("RGB")
    if im.mode not in ("L", "RGB"):
        im = im.convert("RGB")
    if channels == 1 and im.mode != "L":
        notes.append("colour converted to grayscale")
        im = im.convert("L")
    elif channels == 3 and im.mode != "RGB":
        im = im.convert("RGB")
    arr = np.asarray(im)
    border = np.concatenate([arr[0].reshape(-1), arr[-1].reshape(-1), arr[:, 0].reshape(-1), arr[:, -1].reshape(-1)])
    if channels == 1 and border.mean() > 127:
        notes.append("light background inverted (Fashion-MNIST garments are light on black)")
        im = ImageOps.invert(im)
    w, h = im.size
    if w != h:
        side = max(w, h)
        square = Image.new(im.mode, (side, side), 0)
        square.paste(im, ((side - w) // 2, (side - h) // 2))
        notes.append(f"{w} x {h} padded to a square")
        im = square
    if im.size != (size, size):
        notes.append(f"resized from {im.size[0]} x {im.size[1]} to {size} x {size}")
        im = im.resize((size, size), Image.LANCZOS)
    return np.asarray(im, dtype=np.uint8).copy()


def encode_picture(pipe, picture: Picture) -> torch.Tensor:
    """The picture's tokens with the model's tokenizer, (1, L, C) float or (1, L) int64 (VQ codes, KL
    latents' posterior mean, or pixel patches)."""
    tok = pipe.tokenizer
    x = picture.tensor().to(pipe.device)
    if tuple(x.shape[1:]) != (tok.channels, tok.image_size, tok.image_size):
        raise PictureError(f"{picture.what} is {tuple(x.shape[1:])}; {pipe.label} needs "
                           f"({tok.channels}, {tok.image_size}, {tok.image_size})")
    with torch.inference_mode():
        return tok.encode(x)


def masked_view(images: torch.Tensor, mask: torch.Tensor, grid: int, value: float = 0.0) -> torch.Tensor:
    """Images (B, C, H, W) with the pixels of the painted tokens (mask (L,) or (B, L)) set to `value`
    (0 = mid grey in [-1, 1])."""
    B, _, H, W = images.shape
    m = mask.reshape(-1, 1, grid, grid).float().expand(B, 1, grid, grid)
    up = torch.nn.functional.interpolate(m, size=(H, W), mode="nearest") > 0
    return torch.where(up, torch.full_like(images, value), images)
