"""Fashion-MNIST evaluation: a small CNN classifier (export, loading; trained by emigm.train.classifier) and
the metrics built
on its penultimate features: Frechet distance, k-NN precision / recall and class accuracy.

Why our own classifier: Inception features (FID) are meaningless on 28 x 28 grayscale clothes, so FD
here is "FID with a Fashion-MNIST CNN", comparable only between runs that use the same shipped
classifier file and the same sample count n (FD is biased upwards at small n; `real_data_floor`
gives the value real images reach at the same n, through the same code path).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from emigm.core.config import from_dict
from emigm.core.fields import check_number
from emigm.core.fileio import check_regular, write_bytes
from emigm.core.statedict import check_state_dict, on_meta, read_safetensors, spec_of
from emigm.data.datasets import load_fashion_mnist, to_unit_range

Tensor = torch.Tensor
CLASSIFIER_NAME = "fmnist-classifier"


# ----------------------------------------------------------------------------- classifier


@dataclass(frozen=True)
class ClassifierConfig:
    """Three conv stages (`convs` 3x3 convs + BN + ReLU each, 2x2 max-pool after each stage: 28 -> 14
    -> 7 -> 3), then a linear layer + BN to `feature_dim` features and a linear classifier. Sized so that 6 epochs
    take about 8 minutes on two idle CPU cores (0.3 s per 256-image step)."""

    widths: tuple[int, int, int] = (32, 64, 128)
    convs: int = 1
    feature_dim: int = 128
    num_classes: int = 10

    def __post_init__(self) -> None:
        if not isinstance(self.widths, (tuple, list)) or len(self.widths) != 3:
            raise ValueError(f"widths must be 3 whole numbers, got {self.widths!r}")
        for w in self.widths:
            check_number("widths", w, 1, 4096, integer=True)
        check_number("convs", self.convs, 1, 16, integer=True)
        check_number("feature_dim", self.feature_dim, 1, 8192, integer=True)
        check_number("num_classes", self.num_classes, 1, 100000, integer=True)


class Classifier(nn.Module):
    """x float32 (B, 1, 28, 28) in [-1, 1] -> logits (B, num_classes); `features` gives the
    penultimate (pre-activation) features (B, feature_dim) used by the metrics."""

    def __init__(self, cfg: ClassifierConfig = ClassifierConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        layers: list[nn.Module] = []
        c_in = 1
        for width in cfg.widths:
            for _ in range(cfg.convs):
                layers += [nn.Conv2d(c_in, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
                c_in = width
            layers.append(nn.MaxPool2d(2))
        self.trunk = nn.Sequential(*layers)
        self.proj = nn.Linear(c_in * 3 * 3, cfg.feature_dim)
        self.norm = nn.BatchNorm1d(cfg.feature_dim)
        self.out = nn.Linear(cfg.feature_dim, cfg.num_classes)

    def features(self, x: Tensor) -> Tensor:
        """(B, 1, 28, 28) in [-1, 1] -> (B, feature_dim)."""
        if x.shape[1:] != (1, 28, 28):
            raise ValueError(f"classifier expects (B, 1, 28, 28) images, got {tuple(x.shape)}")
        return self.norm(self.proj(self.trunk(x).flatten(1)))

    def forward(self, x: Tensor) -> Tensor:
        return self.out(F.relu(self.features(x)))


def save_classifier(model: Classifier, out_dir: str | os.PathLike, record: dict | None = None) -> Path:
    """Write out_dir/fmnist-classifier.safetensors (weights) and .json (`record` plus the config),
    each atomically (emigm.core.fileio). Returns the weights path."""
    from safetensors.torch import save

    out = Path(out_dir)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    record = {"format": "emigm-fmnist-classifier", "version": 1, **(record or {}),
              "config": json.loads(json.dumps(asdict(model.cfg)))}
    weights = out / f"{CLASSIFIER_NAME}.safetensors"
    write_bytes(weights, save(state), checksum=True)
    write_bytes(out / f"{CLASSIFIER_NAME}.json", (json.dumps(record, indent=2) + "\n").encode())
    return weights


def load_classifier(path_or_dir: str | os.PathLike = "assets/classifier",
                    device: str | torch.device = "cpu") -> Classifier:
    """Load a classifier written by `train_classifier` (a folder, or the .safetensors / .json path; the
    other file must sit beside it). Returns it in eval mode on `device`."""
    p = Path(path_or_dir)
    base = p / CLASSIFIER_NAME if p.is_dir() else p.with_suffix("")
    weights, meta = base.with_suffix(".safetensors"), base.with_suffix(".json")
    for f in (weights, meta):
        if not check_regular(f, "classifier file"):
            raise FileNotFoundError(f"classifier file {f} not found; train one with "
                                    "`python -m emigm train-classifier --data.path DIR --out DIR`")
    try:
        record = json.loads(meta.read_text())
        cfg = from_dict(ClassifierConfig, record["config"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{meta}: corrupt classifier metadata ({e})") from None
    state = read_safetensors(weights, "classifier weights")

    with on_meta():  # shapes only: the file is checked before anything is allocated
        expected = spec_of(Classifier(cfg))
    try:
        check_state_dict(expected, state, str(weights))
    except ValueError as e:
        raise ValueError(str(e).replace(" does not fit this model: ",
                                        f": weights do not match the config in {meta.name}: ", 1)) from None
    model = Classifier(cfg)
    model.load_state_dict(state)
    return model.to(device).eval()


# ----------------------------------------------------------------------------- metrics


def classifier_outputs(classifier: Classifier, images: Tensor, batch_size: int = 1000) -> tuple[Tensor, Tensor]:
    """Batched, under inference_mode: images (N, 1, 28, 28) in [-1, 1] -> (features (N, D) float32,
    logits (N, num_classes) float32), on the CPU. Runs on the classifier's device."""
    device = next(classifier.parameters()).device
    feats, logits = [], []
    with torch.inference_mode():
        for chunk in images.split(batch_size):
            f = classifier.features(chunk.to(device, torch.float32))
            feats.append(f.float().cpu())
            logits.append(classifier.out(F.relu(f)).float().cpu())
    feats_all, logits_all = torch.cat(feats), torch.cat(logits)
    bad = int((~torch.isfinite(feats_all).all(1) | ~torch.isfinite(logits_all).all(1)).sum())
    if bad:
        raise ValueError(f"the classifier's features are NaN or infinite for {bad} of {len(feats_all)} images: its "
                         "weights overflow on them; retrain it (train-classifier) or give another --classifier")
    return feats_all, logits_all


