"""The sampler's own error, exactly, on an oracle model (emigm.nn.oracle): `python -m emigm sampler-error`.

A run reveals R_k at step k, sampling each token of R_k from q(x_i | x_<k) (the sampler's distribution:
the oracle's exact conditional p(x_i | x_<k, c), pushed by guidance and temperature when those are on)
independently of the others. When the reveal path (which tokens, when) does not depend on token values
(orders random, halton, raster, fixed, no remasking), the chain rule gives

    KL(q_path || p(. | c)) = E_q[ sum_k ( sum_{i in R_k} log q(x_i | x_<k) - log p(x_{R_k} | x_<k, c) ) ],

so each run's own draws give an unbiased estimate, per step and in total (nats per image, mean and
standard error over N images). Unguided, at temperature 1, q = p per token and each step's term is an
expected KL, >= 0; a step that reveals one token adds exactly 0; averaged over random paths the total
bounds KL(q || p) from above (convexity). With guidance on, the target of the run is no longer p(x | c),
and the total is the KL from p(x | c) of what the guided sampler makes.

When the path depends on the values (score orders, remasking), the same per-step quantity is the
dependence cost of the path taken: what the step ignores about the joint of the tokens it reveals
together. It is not a KL there; such runs are also scored by log p(x | c) of the samples against that of
exact samples (drawn directly from the mixture: a reference n from R_c, then every token from K(. | z_n))
and by FD on the classifier's features.
"""
from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import Any

import torch

from emigm.core.guidance import GuidanceConfig, combine
from emigm.core.rng import STREAM_WHAT, normal, uniform
from emigm.eval.evaluation import dataset_features, evaluate_images, load_classifier
from emigm.nn.oracle import OracleGenerator, shipped_oracles
from emigm.sample.orders import orders_of
from emigm.sample.passes import as_networks
from emigm.sample.sampler import SamplerConfig, sample_steps

Tensor = torch.Tensor

PATH_FIXED_ORDERS = orders_of("priority")  # the orders whose path does not read token values
_EXACT_STEP = 1 << 20  # the "what" stream's step index of the exact draws (far beyond any sampler step)


def require_oracle(net: Any) -> OracleGenerator:
    """The oracle model of `net`; a ValueError naming the oracle models when it is a learned one."""
    model = as_networks(net).model
    if not isinstance(model, OracleGenerator):
        names = ", ".join(shipped_oracles()) or "fmnist-oracle, fmnist-oracle-kl"
        raise ValueError(f"the sampler's exact error needs an oracle model (exact conditionals): {names}; "
                         f"{getattr(net, 'label', '') or 'this model'} is a learned model")
    return model


def path_is_fixed(sampler: SamplerConfig) -> bool:
    """Whether the reveal path is independent of token values (the chain rule's KL applies)."""
    return sampler.order in PATH_FIXED_ORDERS and sampler.remask == "off"


def check_request(model: OracleGenerator, sampler: SamplerConfig, guidance: GuidanceConfig) -> None:
    if not model.discrete and (guidance.cfg_scale != 1.0 or sampler.temperature != 1.0):
        raise ValueError("the latent oracle's error is exact only unguided at temperature 1 (a guided draw "
                         "has no density here): use --cfg 1 --temperature 1, or fmnist-oracle (codes)")


def exact_draws(model: OracleGenerator, labels: Tensor, seeds: Tensor) -> Tensor:
    """Exact samples of p(x | c): a reference n uniform in R_c, then x_i ~ K(. | z_{n,i}) for every i.
    Random numbers from the seeds' "what" stream (so sample k is the same in any batch)."""
    B, L = labels.shape[0], model.num_tokens
    pick = uniform(seeds, STREAM_WHAT, _EXACT_STEP, 0).double()  # (B,)
    out = []
    for b in range(B):
        idx = torch.nonzero(model.ref_labels == labels[b]).squeeze(1)
        out.append(idx[min(int(pick[b] * len(idx)), len(idx) - 1)])
    z = model.refs[torch.stack(out)]
    if model.discrete:
        replace_ = uniform(seeds, STREAM_WHAT, _EXACT_STEP, 1, tail=(L,)) < model.eps
        codes = (uniform(seeds, STREAM_WHAT, _EXACT_STEP, 2, tail=(L,)) * model.codebook_size).long()
        return torch.where(replace_, codes.clamp(max=model.codebook_size - 1), z)
    return z + model.sigma * normal(seeds, STREAM_WHAT, _EXACT_STEP, 3, tail=(L, z.shape[-1]))


