"""Oracle generators: models whose per-token conditionals are exact, so a sampler's own error can be seen.

The distribution is a kernel mixture over reference token grids z_n (encoded Fashion-MNIST training
images; R_c those of class c, the null class all of them):

    p(x | c) = (1 / |R_c|) sum_{n in R_c} prod_i K(x_i | z_{n,i})

with K(k | z) = (1 - eps) [k = z] + eps / V over V codes (`fmnist-vq`), or K = N(x; z, sigma^2 I) over
continuous latents (`fmnist-kl`). Given visible tokens x_vis, the posterior over references has log
weights log w_n = log prior_n + sum_{j visible} log K(x_j | z_{n,j}), and everything is exact
(logsumexp over n, float64):
- each masked token's conditional p(x_i | x_vis, c) = sum_n w_n K(x_i | z_{n,i}),
- the joint of any group, p(x_R | x_vis, c) = sum_n w_n prod_{i in R} K(x_i | z_{n,i}),
- log p(x | c) of a whole grid.

`OracleGenerator` has the learned network's interface (condition, features, to_z, head), so the
sampler, guidance (CFG combines log p(x_i | x_vis, c) with log p(x_i | x_vis)), remasking and the step
anatomy run on it unchanged. z is what the head needs: for codes the conditional's log-probabilities
(V per token); for latents the posterior log weights over the N references and the token's position
(N + 1 per token), from which the head draws exactly: a reference n ~ w, then x = z_{n,i} + sigma e.
(Under CFG the latent head integrates the probability-flow ODE of the two Gaussian mixtures with
their exact denoisers, combined by emigm.core.guidance.combine.)

The reference set is a safetensors file (`references.safetensors`: `tokens`, `labels`) described by a
small JSON file (`oracle.json`: kind, kernel width, tokenizer, counts, sha256 of the reference file);
`read_oracle` checks both (format, fingerprint, value ranges) before anything is built.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from safetensors.torch import save
from torch import nn

from emigm.core.config import RunConfig
from emigm.core.fileio import ASSETS_DIR, write_bytes
from emigm.core.guidance import Term, combine
from emigm.core.presets import get_preset
from emigm.core.statedict import CheckpointError, read_safetensors_meta
from emigm.nn.categorical_head import CategoricalHead

Tensor = torch.Tensor

ORACLE_FILE = "oracle.json"
REFERENCE_FILE = "references.safetensors"
ORACLE_FORMAT = "emigm-oracle-1"
ORACLE_KINDS = {"codes": "categorical kernel over VQ codes (eps)",
                "latents": "Gaussian kernel over KL latents (sigma)"}
# the learned preset whose tokenizer, grid and classes an oracle of each kind shares
_PRESET_OF = {"codes": "fmnist-maskgit", "latents": "fmnist-emigm"}
_LAM_T, _LAM_0 = -6.0, 7.0  # half log-SNR range of the guided latent head's probability-flow ODE
_CHUNK = 1 << 26  # elements of one (rows, references, positions) comparison


def check_eps(eps: Any, name: str = "eps") -> float:
    """The categorical kernel's eps, a float in (0, 1)."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0.0 < float(eps) < 1.0:
        raise ValueError(f"{name} must be in (0, 1), got {eps!r}")
    return float(eps)


def check_sigma(sigma: Any, name: str = "sigma") -> float:
    """The Gaussian kernel's sigma, a finite float > 0."""
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {sigma!r}")
    return float(sigma)


@dataclass(frozen=True)
class ReferenceSet:
    """Reference token grids and their classes. tokens: (N, L) int64 codes in [0, V) or (N, L, C)
    float latents; labels: (N,) int64 in [0, num_classes)."""

    tokens: Tensor
    labels: Tensor
    num_classes: int
    codebook_size: int = 0

    @property
    def discrete(self) -> bool:
        return self.codebook_size > 0

    def class_counts(self) -> list[int]:
        return torch.bincount(self.labels, minlength=self.num_classes).tolist()


class OracleCodesHead(CategoricalHead):
    """The categorical head of the code oracle: z is already the exact conditional's log-probabilities
    (M, V), so logits(z) = z; guidance, temperature, Gumbel sampling and the order scores are the
    categorical head's own. Nothing to train."""

    def __init__(self, codebook_size: int) -> None:
        nn.Module.__init__(self)
        self.codebook_size = codebook_size
        self.label_smoothing = 0.0

    def logits(self, z: Tensor) -> Tensor:
        return z.float()

    def loss(self, z: Tensor, target: Tensor, generator: torch.Generator | None = None) -> Tensor:
        raise ValueError("an oracle model is not trained")


