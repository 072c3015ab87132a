"""Tests for emigm.eval.evaluation: metrics (closed forms, toy point clouds), the classifier and its files."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from emigm.data.datasets import DEFAULT_FASHION_MNIST, load_fashion_mnist, to_unit_range
from emigm.eval.evaluation import (
    Classifier,
    ClassifierConfig,
    class_accuracy,
    classifier_outputs,
    evaluate_images,
    frechet_distance,
    knn_precision_recall,
    load_classifier,
    save_classifier,
)
from emigm.train.classifier import init_weights

ASSET = Path(__file__).resolve().parents[1] / "assets" / "classifier"
HAVE_FMNIST = (Path(DEFAULT_FASHION_MNIST) / "t10k-images-idx3-ubyte.gz").is_file()
HAVE_ASSET = (ASSET / "fmnist-classifier.safetensors").is_file()


def gaussian_with_exact_moments(n: int, mean: torch.Tensor, var: torch.Tensor, seed: int) -> torch.Tensor:
    """n points whose sample mean is `mean` and unbiased sample covariance is diag(var) exactly."""
    x = torch.randn(n, len(mean), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x = x - x.mean(0)
    chol = torch.linalg.cholesky(x.T @ x / (n - 1))
    white = torch.linalg.solve_triangular(chol, x.T, upper=False).T  # sample covariance = I
    return white * var.sqrt() + mean


def random_classifier(seed: int = 0) -> Classifier:
    model = Classifier()
    init_weights(model, torch.Generator().manual_seed(seed))
    return model.eval()


# ----------------------------------------------------------------------------- Frechet distance


def test_fd_identical_sets_is_zero():
    x = torch.randn(500, 16, generator=torch.Generator().manual_seed(0))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(x.numpy(), x.clone()) == pytest.approx(0.0, abs=1e-8)


def test_fd_closed_form_diagonal_gaussians():
    # FD = |mu_a - mu_b|^2 + sum_i (sqrt(va_i) - sqrt(vb_i))^2 for diagonal covariances.
    d = 8
    mu_a, mu_b = torch.zeros(d, dtype=torch.float64), torch.linspace(-1, 2, d, dtype=torch.float64)
    va, vb = torch.linspace(0.5, 3, d, dtype=torch.float64), torch.linspace(4, 0.1, d, dtype=torch.float64)
    a = gaussian_with_exact_moments(300, mu_a, va, 0)
    b = gaussian_with_exact_moments(700, mu_b, vb, 1)
    expected = float((mu_a - mu_b).square().sum() + (va.sqrt() - vb.sqrt()).square().sum())
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(b.numpy(), a.float()) == pytest.approx(expected, rel=1e-5)  # symmetric, float32 ok


def test_fd_rotation_invariant():
    g = torch.Generator().manual_seed(2)
    a = torch.randn(400, 6, generator=g, dtype=torch.float64) * torch.arange(1, 7)
    b = torch.randn(400, 6, generator=g, dtype=torch.float64) + 0.3
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    assert frechet_distance(a @ q, b @ q) == pytest.approx(frechet_distance(a, b), rel=1e-9)
    with pytest.raises(ValueError):
        frechet_distance(a, b[:, :5])


# ----------------------------------------------------------------------------- precision / recall


def test_precision_recall_toy_clouds():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(600, 2, generator=g)
    same = torch.randn(600, 2, generator=g)
    p, r = knn_precision_recall(real, same, k=3)
    assert p > 0.85 and r > 0.85
    far = torch.randn(600, 2, generator=g) + 20
    assert knn_precision_recall(real, far, k=3) == (0.0, 0.0)
    collapsed = 0.1 * torch.randn(600, 2, generator=g)  # mode collapse: all fakes near the centre
    p, r = knn_precision_recall(real, collapsed, k=3)
    assert p > 0.95 and r < 0.3
    wide = 5 * torch.randn(600, 2, generator=g)  # too diverse: low precision, high recall
    p, r = knn_precision_recall(real, wide, k=3)
    assert p < 0.4 and r > 0.9
    # Chunking does not change the answer.
    assert knn_precision_recall(real, wide, k=3, chunk=64) == (p, r)


def test_class_accuracy():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0], [0.0, 5.0]])
    assert class_accuracy(logits, torch.tensor([0, 1, 1, 1])) == 0.75


# ----------------------------------------------------------------------------- classifier


def test_classifier_shapes_and_batching():
    model = random_classifier()
    x = torch.rand(7, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert model(x).shape == (7, 10) and model.features(x).shape == (7, 128)
    feats, logits = classifier_outputs(model, x, batch_size=3)
    torch.testing.assert_close(feats, model.features(x).detach())
    torch.testing.assert_close(logits, model(x).detach())
    with pytest.raises(ValueError, match="28, 28"):
        model.features(torch.zeros(2, 1, 32, 32))


def test_evaluate_images_keys_and_identity():
    model = random_classifier()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(64, 1, 28, 28, generator=g) * 2 - 1
    y = torch.randint(0, 10, (64,), generator=g)
    ref, _ = classifier_outputs(model, x)
    out = evaluate_images(x, y, model, ref)
    assert set(out) == {"fd", "class_accuracy", "precision", "recall", "n"} and out["n"] == 64
    assert out["fd"] == pytest.approx(0.0, abs=1e-6) and out["precision"] == 1.0 and out["recall"] == 1.0


def test_save_load_round_trip_and_errors(tmp_path):
    model = random_classifier(3)
    save_classifier(model, tmp_path, {"test_accuracy": 0.1})
    assert not list(tmp_path.glob("*.tmp"))
    meta = json.loads((tmp_path / "fmnist-classifier.json").read_text())
    assert meta["config"]["feature_dim"] == 128 and meta["test_accuracy"] == 0.1
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    for where in (tmp_path, tmp_path / "fmnist-classifier.safetensors", tmp_path / "fmnist-classifier.json"):
        torch.testing.assert_close(load_classifier(where)(x), model(x))

    with pytest.raises(FileNotFoundError, match="train-classifier"):
        load_classifier(tmp_path / "missing")
    weights = (tmp_path / "fmnist-classifier.safetensors").read_bytes()
    (tmp_path / "fmnist-classifier.safetensors").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(ValueError, match=r"classifier weights .* is damaged"):
        load_classifier(tmp_path)
    (tmp_path / "fmnist-classifier.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt classifier metadata"):
        load_classifier(tmp_path)
    save_classifier(Classifier(ClassifierConfig(feature_dim=64)), tmp_path)
    meta = json.loads((tmp_path / "fmnist-classifier.json").read_text())
    meta["config"]["feature_dim"] = 128
    (tmp_path / "fmnist-classifier.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="do not match"):
        load_classifier(tmp_path)


@pytest.mark.slow  # the shipped classifier on the real test set
@pytest.mark.skipif(not (HAVE_ASSET and HAVE_FMNIST), reason="needs assets/classifier and Fashion-MNIST")
def test_shipped_classifier_accuracy():
    model = load_classifier(ASSET)
    meta = json.loads((ASSET / "fmnist-classifier.json").read_text())
    assert meta["test_accuracy"] >= 0.92 and (ASSET / "fmnist-classifier.safetensors").stat().st_size < 2e6
    x, y = load_fashion_mnist(None, "test")
    _, logits = classifier_outputs(model, to_unit_range(x[:2000]))
    acc = class_accuracy(logits, torch.from_numpy(y[:2000]))
    assert acc > 0.90
