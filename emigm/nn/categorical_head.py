"""Categorical per-token head over a codebook (MaskGIT / MDM rows of the paper's Table 1).

z (M, D) -> logits (M, K). Owns its loss (cross-entropy with label smoothing) and its per-token
sampling (temperature; guidance on the logits through `emigm.core.guidance.combine`)."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from emigm.core.guidance import Term, combine

Tensor = torch.Tensor


def margin_score(logp: Tensor) -> Tensor:
    """p(top-1) - p(top-2) of each row of log-probabilities (M, K) -> (M,) (Kim et al. 2025)."""
    top = logp.exp().topk(2, dim=-1).values
    return top[:, 0] - top[:, 1]


def neg_entropy(logp: Tensor) -> Tensor:
    """sum p log p of each row of log-probabilities (M, K) -> (M,): 0 for a certain token, -log K for the
    most uncertain (Dream's entropy score)."""
    return (logp.exp() * logp).sum(-1)


class CategoricalHead(nn.Module):
    discrete = True

    def __init__(self, cond_dim: int, codebook_size: int, label_smoothing: float = 0.1):
        super().__init__()
        if codebook_size < 2:
            raise ValueError(f"codebook_size must be >= 2, got {codebook_size}")
        self.codebook_size = codebook_size
        self.label_smoothing = label_smoothing
        self.norm = nn.LayerNorm(cond_dim, eps=1e-6)
        self.proj = nn.Linear(cond_dim, codebook_size)

    def logits(self, z: Tensor) -> Tensor:
        """z (M, D) -> (M, K) float32 logits."""
        return self.proj(self.norm(z)).float()

    def loss(self, z: Tensor, target: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Per-token cross-entropy with label smoothing. z (M, D), target (M,) int64 -> (M,)."""
        return F.cross_entropy(self.logits(z), target.long(), reduction="none",
                               label_smoothing=self.label_smoothing)

    def guided_logits(self, z: Tensor, guides: Sequence[Term] = ()) -> Tensor:
        """Logits combined with the guides' reference logits (emigm.core.guidance.combine); the conditional
        and every reference condition go through the network in one batched call."""
        if not guides:
            return self.logits(z)
        cond, *refs = self.logits(torch.cat([z, *(g.z for g in guides)])).chunk(1 + len(guides))
        return combine(cond, refs, [g.weight for g in guides])

    def evals(self, solver: str = "", steps: int = 0) -> int:
        return 1

    def noise_draws(self, solver: str = "", steps: int = 0) -> int:
        """One uniform(0) draw of (M, K) per `sample`."""
        return 1

    @torch.no_grad()
    def sample_logits(self, logits: Tensor, uniform: Callable[[int], Tensor], temperature: float = 1.0,
                      score: Callable[[Tensor, Tensor], Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """Sample codes from logits / temperature by the Gumbel-max trick.

        uniform(i) -> (M, K) uniforms in (0, 1). Returns codes (M,) int64 and each token's score under the
        (guided, untempered) distribution: score(logp (M, K), codes (M,)) -> (M,), the function of the
        order that ranks by it (emigm.sample.orders), or None for the log-probability of the sampled code.
        temperature 0 takes the argmax."""
        return self._sample_log_probs(F.log_softmax(logits, dim=-1), uniform, temperature, score)[:2]

    def _sample_log_probs(self, logp: Tensor, uniform: Callable[[int], Tensor], temperature: float,
                          score: Callable[[Tensor, Tensor], Tensor] | None) -> tuple[Tensor, Tensor, Tensor]:
        """(codes, score, log p of each code) from log-probabilities (M, K)."""
        if temperature > 0:
            g = -torch.log(-torch.log(uniform(0)))
            codes = (logp / temperature + g).argmax(dim=-1)
        else:
            codes = logp.argmax(dim=-1)
        log_p = logp.gather(1, codes[:, None]).squeeze(1)
        return codes, (log_p if score is None else score(logp, codes)), log_p

    @torch.no_grad()
    def sample(self, z: Tensor, uniform: Callable[[int], Tensor], *, guides: Sequence[Term] = (),
               temperature: float = 1.0, solver: str = "", steps: int = 0, on_step=None,
               score: Callable[[Tensor, Tensor], Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Guided logits then `sample_logits`: the guided distribution gives the token, its score and its
        log-probability (a committed token's confidence, ReMDM-conf). Returns (codes (M,), score (M,),
        log p (M,)). (solver, steps, on_step: the diffusion head's; unused.)"""
        logp = F.log_softmax(self.guided_logits(z, guides), dim=-1)
        return self._sample_log_probs(logp, uniform, temperature, score)
