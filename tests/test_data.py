"""Tests for emigm.data.datasets: IDX reader, Fashion-MNIST loader, image folders, synthetic data, latent cache."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from emigm.core.config import DataConfig, TokenizerConfig
from emigm.core.names import FASHION_MNIST_CLASSES
from emigm.data.datasets import (
    DEFAULT_FASHION_MNIST,
    CachedLatents,
    FashionMNIST,
    ImageFolderDataset,
    SyntheticDataset,
    build_dataset,
    cache_latents,
    center_crop_adm,
    load_fashion_mnist,
    read_idx,
)

IDX_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D}
HAVE_FMNIST = (Path(DEFAULT_FASHION_MNIST) / "t10k-labels-idx1-ubyte.gz").is_file()


def write_idx(path: Path, array: np.ndarray, compress: bool) -> Path:
    header = bytes([0, 0, IDX_CODES[array.dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def write_fake_fmnist(root: Path, split: str, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    prefix = "train" if split == "train" else "t10k"
    write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images, True)
    write_idx(root / f"{prefix}-labels-idx1-ubyte", labels, False)  # raw files work too
    return images, labels


# ----------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize("dtype,shape", [(np.uint8, (3, 4, 5)), (np.int32, (7,)), (np.float32, (2, 3))])
def test_idx_round_trip(tmp_path, compress, dtype, shape):
    a = (np.arange(np.prod(shape)) * 37 - 50).astype(dtype).reshape(shape)
    if dtype == np.uint8:
        a = (np.arange(np.prod(shape)) % 256).astype(np.uint8).reshape(shape)
    b = read_idx(write_idx(tmp_path / ("a.gz" if compress else "a"), a, compress))
    assert b.dtype == a.dtype and b.shape == a.shape
    np.testing.assert_array_equal(a, b)
    b[0] = 1  # writable, native byte order


@pytest.mark.parametrize("compress", [True, False])
def test_idx_truncated_raises_naming_file(tmp_path, compress):
    raw = write_idx(tmp_path / "ok", np.zeros((4, 5), np.uint8), False).read_bytes()
    bad = tmp_path / ("bad.gz" if compress else "bad")
    for blob in (raw[:-3], raw[:10], raw + b"xx"):
        bad.write_bytes(gzip.compress(blob) if compress else blob)
        with pytest.raises(ValueError, match="bad"):
            read_idx(bad)


def test_idx_corrupt_inputs(tmp_path):
    good = gzip.compress(write_idx(tmp_path / "g", np.zeros(100, np.uint8), False).read_bytes())
    cases = {
        "cut.gz": good[: len(good) // 2],  # truncated gzip stream
        "magic": b"\x01\x02\x08\x01" + b"\x00" * 8,
        "dtype": b"\x00\x00\x42\x01\x00\x00\x00\x01\x00",
        "empty": b"",
    }
    for name, blob in cases.items():
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(ValueError, match=name.replace(".", r"\.")):
            read_idx(tmp_path / name)
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "nope")


# ----------------------------------------------------------------------------- Fashion-MNIST


def test_missing_dataset_message(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist") as e:
        load_fashion_mnist(str(tmp_path), "train")
    assert "--data.path DIR" in str(e.value) and str(tmp_path) in str(e.value)
    with pytest.raises(ValueError, match="valid: train, test"):
        load_fashion_mnist(str(tmp_path), "val")  # type: ignore[arg-type]


def test_fashion_mnist_dataset_on_fake_files(tmp_path):
    images, labels = write_fake_fmnist(tmp_path, "test", 12)
    x, y = load_fashion_mnist(str(tmp_path), "test")
    np.testing.assert_array_equal(x, images)
    assert y.dtype == np.int64 and (y == labels).all()

    ds = FashionMNIST(str(tmp_path), "test", limit=5)
    assert len(ds) == 5
    img, label = ds[3]
    assert img.shape == (1, 28, 28) and img.dtype == torch.float32 and label.dtype == torch.int64
    torch.testing.assert_close(img[0], torch.from_numpy(images[3]).float() / 127.5 - 1)

    padded = FashionMNIST(str(tmp_path), "test", image_size=32)[3][0]
    assert padded.shape == (1, 32, 32)
    torch.testing.assert_close(padded[:, 2:30, 2:30], img)
    assert (padded[:, :2] == -1).all() and (padded[:, :, -2:] == -1).all()
    small = FashionMNIST(str(tmp_path), "test", image_size=14)[3][0]
    assert small.shape == (1, 14, 14) and small.min() >= -1 and small.max() <= 1


def test_fashion_mnist_flip_is_per_index_deterministic(tmp_path):
    write_fake_fmnist(tmp_path, "train", 20)
    plain = FashionMNIST(str(tmp_path), "train")
    a, b = FashionMNIST(str(tmp_path), "train", flip=True, seed=3), FashionMNIST(str(tmp_path), "train", flip=True, seed=3)
    flips = []
    for i in range(20):
        xa = a[i][0]
        torch.testing.assert_close(xa, b[i][0])
        flips.append(not torch.equal(xa, plain[i][0]))
        assert torch.equal(xa, plain[i][0]) or torch.equal(xa, plain[i][0].flip(-1))
    assert 0 < sum(flips) < 20
    a.set_epoch(1)
    assert [not torch.equal(a[i][0], plain[i][0]) for i in range(20)] != flips


@pytest.mark.skipif(not HAVE_FMNIST, reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist():
    x, y = load_fashion_mnist(None, "test")
    assert x.shape == (10000, 28, 28) and x.dtype == np.uint8
    assert y.shape == (10000,) and y.dtype == np.int64
    assert set(np.unique(y)) == set(range(10)) and len(FASHION_MNIST_CLASSES) == 10
    assert np.bincount(y).tolist() == [1000] * 10
    x, y = load_fashion_mnist(DEFAULT_FASHION_MNIST, "train")
    assert x.shape == (60000, 28, 28) and y.shape == (60000,) and 0 <= y.min() and y.max() <= 9


# ----------------------------------------------------------------------------- image folders


def make_folder(root: Path) -> None:
    sizes = {"cat": [(40, 20), (64, 48)], "ant": [(16, 16)], "dog": [(100, 60), (33, 70), (20, 20)]}
    for c, (name, whs) in enumerate(sizes.items()):
        (root / name).mkdir(parents=True)
        for k, (w, h) in enumerate(whs):
            arr = np.zeros((h, w, 3), np.uint8)
            arr[:, : w // 3] = 255  # left-bright: flips are visible
            arr[..., c] = 80 + 40 * k
            Image.fromarray(arr).save(root / name / f"{k}.png")
    (root / "dog" / "notes.txt").write_text("not an image")


def test_center_crop_adm():
    img = Image.new("RGB", (100, 60))
    out = center_crop_adm(img, 16)
    assert out.size == (16, 16)
    assert center_crop_adm(Image.new("L", (10, 30)), 16).size == (16, 16)  # upsamples too


def test_image_folder(tmp_path):
    make_folder(tmp_path)
    ds = ImageFolderDataset(str(tmp_path), image_size=16)
    assert ds.classes == ["ant", "cat", "dog"] and len(ds) == 6
    assert [int(ds[i][1]) for i in range(len(ds))] == [0, 1, 1, 2, 2, 2]
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.min() >= -1 and x.max() <= 1
    gray = ImageFolderDataset(str(tmp_path), image_size=8, channels=1)[0][0]
    assert gray.shape == (1, 8, 8)
    with pytest.raises(FileNotFoundError):
        ImageFolderDataset(str(tmp_path / "missing"), 16)


def test_image_folder_flip(tmp_path):
    make_folder(tmp_path)
    plain = ImageFolderDataset(str(tmp_path), 16)
    a, b = ImageFolderDataset(str(tmp_path), 16, flip=True, seed=1), ImageFolderDataset(str(tmp_path), 16, flip=True, seed=1)
    for i in range(len(plain)):
        torch.testing.assert_close(a[i][0], b[i][0])  # per-index deterministic
        assert torch.equal(a[i][0], plain[i][0]) or torch.equal(a[i][0], plain[i][0].flip(-1))
    # An explicit generator: the same seed replays the same sequence of flips.
    draws = []
    for _ in range(2):
        ds = ImageFolderDataset(str(tmp_path), 16, flip=True, generator=torch.Generator().manual_seed(7))
        draws.append([not torch.equal(ds[0][0], plain[0][0]) for _ in range(16)])
    assert draws[0] == draws[1] and 0 < sum(draws[0]) < 16


# ----------------------------------------------------------------------------- synthetic / build


def test_synthetic_dataset():
    ds = SyntheticDataset(12, image_size=8, channels=3, num_classes=4, seed=0)
    x, y = ds[5]
    assert x.shape == (3, 8, 8) and int(y) == 1 and x.abs().max() <= 1
    torch.testing.assert_close(SyntheticDataset(12, 8, 3, 4, seed=0)[5][0], x)
    assert not torch.equal(SyntheticDataset(12, 8, 3, 4, seed=1)[5][0], x)


def test_build_dataset(tmp_path):
    tok = TokenizerConfig(image_size=16, channels=3)
    ds = build_dataset(DataConfig(name="synthetic", image_size=16, limit=10), tok)
    assert len(ds) == 10 and ds[0][0].shape == (3, 16, 16)
    with pytest.raises(ValueError, match="fashion-mnist, imagefolder, synthetic"):
        build_dataset(DataConfig(name="cifar", image_size=16), tok)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="image_size"):
        build_dataset(DataConfig(name="synthetic", image_size=28), tok)
    with pytest.raises(ValueError, match="grayscale"):
        build_dataset(DataConfig(name="fashion-mnist", image_size=16), tok)
    make_folder(tmp_path / "train")
    folder = build_dataset(DataConfig(name="imagefolder", path=str(tmp_path), image_size=16, flip=True), tok)
    assert isinstance(folder, ImageFolderDataset) and folder.flip and len(folder) == 6
    write_fake_fmnist(tmp_path, "test", 10)
    fm = build_dataset(DataConfig(path=str(tmp_path), image_size=32, flip=True), TokenizerConfig(image_size=32),
                       split="test")
    assert fm[0][0].shape == (1, 32, 32) and not fm.flip


# ----------------------------------------------------------------------------- latent cache


def toy_encode(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 1, 8, 8) -> mean (B, 2, 4, 4), logvar (B, 2, 4, 4) (tiny variance: samples equal the mean)."""
    pooled = torch.nn.functional.avg_pool2d(x, 2)
    mean = torch.cat([pooled, pooled * torch.linspace(0, 1, 4)], 1)
    return mean, torch.full_like(mean, -40.0)