def _step_log_q(model: OracleGenerator, lw_c: Tensor, lw_u: Tensor | None, tokens: Tensor, revealed: Tensor,
                scale: Tensor, sampler: SamplerConfig) -> Tensor:
    """sum_{i in R} log q(x_i | visible) (B,), q the sampler's per-token distribution at this step."""
    if lw_u is None and sampler.temperature == 1.0:
        return torch.nan_to_num(model.token_log_probs(lw_c, tokens, revealed), nan=0.0).sum(1)
    B = tokens.shape[0]
    r = int(revealed.sum(1).max())
    pos = (~revealed).to(torch.int8).argsort(dim=1, stable=True)[:, :r]  # revealed positions first
    valid = torch.arange(r).unsqueeze(0) < revealed.sum(1, keepdim=True)
    logits = model.conditional_log_probs(lw_c, pos)
    if lw_u is not None:
        logits = combine(logits, [model.conditional_log_probs(lw_u, pos)], [scale - 1.0])
    codes = tokens.gather(1, pos)
    if sampler.temperature == 0:
        logq = torch.where(logits.argmax(-1) == codes, 0.0, -math.inf).double()
    else:
        logq = torch.log_softmax(logits / sampler.temperature, -1).gather(2, codes.unsqueeze(-1)).squeeze(-1)
    return torch.where(valid, logq, torch.zeros_like(logq)).sum(1).reshape(B)


def run_errors(net: Any, labels: Tensor, seeds: Tensor, sampler: SamplerConfig,
               guidance: GuidanceConfig) -> dict[str, Tensor]:
    """One batch: the sampler's run and its exact per-step terms. Returns per_step (B, S) nats,
    effective (B, S) references of the posterior before each step, revealed (B, S) counts, log_p (B,)
    of the samples and the samples' tokens."""
    model = require_oracle(net)
    check_request(model, sampler, guidance)
    sampler = replace(sampler, draft=False)
    cond = labels.double().unsqueeze(1)
    null = torch.full_like(cond, -1.0)
    terms, eff, counts = [], [], []
    state = prev = lw = None
    for state in sample_steps(net, labels, seeds, sampler, guidance):
        visible = ~state.mask_before
        before = torch.zeros_like(state.tokens) if prev is None else prev  # nothing is visible at step 0
        if lw is None or sampler.remask != "off":
            lw = model.log_weights(before, visible, cond)
        lw_u = model.log_weights(before, visible, null) if state.cfg_active else None
        R = state.revealed
        log_q = _step_log_q(model, lw, lw_u, state.tokens, R, state.cfg_scale.double(), sampler)
        joint = model.joint_log_kernel(lw, state.tokens, R)  # log w_n + sum_{i in R} log K(x_i | z_n,i)
        log_joint = torch.logsumexp(joint, 1)
        terms.append(log_q - log_joint)
        eff.append(model.effective_refs(lw))
        counts.append(R.sum(1))
        prev = state.tokens
        lw = joint - log_joint.unsqueeze(1)  # the posterior after this step's tokens, without starting over
    assert state is not None
    return {"per_step": torch.stack(terms, 1), "effective": torch.stack(eff, 1), "revealed": torch.stack(counts, 1),
            "log_p": model.log_prob(state.tokens, labels), "tokens": state.tokens}


