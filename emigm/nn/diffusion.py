"""Gaussian diffusion for the per-token head: the cosine schedule, the training loss and the samplers.

Owns the math only; no nn.Module, no random draws. Everything random enters as tensors (`noise`
arguments) or through a `noise(i)` callable, and the network enters as a closure

    model(x: (M, C), t: (M,) float diffusion step on the training scale 0..T-1) -> (M, 2C)

whose output is [eps, v]: the noise prediction and the "learned range" variance interpolation
(Nichol & Dhariwal 2021, Eq. 15). The DPM-Solver++ samplers use only the eps half.

Design choices (differences from the MAR / eMIGM reference are deliberate and listed here):
- Tables are float64 on the CPU; per-step sampler coefficients are Python floats (no host syncs),
  per-row training coefficients are gathered on the input's device in the input's dtype.
- Training loss at t = 0: the reference uses the discretised decoder NLL (8-bit pixel bins); our tokens
  are continuous latents, so we use the continuous Gaussian NLL of x0 under the model posterior (bits).
  This does not change how the mean is trained: the variational term is built from a stop-gradient eps,
  so it trains only the variance output v, and the step-0 variance is never used in sampling (DDPM's
  last step adds no noise; DPM-Solver++ uses eps only).
- DPM-Solver++ views the discrete schedule in continuous time as DPM-Solver does: the steps kept after
  clipping logSNR < -5.1 (N = 996 of K = 1000 for the cosine schedule) sit at t_n = (n + 1) / N, log
  alpha is linear between them. The model's time label (`time_label`, HeadConfig.time_label):
  "interp" (our default): the matching fractional step n = N t - 1, so label and noise level agree
  (the noisiest point is labelled 995); "reference": as the reference, (t - 1/N) * K = n K / N, the
  solver's time scaled to the full K-step label range (the noisiest point is labelled 998.996, up to
  about four steps higher than its noise level). Official checkpoints use "reference".
- DPM-Solver++(2M) uses the same logSNR-uniform grid and DPM-Solver's lower-order final step when
  steps < 10.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from emigm.core.names import PREDICTIONS, TIME_LABELS

Tensor = torch.Tensor
ModelFn = Callable[[Tensor, Tensor], Tensor]
NoiseFn = Callable[[int], Tensor]
StepFn = Callable[[int, Tensor], None]  # on_step(i, x): x after solver step i (i = 0: the starting noise)

LOGSNR_CLIP = -5.1  # DPM-Solver drops the noisiest steps whose half-logSNR lambda is below this


def cosine_alpha_bar(u: float) -> float:
    """alpha_bar(u) = cos^2(((u + 0.008) / 1.008) pi / 2), u in [0, 1] (Nichol & Dhariwal, Eq. 17)."""
    return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2


def cosine_betas(num_timesteps: int = 1000, max_beta: float = 0.999) -> Tensor:
    """betas_i = min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), max_beta); float64 (T,)."""
    T = num_timesteps
    return torch.tensor([min(1 - cosine_alpha_bar((i + 1) / T) / cosine_alpha_bar(i / T), max_beta)
                         for i in range(T)], dtype=torch.float64)


def space_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """`steps` evenly spaced steps of 0..num_timesteps-1, both ends included (improved-DDPM's
    respacing with one section). The stride is accumulated as a float and rounded, as there."""
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"steps must be in [1, {num_timesteps}], got {steps}")
    stride = (num_timesteps - 1) / (steps - 1) if steps > 1 else 1.0
    out, cur = [], 0.0
    for _ in range(steps):
        out.append(round(cur))
        cur += stride
    return out


def _at(table: Tensor, t: Tensor | int, like: Tensor) -> Tensor | float:
    """table[t]: a Python float for an int t, else a (M, 1, ...) tensor on like's device and dtype."""
    if isinstance(t, int):
        return float(table[t])
    vals = table.to(dtype=like.dtype).to(like.device)[t]
    return vals.view(-1, *([1] * (like.dim() - 1)))


def _mean_flat(x: Tensor) -> Tensor:
    return x.flatten(1).mean(1)