def test_latent_cache_round_trip(tmp_path):
    ds = SyntheticDataset(11, image_size=8, channels=1, num_classes=3, seed=0)
    calls = []

    def encode(x):
        calls.append(len(x))
        return toy_encode(x)

    cache_latents(ds, encode, tmp_path, batch_size=4, shard_size=5)
    assert sorted(p.name for p in tmp_path.glob("*.npy"))[:2] == ["shard-00000.labels.npy", "shard-00000.moments.npy"]
    cached = CachedLatents(tmp_path, seed=0)
    assert len(cached) == 11 and cached.latent_shape == (2, 4, 4)
    seen_flips = set()
    for i in range(11):
        x, y = ds[i]
        mom = cached.moments(i)
        assert mom.shape == (2, 2, 2, 4, 4)
        torch.testing.assert_close(torch.from_numpy(np.array(mom[0, 0])), toy_encode(x[None])[0][0])
        torch.testing.assert_close(torch.from_numpy(np.array(mom[1, 0])), toy_encode(x[None].flip(-1))[0][0])
        z, label = cached[i]
        assert z.shape == (2, 4, 4) and z.dtype == torch.float32 and int(label) == int(y)
        torch.testing.assert_close(z, cached[i][0])  # per-index deterministic
        flip = int(not torch.allclose(z, torch.from_numpy(np.array(mom[0, 0])), atol=1e-6))
        torch.testing.assert_close(z, torch.from_numpy(np.array(mom[flip, 0])), atol=1e-6, rtol=0)
        seen_flips.add(flip)
    assert seen_flips == {0, 1}

    n_calls = len(calls)
    cache_latents(ds, encode, tmp_path, batch_size=4, shard_size=5)  # complete shards are skipped
    assert len(calls) == n_calls

    runs = [CachedLatents(tmp_path, generator=torch.Generator().manual_seed(5)) for _ in range(2)]
    for i in range(11):  # an explicit generator: the same seed replays the same draws
        torch.testing.assert_close(runs[0][i][0], runs[1][i][0])
    with pytest.raises(FileNotFoundError, match="cache_latents"):
        CachedLatents(tmp_path / "nothing")
    flipped = FashionMNIST.__new__(FashionMNIST)
    flipped.flip = True
    with pytest.raises(ValueError, match="flip=False"):
        cache_latents(flipped, encode, tmp_path / "other")


def test_cached_latent_noise(tmp_path):
    ds = SyntheticDataset(4, image_size=8, channels=1, seed=0)
    cache_latents(ds, lambda x: (torch.zeros(len(x), 1, 2, 2), torch.zeros(len(x), 1, 2, 2)), tmp_path)
    z = torch.stack([CachedLatents(tmp_path, seed=s)[0][0] for s in range(200)])
    assert abs(float(z.mean())) < 0.2 and abs(float(z.std()) - 1) < 0.15  # mean 0, std exp(0 / 2) = 1
