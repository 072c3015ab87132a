"""What the training task feeds the network, against independent computations written here:
- the class-label drop rate (binomial bounds) and that a dropped label reaches the network as the null class;
- the tokens of every tokenizer on the training path (emigm.train.generator.token_source): pixels as
  patches, the small KL autoencoder's posterior samples normalised per channel by its own (shift, scale),
  KL-16 posterior samples times MAR's 0.2325, cached KL-16 / DC-AE latents times 0.2325 / 0.3189;
- the training mask ratio per schedule and t_min against the formulas of emigm.core.masking's
  docstring: t ~ U(0, 1) clamped at t_min (a Kolmogorov-Smirnov bound), exactly ceil(L gamma(p)) tokens
  for `exact`, Binomial(L, gamma(p)) for `bernoulli` (per t bin, within 5 standard deviations), the
  shared-count rejection rule's distribution of t, MAR's truncated normal, and the MDM weight.

Statistical checks use fixed seeds, so they are deterministic; the bounds say how far an honest
implementation may stray (the chance that a correct one fails any of them is below 1e-3)."""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from seam_models import nudged

from emigm.core.config import DataConfig, MaskingConfig, TokenizerConfig
from emigm.core.masking import draw_mask
from emigm.core.presets import get_preset
from emigm.data.datasets import SyntheticDataset, cache_latents
from emigm.tokenize.kl16 import AutoencoderKL16, KL16Config
from emigm.tokenize.klvae import load_klvae
from emigm.tokenize.tokenizers import KL16Tokenizer
from emigm.train import generator as generator_mod
from emigm.train.generator import GeneratorTask, token_source

ASSETS = Path(__file__).resolve().parents[1] / "assets"
CPU = torch.device("cpu")
KS_999 = 1.95  # sup |F_n - F| <= 1.95 / sqrt(n) with probability 0.999 (Kolmogorov's limit law)


# ----------------------------------------------------------------------------- labels


def _tiny_task(tmp_path, label_drop: float) -> GeneratorTask:
    cfg = get_preset("test-tiny")
    cfg = replace(cfg, masking=replace(cfg.masking, label_drop=label_drop),
                  train=replace(cfg.train, out_dir=str(tmp_path)))
    task = GeneratorTask(cfg, CPU)
    task.dataset()
    return task


def _batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    ds = SyntheticDataset(n, image_size=8)
    return torch.stack([ds[i][0] for i in range(n)]), ds.labels.clone()


@pytest.mark.parametrize("p", [0.1, 0.35])
def test_label_drop_rate_within_binomial_bounds(tmp_path, p):
    task = _tiny_task(tmp_path, p)
    x, y = _batch(2000)
    g = torch.Generator().manual_seed(1)
    drops = torch.cat([task.to_inputs((x, y), g)["drop"] for _ in range(5)])
    n = drops.numel()
    assert drops.dtype == torch.bool and n == 10000
    sd = math.sqrt(n * p * (1 - p))
    assert abs(int(drops.sum()) - n * p) <= 5 * sd, f"{int(drops.sum())} drops of {n} at p = {p}"


def test_label_drop_off_and_always(tmp_path):
    x, y = _batch(500)
    g = torch.Generator().manual_seed(2)
    assert not bool(_tiny_task(tmp_path, 0.0).to_inputs((x, y), g)["drop"].any())
    assert bool(_tiny_task(tmp_path, 1.0).to_inputs((x, y), g)["drop"].all())


def test_dropped_labels_reach_the_network_as_the_null_class(tmp_path):
    """With every label dropped the loss cannot depend on the labels; with none dropped it does."""
    task = _tiny_task(tmp_path, 0.1)
    nudged(task.model, 5)
    x, y = _batch(8)
    inputs = task.to_inputs((x, y), torch.Generator().manual_seed(3))
    other = (y + 3) % 10

    def loss(labels, drop):
        with torch.no_grad():
            return float(task.loss({**inputs, "labels": labels, "drop": drop}, torch.Generator().manual_seed(4)))

    every, none = torch.ones(8, dtype=torch.bool), torch.zeros(8, dtype=torch.bool)
    assert loss(y, every) == loss(other, every)
    assert abs(loss(y, none) - loss(other, none)) > 1e-6


# ----------------------------------------------------------------------------- tokens


