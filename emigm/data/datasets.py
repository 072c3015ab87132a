"""Image datasets and the VAE latent cache.

Owns: the IDX reader and Fashion-MNIST loader, the pixel datasets (Fashion-MNIST, an ImageNet-style
folder with ADM centre cropping, a synthetic set for tests), `build_dataset` (name -> dataset, the one
edge where `DataConfig.name` is looked up), and caching VAE encoder moments for kl16 / dcae tokenizers.

Every dataset item is `(x, label)`: x a float32 tensor (C, H, W) in [-1, 1] (latents for
`CachedLatents`), label an int64 scalar tensor. Random augmentation (flip, latent noise) draws from a
torch.Generator passed in, or, when none is given, from a generator seeded by (seed, epoch, index) so
that items are reproducible with any number of DataLoader workers; call `set_epoch` to vary them.
(A generator passed in is copied into each worker process, so pass one only with num_workers=0.)
"""
from __future__ import annotations

import gzip
import json
import math
import os
import warnings
import zlib
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
from PIL import Image

from emigm.core.config import DataConfig, TokenizerConfig
from emigm.core.fileio import atomic_write, check_regular, torch_save, write_text
from emigm.core.names import DATASETS
from emigm.core.progress import Stage
from emigm.core.seeds import STREAM_AUGMENT, mix_seed
from emigm.core.statedict import CheckpointError, load_torch

Tensor = torch.Tensor
EncodeFn = Callable[[Tensor], tuple[Tensor, Tensor]]  # images -> (mean, logvar), each (B, c, h, w)

DEFAULT_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"  # Debian package dataset-fashion-mnist
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")

# IDX type codes -> big-endian numpy dtypes (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT").
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


# ----------------------------------------------------------------------------- IDX / Fashion-MNIST


# The most an IDX file may declare: Fashion-MNIST's training images are 47 MB; 4 GiB is far above any
# data set read this way, and the declared size is what is allocated (never what a stream inflates to).
MAX_IDX_BYTES = 4 << 30
FMNIST_MAX_IMAGES = 100_000  # a Fashion-MNIST split (60000 + 10000 images) and room to spare