@dataclass(frozen=True, eq=False)
class LogSNRSchedule:
    """Continuous-time view of a discrete schedule for DPM-Solver (see the module docstring).

    log_alpha: float64 (N,), 0.5 log alpha_bar of the kept steps, decreasing. `labels` (K,) maps each of
    the K steps before clipping to the model's time label (the original step; differs only for respaced
    diffusions). time_label: one of TIME_LABELS (module docstring)."""

    log_alpha: np.ndarray
    labels: np.ndarray
    time_label: str = "interp"

    @classmethod
    def from_alpha_bar(cls, alpha_bar: Tensor, labels: Tensor, clip: float = LOGSNR_CLIP,
                       time_label: str = "interp") -> "LogSNRSchedule":
        log_alpha = 0.5 * np.log(alpha_bar.numpy())
        lam = log_alpha - 0.5 * np.log1p(-np.exp(2 * log_alpha))
        keep = int((lam >= clip).sum())  # lambda decreases with the step, so this keeps a prefix
        return cls(log_alpha[:keep], labels.numpy().astype(np.float64), time_label)

    @property
    def num_steps(self) -> int:
        return len(self.log_alpha)

    def lambda_range(self) -> tuple[float, float]:
        """(lambda_T, lambda_0): half-logSNR of the noisiest and the cleanest kept step."""
        la = self.log_alpha[[-1, 0]]
        lam = la - 0.5 * np.log1p(-np.exp(2 * la))
        return float(lam[0]), float(lam[1])

    def label(self, lam: float) -> float:
        """Model time label at half-logSNR lam. n: the fractional kept step whose interpolated log alpha
        has that lam (t = (n + 1) / N); "interp" labels it n, "reference" (t - 1/N) K = n K / N."""
        log_alpha = -0.5 * np.logaddexp(0.0, -2.0 * lam)
        n = np.interp(log_alpha, self.log_alpha[::-1], np.arange(self.num_steps, dtype=np.float64)[::-1])
        if self.time_label == "reference":
            n = n * len(self.labels) / self.num_steps
        return float(np.interp(n, np.arange(len(self.labels)), self.labels))


