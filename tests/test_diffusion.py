"""Gaussian diffusion math, the solvers (against closed-form denoisers) and the diffusion head."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from emigm.core.guidance import Term, guide
from emigm.nn.diffusion import (
    SOLVERS,
    GaussianDiffusion,
    cosine_alpha_bar,
    dpm_orders,
    get_solver,
    solver_evals,
    space_timesteps,
)
from emigm.nn.diffusion_head import DiffusionHead, timestep_embedding

T = 1000
DIFF = GaussianDiffusion.cosine(T)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: intra-op threads only add overhead here (and stall on a busy machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _noise_fn(M: int, C: int, seed: int):
    """noise(i): a fixed standard normal (M, C) per index, as the sampler's counter-based stream."""
    def noise(i: int) -> torch.Tensor:
        return torch.randn(M, C, generator=torch.Generator().manual_seed(seed * 100003 + i))
    return noise


def _log_alpha(label: float) -> float:
    """0.5 log alpha_bar at a fractional training step, linear between integer steps."""
    return float(np.interp(label, np.arange(T), 0.5 * np.log(DIFF.alpha_bar.numpy())))


def _gaussian_model(mu: torch.Tensor, s: torch.Tensor, diffusion: GaussianDiffusion | None = None):
    """Exact [eps, v] for data x0 ~ N(mu, diag(s^2)): eps = sigma (x - alpha mu) / (alpha^2 s^2 + sigma^2).
    With `diffusion` (a respaced one, for DDPM), v encodes the exact reverse variance
    beta~ + coef_x0^2 Var[x0 | x_t]; otherwise v = 0."""
    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        label = float(t[0])
        alpha = math.exp(_log_alpha(label))
        sigma = math.sqrt(1 - alpha**2)
        var_x = alpha**2 * s**2 + sigma**2
        eps = sigma * (x - alpha * mu) / var_x
        v = torch.zeros_like(x)
        if diffusion is not None:
            i = int((diffusion.timesteps == round(label)).nonzero())
            if i > 0:
                true_var = diffusion.post_logvar[i].exp() + diffusion.post_coef_x0[i] ** 2 * s**2 * sigma**2 / var_x
                lo, hi = diffusion.post_logvar[i], diffusion.log_betas[i]
                v = (2 * (true_var.log() - lo) / (hi - lo) - 1).to(x.dtype).expand_as(x)
        return torch.cat([eps, v], dim=-1)
    return model