def _mean_se(x: Tensor) -> tuple[float, float]:
    n = x.shape[0]
    return float(x.mean()), float(x.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")


def sampler_error(net: Any, num_samples: int, sampler: SamplerConfig, guidance: GuidanceConfig, *,
                  seed: int = 0, batch_size: int = 100, fd: bool = True, data_root: str | None = None,
                  classifier: str | None = None) -> dict[str, Any]:
    """The sampler's exact error on an oracle over N class-balanced samples (image i: class i % 10, seed
    seed + i, as `python -m emigm evaluate`). See the module docstring for what is measured."""
    model = require_oracle(net)
    check_request(model, sampler, guidance)
    start = time.perf_counter()
    labels = torch.arange(num_samples) % model.num_classes
    seeds = torch.arange(num_samples, dtype=torch.long) + seed
    # batches of one class each: the oracle then weighs only that class's references (ten times fewer)
    order = torch.cat([torch.arange(c, num_samples, model.num_classes) for c in range(model.num_classes)])
    chunks = [chunk for c in range(model.num_classes)
              for chunk in torch.arange(c, num_samples, model.num_classes).split(batch_size)]
    parts: dict[str, list[Tensor]] = {"per_step": [], "effective": [], "revealed": [], "log_p": [], "tokens": [],
                                      "exact": [], "exact_log_p": []}
    for idx in chunks:
        out = run_errors(net, labels[idx], seeds[idx], sampler, guidance)
        exact = exact_draws(model, labels[idx], seeds[idx])
        out.update(exact=exact, exact_log_p=model.log_prob(exact, labels[idx]))
        for k in parts:
            parts[k].append(out[k])
    back = torch.empty_like(order)
    back[order] = torch.arange(num_samples)
    # an adaptive order's run may end sooner in one batch than in another: pad with steps that reveal nothing
    width = max(t.shape[1] for t in parts["per_step"])
    for k in ("per_step", "effective", "revealed"):
        parts[k] = [torch.nn.functional.pad(t, (0, width - t.shape[1])) for t in parts[k]]
    cat = {k: torch.cat(v)[back] for k, v in parts.items()}  # image order again
    per_step = cat["per_step"]
    total = per_step.sum(1)
    sampled = time.perf_counter() - start
    exact, exact_lp = cat["exact"], cat["exact_log_p"]
    fixed = path_is_fixed(sampler)
    mean, se = _mean_se(total)
    steps = [_mean_se(per_step[:, k]) for k in range(per_step.shape[1])]
    out: dict[str, Any] = {
        "model": getattr(net, "label", "") or model.label,
        "num_samples": num_samples,
        "measure": ("KL(q || p(x | c)) by the chain rule" if fixed else
                    "dependence cost of the path taken (the path depends on token values: not a KL)"),
        "kl_nats": mean if fixed else None,
        "kl_se": se if fixed else None,
        "dependence_cost_nats": None if fixed else mean,
        "dependence_cost_se": None if fixed else se,
        "guided": guidance.cfg_scale != 1.0,
        "per_step": [m for m, _ in steps],
        "per_step_se": [s for _, s in steps],
        "revealed_per_step": cat["revealed"].double().mean(0).tolist(),
        "steps_per_image": float((cat["revealed"] > 0).sum(1).double().mean()),  # the NFE of an unguided run
        "effective_refs_per_step": cat["effective"].mean(0).tolist(),
        "log_p": _mean_se(cat["log_p"])[0],
        "log_p_se": _mean_se(cat["log_p"])[1],
        "exact_log_p": _mean_se(exact_lp)[0],
        "exact_log_p_se": _mean_se(exact_lp)[1],
        "seconds_sampling": round(sampled, 3),
    }
    if guidance.cfg_scale != 1.0:
        out["note"] = "guided: the run's target is no longer p(x | c); the total is the KL from p(x | c) of " \
                      "what the guided sampler makes, and per-step terms need not be >= 0"
    if fd:
        clf = load_classifier(classifier) if classifier else load_classifier()
        ref, _ = dataset_features(clf, data_root, "test", min(num_samples, 10000))
        tokens = cat["tokens"]
        decode = net.decode if hasattr(net, "decode") else None
        if decode is not None:
            imgs = torch.cat([decode(tokens[b:b + 250]).cpu() for b in range(0, num_samples, 250)])
            ex_imgs = torch.cat([decode(exact[b:b + 250]).cpu() for b in range(0, num_samples, 250)])
            out["fd"] = evaluate_images(imgs, labels, clf, ref)["fd"]
            out["exact_fd"] = evaluate_images(ex_imgs, labels, clf, ref)["fd"]
    out["seconds"] = round(time.perf_counter() - start, 3)
    return out
