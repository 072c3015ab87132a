"""The metric on inputs whose answer is known: the Frechet distance on non-commuting covariances, pinned by a
construction whose matrix square root is known without computing one, by the 2 x 2 closed form of
tr sqrt(A), and by SciPy's general (Schur) square root; class accuracy and k-NN precision / recall on
point sets whose answer is counted by hand."""
from __future__ import annotations

import math

import pytest
import torch

from emigm.eval.evaluation import class_accuracy, feature_stats, frechet_distance, knn_precision_recall

F64 = torch.float64


def with_covariance(n: int, mean: torch.Tensor, factor: torch.Tensor, seed: int) -> torch.Tensor:
    """n points whose sample mean is `mean` and unbiased sample covariance is factor @ factor.T exactly
    (to float64 rounding): white points (sample covariance I, by a Cholesky whitening) times factor.T."""
    x = torch.randn(n, len(mean), generator=torch.Generator().manual_seed(seed), dtype=F64)
    x = x - x.mean(0)
    chol = torch.linalg.cholesky(x.T @ x / (n - 1))
    white = torch.linalg.solve_triangular(chol, x.T, upper=False).T
    return white @ factor.T + mean


def spd(d: int, low: float, high: float, seed: int) -> torch.Tensor:
    """A symmetric positive definite matrix with eigenvalues spread over [low, high] and random axes."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64))
    return (q * torch.linspace(low, high, d, dtype=F64)) @ q.T


def test_fd_known_square_root_on_non_commuting_covariances():
    """S_a = R^2 and S_b = R^-1 M^2 R^-1 with R, M symmetric positive definite and not commuting: then
    S_a^1/2 S_b S_a^1/2 = M^2, so tr sqrt(...) = tr M with no matrix root computed, and
    FD = |mu_a - mu_b|^2 + tr R^2 + tr(R^-1 M^2 R^-1) - 2 tr M. M has eigenvalues below 1 (a clamp at
    1 instead of 0 would show) and above."""
    d = 6
    R, M = spd(d, 0.4, 2.5, 0), spd(d, 0.05, 3.0, 1)
    r_inv = torch.linalg.inv(R)
    s_a, s_b = R @ R, r_inv @ M @ M @ r_inv
    assert (s_a @ s_b - s_b @ s_a).abs().max() > 0.5  # the covariances do not commute
    mu_a, mu_b = torch.linspace(-1, 1, d, dtype=F64), torch.linspace(0.5, -0.2, d, dtype=F64)
    a = with_covariance(400, mu_a, R, 2)
    b = with_covariance(900, mu_b, r_inv @ M, 3)
    torch.testing.assert_close(feature_stats(b)[1], s_b, rtol=1e-9, atol=1e-12)
    expected = float((mu_a - mu_b).square().sum() + torch.trace(s_a) + torch.trace(s_b) - 2 * torch.trace(M))
    assert expected > 1.0
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(b, a) == pytest.approx(expected, rel=1e-9)  # symmetric in its arguments


def test_fd_two_by_two_closed_form():
    """For 2 x 2 covariances tr sqrt(S_a S_b) = sqrt(tr(S_a S_b) + 2 sqrt(det S_a det S_b)) (the eigenvalues
    l1, l2 of S_a S_b are positive: sqrt(l1) + sqrt(l2) squared is l1 + l2 + 2 sqrt(l1 l2))."""
    s_a = torch.tensor([[2.0, 0.9], [0.9, 1.0]], dtype=F64)
    s_b = torch.tensor([[0.5, -0.3], [-0.3, 1.5]], dtype=F64)
    a = with_covariance(300, torch.zeros(2, dtype=F64), torch.linalg.cholesky(s_a), 4)
    b = with_covariance(500, torch.tensor([1.0, -2.0], dtype=F64), torch.linalg.cholesky(s_b), 5)
    tr_root = math.sqrt(float(torch.trace(s_a @ s_b)) + 2 * math.sqrt(float(torch.det(s_a) * torch.det(s_b))))
    expected = 1.0 + 4.0 + float(torch.trace(s_a) + torch.trace(s_b)) - 2 * tr_root
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)


def test_fd_against_scipy_sqrtm_random_covariances():
    """Full, unrelated covariances (features of different spreads along different axes) against the
    textbook formula with SciPy's sqrtm of the non-symmetric product S_a S_b."""
    linalg = pytest.importorskip("scipy.linalg")
    g = torch.Generator().manual_seed(6)
    a = torch.randn(700, 5, generator=g, dtype=F64) @ torch.randn(5, 5, generator=g, dtype=F64)
    b = torch.randn(500, 5, generator=g, dtype=F64) @ torch.randn(5, 5, generator=g, dtype=F64) + 0.7
    (mu_a, s_a), (mu_b, s_b) = feature_stats(a), feature_stats(b)
    root = linalg.sqrtm((s_a @ s_b).numpy())
    expected = float((mu_a - mu_b).square().sum() + torch.trace(s_a) + torch.trace(s_b)) - 2 * float(root.real.trace())
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-7)


def test_class_accuracy_counts():
    logits = torch.tensor([[0.1, 0.9, 0.0], [2.0, 1.0, 3.0], [5.0, 4.0, 4.5], [0.0, 0.0, 1.0], [1.0, 3.0, 2.0]])
    labels = torch.tensor([1, 2, 1, 2, 0])  # argmax: 1, 2, 0, 2, 1 -> 3 of 5 right
    assert class_accuracy(logits, labels) == 0.6


def test_precision_recall_counted_by_hand():
    """Points on a line, k = 1: each real point's ball reaches its nearest real neighbour. Real 0, 1, 2, 10
    (radii 1, 1, 1, 8); fakes 0.5 (|0.5 - 0| <= 1), 2.9 (|2.9 - 2| <= 1), 5 (|5 - 10| <= 8) are inside a
    ball, 30 is in none: precision 3 / 4. Fake radii
    (k = 1): 0.5 -> 2.4, 2.9 -> 2.1, 5 -> 2.1, 30 -> 25; real points inside a fake ball: 0 (|0 - 0.5| = 0.5),
    1, 2 (within 2.4 of 0.5 / 2.1 of 2.9), 10 (|10 - 30| = 20 <= 25): recall 4 / 4."""
    real = torch.tensor([[0.0], [1.0], [2.0], [10.0]])
    fake = torch.tensor([[0.5], [2.9], [5.0], [30.0]])
    assert knn_precision_recall(real, fake, k=1) == (0.75, 1.0)
    # k = 2: real radii 2, 1, 2, 9 and the fake at 30 is still outside; fake radii 4.5, 2.4, 4.5, 25
    assert knn_precision_recall(real, fake, k=2) == (0.75, 1.0)
    far = torch.tensor([[100.0], [101.0], [103.0], [200.0]])  # radii 1, 1, 2, 97 (k = 1)
    assert knn_precision_recall(real, far, k=1) == (0.0, 0.0)


def test_classifier_config_bounds():
    """The classifier's config takes the ends of its ranges and refuses one past them, one line each."""
    from emigm.eval.evaluation import Classifier, ClassifierConfig

    edge = ClassifierConfig(widths=(1, 1, 1), convs=1, feature_dim=1, num_classes=1)
    assert Classifier(edge)(torch.zeros(2, 1, 28, 28)).shape == (2, 1)
    for bad in (dict(num_classes=0), dict(feature_dim=0), dict(convs=0), dict(widths=(1, 1)), dict(widths=(1, 1, 1, 1)),
                dict(widths=(0, 1, 1))):
        with pytest.raises(ValueError):
            ClassifierConfig(**bad)
