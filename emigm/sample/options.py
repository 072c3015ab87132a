"""The sampler's settings: how many tokens each step reveals (count rules), which ones (orders), whether
committed tokens may be revised (remasking), how the head samples them, and what extra a run records
about each step (anatomy). Option fields generate the CLI flags and the explorer's controls; the orders
themselves are entries of the order registry (emigm.sample.orders)."""
from __future__ import annotations

import math
from dataclasses import dataclass

from emigm.core.fields import NAME, FieldError, check_fields, check_number, option
from emigm.core.schedules import SCHEDULES
from emigm.nn.diffusion import SOLVERS
from emigm.sample.orders import ORDERS

COUNT_RULES = {"binomial": "each masked token revealed with p = 1 - gamma(s)/gamma(t), at least one (eMIGM)",
               "exact": "floor(L gamma(u)/gamma(1)) stay masked (MaskGIT / MAR)"}
# the orders' names and help texts, from the order registry (emigm.sample.orders.ORDERS)
ORDER_HELP = {name: o.help for name, o in ORDERS.items()}
REMASKS = {"off": "committed tokens stay (MaskGIT, MAR, eMIGM)",
           "cap": "each committed token re-masked with sigma = min(eta, sigma_max) (ReMDM-cap)",
           "rescale": "each committed token re-masked with sigma = eta x sigma_max (ReMDM-rescale)",
           "conf": "as cap, but which committed tokens: weighted by 1 - their probability when committed "
                   "(ReMDM-conf; categorical heads)"}


def _anneal_linear(tau0: float, k: int, num_steps: int) -> float:
    return tau0 * (1.0 - (k + 1) / num_steps)


def _anneal_compound(tau0: float, k: int, num_steps: int) -> float:
    return tau0 * math.prod(1.0 - j / num_steps for j in range(1, k + 2))


# Gumbel temperature of the score orders at step k (0-based) of S: MaskGIT's linear
# tau0 (1 - (k+1)/S), or the compounding tau0 prod_{j=1}^{k+1} (1 - j/S) of the self-guidance public code
ANNEALS = {"linear": _anneal_linear, "compound": _anneal_compound}
MAX_STEPS, MAX_HEAD_STEPS = 1024, 250
MAX_UNCERTAINTY_DRAWS = 32


@dataclass(frozen=True)
class SamplerConfig:
    """How the sampler reveals tokens and samples them; validated at construction."""

    num_steps: int = option(16, "sampling steps S (at most the model's token count)", low=1, high=MAX_STEPS,
                            cli="--steps")
    schedule: str = option("exp", "mask schedule gamma(t)", choices=SCHEDULES)
    count_rule: str = option("binomial", "how many tokens each step reveals", choices=COUNT_RULES,
                             labels=COUNT_RULES)
    order: str = option("random", "which masked tokens each step reveals", choices=ORDER_HELP, labels=ORDER_HELP)
    order_temperature: float = option(4.5, "Gumbel temperature tau_0 of the confidence, margin and entropy "
                                           "orders", low=0.0, high=100.0)
    order_anneal: str = option("linear", "annealing of the order's Gumbel temperature", choices=ANNEALS)
    remask: str = option("off", "revocable tokens: re-mask committed tokens with probability sigma_t (ReMDM)",
                         choices=REMASKS, labels=REMASKS)
    threshold_tau: float = option(0.9, "threshold order: reveal every masked token whose top probability >= tau",
                                  low=0.0, high=1.0, open_low=True)
    eb_gamma: float = option(0.1, "eb order: entropy bound gamma in nats (sum of the revealed tokens' entropies "
                                  "minus the largest)", low=0.0, high=1000.0)
    remask_eta: float = option(0.05, "eta of the remasking schedule (remask cap or rescale)", low=0.0, high=1.0)
    temperature: float = option(1.0, "token temperature (DDPM noise / categorical logits; 0 = argmax)",
                                low=0.0, high=10.0)
    head_solver: str = option("dpm", "diffusion head solver: dpm (DPM-Solver++ 3S), dpm2m, ddpm",
                              choices=SOLVERS)
    head_steps: int = option(8, "diffusion head solver steps", low=1, high=MAX_HEAD_STEPS)
    draft_steps: int = option(2, "diffusion head: DPM-Solver++ steps for the drafts of tokens not revealed at "
                                 "a step (0 = as head_solver / head_steps)", low=0, high=MAX_HEAD_STEPS)
    draft: bool = True  # predict every still-masked token each step (the "draft" view)
    t_end: float = 1e-5

    def __post_init__(self) -> None:
        check_fields(self)
        if ORDERS[self.order].kind == "adaptive" and self.remask != "off":
            raise FieldError("remask", f"{NAME} {self.remask!r} is not available with the {self.order} order: "
                                       "remasking plans its counts on the schedule, an adaptive order decides "
                                       "its own (use remask off)")
        if not (isinstance(self.t_end, float) and 0.0 < self.t_end < 1.0):
            raise ValueError(f"t_end must be in (0, 1), got {self.t_end!r}")


def anneal(cfg: SamplerConfig, k: int) -> float:
    """Gumbel temperature of the score orders at step k under cfg.order_anneal (see ANNEALS)."""
    return ANNEALS[cfg.order_anneal](cfg.order_temperature, k, cfg.num_steps)


@dataclass(frozen=True)
class AnatomyOptions:
    """What `sample_steps(..., anatomy=...)` records about each step beyond the state (it costs extra
    head work; the fast path never computes it).

    uncertainty_draws: K, for a diffusion head: the per-token uncertainty of the draft is the spread
    (mean over channels of the standard deviation) of K independent head draws with the draft solver;
    a categorical head's is the entropy of its guided distribution. path_token: (sample, position) of
    one token whose diffusion-head denoising path (its value after each solver step) is recorded at
    every step where it is masked, or None. rescore: keep each branch's network output (StepAnatomy.z)
    so that the step can be re-scored at other settings without a network pass (emigm.sample.rescore)."""

    uncertainty_draws: int = 4
    path_token: tuple[int, int] | None = None
    rescore: bool = False

    def __post_init__(self) -> None:
        check_number("uncertainty_draws", self.uncertainty_draws, 2, MAX_UNCERTAINTY_DRAWS, integer=True)
        if self.path_token is not None:
            if not (isinstance(self.path_token, tuple) and len(self.path_token) == 2):
                raise ValueError(f"path_token must be (sample, position), got {self.path_token!r}")
            for name, v in zip(("path_token sample", "path_token position"), self.path_token):
                check_number(name, v, 0, None, integer=True)