def _alpha_sigma(lam: float) -> tuple[float, float]:
    return math.sqrt(1 / (1 + math.exp(-2 * lam))), math.sqrt(1 / (1 + math.exp(2 * lam)))


class OracleLatentHead(nn.Module):
    """The continuous head of the latent oracle: z (M, N + 1) = the posterior log weights over the N
    references (normalised) and the token's position. Unguided it draws exactly: n from the weights
    (inverse CDF of a uniform made from noise(1)), then x = z_{n,i} + temperature x sigma x noise(0).
    With guides it integrates the probability-flow ODE (DDIM in half log-SNR lambda, `steps` steps
    from lambda -6 to 7) with the exact denoiser E[x0 | x_t] of each branch's Gaussian mixture, the
    branches combined by `combine` (CFG on x0 equals CFG on eps at the same x_t)."""

    discrete = False

    def __init__(self, means: Tensor, sigma: float) -> None:
        super().__init__()
        self.register_buffer("means", means, persistent=False)  # (N, L, C)
        self.sigma = sigma
        self.token_dim = means.shape[-1]

    def _split(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return z[:, :-1].double(), z[:, -1].round().long()

    def _denoise(self, z: Tensor, x: Tensor, lam: float) -> Tensor:
        """E[x0 | x_t] (M, C) under the mixture of row z at half log-SNR lam."""
        lw, pos = self._split(z)
        alpha, s = _alpha_sigma(lam)
        mu = self.means[:, pos].permute(1, 0, 2).double()  # (M, N, C)
        v = alpha**2 * self.sigma**2 + s**2
        d2 = ((x.double().unsqueeze(1) - alpha * mu) ** 2).sum(-1)
        r = torch.softmax(lw - d2 / (2 * v), dim=1)  # (M, N)
        x0 = mu + (alpha * self.sigma**2 / v) * (x.double().unsqueeze(1) - alpha * mu)
        return (r.unsqueeze(-1) * x0).sum(1)

    @torch.no_grad()
    def sample(self, z: Tensor, noise: Callable[[int], Tensor], *, guides: Sequence[Term] = (),
               temperature: float = 1.0, solver: str = "", steps: int = 8, on_step=None,
               score: str | None = None) -> Tensor:
        if score is not None:
            raise ValueError(f"a continuous head has no token probabilities, so no {score!r} score")
        if not guides:
            lw, pos = self._split(z)
            u = 0.5 * torch.erfc(-noise(1)[:, 0].double() / math.sqrt(2)).clamp(1e-12, 1 - 1e-12)
            cdf = torch.softmax(lw, dim=1).cumsum(1)
            n = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(1)).squeeze(1).clamp(max=lw.shape[1] - 1)
            x0 = noise(0)
            if on_step is not None:
                on_step(0, x0)
            x = self.means[n, pos].to(x0.dtype) + (temperature * self.sigma) * x0
            if on_step is not None:
                on_step(1, x)
            return x
        weights = [g.weight for g in guides]
        x = noise(0).double()
        lams = torch.linspace(_LAM_T, _LAM_0, steps + 1).tolist()
        if on_step is not None:
            on_step(0, x.to(z.dtype))
        m = None
        for k in range(steps):
            m = combine(self._denoise(z, x, lams[k]), [self._denoise(g.z, x, lams[k]) for g in guides], weights)
            (a_s, s_s), (a_t, s_t) = _alpha_sigma(lams[k]), _alpha_sigma(lams[k + 1])
            x = (s_t / s_s) * x + (a_t - a_s * s_t / s_s) * m  # DDIM = DPM-Solver++ 1
            if on_step is not None:
                on_step(k + 1, x.to(z.dtype))
        m = combine(self._denoise(z, x, lams[-1]), [self._denoise(g.z, x, lams[-1]) for g in guides], weights)
        return m.to(z.dtype)

    def loss(self, z: Tensor, target: Tensor, generator: torch.Generator | None = None) -> Tensor:
        raise ValueError("an oracle model is not trained")

    def evals(self, solver: str = "", steps: int = 0) -> int:
        """One evaluation of the exact conditional per token sampled."""
        return 1

    def noise_draws(self, solver: str = "", steps: int = 0) -> int:
        return 2


@dataclass(frozen=True)
class Features:
    hidden: Tensor
    layer_io: None = None


