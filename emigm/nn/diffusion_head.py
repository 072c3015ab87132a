"""Per-token diffusion head (MAR "DiffLoss"): z -> training loss, or z -> one sampled token.

The network is MAR's AdaLN MLP; parameter names match the released checkpoints (`diffloss.net.*`
there, `net.*` here). The Gaussian diffusion math and the solvers live in `emigm.nn.diffusion`; this
file only builds the `model(x, t)` closure for them, with the guides (classifier-free guidance,
self-guidance) combined on the noise prediction through `emigm.core.guidance.combine` in one batched call.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import nn

from emigm.core.guidance import Term, combine
from emigm.nn.diffusion import GaussianDiffusion, StepFn, get_solver, solver_evals, solver_noise_draws

Tensor = torch.Tensor
TIME_FEATURES = 256


def timestep_embedding(t: Tensor, dim: int = TIME_FEATURES, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal features of (possibly fractional) diffusion steps t (N,) -> float32 (N, dim),
    [cos, sin] order, frequencies exp(-ln(max_period) i / (dim / 2)), i = 0 .. dim/2 - 1."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale) + shift


class TimeEmbed(nn.Module):
    """t (N,) -> (N, W): sinusoid (256) -> Linear -> SiLU -> Linear."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(TIME_FEATURES, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: Tensor) -> Tensor:
        # the sinusoid is computed in float32 (as MAR); a float64 network takes it widened
        return self.mlp(timestep_embedding(t).to(self.mlp[0].weight.dtype))