@dataclass(frozen=True, eq=False)
class GaussianDiffusion:
    """Discrete Gaussian diffusion with `betas` (float64 (K,)); `timesteps` (int64 (K,)) gives each
    step's label on the training scale (arange(K) unless respaced); `time_label` (one of TIME_LABELS)
    how the DPM solvers label continuous time. __post_init__ derives float64 (K,) tables: alpha_bar,
    sqrt_ab, sqrt_1m_ab, sqrt_recip_ab, sqrt_recipm1_ab, post_coef_x0, post_coef_xt, post_logvar
    (clipped), log_betas; and `logsnr`, the DPM-Solver view."""

    betas: Tensor
    timesteps: Tensor
    time_label: str = "interp"
    prediction: str = "eps"
    x0_clip: float = 0.0
    _respaced: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.time_label not in TIME_LABELS:
            raise ValueError(f"unknown time_label {self.time_label!r}; valid: {', '.join(TIME_LABELS)}")
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {self.prediction!r}; valid: {', '.join(PREDICTIONS)}")
        if not (math.isfinite(self.x0_clip) and self.x0_clip >= 0):
            raise ValueError(f"x0_clip must be a finite number >= 0 (0 = off), got {self.x0_clip!r}")
        b = self.betas.to(torch.float64)
        if b.dim() != 1 or not bool(((b > 0) & (b < 1)).all()):
            raise ValueError("betas must be a 1-D tensor with values in (0, 1)")
        if self.timesteps.shape != b.shape:
            raise ValueError(f"timesteps shape {tuple(self.timesteps.shape)} != betas shape {tuple(b.shape)}")
        ab = torch.cumprod(1 - b, 0)
        ab_prev = torch.cat([ab.new_ones(1), ab[:-1]])
        post_var = b * (1 - ab_prev) / (1 - ab)
        tables = dict(
            betas=b, alpha_bar=ab, sqrt_ab=ab.sqrt(), sqrt_1m_ab=(1 - ab).sqrt(),
            sqrt_recip_ab=(1 / ab).sqrt(), sqrt_recipm1_ab=(1 / ab - 1).sqrt(),
            post_coef_x0=b * ab_prev.sqrt() / (1 - ab),
            post_coef_xt=(1 - ab_prev) * (1 - b).sqrt() / (1 - ab),
            # posterior variance is 0 at step 0; clip its log to the value at step 1 (improved-DDPM)
            post_logvar=torch.cat([post_var[1:2] if len(b) > 1 else b, post_var[1:]]).log(),
            log_betas=b.log(),
        )
        for k, v in tables.items():
            object.__setattr__(self, k, v)
        object.__setattr__(self, "logsnr", LogSNRSchedule.from_alpha_bar(ab, self.timesteps,
                                                                        time_label=self.time_label))

    @classmethod
    def cosine(cls, num_timesteps: int = 1000, time_label: str = "interp", prediction: str = "eps",
               x0_clip: float = 0.0) -> "GaussianDiffusion":
        if num_timesteps < 2:
            raise ValueError(f"num_timesteps must be >= 2, got {num_timesteps}")
        with torch.device("cpu"):  # tables stay on the CPU even inside a meta / cuda device context
            return cls(cosine_betas(num_timesteps), torch.arange(num_timesteps), time_label, prediction, x0_clip)

    @property
    def num_steps(self) -> int:
        return len(self.betas)

    def respace(self, steps: int) -> "GaussianDiffusion":
        """The same process seen at `steps` evenly spaced steps: new betas 1 - ab_k / ab_{k-1} over the
        kept steps, so the marginals at the kept steps are unchanged. Cached per `steps`."""
        if steps not in self._respaced:
            keep = torch.tensor(space_timesteps(self.num_steps, steps), device="cpu")
            ab = self.alpha_bar[keep]
            betas = 1 - ab / torch.cat([ab.new_ones(1), ab[:-1]])
            self._respaced[steps] = GaussianDiffusion(betas, self.timesteps[keep], self.time_label, self.prediction,
                                                      self.x0_clip)
        return self._respaced[steps]

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) noise. x0, noise: (M, ...); t: int64 (M,)."""
        return _at(self.sqrt_ab, t, x0) * x0 + _at(self.sqrt_1m_ab, t, x0) * noise

    def posterior(self, x0: Tensor, xt: Tensor, t: Tensor | int) -> tuple[Tensor, Tensor | float]:
        """Mean and clipped log-variance of q(x_{t-1} | x_t, x0)."""
        mean = _at(self.post_coef_x0, t, xt) * x0 + _at(self.post_coef_xt, t, xt) * xt
        return mean, _at(self.post_logvar, t, xt)

    def eps(self, out: Tensor, xt: Tensor, t: Tensor | int) -> Tensor:
        """The noise prediction from the network's first half `out` at step t: out itself ("eps"), or
        alpha out + sigma x_t ("v", with alpha = sqrt(ab_t), sigma = sqrt(1 - ab_t))."""
        if self.prediction == "eps":
            return out
        return _at(self.sqrt_ab, t, xt) * out + _at(self.sqrt_1m_ab, t, xt) * xt

    def clip(self, x0: Tensor) -> Tensor:
        """x0 clamped to [-x0_clip, x0_clip] (improved-DDPM's clip_denoised for a token range; 0 = off)."""
        return x0.clamp(-self.x0_clip, self.x0_clip) if self.x0_clip > 0 else x0

    def p_mean_logvar(self, eps: Tensor, v: Tensor, xt: Tensor, t: Tensor | int) -> tuple[Tensor, Tensor]:
        """Model reverse step p(x_{t-1} | x_t): the posterior mean at x0 = (x_t - sqrt(1-ab) eps) / sqrt(ab)
        (clipped, see `clip`), log-variance interpolated by frac = (v + 1) / 2 between the clipped posterior
        log-variance and log beta_t (learned range). All tensors (M, C); t int64 (M,) or one int for all rows."""
        x0 = self.clip(_at(self.sqrt_recip_ab, t, xt) * xt - _at(self.sqrt_recipm1_ab, t, xt) * eps)
        mean, min_log = self.posterior(x0, xt, t)
        frac = (v + 1) / 2
        return mean, frac * _at(self.log_betas, t, xt) + (1 - frac) * min_log

    def training_loss(self, model: ModelFn, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """Per-sample loss (M,): MSE on the prediction target (eps, or v = alpha eps - sigma x0) + the
        variational bound term in bits, whose mean is built from a stop-gradient eps so that it trains
        only the variance (improved-DDPM "hybrid" loss). x0, noise: (M, C); t: int64 (M,) step indices."""
        xt = self.q_sample(x0, t, noise)
        out = model(xt, self.timesteps.to(x0.device)[t].to(x0.dtype))
        pred, v = out.to(x0.dtype).chunk(2, dim=-1)
        if self.prediction == "eps":
            target = noise
        else:
            target = _at(self.sqrt_ab, t, x0) * noise - _at(self.sqrt_1m_ab, t, x0) * x0
        mse = _mean_flat((target - pred) ** 2)
        eps = self.eps(pred, xt, t)
        mean, logvar = self.p_mean_logvar(eps.detach(), v, xt, t)
        true_mean, true_logvar = self.posterior(x0, xt, t)
        kl = 0.5 * (-1 + logvar - true_logvar + torch.exp(true_logvar - logvar)
                    + (true_mean - mean) ** 2 * torch.exp(-logvar))
        nll = 0.5 * (math.log(2 * math.pi) + logvar + (x0 - mean) ** 2 * torch.exp(-logvar))
        vb = torch.where(t == 0, _mean_flat(nll), _mean_flat(kl)) / math.log(2.0)
        return mse + vb


# ----------------------------------------------------------------------------- samplers


def _check(steps: int, temperature: float) -> None:
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")


def ddpm_sample(diffusion: GaussianDiffusion, model: ModelFn, x: Tensor, noise: NoiseFn, *,
                steps: int, temperature: float = 1.0, on_step: StepFn | None = None) -> Tensor:
    """Ancestral sampling on `diffusion` respaced to `steps` steps with the learned variance.
    x: x_T (M, C). Step k = 1..steps draws noise(k), scaled by temperature; the last step (k = steps,
    to x_0) adds no noise, so noise(steps) is never requested. on_step(k, x) sees x after every step
    (k = 0: x_T). Returns x_0 (M, C)."""
    _check(steps, temperature)
    d = diffusion.respace(steps)
    if on_step is not None:
        on_step(0, x)
    for k in range(1, steps + 1):
        i = steps - k
        out = model(x, x.new_full((x.shape[0],), float(d.timesteps[i])))
        pred, v = out.to(x.dtype).chunk(2, dim=-1)
        mean, logvar = d.p_mean_logvar(d.eps(pred, x, i), v, x, i)
        x = mean + temperature * torch.exp(0.5 * logvar) * noise(k) if i > 0 else mean
        if on_step is not None:
            on_step(k, x)
    return x


def dpm_orders(steps: int) -> list[int]:
    """Orders of singlestep DPM-Solver-3's K = steps // 3 + 1 intervals; they sum to `steps`."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    K = steps // 3 + 1
    return {0: [3] * (K - 2) + [2, 1], 1: [3] * (K - 1) + [1], 2: [3] * (K - 1) + [2]}[steps % 3]


def _data_pred(diffusion: GaussianDiffusion, model: ModelFn) -> Callable[[Tensor, float], Tensor]:
    """x0 prediction at half-logSNR lam, with alpha^2 = sigmoid(2 lam): (x - sigma eps) / alpha from a
    noise prediction, alpha x - sigma v from a v prediction; clipped as `GaussianDiffusion.clip`."""
    def x0(x: Tensor, lam: float) -> Tensor:
        alpha, sigma = _alpha(lam), _sigma(lam)
        t = x.new_full((x.shape[0],), diffusion.logsnr.label(lam))
        out = model(x, t).to(x.dtype).chunk(2, dim=-1)[0]
        if diffusion.prediction == "v":
            return diffusion.clip(alpha * x - sigma * out)
        return diffusion.clip((x - sigma * out) / alpha)
    return x0


def _alpha(lam: float) -> float:
    return math.sqrt(1 / (1 + math.exp(-2 * lam)))


def _sigma(lam: float) -> float:
    return math.sqrt(1 / (1 + math.exp(2 * lam)))


def _first_order(x: Tensor, m: Tensor, lam_s: float, lam_t: float) -> Tensor:
    """DPM-Solver++-1 (DDIM): x_t = (sigma_t / sigma_s) x_s + alpha_t (1 - e^-h) m, h = lam_t - lam_s."""
    return (_sigma(lam_t) / _sigma(lam_s)) * x - (_alpha(lam_t) * math.expm1(lam_s - lam_t)) * m


def _singlestep(x0_fn: Callable[[Tensor, float], Tensor], x: Tensor, lam_s: float, lam_t: float,
                order: int) -> Tensor:
    """One singlestep DPM-Solver++ interval of `order` model calls, inner points uniform in lambda
    (r1 = 1/order, r2 = 2/3), "dpmsolver" Taylor variant (Lu et al. 2022, Alg. 1 / Appx. B)."""
    h = lam_t - lam_s
    a_t, phi_1 = _alpha(lam_t), math.expm1(-h)
    m_s = x0_fn(x, lam_s)
    if order == 1:
        return _first_order(x, m_s, lam_s, lam_t)
    r1 = 1.0 / order
    lam_1 = lam_s + r1 * h
    m_1 = x0_fn(_first_order(x, m_s, lam_s, lam_1), lam_1)
    if order == 2:
        return _first_order(x, m_s, lam_s, lam_t) - (0.5 / r1) * a_t * phi_1 * (m_1 - m_s)
    r2 = 2.0 / 3.0
    lam_2 = lam_s + r2 * h
    phi_22 = math.expm1(-r2 * h) / (r2 * h) + 1
    x_2 = _first_order(x, m_s, lam_s, lam_2) + (r2 / r1) * _alpha(lam_2) * phi_22 * (m_1 - m_s)
    m_2 = x0_fn(x_2, lam_2)
    phi_2 = phi_1 / h + 1
    return _first_order(x, m_s, lam_s, lam_t) + (1 / r2) * a_t * phi_2 * (m_2 - m_s)


def dpm_sample(diffusion: GaussianDiffusion, model: ModelFn, x: Tensor, noise: NoiseFn, *,
               steps: int, temperature: float = 1.0, on_step: StepFn | None = None) -> Tensor:
    """Singlestep DPM-Solver++ of order 3 (data prediction) with `steps` model calls: K intervals
    uniform in lambda from the noisiest kept step to step 0, orders from `dpm_orders`. on_step(k, x)
    sees x after every interval (k = 0: x_T). Deterministic: `noise` and `temperature` are unused.
    x: x_T (M, C) -> x at step 0 (M, C)."""
    _check(steps, temperature)
    orders = dpm_orders(steps)
    lams = np.linspace(*diffusion.logsnr.lambda_range(), len(orders) + 1).tolist()
    x0_fn = _data_pred(diffusion, model)
    if on_step is not None:
        on_step(0, x)
    for k, order in enumerate(orders):
        x = _singlestep(x0_fn, x, lams[k], lams[k + 1], order)
        if on_step is not None:
            on_step(k + 1, x)
    return x


def dpm2m_sample(diffusion: GaussianDiffusion, model: ModelFn, x: Tensor, noise: NoiseFn, *,
                 steps: int, temperature: float = 1.0, on_step: StepFn | None = None) -> Tensor:
    """Multistep DPM-Solver++(2M), `steps` model calls on `steps` lambda-uniform intervals. The first
    step (and, for steps < 10, the last) is first order. on_step(k, x) sees x after every step (k = 0:
    x_T). Deterministic: `noise`, `temperature` unused."""
    _check(steps, temperature)
    lams = np.linspace(*diffusion.logsnr.lambda_range(), steps + 1).tolist()
    x0_fn = _data_pred(diffusion, model)
    if on_step is not None:
        on_step(0, x)
    m_prev = m = x0_fn(x, lams[0])
    for k in range(1, steps + 1):
        lam_p, lam_t = lams[k - 1], lams[k]
        x_next = _first_order(x, m, lam_p, lam_t)
        if k > 1 and not (steps < 10 and k == steps):
            h, h_0 = lam_t - lam_p, lam_p - lams[k - 2]
            x_next = x_next - 0.5 * _alpha(lam_t) * math.expm1(-h) * (h / h_0) * (m - m_prev)
        x = x_next
        if on_step is not None:
            on_step(k, x)
        if k < steps:
            m_prev, m = m, x0_fn(x, lam_t)
    return x


def solver_noise_draws(name: str, steps: int) -> int:
    """How many noise(i) draws one sample asks for (i = 0 .. n-1): x_T, plus DDPM's injected noise."""
    get_solver(name)
    return steps if name == "ddpm" else 1


Solver = Callable[..., Tensor]
SOLVERS: dict[str, Solver] = {"ddpm": ddpm_sample, "dpm": dpm_sample, "dpm2m": dpm2m_sample}


def get_solver(name: str) -> Solver:
    """Look a solver up by name; unknown names raise ValueError listing the valid ones."""
    try:
        return SOLVERS[name]
    except KeyError:
        raise ValueError(f"unknown solver {name!r}; valid: {', '.join(SOLVERS)}") from None


def solver_evals(name: str, steps: int) -> int:
    """Model calls one sample makes (every solver here spends exactly `steps`)."""
    get_solver(name)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return steps