def _as64(x: np.ndarray | Tensor) -> Tensor:
    x = torch.as_tensor(x).to(torch.float64)
    if x.dim() != 2 or x.shape[0] < 2:
        raise ValueError(f"expected features (N >= 2, D), got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():  # eigh would fail with a LinAlgError, far from the cause
        raise ValueError(f"features hold NaN or infinite values ({int((~torch.isfinite(x)).sum())} of {x.numel()}); "
                         "no Frechet distance of them")
    return x


def feature_stats(feats: np.ndarray | Tensor) -> tuple[Tensor, Tensor]:
    """(N, D) -> mean (D,) and unbiased covariance (D, D), float64."""
    x = _as64(feats)
    mu = x.mean(0)
    xc = x - mu
    return mu, xc.T @ xc / (x.shape[0] - 1)


def _sqrtm_psd(a: Tensor) -> Tensor:
    w, v = torch.linalg.eigh((a + a.T) / 2)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def frechet_distance(feats_a: np.ndarray | Tensor, feats_b: np.ndarray | Tensor) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (N_a, D), (N_b, D):
    |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2) (Heusel et al. 2017, FID), in
    float64 with symmetric eigendecompositions (tr sqrt(S_a S_b) = tr sqrt(S_a^1/2 S_b S_a^1/2))."""
    mu_a, s_a = feature_stats(feats_a)
    mu_b, s_b = feature_stats(feats_b)
    if mu_a.shape != mu_b.shape:
        raise ValueError(f"feature dims differ: {mu_a.shape[0]} vs {mu_b.shape[0]}")
    root_a = _sqrtm_psd(s_a)
    m = root_a @ s_b @ root_a
    tr_cross = torch.linalg.eigvalsh((m + m.T) / 2).clamp(min=0).sqrt().sum()
    fd = (mu_a - mu_b).square().sum() + torch.trace(s_a) + torch.trace(s_b) - 2 * tr_cross
    return float(fd.clamp(min=0))


def _kth_radius(x: Tensor, k: int, chunk: int) -> Tensor:
    """Distance from each row of x to its k-th nearest other row (the row itself is at distance 0)."""
    return torch.cat([torch.cdist(c, x).topk(k + 1, dim=1, largest=False).values[:, -1] for c in x.split(chunk)])


def _coverage(points: Tensor, centres: Tensor, radii: Tensor, chunk: int) -> float:
    """Fraction of `points` inside at least one ball (centre, radius)."""
    inside = [(torch.cdist(c, centres) <= radii[None]).any(1) for c in points.split(chunk)]
    return float(torch.cat(inside).double().mean())


def knn_precision_recall(real_feats: np.ndarray | Tensor, fake_feats: np.ndarray | Tensor, k: int = 3,
                         chunk: int = 1000) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019): each set's manifold is the union of
    balls reaching each point's k-th nearest neighbour; precision = share of fake points inside the
    real manifold, recall = share of real points inside the fake manifold. Inputs (N, D); float64."""
    real, fake = _as64(real_feats), _as64(fake_feats)
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"need more than k={k} points in each set")
    precision = _coverage(fake, real, _kth_radius(real, k, chunk), chunk)
    recall = _coverage(real, fake, _kth_radius(fake, k, chunk), chunk)
    return precision, recall