def test_patch_tokens_are_the_pixels(tmp_path):
    task = _tiny_task(tmp_path, 0.1)
    x, y = _batch(3)
    tokens = task.to_inputs((x, y), torch.Generator().manual_seed(0))["tokens"]
    assert tokens.shape == (3, 16, 4)
    for r in range(4):  # token r * 4 + c holds the 2 x 2 patch at (2r, 2c), row by row
        for c in range(4):
            torch.testing.assert_close(tokens[:, r * 4 + c], x[:, 0, 2 * r:2 * r + 2, 2 * c:2 * c + 2].reshape(3, 4),
                                       rtol=0, atol=0)


@pytest.mark.skipif(not (ASSETS / "fmnist-kl" / "kl.safetensors").is_file(), reason="needs assets/fmnist-kl")
def test_kl_training_tokens_are_normalised_posterior_samples(tmp_path):
    """token (b, h W + w, c) = (mean + exp(logvar / 2) eps - shift_c) / scale_c of the shipped KL
    autoencoder, eps the generator's normal draws: the normalisation the sampler's decoder undoes."""
    cfg = get_preset("fmnist-emigm")
    cfg = replace(cfg, data=DataConfig(name="synthetic", image_size=28, limit=6),
                  train=replace(cfg.train, out_dir=str(tmp_path)))
    dataset, to_tokens = token_source(cfg, CPU)
    vae = load_klvae(str(ASSETS / "fmnist-kl" / "kl.safetensors"))
    shift, scale = vae.shift.double(), vae.scale.double()
    assert bool((scale != 1).any() and (shift != 0).any())  # a normalisation that would show
    images = torch.stack([SyntheticDataset(6, image_size=28, seed=cfg.train.seed)[i][0] for i in range(6)])
    with torch.no_grad():
        mean, logvar = vae.moments(images)
    moments = torch.stack([dataset[i][0] for i in range(6)])
    torch.testing.assert_close(moments, torch.stack([mean, logvar], 1), rtol=1e-5, atol=1e-5)
    tokens = to_tokens(moments, torch.Generator().manual_seed(9))
    eps = torch.randn(mean.shape, generator=torch.Generator().manual_seed(9))
    z = mean.double() + (0.5 * logvar.double()).exp() * eps.double()
    grid = mean.shape[-1]
    assert tokens.shape == (6, grid * grid, 4)
    for h, w in [(0, 0), (2, 5), (6, 6)]:
        want = (z[:, :, h, w] - shift) / scale
        torch.testing.assert_close(tokens[:, h * grid + w].double(), want, rtol=1e-5, atol=1e-5)