def _ode_solution(x_T: torch.Tensor, mu: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Exact probability-flow ODE map from the noisiest kept step to step 0 for Gaussian data."""
    lam_T, lam_0 = DIFF.logsnr.lambda_range()
    a_T, a_0 = (math.sqrt(1 / (1 + math.exp(-2 * lam))) for lam in (lam_T, lam_0))
    std_T, std_0 = ((a**2 * s**2 + 1 - a**2).sqrt() for a in (a_T, a_0))
    return a_0 * mu + std_0 * (x_T - a_T * mu) / std_T


# ----------------------------------------------------------------------------- schedule


def test_cosine_schedule_endpoints_and_monotone():
    ab = DIFF.alpha_bar
    assert ab[0] > 0.9999 and ab[-1] < 1e-8
    assert bool((ab[1:] < ab[:-1]).all())
    assert DIFF.betas.max() == 0.999 and DIFF.betas[-1] == 0.999
    assert math.isclose(DIFF.betas[0].item(), 1 - cosine_alpha_bar(1 / T) / cosine_alpha_bar(0.0))
    assert DIFF.betas.dtype == torch.float64
    assert DIFF.logsnr.num_steps == 996  # DPM-Solver clips lambda < -5.1: 996 of 1000 steps


def test_respacing():
    keep = space_timesteps(T, 100)
    assert len(set(keep)) == 100 and keep == sorted(keep) and keep[0] == 0 and keep[-1] == T - 1
    d = DIFF.respace(100)
    assert d is DIFF.respace(100)  # cached
    assert d.timesteps.tolist() == keep
    torch.testing.assert_close(d.alpha_bar, DIFF.alpha_bar[keep], rtol=1e-10, atol=0)
    torch.testing.assert_close(DIFF.respace(T).betas, DIFF.betas, rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError):
        space_timesteps(T, 0)


def test_q_sample_marginals():
    x0, noise = torch.full((3, 2), 2.0), torch.ones(3, 2)
    t = torch.tensor([0, 500, 999])
    xt = DIFF.q_sample(x0, t, noise)
    ab = DIFF.alpha_bar[t].float()[:, None].expand(3, 2)
    torch.testing.assert_close(xt, ab.sqrt() * 2 + (1 - ab).sqrt())


def test_training_loss_stop_gradient_and_endpoints():
    g = torch.Generator().manual_seed(0)
    M, C = 4, 3
    x0, noise = torch.randn(M, C, generator=g), torch.randn(M, C, generator=g)
    eps = torch.randn(M, C, generator=g, requires_grad=True)
    v = torch.zeros(M, C, requires_grad=True)
    t = torch.tensor([0, 1, 500, 999])
    loss = DIFF.training_loss(lambda x, s: torch.cat([eps, v], dim=-1), x0, t, noise)
    assert loss.shape == (M,) and torch.isfinite(loss).all()
    loss.sum().backward()
    # eps gets gradient from the MSE only; the variational term trains v alone
    torch.testing.assert_close(eps.grad, 2 * (eps - noise).detach() / C)
    assert v.grad.abs().sum() > 0


def test_dpm_order_pattern():
    assert dpm_orders(8) == [3, 3, 2]
    assert dpm_orders(9) == [3, 3, 2, 1]
    assert dpm_orders(10) == [3, 3, 3, 1]
    assert dpm_orders(14) == [3, 3, 3, 3, 2]
    assert all(sum(dpm_orders(n)) == n for n in range(1, 30))


# ----------------------------------------------------------------------------- solvers


MU, S = torch.tensor([1.0, -0.5]), torch.tensor([0.5, 1.5])


def _moments_ok(x: torch.Tensor, mu: torch.Tensor, s: torch.Tensor, tol_mean: float, tol_std: float):
    assert torch.all((x.mean(0) - mu).abs() < tol_mean * s), (x.mean(0), mu)
    assert torch.all((x.std(0) / s - 1).abs() < tol_std), (x.std(0), s)


def test_ddpm100_reproduces_gaussian_data():
    M = 4000
    noise = _noise_fn(M, 2, seed=1)
    model = _gaussian_model(MU, S, DIFF.respace(100))
    x = SOLVERS["ddpm"](DIFF, model, noise(0), noise, steps=100)
    _moments_ok(x, MU, S, tol_mean=0.08, tol_std=0.06)


@pytest.mark.parametrize("solver,steps,tol_std", [("dpm", 8, 0.12), ("dpm", 14, 0.05), ("dpm2m", 14, 0.07)])
def test_dpm_solvers_reproduce_gaussian_data(solver, steps, tol_std):
    M = 4000
    noise = _noise_fn(M, 2, seed=2)
    x = SOLVERS[solver](DIFF, _gaussian_model(MU, S), noise(0), noise, steps=steps)
    _moments_ok(x, MU, S, tol_mean=0.05, tol_std=tol_std)


X_T = torch.tensor([[0.0, 0.0], [1.0, -1.0], [-2.0, 0.5], [0.3, 2.5]], dtype=torch.float64)
GOLDEN = {  # float64 outputs for X_T with the exact Gaussian denoiser (checked against the ODE below)
    ("dpm", 8): [[0.997089, -0.495172], [1.460686, -2.040994], [0.069896, 0.27774], [1.136168, 3.369384]],
    ("dpm", 14): [[0.996902, -0.495303], [1.490545, -1.99906], [0.009616, 0.256576], [1.144995, 3.264092]],
    ("dpm2m", 8): [[0.996842, -0.495179], [1.50008, -2.038655], [-0.009633, 0.276559], [1.147814, 3.36351]],
    # orders [3, 3, 2, 1] and [3, 3, 3, 1] (a first-order last interval); dpm2m at 10 steps keeps its
    # second-order last step (the lower-order last step is for steps < 10 only)
    ("dpm", 9): [[0.997456, -0.495775], [1.402281, -1.848125], [0.187806, 0.180401], [1.118903, 2.885101]],
    ("dpm", 10): [[0.996877, -0.495461], [1.494543, -1.948286], [0.001544, 0.230951], [1.146177, 3.136601]],
    ("dpm2m", 10): [[0.996751, -0.495136], [1.514602, -2.052416], [-0.038951, 0.283504], [1.152107, 3.398064]],
}


@pytest.mark.parametrize("key", list(GOLDEN))
def test_dpm_golden_values(key):
    x = SOLVERS[key[0]](DIFF, _gaussian_model(MU.double(), S.double()), X_T, None, steps=key[1])
    torch.testing.assert_close(x, torch.tensor(GOLDEN[key], dtype=torch.float64), rtol=0, atol=2e-6)


@pytest.mark.parametrize("solver,steps,order", [("dpm", 96, 3), ("dpm2m", 192, 2)])
def test_dpm_converges_to_exact_ode_at_its_order(solver, steps, order):
    x_T = _noise_fn(256, 2, seed=2)(0).double()
    model, exact = _gaussian_model(MU.double(), S.double()), _ode_solution(x_T, MU.double(), S.double())
    err = [(SOLVERS[solver](DIFF, model, x_T, None, steps=n) - exact).abs().max() for n in (steps, 2 * steps)]
    assert err[1] < 1e-3
    assert 0.75 * 2**order < err[0] / err[1] < 1.25 * 2**order, err


@pytest.mark.parametrize("solver,steps", [("dpm", 8), ("dpm", 14), ("dpm2m", 8)])
def test_dpm_point_mass_lands_on_target(solver, steps):
    c = torch.tensor([0.7, -1.3])
    x_T = _noise_fn(16, 2, seed=3)(0)
    x = SOLVERS[solver](DIFF, _gaussian_model(c, torch.zeros(2)), x_T, None, steps=steps)
    lam_T, lam_0 = DIFF.logsnr.lambda_range()
    a_T, a_0 = (math.sqrt(1 / (1 + math.exp(-2 * lam))) for lam in (lam_T, lam_0))
    s_T, s_0 = math.sqrt(1 - a_T**2), math.sqrt(1 - a_0**2)
    golden = a_0 * c + s_0 / s_T * (x_T - a_T * c)  # exact: constant x0 makes every step exact
    torch.testing.assert_close(x, golden, rtol=0, atol=1e-4)
    assert (x - c).abs().max() < 0.05


def test_unknown_solver_and_bad_arguments():
    with pytest.raises(ValueError, match="ddpm, dpm, dpm2m"):
        get_solver("euler")
    model = _gaussian_model(MU, S)
    x = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="steps"):
        SOLVERS["dpm"](DIFF, model, x, None, steps=0)
    with pytest.raises(ValueError, match="temperature"):
        SOLVERS["ddpm"](DIFF, model, x, None, steps=4, temperature=-1.0)
    assert solver_evals("dpm", 14) == 14


# ----------------------------------------------------------------------------- head


EXPECTED_PARAMS = {
    "net.time_embed.mlp.0", "net.time_embed.mlp.2", "net.cond_embed", "net.input_proj",
    "net.final_layer.linear", "net.final_layer.adaLN_modulation.1",
    *(f"net.res_blocks.{j}.{n}" for j in range(3) for n in ("in_ln", "mlp.0", "mlp.2", "adaLN_modulation.1")),
}


def _random_head(seed: int = 0, **kw) -> DiffusionHead:
    """A small head with every parameter random, so outputs are not trivially zero."""
    head = DiffusionHead(token_dim=3, cond_dim=5, width=16, depth=2, **kw)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in head.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return head


def test_head_parameter_names_shapes_and_init():
    head = DiffusionHead(token_dim=4, cond_dim=8, width=32, depth=3)
    names = {n.rsplit(".", 1)[0] for n in head.state_dict()}
    assert names == EXPECTED_PARAMS
    assert set(head.state_dict()) == {n for n, _ in head.named_parameters()}  # no buffers
    sd = head.state_dict()
    assert sd["net.final_layer.linear.weight"].shape == (8, 32)
    assert sd["net.res_blocks.0.adaLN_modulation.1.weight"].shape == (96, 32)
    assert sd["net.final_layer.adaLN_modulation.1.weight"].shape == (64, 32)
    assert sd["net.time_embed.mlp.0.weight"].shape == (32, 256)
    for n in ("net.final_layer.linear", "net.final_layer.adaLN_modulation.1", "net.res_blocks.2.adaLN_modulation.1"):
        assert not sd[n + ".weight"].any() and not sd[n + ".bias"].any()
    assert 0.01 < sd["net.time_embed.mlp.0.weight"].std() < 0.03
    assert head.discrete is False


def test_timestep_embedding():
    e = timestep_embedding(torch.tensor([0.0, 3.0]))
    assert e.shape == (2, 256)
    torch.testing.assert_close(e[0], torch.cat([torch.ones(128), torch.zeros(128)]))
    freqs = torch.exp(-math.log(10000.0) * torch.arange(128) / 128)
    torch.testing.assert_close(e[1], torch.cat([torch.cos(3 * freqs), torch.sin(3 * freqs)]))


def test_loss_shape_determinism_and_training_decreases():
    g = torch.Generator().manual_seed(0)
    head = DiffusionHead(token_dim=2, cond_dim=4, width=32, depth=2)
    centers = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [1.0, -1.0], [-1.0, -1.0]])
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    losses = []
    for _ in range(100):
        k = torch.randint(0, 4, (64,), generator=g)
        z, target = torch.eye(4)[k], centers[k] + 0.1 * torch.randn(64, 2, generator=g)
        loss = head.loss(z, target, generator=g)
        assert loss.shape == (64,) and torch.isfinite(loss).all()
        opt.zero_grad()
        loss.mean().backward()
        opt.step()
        losses.append(loss.mean().item())
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10]), (losses[:10], losses[-10:])
    z, target = torch.eye(4)[:2], centers[:2]
    a = head.loss(z, target, torch.Generator().manual_seed(5))
    b = head.loss(z, target, torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("solver,steps", [("ddpm", 10), ("dpm", 8), ("dpm2m", 6)])
def test_cfg_scale_one_equals_no_cfg(solver, steps):
    head, M = _random_head(), 6
    g = torch.Generator().manual_seed(1)
    z, zu = torch.randn(M, 5, generator=g), torch.randn(M, 5, generator=g)
    noise = _noise_fn(M, 3, seed=4)
    plain = head.sample(z, noise, solver=solver, steps=steps)
    cfg1 = head.sample(z, noise, guides=[Term("cfg", zu, torch.zeros(M))], solver=solver, steps=steps)
    torch.testing.assert_close(cfg1, plain, rtol=1e-4, atol=1e-4)
    assert plain.shape == (M, 3)


@pytest.mark.parametrize("solver,steps", [("ddpm", 10), ("dpm", 8), ("dpm2m", 6)])
def test_cfg_batched_equals_two_passes(solver, steps):
    head, M = _random_head(), 6
    g = torch.Generator().manual_seed(2)
    z, zu = torch.randn(M, 5, generator=g), torch.randn(M, 5, generator=g)
    scale = torch.linspace(1.0, 4.0, M)  # per-row scales
    noise = _noise_fn(M, 3, seed=5)

    def two_pass(x, t):
        out_c, out_u = head.net(x, t, z), head.net(x, t, zu)
        return torch.cat([guide(out_c[:, :3], out_u[:, :3], scale), out_c[:, 3:]], dim=-1)

    with torch.no_grad():
        ref = get_solver(solver)(head.diffusion, two_pass, noise(0), noise, steps=steps)
    got = head.sample(z, noise, guides=[Term("cfg", zu, scale - 1.0)], solver=solver, steps=steps)
    torch.testing.assert_close(got, ref, rtol=5e-4, atol=1e-4)
    plain = head.sample(z, noise, solver=solver, steps=steps)
    assert (got - plain).abs().max() > 1e-3  # guidance changed something


@pytest.mark.parametrize("solver,steps", [("ddpm", 10), ("dpm", 8), ("dpm2m", 6)])
def test_float64_sampling_stays_float64(solver, steps):
    """Outside autocast the head keeps the input's dtype: a float64 run equals the solver run on the
    float64 network directly, bit for bit (no rounding to float32 at a solver step), guided or not."""
    head, M = _random_head().double(), 5
    g = torch.Generator().manual_seed(9)
    z, zu = torch.randn(M, 5, generator=g, dtype=torch.float64), torch.randn(M, 5, generator=g, dtype=torch.float64)
    base = _noise_fn(M, 3, seed=10)
    noise = lambda i: base(i).double()  # noqa: E731
    scale = torch.full((M,), 3.0, dtype=torch.float64)

    def direct(x, t):
        return head.net(x, t, z)

    def two_pass(x, t):
        out_c, out_u = head.net(x, t, z), head.net(x, t, zu)
        return torch.cat([guide(out_c[:, :3], out_u[:, :3], scale), out_c[:, 3:]], dim=-1)

    with torch.no_grad():
        ref = get_solver(solver)(head.diffusion, direct, noise(0), noise, steps=steps)
        ref_cfg = get_solver(solver)(head.diffusion, two_pass, noise(0), noise, steps=steps)
    got = head.sample(z, noise, solver=solver, steps=steps)
    got_cfg = head.sample(z, noise, guides=[Term("cfg", zu, scale - 1.0)], solver=solver, steps=steps)
    assert got.dtype == got_cfg.dtype == torch.float64
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got_cfg, ref_cfg, rtol=1e-12, atol=1e-12)
    # float32 rounding at each step would show at about 1e-7
    rounded = get_solver(solver)(head.diffusion, lambda x, t: direct(x, t).float(), noise(0), noise, steps=steps)
    assert (rounded - ref).abs().max() > 1e-10
    head32 = _random_head()  # under autocast the bf16 answers are widened to the float32 input's dtype
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head32.sample(z.float(), base, guides=[Term("cfg", zu.float(), scale.float() - 1.0)], solver=solver,
                            steps=steps)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize("solver,steps", [("ddpm", 1), ("ddpm", 7), ("dpm", 1), ("dpm", 8), ("dpm", 14),
                                         ("dpm2m", 1), ("dpm2m", 5)])
def test_evals_counts_network_calls_and_noise_use(solver, steps):
    head, M = _random_head(), 4
    calls, asked = [], []
    hook = head.net.input_proj.register_forward_hook(lambda *a: calls.append(1))  # once per network call
    base = _noise_fn(M, 3, seed=6)

    def noise(i):
        asked.append(i)
        return base(i)

    head.sample(torch.zeros(M, 5), noise, guides=[Term("cfg", torch.ones(M, 5), torch.ones(M))], solver=solver,
                steps=steps)
    hook.remove()
    assert len(calls) == head.evals(solver, steps) == steps
    assert asked == ([0, *range(1, steps)] if solver == "ddpm" else [0])


def test_ddpm_temperature_scales_noise_only():
    head, M = _random_head(), 4
    z = torch.randn(M, 5, generator=torch.Generator().manual_seed(3))
    a, b = _noise_fn(M, 3, seed=7), _noise_fn(M, 3, seed=8)
    same_start = lambda i: a(0) if i == 0 else b(i)  # noqa: E731
    x_a = head.sample(z, a, solver="ddpm", steps=10, temperature=0.0)
    x_b = head.sample(z, same_start, solver="ddpm", steps=10, temperature=0.0)
    torch.testing.assert_close(x_a, x_b)
    assert (head.sample(z, a, solver="ddpm", steps=10) - x_a).abs().max() > 1e-3


def test_head_bad_arguments():
    head, z = _random_head(), torch.zeros(2, 5)
    noise = _noise_fn(2, 3, seed=9)
    with pytest.raises(ValueError, match="ddpm, dpm, dpm2m"):
        head.sample(z, noise, solver="heun")
    with pytest.raises(ValueError, match="ddpm, dpm, dpm2m"):
        head.evals("heun", 8)
    with pytest.raises(ValueError, match="steps"):
        head.sample(z, noise, steps=0)
    with pytest.raises(ValueError, match="temperature"):
        head.sample(z, noise, solver="ddpm", temperature=-0.5)
    with pytest.raises(ValueError, match="guide 'cfg' has conditions of shape"):
        head.sample(z, noise, guides=[Term("cfg", torch.zeros(3, 5), torch.ones(3))])
    with pytest.raises(ValueError, match="width"):
        DiffusionHead(token_dim=3, cond_dim=5, width=0, depth=2)


# ----------------------------------------------------------------------------- DPM-Solver time labels


def _kept_steps() -> int:
    """N: the steps DPM-Solver keeps, those with half-logSNR >= -5.1, from the closed-form schedule."""
    ab = np.cumprod([1 - min(1 - cosine_alpha_bar((i + 1) / T) / cosine_alpha_bar(i / T), 0.999) for i in range(T)])
    return int((0.5 * np.log(ab / (1 - ab)) >= -5.1).sum())


def _labels_fed(time_label: str, solver: str, steps: int) -> list[float]:
    """The time labels a DiffusionHead(time_label=...) feeds its network during one sample()."""
    head, seen = _random_head(time_label=time_label), []
    hook = head.net.time_embed.register_forward_hook(lambda m, inp, out: seen.append(float(inp[0][0])))
    head.sample(torch.zeros(2, 5), _noise_fn(2, 3, seed=10), solver=solver, steps=steps)
    hook.remove()
    return seen


@pytest.mark.parametrize("solver,steps", [("dpm", 8), ("dpm", 14), ("dpm2m", 8)])
def test_dpm_time_labels_interp_and_reference(solver, steps):
    """The noisiest point (t = 1 in DPM-Solver's time) is labelled N - 1 = 995 by ours and
    (1 - 1/N) * 1000 = 998.996 by the reference; every reference label is (t - 1/N) * 1000 with
    t = (n + 1) / N, n our fractional step. The labels reach the network as float32."""
    N = _kept_steps()
    assert N == 996
    for time_label, want in (("interp", N - 1.0), ("reference", (1 - 1 / N) * 1000)):
        d = GaussianDiffusion.cosine(T, time_label=time_label)
        lam_T, lam_0 = d.logsnr.lambda_range()
        assert d.logsnr.label(lam_T) == pytest.approx(want, abs=1e-9)
        assert d.logsnr.label(lam_0) == pytest.approx(0.0, abs=1e-9)
    ours, ref = _labels_fed("interp", solver, steps), _labels_fed("reference", solver, steps)
    assert len(ours) == len(ref) == steps
    assert ours[0] == pytest.approx(995.0, abs=1e-4) and ref[0] == pytest.approx(998.99598, abs=1e-4)
    for n, label in zip(ours, ref):
        assert label == pytest.approx(((n + 1) / N - 1 / N) * 1000, abs=2e-4)


def test_time_label_leaves_ddpm_alone_and_rejects_unknown_names():
    assert _labels_fed("interp", "ddpm", 10) == _labels_fed("reference", "ddpm", 10)
    assert GaussianDiffusion.cosine(T, time_label="reference").respace(10).time_label == "reference"
    with pytest.raises(ValueError, match="interp, reference"):
        DiffusionHead(token_dim=3, cond_dim=5, width=16, depth=2, time_label="exact")