def seam_sums(images: Tensor, period: int = 4) -> tuple[float, int, float, int]:
    """(sum of |pixel step| across token borders, their count, sum inside tokens, their count), in
    float64, over horizontal and vertical neighbours of images (N, C, H, W): what `seam_ratio` divides,
    kept as sums so that shards of a sample set add up to the whole."""
    dx = (images[..., :, 1:] - images[..., :, :-1]).abs().double()
    dy = (images[..., 1:, :] - images[..., :-1, :]).abs().double()
    bx = (torch.arange(dx.shape[-1], device=images.device) % period) == period - 1  # column steps
    by = (torch.arange(dy.shape[-2], device=images.device) % period) == period - 1  # row steps
    across = (dx[..., :, bx], dy[..., by, :])
    inside = (dx[..., :, ~bx], dy[..., ~by, :])
    return (float(sum(a.sum() for a in across)), sum(a.numel() for a in across),
            float(sum(a.sum() for a in inside)), sum(a.numel() for a in inside))


def seam_ratio_of_sums(sums: tuple[float, int, float, int]) -> float:
    across, n_across, inside, n_inside = sums
    return (across / max(n_across, 1)) / max(inside / max(n_inside, 1), 1e-12)


def seam_ratio(images: Tensor, period: int = 4) -> float:
    """Mean |pixel step| across the borders of a `period` x `period` token grid divided by the mean
    |pixel step| inside tokens, over horizontal and vertical neighbours. ~1 for images without token
    seams; > 1 when token borders show. images (N, C, H, W)."""
    return seam_ratio_of_sums(seam_sums(images, period))


def class_accuracy(logits: Tensor, labels: Tensor) -> float:
    """Share of rows whose argmax matches the label: logits (N, K), labels (N,) int."""
    if logits.shape[0] != labels.shape[0]:
        raise ValueError(f"{logits.shape[0]} logits rows but {labels.shape[0]} labels")
    return float((logits.argmax(1).cpu() == labels.cpu()).double().mean())


def score_features(feats: Tensor, logits: Tensor, labels: Tensor, reference_feats: Tensor, k: int = 3
                   ) -> dict[str, float]:
    """The metrics of classifier outputs (features (N, D), logits (N, K)) of images with their intended
    labels (N,) against reference features (M, D): fd, class_accuracy, precision, recall and n."""
    precision, recall = knn_precision_recall(reference_feats, feats, k)
    return {"fd": frechet_distance(feats, reference_feats), "class_accuracy": class_accuracy(logits, labels),
            "precision": precision, "recall": recall, "n": int(feats.shape[0])}


def evaluate_images(images: Tensor, labels: Tensor, classifier: Classifier, reference_feats: Tensor,
                    k: int = 3, batch_size: int = 1000) -> dict[str, float]:
    """Score images (N, 1, 28, 28) in [-1, 1] with their intended labels (N,) against reference
    features (M, D) (e.g. the test set through the same classifier). Returns fd, class_accuracy
    (classifier agrees with the intended label), precision, recall and n."""
    if images.dim() != 4 or images.shape[0] != labels.shape[0]:
        raise ValueError(f"images (N, 1, 28, 28) and labels (N,) expected, got {tuple(images.shape)} "
                         f"and {tuple(labels.shape)}")
    feats, logits = classifier_outputs(classifier, images, batch_size)
    return score_features(feats, logits, labels, reference_feats, k)


def dataset_features(classifier: Classifier, root: str | None, split: str = "test", n: int = 0,
                     batch_size: int = 1000) -> tuple[Tensor, Tensor]:
    """Features (n, D) and labels (n,) of the first n (0: all) Fashion-MNIST images of a split."""
    x, y = load_fashion_mnist(root, split)  # type: ignore[arg-type]
    if n > 0:
        if n > len(x):
            raise ValueError(f"n={n} exceeds the {len(x)} {split} images")
        x, y = x[:n], y[:n]
    return classifier_outputs(classifier, to_unit_range(x), batch_size)[0], torch.from_numpy(y)


def real_data_floor(classifier: Classifier, root: str | None, n: int = 10000, k: int = 3,
                    batch_size: int = 1000) -> dict[str, float]:
    """`evaluate_images` on the first n training images against the first n test images: the FD,
    precision and recall that real data reaches at sample size n (n <= 10000)."""
    ref, _ = dataset_features(classifier, root, "test", n, batch_size)
    x, y = load_fashion_mnist(root, "train")
    return evaluate_images(to_unit_range(x[:n]), torch.from_numpy(y[:n]), classifier, ref, k, batch_size)