def test_kl16_training_tokens_are_scaled_posterior_samples(tmp_path, monkeypatch):
    """MAR trains on posterior samples of the KL-16 VAE times 0.2325 (a small random VAE of the same kind
    stands in for the real one)."""
    torch.manual_seed(0)
    vae = nudged(AutoencoderKL16(KL16Config(ch=32, ch_mult=(1, 2), num_res_blocks=1, resolution=8,
                                            attn_resolutions=(4,))), 1)
    monkeypatch.setattr(generator_mod, "build_tokenizer", lambda cfg, root=None: KL16Tokenizer(vae, 8))
    tk = TokenizerConfig(kind="kl16", image_size=8, channels=3, latent_channels=16, stride=2)
    cfg = replace(get_preset("test-tiny"), tokenizer=tk, data=DataConfig(name="synthetic", image_size=8, limit=4))
    dataset, to_tokens = token_source(cfg, CPU)
    x = torch.stack([dataset[i][0] for i in range(4)])
    assert x.shape == (4, 3, 8, 8)
    tokens = to_tokens(x, torch.Generator().manual_seed(2))
    with torch.no_grad():
        mean, logvar = vae.encode(x)
    eps = torch.randn(mean.shape, generator=torch.Generator().manual_seed(2))
    z = (mean + (0.5 * logvar).exp() * eps) * 0.2325
    assert tokens.shape == (4, 16, 16)
    for h, w in [(0, 0), (1, 3), (3, 2)]:
        torch.testing.assert_close(tokens[:, h * 4 + w], z[:, :, h, w], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind,channels,stride,scale", [("kl16", 16, 16, 0.2325), ("dcae", 32, 32, 0.3189)])
def test_cached_latents_are_scaled_by_the_published_constant(tmp_path, kind, channels, stride, scale):
    size = 2 * stride
    images = SyntheticDataset(3, image_size=size, channels=3)
    g = torch.Generator().manual_seed(0)
    means = torch.randn(3, channels, 2, 2, generator=g)

    # fixed moments per image, the same for its mirror (logvar -30: a sample is the mean to 3e-7)
    # (the encoder sees the images and then their mirrors in one batch)
    cache_latents(images, lambda x: (torch.cat([means, means])[: len(x)], torch.full((len(x), channels, 2, 2), -30.0)),
                  tmp_path / "c", batch_size=3)
    tk = TokenizerConfig(kind=kind, image_size=size, channels=3, latent_channels=channels, stride=stride)
    cfg = replace(get_preset("test-tiny"), tokenizer=tk,
                  data=DataConfig(name="synthetic", image_size=size, cache_latents=str(tmp_path / "c")))
    dataset, to_tokens = token_source(cfg, CPU)
    latents = torch.stack([dataset[i][0] for i in range(3)])
    torch.testing.assert_close(latents, means, rtol=0, atol=1e-5)  # raw encoder samples, no scale yet
    tokens = to_tokens(latents, torch.Generator())
    assert tokens.shape == (3, 4, channels)
    for h in range(2):
        for w in range(2):
            torch.testing.assert_close(tokens[:, h * 2 + w], latents[:, :, h, w] * scale, rtol=1e-6, atol=0)


# ----------------------------------------------------------------------------- mask ratios

GAMMA = {"linear": lambda t: t, "cosine": lambda t: np.cos(0.5 * np.pi * (1 - t)), "exp": lambda t: 1 - np.exp(-5 * t)}
DGAMMA = {"linear": lambda t: np.ones_like(t), "cosine": lambda t: 0.5 * np.pi * np.sin(0.5 * np.pi * (1 - t)),
          "exp": lambda t: 5 * np.exp(-5 * t)}


def _ks(t: np.ndarray, cdf, t_min: float) -> float:
    """sup |F_n - F| for the law of max(X, t_min) with X of CDF `cdf` on [0, 1] (F(x) = cdf(x) for
    x >= t_min, 0 below: an atom of mass cdf(t_min) at t_min), compared at each distinct value and just
    below it. t_min as float32, as the draws are."""
    t_min = float(np.float32(t_min))
    v, ties = np.unique(t, return_counts=True)
    after = np.cumsum(ties) / len(t)
    before = after - ties / len(t)
    f = np.where(v >= t_min, cdf(v), 0.0)
    f_before = np.where(v > t_min, cdf(v), 0.0)
    return float(max(np.abs(after - f).max(), np.abs(before - f_before).max()))


def _ks_clamped_uniform(t: np.ndarray, t_min: float) -> float:
    """The KS distance of t to max(U, t_min), U ~ U(0, 1)."""
    return _ks(t, lambda x: x, t_min)


@pytest.mark.parametrize("schedule", ["linear", "cosine", "exp"])
@pytest.mark.parametrize("t_min", [0.0, 0.3])
def test_exact_mask_counts_and_time_law(schedule, t_min):
    L, n = 64, 6000
    cfg = MaskingConfig(schedule=schedule, distribution="exact", t_min=t_min, weighting="mdm")
    d = draw_mask(cfg, n, L, generator=torch.Generator().manual_seed(7))
    t = d.t.double().numpy()
    assert _ks_clamped_uniform(t, t_min) <= KS_999 / math.sqrt(n)
    if t_min > 0:  # the clamp puts an atom of mass t_min at t_min
        assert abs((t == np.float32(t_min)).mean() - t_min) <= 5 * math.sqrt(t_min * (1 - t_min) / n)
    p = 0.999 * t + 0.001
    want = np.clip(np.ceil(L * GAMMA[schedule](p) - 1e-6), 1, L)  # float32 rounding at whole numbers
    counts = d.mask.sum(1).numpy()
    assert (np.abs(counts - want) <= 1).all() and (counts == want).mean() > 0.99
    np.testing.assert_allclose(d.weight.double().numpy(), DGAMMA[schedule](p) / GAMMA[schedule](p), rtol=1e-4)


@pytest.mark.parametrize("schedule", ["linear", "cosine", "exp"])
@pytest.mark.parametrize("t_min", [0.0, 0.3])
def test_bernoulli_mask_counts_per_time_bin(schedule, t_min):
    """Per-sample t: count ~ max(1, Binomial(L, gamma(p))); over each fifth of the samples sorted by t the
    total count is within 5 standard deviations of sum_i [L g_i + (1 - g_i)^L] (the second term: the
    one-token floor)."""
    L, n = 32, 6000
    cfg = MaskingConfig(schedule=schedule, distribution="bernoulli", shared_count=False, t_min=t_min,
                        weighting="one")
    d = draw_mask(cfg, n, L, generator=torch.Generator().manual_seed(8))
    t = d.t.double().numpy()
    assert _ks_clamped_uniform(t, t_min) <= KS_999 / math.sqrt(n)
    g = GAMMA[schedule](0.999 * t + 0.001)
    counts = d.mask.sum(1).numpy()
    assert counts.min() >= 1 and bool((d.weight == 1).all())
    for part in np.array_split(np.argsort(t), 5):
        mean = (L * g[part] + (1 - g[part]) ** L).sum()
        sd = math.sqrt((L * g[part] * (1 - g[part])).sum() + 1)
        assert abs(counts[part].sum() - mean) <= 5 * sd, (schedule, t_min, counts[part].sum(), mean, sd)


@pytest.mark.parametrize("schedule,t_min", [("exp", 0.0), ("linear", 0.2)])
def test_shared_count_law(schedule, t_min):
    """One (t, count) for the batch, redrawn while count < 2: t has density proportional to
    P(Binomial(L, gamma(p(max(u, t_min)))) >= 2) on [0, 1] (integrated numerically here), and the mean count
    over draws in a t bin matches the conditional binomial mean."""
    L, draws = 16, 3000
    cfg = MaskingConfig(schedule=schedule, distribution="bernoulli", shared_count=True, t_min=t_min)
    gen = torch.Generator().manual_seed(9)
    ts, counts = np.empty(draws), np.empty(draws)
    for i in range(draws):
        d = draw_mask(cfg, 3, L, generator=gen)
        c = d.mask.sum(1)
        assert bool((c == c[0]).all()) and bool((d.t == d.t[0]).all())
        ts[i], counts[i] = float(d.t[0]), int(c[0])
    assert counts.min() >= 2
    u = np.linspace(0, 1, 200001)
    g = GAMMA[schedule](0.999 * np.maximum(u, t_min) + 0.001)
    ok = 1 - (1 - g) ** L - L * g * (1 - g) ** (L - 1)
    area = np.concatenate([[0], np.cumsum((ok[1:] + ok[:-1]) / 2 * np.diff(u))])
    cdf_u = area / area[-1]
    # t = max(u, t_min): its CDF is that of u from t_min on, 0 below
    ks = _ks(ts, lambda x: np.interp(x, u, cdf_u), t_min)
    assert ks <= KS_999 / math.sqrt(draws), ks
    gt = GAMMA[schedule](0.999 * ts + 0.001)
    p0, p1 = (1 - gt) ** L, L * gt * (1 - gt) ** (L - 1)
    # X ~ Binomial(L, g) given X >= 2: E[X^k | X >= 2] = (E[X^k] - 1^k P(X = 1)) / P(X >= 2)
    cond_mean = (L * gt - p1) / (1 - p0 - p1)
    cond_var = (L * gt * (1 - gt) + (L * gt) ** 2 - p1) / (1 - p0 - p1) - cond_mean ** 2
    assert abs(counts.sum() - cond_mean.sum()) <= 5 * math.sqrt(cond_var.sum())


def test_mar_ratio_is_the_truncated_normal():
    """MAR: one ratio per batch from N(1, 0.25^2) truncated to [0.7, 1], exactly ceil(L r) tokens."""
    L, draws = 64, 4000
    cfg = MaskingConfig(distribution="mar")
    gen = torch.Generator().manual_seed(10)
    r = np.empty(draws)
    for i in range(draws):
        d = draw_mask(cfg, 2, L, generator=gen)
        r[i] = float(d.t[0])
        assert bool((d.t == d.t[0]).all())
        want = min(L, max(1, math.ceil(L * float(d.t[0]) - 1e-6)))
        assert abs(int(d.mask[0].sum()) - want) <= 1 and int(d.mask[1].sum()) == int(d.mask[0].sum())
    phi = lambda x: 0.5 * (1 + math.erf((x - 1.0) / (0.25 * math.sqrt(2))))  # noqa: E731
    lo = phi(0.7)
    rs = np.sort(r)
    cdf = np.array([(phi(x) - lo) / (phi(1.0) - lo) for x in rs])
    ks = max((np.arange(1, draws + 1) / draws - cdf).max(), (cdf - np.arange(draws) / draws).max())
    assert rs[0] >= 0.7 and rs[-1] <= 1.0 and ks <= KS_999 / math.sqrt(draws), ks