def read_idx(path: str | os.PathLike, max_bytes: int = MAX_IDX_BYTES) -> np.ndarray:
    """Read an IDX file (gzip-compressed or raw; detected from the content) into an array of the
    file's shape, in native byte order. Raises ValueError naming the file when it is corrupt,
    truncated, has trailing bytes, is not a regular file, or declares more than `max_bytes`. The
    data is read into one buffer of the size the header declares, and nothing past it is
    decompressed or read: a small gzip stream that inflates to gigabytes costs its declared size."""
    path = Path(path)
    if not check_regular(path, "IDX file"):
        raise FileNotFoundError(f"IDX file {path} not found")
    try:
        with open(path, "rb") as f:
            gz = f.read(2) == b"\x1f\x8b"
            if gz:  # the gzip trailer's ISIZE: the inflated size mod 2^32, read before inflating anything
                f.seek(-4, os.SEEK_END)
                isize = int.from_bytes(f.read(4), "little")
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as f:
            head = f.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0:
                raise ValueError(f"{path}: not an IDX file (bad magic number {head.hex() or 'empty'})")
            code, ndim = head[2], head[3]
            if code not in _IDX_DTYPES:
                raise ValueError(f"{path}: unknown IDX data type 0x{code:02x}")
            if ndim < 1:
                raise ValueError(f"{path}: IDX file declares {ndim} dimensions")
            dims = f.read(4 * ndim)
            if len(dims) < 4 * ndim:
                raise ValueError(f"{path}: truncated IDX header ({4 + len(dims)} bytes, need {4 + 4 * ndim})")
            shape = tuple(int(d) for d in np.frombuffer(dims, dtype=">u4"))
            dtype = np.dtype(_IDX_DTYPES[code])
            expected = math.prod(shape) * dtype.itemsize
            if expected > max_bytes:
                raise ValueError(f"{path}: IDX header declares shape {shape}, {expected} bytes, more than the "
                                 f"{max_bytes} allowed here; refused before reading the data")
            if gz and isize != (4 + 4 * ndim + expected) % (1 << 32):
                raise ValueError(f"{path}: IDX data does not match its header: shape {shape} needs {expected} "
                                 f"bytes, the gzip stream says it inflates to {isize - 4 - 4 * ndim} (mod 2^32); "
                                 "refused before inflating it")
            data = bytearray(expected)
            got = f.readinto(memoryview(data)) if expected else 0
            while 0 < got < expected:  # a stream may return less than asked before its end
                more = f.readinto(memoryview(data)[got:])
                if not more:
                    break
                got += more
            trailing = len(f.read(1)) > 0
    except (OSError, EOFError, zlib.error) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f"{path}: cannot decompress ({e})") from None
    if got < expected:
        raise ValueError(f"{path}: IDX data truncated: shape {shape} needs {expected} bytes, found {got}")
    if trailing:
        raise ValueError(f"{path}: IDX data has trailing bytes: shape {shape} needs {expected} bytes, "
                         "the file holds more")
    return np.frombuffer(data, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="), copy=False)


def _find(root: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    return None


def load_fashion_mnist(root: str | None, split: Literal["train", "test"]) -> tuple[np.ndarray, np.ndarray]:
    """Load a Fashion-MNIST split from IDX files (gz or raw) in `root` (None or "": the Debian
    location). Returns uint8 images (N, 28, 28) and int64 labels (N,) in 0..9; a file declaring more
    than FMNIST_MAX_IMAGES images is refused from its header."""
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}; valid: train, test")
    root_path = Path(root or DEFAULT_FASHION_MNIST)
    prefix = "train" if split == "train" else "t10k"
    files = [_find(root_path, f"{prefix}-{part}") for part in ("images-idx3-ubyte", "labels-idx1-ubyte")]
    if None in files:
        raise FileNotFoundError(
            f"Fashion-MNIST {split} files ({prefix}-images-idx3-ubyte[.gz], "
            f"{prefix}-labels-idx1-ubyte[.gz]) not found in {root_path}; install them with "
            "`apt-get install dataset-fashion-mnist` or pass `--data.path DIR`"
        )
    # bounded by what a Fashion-MNIST-like split can hold, so a crafted header is refused in < 100 MB
    images, labels = read_idx(files[0], FMNIST_MAX_IMAGES * 28 * 28), read_idx(files[1], FMNIST_MAX_IMAGES * 8)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(f"{files[0]}: expected uint8 images (N, 28, 28), got {images.dtype} {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(f"{files[1]}: expected {len(images)} labels, got shape {labels.shape}")
    labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{files[1]}: labels outside 0..9")
    return images, labels


def to_unit_range(images_u8: np.ndarray | Tensor) -> Tensor:
    """uint8 images (N, H, W) or (N, C, H, W) -> float32 tensor (N, C, H, W) in [-1, 1]."""
    if isinstance(images_u8, Tensor):
        x = images_u8.to(torch.float32)
    else:
        arr = np.asarray(images_u8)
        x = torch.from_numpy(arr if arr.flags.writeable else arr.copy()).to(torch.float32)
    if x.dim() == 3:
        x = x.unsqueeze(1)
    return x / 127.5 - 1.0


def _index_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A generator addressed by (seed, epoch, index): items are reproducible in any worker."""
    return torch.Generator().manual_seed(mix_seed(seed, STREAM_AUGMENT, epoch, index))


class _Augmented(torch.utils.data.Dataset):
    """Shared plumbing: an explicit generator or per-(seed, epoch, index) generators."""

    def __init__(self, generator: torch.Generator | None, seed: int) -> None:
        self.generator, self.seed, self.epoch = generator, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _gen(self, index: int) -> torch.Generator:
        return self.generator if self.generator is not None else _index_generator(self.seed, self.epoch, index)


class FashionMNIST(_Augmented):
    """Fashion-MNIST as (float32 (1, S, S) in [-1, 1], int64 label).

    image_size S: 28 is native. A larger S pads the 28 x 28 image centred in a border of -1 (the
    background value), so e.g. S = 32 fits patch size 8 without resampling the strokes; a smaller S
    resizes with PIL's BOX filter. limit > 0 keeps the first `limit` images. flip draws a random
    horizontal flip per item (see module docstring).
    """

    def __init__(self, root: str | None, split: Literal["train", "test"] = "train", image_size: int = 28,
                 limit: int = 0, flip: bool = False, generator: torch.Generator | None = None,
                 seed: int = 0) -> None:
        super().__init__(generator, seed)
        if image_size < 1:
            raise ValueError(f"image_size must be positive, got {image_size}")
        images, labels = load_fashion_mnist(root, split)
        if limit > 0:
            images, labels = images[:limit], labels[:limit]
        self.images, self.labels = images, labels
        self.image_size, self.flip = image_size, flip

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        img, s = self.images[index], self.image_size
        if s > 28:
            lo = (s - 28) // 2
            img = np.pad(img, ((lo, s - 28 - lo), (lo, s - 28 - lo)))  # uint8 0 -> -1 after scaling
        elif s < 28:
            img = np.asarray(Image.fromarray(img).resize((s, s), Image.BOX))
        x = to_unit_range(img[None])[0]
        if self.flip and torch.rand((), generator=self._gen(index)) < 0.5:
            x = x.flip(-1)
        return x, torch.tensor(self.labels[index], dtype=torch.int64)


# ----------------------------------------------------------------------------- image folders


# The most pixels an image of an image folder may have: PIL's own bomb threshold (about 89 M pixels,
# 268 MB as RGB), checked from the file's header before it is decoded. PIL only warns at this size and
# refuses at twice it, mid-training; here the file is named and refused at once.
MAX_IMAGE_PIXELS = 89_478_485


def open_image(path: str | os.PathLike, mode: str) -> Image.Image:
    """Decode the image file `path` into `mode` ("RGB" or "L"), after checking its size from its header
    (at most MAX_IMAGE_PIXELS); a file too large, unreadable or not an image is a one-line
    ValueError naming it."""
    try:
        with warnings.catch_warnings():  # PIL warns above MAX_IMAGE_PIXELS: refused below instead
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
        with im:
            w, h = im.size
            if w * h > MAX_IMAGE_PIXELS:
                raise ValueError(f"image {path} is {w} x {h} pixels, more than the {MAX_IMAGE_PIXELS} allowed; "
                                 "refused before decoding (resize it, or remove it from the folder)")
            return im.convert(mode)
    except Image.DecompressionBombError as e:  # PIL refuses twice its threshold already when opening
        raise ValueError(f"image {path} has more than {MAX_IMAGE_PIXELS} pixels ({str(e).split(',')[0]}); refused "
                         "before decoding (resize it, or remove it from the folder)") from None
    except (OSError, SyntaxError) as e:
        reason = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise ValueError(f"image {path} cannot be read ({reason}); fix or remove it from the folder") from None


def center_crop_adm(img: Image.Image, image_size: int) -> Image.Image:
    """ADM / guided-diffusion centre crop: halve with BOX while the short side is >= 2 * image_size,
    BICUBIC-resize so the short side equals image_size, then crop the centre square."""
    while min(img.size) >= 2 * image_size:
        img = img.resize(tuple(x // 2 for x in img.size), resample=Image.BOX)
    scale = image_size / min(img.size)
    img = img.resize(tuple(max(image_size, round(x * scale)) for x in img.size), resample=Image.BICUBIC)
    left, top = (img.size[0] - image_size) // 2, (img.size[1] - image_size) // 2
    return img.crop((left, top, left + image_size, top + image_size))


class ImageFolderDataset(_Augmented):
    """ImageNet-style folder `root/<class>/<image>`: class index = position of the sub-folder in the
    sorted list of sub-folder names (`self.classes`). Items: (float32 (C, S, S) in [-1, 1], int64);
    channels 3 (RGB) or 1 (grayscale). flip draws a random horizontal flip per item."""

    def __init__(self, root: str, image_size: int, flip: bool = False, channels: int = 3,
                 generator: torch.Generator | None = None, seed: int = 0, limit: int = 0) -> None:
        super().__init__(generator, seed)
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        root_path = Path(root)
        if not root_path.is_dir():
            raise FileNotFoundError(f"image folder {root_path} does not exist")
        self.classes = sorted(p.name for p in root_path.iterdir() if p.is_dir())
        self.samples = [
            (str(f), c)
            for c, name in enumerate(self.classes)
            for f in sorted((root_path / name).rglob("*"))
            if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file()
        ]
        if not self.samples:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in sub-folders of {root_path}")
        if limit > 0:
            self.samples = self.samples[:limit]
        self.image_size, self.flip, self.channels = image_size, flip, channels

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        path, label = self.samples[index]
        img = center_crop_adm(open_image(path, "RGB" if self.channels == 3 else "L"), self.image_size)
        arr = np.asarray(img, dtype=np.uint8)
        arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        x = to_unit_range(np.ascontiguousarray(arr)[None])[0]
        if self.flip and torch.rand((), generator=self._gen(index)) < 0.5:
            x = x.flip(-1)
        return x, torch.tensor(label, dtype=torch.int64)


class SyntheticDataset(torch.utils.data.Dataset):
    """n tiny class-dependent images for tests: class c = index % num_classes is a plane wave at angle
    pi * c / num_classes with a per-sample random phase and a little noise, in [-1, 1]."""

    def __init__(self, n: int, image_size: int = 28, channels: int = 1, num_classes: int = 10,
                 seed: int = 0) -> None:
        if n < 1 or image_size < 1 or channels < 1 or num_classes < 1:
            raise ValueError("n, image_size, channels and num_classes must be positive")
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(n, dtype=torch.int64) % num_classes
        theta = torch.pi * self.labels.to(torch.float32) / num_classes
        phase = 2 * torch.pi * torch.rand(n, generator=g)
        coords = torch.linspace(-1.0, 1.0, image_size)
        yy, xx = torch.meshgrid(coords, coords, indexing="ij")
        proj = theta.cos()[:, None, None] * xx + theta.sin()[:, None, None] * yy
        wave = torch.cos(2 * torch.pi * proj + phase[:, None, None])  # (n, S, S)
        shade = torch.linspace(1.0, 0.6, channels)[None, :, None, None]
        noise = 0.05 * torch.randn(n, channels, image_size, image_size, generator=g)
        self.images = (wave[:, None] * shade + noise).clamp(-1.0, 1.0)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.images[index], self.labels[index]


class EncodedDataset(torch.utils.data.Dataset):
    """A dataset encoded once, in memory: item i is (moments (2, c, h, w) = [mean, logvar], label).
    Training samples a latent from the moments per step (emigm.train.generator), as MAR does with KL-16; used
    for the small `kl` tokenizer. With `cache` (a file path) the moments are read from it when present
    and written to it (atomically) otherwise, so runs on the same data and tokenizer encode once."""

    def __init__(self, dataset: torch.utils.data.Dataset, encode_fn: EncodeFn, batch_size: int = 500,
                 device: torch.device | str = "cpu", cache: str | os.PathLike | None = None) -> None:
        if cache is not None and Path(cache).is_file():
            try:
                doc = load_torch(cache)
                self.moments, self.labels = doc["moments"], doc["labels"]
                if len(self.labels) == len(dataset) and self.moments.shape[0] == len(dataset):
                    return
            except (CheckpointError, KeyError, TypeError, AttributeError):
                pass  # unreadable or stale: encode again and replace it
        moments, labels = [], []
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
        where = f"cached in {cache} for the next run" if cache is not None else "kept in memory"
        with torch.inference_mode(), Stage("encoding the training set with the tokenizer", total=len(dataset),
                                           unit="img", detail=where) as stage:
            for x, y in loader:
                mean, logvar = encode_fn(x.to(device))
                moments.append(torch.stack([mean, logvar], 1).float().cpu())
                labels.append(torch.as_tensor(y, dtype=torch.int64))
                stage.update(len(y))
        self.moments, self.labels = torch.cat(moments), torch.cat(labels)
        if cache is not None:
            torch_save({"moments": self.moments, "labels": self.labels}, cache)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.moments[index], self.labels[index]




def build_dataset(data_cfg: DataConfig, tok_cfg: TokenizerConfig, split: Literal["train", "test"] = "train",
                  num_classes: int = 10, seed: int = 0) -> torch.utils.data.Dataset:
    """Pixel dataset named by `data_cfg.name`, producing (C, S, S) images with C = tok_cfg.channels and
    S = tok_cfg.image_size (which must equal data_cfg.image_size). flip applies to the train split only.
    Latent caching is separate: see `cache_latents` / `CachedLatents`."""
    if data_cfg.name not in DATASETS:
        raise ValueError(f"unknown dataset {data_cfg.name!r}; valid: {', '.join(DATASETS)}")
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}; valid: train, test")
    size, channels = tok_cfg.image_size, tok_cfg.channels
    if data_cfg.image_size != size:
        raise ValueError(f"data.image_size {data_cfg.image_size} differs from tokenizer.image_size {size}; "
                         "set both")
    flip = data_cfg.flip and split == "train"
    if data_cfg.name == "fashion-mnist":
        if channels != 1:
            raise ValueError(f"fashion-mnist is grayscale: tokenizer.channels must be 1, got {channels}")
        return FashionMNIST(data_cfg.path or None, split, size, data_cfg.limit, flip=flip, seed=seed)
    if data_cfg.name == "imagefolder":
        if not data_cfg.path:
            raise ValueError("imagefolder needs --data.path DIR (a folder of class sub-folders)")
        root = Path(data_cfg.path)
        if (root / split).is_dir():  # ImageNet layout: DIR/train/<class>/..., DIR/val/<class>/...
            root = root / split
        elif split == "test" and (root / "val").is_dir():
            root = root / "val"
        return ImageFolderDataset(str(root), size, flip=flip, channels=channels, seed=seed, limit=data_cfg.limit)
    n = data_cfg.limit or 512
    return SyntheticDataset(n, size, channels, num_classes, seed=seed + (1 if split == "test" else 0))


# ----------------------------------------------------------------------------- latent cache

CACHE_FORMAT, CACHE_VERSION = "emigm-latent-cache", 1


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    atomic_write(path, lambda f: np.save(f, array))


def cache_latents(dataset: torch.utils.data.Dataset, encode_fn: EncodeFn, out_dir: str | os.PathLike,
                  batch_size: int = 64, shard_size: int = 10000, dtype: np.dtype | str = "float32",
                  device: torch.device | str = "cpu", num_workers: int = 0,
                  progress: bool = False) -> Path:
    """Encode every image of `dataset` (without flip augmentation) and of its horizontal mirror, and
    store the encoder moments in .npy shards plus `index.json` in out_dir.

    encode_fn: float32 (B, C, H, W) in [-1, 1] -> (mean, logvar), each (B, c, h, w).
    Shard k holds images [k * shard_size, (k + 1) * shard_size): `shard-k.moments.npy` of shape
    (n, 2 [original, flipped], 2 [mean, logvar], c, h, w) and `shard-k.labels.npy` (n,) int64.
    Shards and the index are written atomically; re-running skips complete shards (resume), and the
    index is written last, so a cache is only usable once finished. Returns out_dir.
    """
    if getattr(dataset, "flip", False):
        raise ValueError("cache_latents stores both flips itself: pass the dataset with flip=False")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n = len(dataset)
    if n == 0:
        raise ValueError("cannot cache an empty dataset")
    shards, latent_shape = [], None
    starts = range(0, n, shard_size)
    for k, start in enumerate(starts):
        count = min(shard_size, n - start)
        mom_path, lab_path = out / f"shard-{k:05d}.moments.npy", out / f"shard-{k:05d}.labels.npy"
        if mom_path.is_file() and lab_path.is_file():
            done = np.load(mom_path, mmap_mode="r")
            if done.shape[0] == count and np.load(lab_path, mmap_mode="r").shape == (count,):
                shards.append({"moments": mom_path.name, "labels": lab_path.name, "count": count})
                latent_shape = list(done.shape[3:])
                continue
        loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, range(start, start + count)),
                                             batch_size=batch_size, shuffle=False, num_workers=num_workers)
        if progress:
            from tqdm import tqdm
            loader = tqdm(loader, desc=f"caching shard {k + 1}/{len(starts)}")
        moments, labels = [], []
        with torch.inference_mode():
            for x, y in loader:
                x = x.to(device)
                both = torch.cat([x, x.flip(-1)])  # one encoder call for the image and its mirror
                mean, logvar = encode_fn(both)
                if mean.shape != logvar.shape or mean.shape[0] != both.shape[0]:
                    raise ValueError(f"encode_fn returned mean {tuple(mean.shape)} and logvar "
                                     f"{tuple(logvar.shape)} for a batch of {both.shape[0]}")
                m = torch.stack([mean, logvar], 1).float().cpu()  # (2B, 2, c, h, w)
                moments.append(torch.stack(m.chunk(2), 1).numpy().astype(dtype))  # (B, 2, 2, c, h, w)
                labels.append(torch.as_tensor(y, dtype=torch.int64).cpu().numpy())
        block = np.concatenate(moments)
        latent_shape = list(block.shape[3:])
        _atomic_save_npy(mom_path, block)
        _atomic_save_npy(lab_path, np.concatenate(labels))
        shards.append({"moments": mom_path.name, "labels": lab_path.name, "count": count})
    index = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "num_images": n, "shard_size": shard_size,
             "latent_shape": latent_shape, "dtype": str(np.dtype(dtype)), "shards": shards}
    write_text(out / "index.json", json.dumps(index, indent=2))
    return out


class CachedLatents(_Augmented):
    """Latents sampled from cached moments: item i picks the original or mirrored image with
    probability 1/2 and returns (mean + exp(logvar / 2) * eps float32 (c, h, w), int64 label).
    Latents are raw encoder samples; the tokenizer owns any scale / shift. Shards are memory-mapped."""

    def __init__(self, out_dir: str | os.PathLike, generator: torch.Generator | None = None, seed: int = 0) -> None:
        super().__init__(generator, seed)
        self.root = Path(out_dir)
        index_path = self.root / "index.json"
        if not index_path.is_file():
            raise FileNotFoundError(f"no latent cache in {self.root} (index.json missing): run cache_latents first")
        try:
            index = json.loads(index_path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{index_path}: corrupt index ({e})") from None
        if index.get("format") != CACHE_FORMAT or index.get("version") != CACHE_VERSION:
            raise ValueError(f"{index_path}: not a {CACHE_FORMAT} v{CACHE_VERSION} index")
        self.index = index
        self.latent_shape = tuple(index["latent_shape"])
        self._offsets = np.cumsum([0] + [s["count"] for s in index["shards"]])
        self._moments: list[np.ndarray] | None = None
        self.labels = np.concatenate([np.load(self.root / s["labels"]) for s in index["shards"]])
        if len(self.labels) != index["num_images"]:
            raise ValueError(f"{index_path}: shards hold {len(self.labels)} labels, index says {index['num_images']}")

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def moments(self, index: int) -> np.ndarray:
        """Stored moments of item `index`: (2 [original, flipped], 2 [mean, logvar], c, h, w)."""
        if self._moments is None:  # opened lazily so each DataLoader worker maps its own
            self._moments = [np.load(self.root / s["moments"], mmap_mode="r") for s in self.index["shards"]]
        k = int(np.searchsorted(self._offsets, index, side="right") - 1)
        return self._moments[k][index - self._offsets[k]]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        g = self._gen(index)
        flip = int(torch.randint(2, (), generator=g))
        mean, logvar = torch.from_numpy(np.array(self.moments(index)[flip], dtype=np.float32))
        eps = torch.randn(mean.shape, generator=g)
        return mean + torch.exp(0.5 * logvar) * eps, torch.tensor(self.labels[index], dtype=torch.int64)