class OracleGenerator(nn.Module):
    """A generator with exact conditionals (module docstring). Same interface as
    emigm.nn.model.MaskedGenerator for sampling: condition (B,) labels -> (B, 1) class ids (-1: the
    null class, every reference), features / to_z (z as described above), head; no class slots, no
    weights. kernel: eps (codes) or sigma (latents)."""

    is_oracle = True
    buffer_size = 0
    null_mode = "mask"
    mae = False

    def __init__(self, refs: ReferenceSet, kernel: float, cfg: RunConfig, label: str = "oracle") -> None:
        super().__init__()
        self.cfg, self.label = cfg, label
        self.discrete = refs.discrete
        self.num_classes = refs.num_classes
        self.num_tokens = refs.tokens.shape[1]
        self.num_refs = refs.tokens.shape[0]
        # the sampler reads the device from the model's first parameter: an oracle has no weights, so
        # one empty tensor stands for "where this model lives"
        self.anchor = nn.Parameter(torch.zeros(0), requires_grad=False)
        self.register_buffer("ref_labels", refs.labels.long(), persistent=False)
        if self.discrete:
            self.eps = check_eps(kernel)
            V = refs.codebook_size
            self.codebook_size = V
            self.log_off = math.log(self.eps / V)  # log K(k | z), k != z
            self.log_on = math.log(1 - self.eps + self.eps / V)  # log K(z | z)
            self.register_buffer("refs", refs.tokens.long(), persistent=False)  # (N, L)
            self.token_head = OracleCodesHead(V)
        else:
            self.sigma = check_sigma(kernel)
            self.register_buffer("refs", refs.tokens.float(), persistent=False)  # (N, L, C)
            self.diffloss = OracleLatentHead(self.refs, self.sigma)
        counts = torch.bincount(self.ref_labels, minlength=self.num_classes)
        if int(counts.min()) < 1:
            raise ValueError("every class needs at least one reference")

    @property
    def kernel(self) -> float:
        return self.eps if self.discrete else self.sigma

    @property
    def head(self):
        return self.token_head if self.discrete else self.diffloss

    # ------------------------------------------------------------------ conditioning

    def null_vector(self, mode: str | None = None) -> Tensor:
        if mode not in (None, "", "mask"):
            raise ValueError(f"an oracle's null class is the mixture over every reference ('mask'); "
                             f"cfg mode {mode!r} is not available")
        return torch.full((1, 1), -1.0, device=self.anchor.device)

    def condition(self, labels: Tensor, null: Tensor | None = None, mode: str | None = None) -> Tensor:
        """(B, 1) float class ids; -1 where null (B,) is True (every reference)."""
        c = labels.to(torch.float32).reshape(-1, 1)
        if null is not None:
            c = torch.where(null.reshape(-1, 1), self.null_vector(mode).to(c.dtype), c)
        return c

    # ------------------------------------------------------------------ exact quantities (float64)
    # Every function over the references works on the columns some row can weigh (a batch of one class
    # touches |R_c| of the N references, not N); `_active` finds them from the log weights.

    def log_prior(self, cond: Tensor) -> Tensor:
        """log prior_n (B, N): -log |R_c| on the references of class c, -inf elsewhere; null rows
        (cond -1) -log N on all."""
        cls = cond.reshape(-1).round().long()
        counts = torch.bincount(self.ref_labels, minlength=self.num_classes).double()
        inside = (self.ref_labels.unsqueeze(0) == cls.unsqueeze(1)) | (cls < 0).unsqueeze(1)
        size = torch.where(cls < 0, counts.sum(), counts[cls.clamp(min=0)])
        return torch.where(inside, -size.log().unsqueeze(1), torch.full_like(size, -math.inf).unsqueeze(1))

    @staticmethod
    def _active(lw: Tensor) -> Tensor:
        """Indices of the references some row gives positive weight."""
        return torch.nonzero(torch.isfinite(lw).any(0)).squeeze(1)

    def _kernel_sum(self, tokens: Tensor, group: Tensor, refs: Tensor) -> Tensor:
        """sum_{i in group} log K(x_i | z_{n,i}) (B, M) over the references `refs` (M, L[, C])."""
        B, M = tokens.shape[0], refs.shape[0]
        size = group.sum(1, keepdim=True).double()
        if self.discrete:
            cols = torch.nonzero(group.any(0)).squeeze(1)
            x, z, g = tokens[:, cols], refs[:, cols], group[:, cols]
            rows = max(1, _CHUNK // max(1, M * len(cols)))  # (rows, M, |cols|) booleans at a time
            matches = torch.cat([((x[b:b + rows, None] == z[None]) & g[b:b + rows, None]).sum(-1)
                                 for b in range(0, B, rows)]) if B else x.new_zeros(0, M)
            return matches.double() * self.log_on + (size - matches.double()) * self.log_off
        g = group.double().unsqueeze(-1)
        x, z = tokens.double() * g, refs.double()
        C = z.shape[-1]
        d2 = ((x * x).sum((1, 2)).unsqueeze(1) - 2 * x.reshape(B, -1) @ z.reshape(M, -1).T
              + group.double() @ (z * z).sum(-1).T)
        return -d2.clamp(min=0) / (2 * self.sigma**2) - size * (C / 2) * math.log(2 * math.pi * self.sigma**2)

    def group_log_kernel(self, tokens: Tensor, group: Tensor) -> Tensor:
        """sum_{i in group} log K(x_i | z_{n,i}) (B, N) for tokens (B, L[, C]) and group (B, L) bool."""
        return self._kernel_sum(tokens, group, self.refs)

    def log_weights(self, tokens: Tensor, visible: Tensor, cond: Tensor) -> Tensor:
        """Normalised posterior log weights (B, N) over the references given the visible tokens (-inf
        outside the row's class)."""
        prior = self.log_prior(cond)
        cols = self._active(prior)
        lw = torch.full_like(prior, -math.inf)
        sub = prior[:, cols] + self._kernel_sum(tokens, visible, self.refs[cols])
        lw[:, cols] = sub - torch.logsumexp(sub, 1, keepdim=True)
        return lw

    def _token_log_kernel(self, values: Tensor, position: int, refs: Tensor) -> Tensor:
        """log K(values_b | z_{n,position}) (B, M) for values (B[, C]) at one position."""
        if self.discrete:
            eq = values.reshape(-1, 1) == refs[None, :, position]
            on = torch.tensor(self.log_on, dtype=torch.float64, device=eq.device)
            return torch.where(eq, on, torch.tensor(self.log_off, dtype=torch.float64, device=eq.device))
        d2 = ((values.double().unsqueeze(1) - refs[None, :, position].double()) ** 2).sum(-1)
        C = refs.shape[-1]
        return -d2 / (2 * self.sigma**2) - (C / 2) * math.log(2 * math.pi * self.sigma**2)

    def token_log_probs(self, lw: Tensor, tokens: Tensor, positions: Tensor) -> Tensor:
        """log p(x_i | the references' posterior lw) (B, L) for every i where positions (B, L) is True
        (NaN elsewhere): lw (B, N) normalised log weights, tokens (B, L[, C]) the values asked about."""
        cols = self._active(lw)
        lw, refs = lw[:, cols], self.refs[cols]
        out = torch.full(positions.shape, math.nan, dtype=torch.float64, device=lw.device)
        at = torch.nonzero(positions.any(0)).squeeze(1)
        if self.discrete and len(at):  # log(eps / V + (1 - eps) sum_n w_n [z_{n,i} = x_i]), all positions at once
            w, B, M = lw.exp(), lw.shape[0], refs.shape[0]
            rows = max(1, _CHUNK // max(1, M * len(at)))
            mass = torch.cat([torch.einsum("bml,bm->bl", (tokens[b:b + rows, None, at] == refs[None, :, at]).double(),
                                           w[b:b + rows]) for b in range(0, B, rows)])
            value = torch.log(self.eps / self.codebook_size + (1 - self.eps) * mass)
            out[:, at] = torch.where(positions[:, at], value, out[:, at])
            return out
        for i in at.tolist():
            rows = positions[:, i]
            out[rows, i] = torch.logsumexp(lw[rows] + self._token_log_kernel(tokens[rows, i], i, refs), 1)
        return out

    def joint_log_kernel(self, lw: Tensor, tokens: Tensor, group: Tensor) -> Tensor:
        """log w_n + sum_{i in group} log K(x_i | z_{n,i}) (B, N) (-inf where lw is): its logsumexp is
        log p(x_group | lw), and minus that, the posterior after the group is seen."""
        cols = self._active(lw)
        out = torch.full_like(lw, -math.inf)
        out[:, cols] = lw[:, cols] + self._kernel_sum(tokens, group, self.refs[cols])
        return out

    def group_log_prob(self, lw: Tensor, tokens: Tensor, group: Tensor) -> Tensor:
        """log p(x_group | the posterior lw) (B,): the joint of a group of tokens."""
        cols = self._active(lw)
        return torch.logsumexp(lw[:, cols] + self._kernel_sum(tokens, group, self.refs[cols]), 1)

    def log_prob(self, tokens: Tensor, labels: Tensor) -> Tensor:
        """log p(x | c) (B,) of whole grids (labels -1: the null class)."""
        everything = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return self.group_log_prob(self.log_prior(labels.double()), tokens, everything)

    def effective_refs(self, lw: Tensor) -> Tensor:
        """The posterior's effective number of references 1 / sum w_n^2 (B,), from log weights (B, N)."""
        return torch.exp(-torch.logsumexp(2 * lw, 1))

    def conditional_log_probs(self, lw: Tensor, positions: Tensor | None = None) -> Tensor:
        """Codes only: log p(x_i = k | visible) (B, P, V) at positions (B, P) (default every position),
        from the normalised posterior log weights lw (B, N): log(eps / V + (1 - eps) sum_n w_n [z_{n,i} = k])."""
        cols = self._active(lw)
        w, refs = lw[:, cols].exp(), self.refs[cols]
        B, M, V = w.shape[0], w.shape[1], self.codebook_size
        if positions is None:
            positions = torch.arange(self.num_tokens, device=lw.device).expand(B, -1)
        P = positions.shape[1]
        out = torch.zeros(B, P, V, dtype=torch.float64, device=lw.device)
        rows = max(1, _CHUNK // max(1, P * M))
        for b in range(0, B, rows):  # the histogram of w over the references' codes at each asked position
            index = refs.T[positions[b:b + rows]]  # (rows, P, M) codes
            out[b:b + rows].scatter_add_(2, index, w[b:b + rows, None, :].expand(-1, P, -1))
        return torch.log(self.eps / V + (1 - self.eps) * out)

    # ------------------------------------------------------------------ the network's interface

    def features(self, tokens: Tensor, mask: Tensor, cond: Tensor, num_visible: int | None = None,
                 td=None, record: bool = False, select: Tensor | None = None, **_: Any) -> Features:
        """z of every position (B, L, D), or of the `select` (B, n) positions (B, n, D); see the module
        docstring for D. Values at masked positions are ignored."""
        if td is not None or record:
            raise ValueError("an oracle has no layers: no top-down signals, nothing to record")
        lw = self.log_weights(tokens, ~mask, cond)
        if self.discrete:
            return Features(self.conditional_log_probs(lw, select).float())
        B = lw.shape[0]
        n = self.num_tokens if select is None else select.shape[1]
        pos = (torch.arange(n, device=lw.device).expand(B, n) if select is None else select).float()
        return Features(torch.cat([lw.float().unsqueeze(1).expand(B, n, -1), pos.unsqueeze(-1)], dim=-1))

    def to_z(self, hidden: Tensor, select: Tensor | None = None) -> Tensor:
        return hidden

    def forward(self, tokens: Tensor, mask: Tensor, cond: Tensor, num_visible: int | None = None) -> Tensor:
        return self.features(tokens, mask, cond).hidden


# ---------------------------------------------------------------------- the reference-set files


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def shipped_oracles() -> list[str]:
    """Names of the oracle models in assets/ (folders holding oracle.json)."""
    if not ASSETS_DIR.is_dir():
        return []
    return sorted(p.name for p in ASSETS_DIR.iterdir() if (p / ORACLE_FILE).is_file())


def is_oracle_folder(folder: str | os.PathLike) -> bool:
    return (Path(folder) / ORACLE_FILE).is_file()


def oracle_config(folder: str | os.PathLike) -> RunConfig:
    """The config (tokenizer, grid, classes) of the oracle in `folder`, from oracle.json's kind alone
    (nothing else is read or checked: `read_oracle` does that)."""
    path = Path(folder) / ORACLE_FILE
    try:
        kind = json.loads(path.read_text()).get("kind")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError, RecursionError):
        kind = None
    if kind not in ORACLE_KINDS:
        raise _bad(path, f"not an oracle description of kind {', '.join(ORACLE_KINDS)}")
    return replace(get_preset(_PRESET_OF[kind]), name=Path(folder).name)


def _bad(path: Path, why: str) -> CheckpointError:
    return CheckpointError(f"bad oracle reference set {path}: {why}")


def read_oracle(folder: str | os.PathLike, device: str | torch.device = "cpu",
                kernel: float | None = None) -> tuple[ReferenceSet, float, RunConfig, dict[str, Any]]:
    """Read and check an oracle folder: (reference set, kernel width, config, description). The
    description must be format ORACLE_FORMAT, the reference file's sha256 must match it, the tensors
    must have the stated names, dtypes, shapes and value ranges. kernel: override eps / sigma (checked)."""
    folder = Path(folder)
    desc_path, ref_path = folder / ORACLE_FILE, folder / REFERENCE_FILE
    try:
        desc = json.loads(desc_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise _bad(desc_path, f"cannot read it ({type(e).__name__})") from None
    if not isinstance(desc, dict) or desc.get("format") != ORACLE_FORMAT:
        raise _bad(desc_path, f"not an oracle description (expected \"format\": \"{ORACLE_FORMAT}\")")
    kind = desc.get("kind")
    if kind not in ORACLE_KINDS:
        raise _bad(desc_path, f"kind {kind!r} is not one of {', '.join(ORACLE_KINDS)}")
    want = desc.get("sha256")
    if not ref_path.is_file():
        raise _bad(ref_path, "file not found")
    if not isinstance(want, str) or file_sha256(ref_path) != want:
        raise _bad(ref_path, "its sha256 does not match oracle.json (damaged or not this oracle's file)")
    tensors, _ = read_safetensors_meta(ref_path, "oracle reference set", device)
    if set(tensors) != {"tokens", "labels"}:
        raise _bad(ref_path, f"expected tensors tokens and labels, got {sorted(tensors)}")
    cfg = get_preset(_PRESET_OF[kind])
    tk = cfg.tokenizer
    tokens, labels = tensors["tokens"], tensors["labels"]
    N = labels.shape[0] if labels.dim() == 1 else -1
    if labels.dtype != torch.uint8 or N < 1:
        raise _bad(ref_path, f"labels must be uint8 (N,), got {labels.dtype} {tuple(labels.shape)}")
    C = cfg.backbone.num_classes
    if int(labels.max()) >= C:
        raise _bad(ref_path, f"labels outside 0..{C - 1}")
    if kind == "codes":
        if tokens.dtype != torch.int16 or tuple(tokens.shape) != (N, tk.num_tokens):
            raise _bad(ref_path, f"tokens must be int16 ({N}, {tk.num_tokens}), got {tokens.dtype} "
                                 f"{tuple(tokens.shape)}")
        if int(tokens.min()) < 0 or int(tokens.max()) >= tk.codebook_size:
            raise _bad(ref_path, f"codes outside 0..{tk.codebook_size - 1}")
        refs = ReferenceSet(tokens.long(), labels.long(), C, tk.codebook_size)
        width = check_eps(desc.get("eps") if kernel is None else kernel)
    else:
        if tokens.dtype != torch.float16 or tuple(tokens.shape) != (N, tk.num_tokens, tk.token_dim):
            raise _bad(ref_path, f"tokens must be float16 ({N}, {tk.num_tokens}, {tk.token_dim}), got "
                                 f"{tokens.dtype} {tuple(tokens.shape)}")
        if not bool(torch.isfinite(tokens).all()) or float(tokens.abs().max()) > 1e3:
            raise _bad(ref_path, "latents must be finite and within +-1e3")
        refs = ReferenceSet(tokens.float(), labels.long(), C, 0)
        width = check_sigma(desc.get("sigma") if kernel is None else kernel)
    counts = refs.class_counts()
    if min(counts) < 1:
        raise _bad(ref_path, "every class needs at least one reference")
    name = folder.name
    cfg = replace(cfg, name=name)
    return refs, width, cfg, desc


def write_oracle(folder: str | os.PathLike, refs: ReferenceSet, kernel: float, description: dict[str, Any]) -> Path:
    """Write an oracle folder: references.safetensors and oracle.json (with its sha256)."""
    folder = Path(folder)
    kind = "codes" if refs.discrete else "latents"
    tokens = refs.tokens.to(torch.int16) if refs.discrete else refs.tokens.to(torch.float16)
    data = save({"tokens": tokens.contiguous(), "labels": refs.labels.to(torch.uint8).contiguous()})
    write_bytes(folder / REFERENCE_FILE, data, checksum=True)
    desc = {"format": ORACLE_FORMAT, "kind": kind, ("eps" if refs.discrete else "sigma"): kernel,
            "tokenizer": get_preset(_PRESET_OF[kind]).tokenizer.path,
            "references": len(refs.labels), "per_class": refs.class_counts(),
            "sha256": hashlib.sha256(data).hexdigest(), **description}
    write_bytes(folder / ORACLE_FILE, json.dumps(desc, indent=2, sort_keys=True).encode())
    return folder