class ResBlock(nn.Module):
    """x += gate * MLP(LN(x) * (1 + scale) + shift), (shift, scale, gate) = Linear(SiLU(y))."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.in_ln = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        shift, scale, gate = self.adaLN_modulation(y).chunk(3, dim=-1)
        return x + gate * self.mlp(_modulate(self.in_ln(x), shift, scale))


class FinalLayer(nn.Module):
    """Affine-free LayerNorm modulated by (shift, scale) = Linear(SiLU(y)), then Linear W -> out."""

    def __init__(self, width: int, out_dim: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(width, out_dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(y).chunk(2, dim=-1)
        return self.linear(_modulate(self.norm_final(x), shift, scale))


class AdaLNMLP(nn.Module):
    """(x (N, C), t (N,) float steps, z (N, cond_dim)) -> (N, 2C) = [eps, v]."""

    def __init__(self, token_dim: int, cond_dim: int, width: int, depth: int) -> None:
        super().__init__()
        self.time_embed = TimeEmbed(width)
        self.cond_embed = nn.Linear(cond_dim, width)
        self.input_proj = nn.Linear(token_dim, width)
        self.res_blocks = nn.ModuleList(ResBlock(width) for _ in range(depth))
        self.final_layer = FinalLayer(width, 2 * token_dim)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for lin in (self.time_embed.mlp[0], self.time_embed.mlp[2]):
            nn.init.normal_(lin.weight, std=0.02)
        # zero-init every modulation output and the final linear: each block starts as identity
        # and the head starts by predicting eps = 0, v = 0
        for lin in [b.adaLN_modulation[-1] for b in self.res_blocks] + [
                self.final_layer.adaLN_modulation[-1], self.final_layer.linear]:
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, x: Tensor, t: Tensor, z: Tensor) -> Tensor:
        return self.forward_embedded(x, t, self.cond_embed(z))

    def forward_embedded(self, x: Tensor, t: Tensor, c: Tensor) -> Tensor:
        """forward with the condition already embedded, c = cond_embed(z) (N, W); t may be (1,)
        when every row shares the step (the time embedding is then computed once and broadcast)."""
        h = self.input_proj(x)
        y = self.time_embed(t) + c
        for block in self.res_blocks:
            h = block(h, y)
        return self.final_layer(h, y)


class DiffusionHead(nn.Module):
    """Per-token diffusion head: a token of `token_dim` channels conditioned on z of `cond_dim`.

    Training uses the full `num_timesteps` cosine diffusion; sampling runs one of
    `emigm.nn.diffusion.SOLVERS` ("ddpm" respaced to `steps`, "dpm" singlestep DPM-Solver++-3, "dpm2m").
    time_label: how the DPM solvers label continuous time ("interp" or "reference", emigm.nn.diffusion);
    it is kept on the diffusion object, which the solvers read."""

    discrete = False

    def __init__(self, token_dim: int, cond_dim: int, width: int, depth: int,
                 num_timesteps: int = 1000, batch_mul: int = 4, time_label: str = "interp",
                 prediction: str = "eps", x0_clip: float = 0.0) -> None:
        super().__init__()
        for name, val in (("token_dim", token_dim), ("cond_dim", cond_dim), ("width", width),
                          ("depth", depth), ("batch_mul", batch_mul)):
            if val < 1:
                raise ValueError(f"{name} must be >= 1, got {val}")
        self.token_dim, self.batch_mul = token_dim, batch_mul
        self.net = AdaLNMLP(token_dim, cond_dim, width, depth)
        # plain tensors: not in state_dict
        self.diffusion = GaussianDiffusion.cosine(num_timesteps, time_label=time_label, prediction=prediction,
                                                  x0_clip=x0_clip)

    @property
    def time_label(self) -> str:
        """How the DPM solvers label continuous time, as held by the diffusion they read it from."""
        return self.diffusion.time_label

    def loss(self, z: Tensor, target: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Per-token loss (M,) for conditions z (M, cond_dim) and targets (M, token_dim), averaged over
        batch_mul draws of (diffusion step, noise) per token, all drawn from `generator`."""
        M, k = target.shape[0], self.batch_mul
        gen_device = generator.device if generator is not None else target.device
        t = torch.randint(0, self.diffusion.num_steps, (k * M,), generator=generator, device=gen_device)
        noise = torch.randn((k * M, self.token_dim), generator=generator, device=gen_device,
                            dtype=target.dtype)
        z_k, x0 = z.repeat(k, 1), target.repeat(k, 1)
        loss = self.diffusion.training_loss(lambda x, s: self.net(x, s, z_k), x0,
                                            t.to(target.device), noise.to(target.device))
        return loss.view(k, M).mean(0)

    @torch.no_grad()
    def sample(self, z: Tensor, noise: Callable[[int], Tensor], *, guides: Sequence[Term] = (),
               temperature: float = 1.0, solver: str = "dpm", steps: int = 8, on_step: StepFn | None = None,
               score: str | None = None) -> Tensor:
        """One token (M, token_dim) per condition z (M, cond_dim).

        noise(i): the i-th standard normal draw (M, token_dim) of this call; noise(0) is x_T, DDPM
        asks for noise(1..steps-1). With guides, every network call runs once on [x] * (1 + n) with
        [z, z_ref_1, ..., z_ref_n] and the noise prediction becomes
        combine(eps, [eps_ref_i], [weight_i]) (emigm.core.guidance); DDPM's variance comes from the
        conditional rows. temperature scales DDPM's injected noise only. on_step(k, x): the solver's
        state after each of its steps (emigm.nn.diffusion). score: a token score for the orders that
        need one; a diffusion head has none (None only)."""
        if score is not None:
            raise ValueError(f"a diffusion head has no token probabilities, so no {score!r} score")
        run = get_solver(solver)
        for g in guides:
            if g.z.shape != z.shape:
                raise ValueError(f"guide {g.name!r} has conditions of shape {tuple(g.z.shape)}, expected {tuple(z.shape)}")
        # The solvers give every row the same step: embed it once, and embed z once per call.
        n, C = 1 + len(guides), self.token_dim
        c = self.net.cond_embed(torch.cat([z, *(g.z for g in guides)]) if guides else z)
        weights = [g.weight for g in guides]

        # Under autocast the network answers in bf16 / fp16: the guidance combination and the solver's
        # arithmetic run in the input's dtype widened to at least float32 (so a float64 run stays float64)
        def model(x: Tensor, t: Tensor) -> Tensor:
            wide = torch.promote_types(x.dtype, torch.float32)
            if n == 1:
                return self.net.forward_embedded(x, t[:1], c).to(wide)
            cond, *refs = self.net.forward_embedded(x.repeat(n, 1), t[:1], c).to(wide).chunk(n)
            eps = combine(cond[:, :C], [r[:, :C] for r in refs], weights)
            return torch.cat([eps, cond[:, C:]], dim=-1)

        return run(self.diffusion, model, noise(0), noise, steps=steps, temperature=temperature, on_step=on_step)

    def evals(self, solver: str, steps: int) -> int:
        """Network calls one `sample` makes (a guided call counts once though it runs a larger batch)."""
        return solver_evals(solver, steps)

    def noise_draws(self, solver: str, steps: int) -> int:
        """How many noise(i) draws one `sample` makes (i = 0 .. n-1)."""
        return solver_noise_draws(solver, steps)
