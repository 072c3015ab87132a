"""The Fashion-MNIST KL autoencoder tokenizer: the latent normalisation against hand-computed statistics,
the posterior sample's mean and spread, and the encode / decode round trip through the tokenizer."""
from __future__ import annotations

import pytest
import torch

from emigm.tokenize.klvae import KLVAE, KLVAEConfig, load_klvae
from emigm.tokenize.tokenizers import KLTokenizer, posterior_sample
from emigm.train.tokenizer import fit_latent_normalisation

TINY = KLVAEConfig(image_size=8, channels=1, latent_channels=3, widths=(4, 8, 8), num_res_blocks=0)


@pytest.fixture(scope="module")
def model() -> KLVAE:
    torch.manual_seed(0)
    m = KLVAE(TINY).eval()
    for p in m.parameters():  # fixed, not trained: a deterministic model with non-trivial moments
        p.data.uniform_(-0.3, 0.3)
    return m


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_latent_normalisation_matches_hand_computed_statistics(model):
    x = _images(40, 1)
    with torch.no_grad():
        mean = model.moments(x)[0]  # (N, C, 2, 2)
    per_channel = mean.permute(1, 0, 2, 3).reshape(3, -1).double()
    want_shift = per_channel.sum(1) / per_channel.shape[1]
    want_scale = ((per_channel - want_shift[:, None]) ** 2).sum(1).div(per_channel.shape[1] - 1).sqrt()
    fit_latent_normalisation(model, x, batch_size=7)  # several chunks: the statistics are over all of them
    assert torch.allclose(model.shift.double(), want_shift, atol=1e-6)
    assert torch.allclose(model.scale.double(), want_scale, atol=1e-6)
    tok = KLTokenizer(model)
    z = tok.encode(x)  # (N, 4, 3): normalised posterior means, channel last
    assert z.shape == (40, 4, 3)
    flat = z.reshape(-1, 3).double()
    assert torch.allclose(flat.mean(0), torch.zeros(3, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(flat.std(0), torch.ones(3, dtype=torch.float64), atol=1e-5)
    # normalize / denormalize are inverse, channel by channel
    assert torch.allclose(model.denormalize(model.normalize(mean)), mean, atol=1e-6)
    assert torch.allclose(model.normalize(mean)[:, 1], (mean[:, 1] - model.shift[1]) / model.scale[1])


def test_posterior_sample_mean_and_spread():
    mean = torch.tensor([[0.5, -1.0]]).expand(20000, 2)
    logvar = torch.tensor([[0.0, -2.0 * torch.log(torch.tensor(3.0))]]).expand(20000, 2)  # std 1 and 1/3
    assert posterior_sample(mean, logvar, None) is mean
    draw = posterior_sample(mean, logvar, torch.Generator().manual_seed(0))
    assert torch.allclose(draw.mean(0), torch.tensor([0.5, -1.0]), atol=0.03)
    assert torch.allclose(draw.std(0), torch.tensor([1.0, 1 / 3]), rtol=0.03)
    again = posterior_sample(mean, logvar, torch.Generator().manual_seed(0))
    assert torch.equal(draw, again)


def test_tokenizer_round_trip_and_saved_model(model, tmp_path):
    from emigm.train.tokenizer import TokenizerTrainConfig, export_tokenizer

    tok = KLTokenizer(model)
    x = _images(5, 2)
    z = tok.encode(x)
    with torch.no_grad():
        want = model.decode(model.moments(x)[0]).clamp(-1, 1)  # decode(denormalize(normalize(mean)))
    assert torch.allclose(tok.decode(z), want, atol=1e-5)
    sampled = tok.encode(x, generator=torch.Generator().manual_seed(3))
    assert sampled.shape == z.shape and not torch.allclose(sampled, z)
    export_tokenizer(model, tmp_path, TokenizerTrainConfig(kind="kl"), {})
    loaded = load_klvae(str(tmp_path / "kl.safetensors"))
    assert torch.equal(loaded.shift, model.shift) and torch.equal(loaded.scale, model.scale)
    assert torch.equal(KLTokenizer(loaded).encode(x), z)
