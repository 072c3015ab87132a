"""What a step's anatomy reports, every field recomputed here from the branch inputs, for both head kinds.

The per-token conditions of each branch are computed again from the model itself (the conditional and
null-class passes, the smoother's pass), not taken from the sampler; the head is then run on them with
the noise the sampler addresses for (sample seed, stream, step, position, draw) (emigm.core.rng):
- categorical: each branch's logits, the combined logits cond + (w - 1)(cond - null) + s (cond - smooth)
  with the weights from the settings, each branch's codes by the Gumbel-max rule on its logits, the
  uncertainty as the entropy of the combined distribution, the score orders' score and rank;
- diffusion: each branch's values (the full solver for the tokens revealed at the step, the draft
  solver for the others, unguided), the draft (guided), the uncertainty as the mean over channels of
  the standard deviation of K guided draft-solver draws of the conditional branch;
- both: the reveal probability (binomial: 1 - gamma(s)/gamma(t); exact: count / masked; with
  remasking ReMDM's (alpha_s - (1 - sigma) alpha_t) / (1 - alpha_t)), expected = masked x p, the drawn
  and re-masked counts, sigma, and the rank: the revealed tokens are the first `drawn` of the order.
A branch read from the wrong place (e.g. the uncertainty of the null branch instead of the guided
conditional) moves these values by far more than the tolerances (float rounding of two network passes
computed over different row sets: 1e-4 relative)."""
from __future__ import annotations

import math

import pytest
import torch
from seam_models import tiny_maskgit, tiny_model

from emigm.core import rng
from emigm.core.guidance import GuidanceConfig, Term
from emigm.sample.options import AnatomyOptions
from emigm.sample.plan import KEY_POS
from emigm.sample.sampler import SamplerConfig, sample_steps

Tensor = torch.Tensor


def close(got: Tensor, want: Tensor, tol: float = 1e-4) -> None:
    """|got - want| <= tol x (1 + |want|), element by element."""
    assert got.shape == want.shape, (got.shape, want.shape)
    err = ((got.double() - want.double()).abs() / (1 + want.double().abs())).max().item() if want.numel() else 0.0
    assert err <= tol, f"relative error {err:.3g} > {tol}"


def branch_z(nets, st, tokens_before: Tensor, g: GuidanceConfig) -> dict[str, Tensor]:
    """The per-token conditions (B, L, D) of every branch, from the model: conditional, null, smoothed."""
    model, labels, mask = nets.model, st.labels, st.mask_before
    with torch.no_grad():
        cond = model.condition(labels)
        null = model.condition(labels, torch.ones_like(labels, dtype=torch.bool), g.cfg_mode or None)
        hidden = model.features(tokens_before, mask, cond).hidden
        out = {"conditional": model.to_z(hidden), "null": model(tokens_before, mask, null)}
        if nets.smoother is not None:
            out["smoothed"] = nets.smoother.smooth_z(model, hidden, labels)
    return out


def before_each(states, first: Tensor) -> list[Tensor]:
    return [first] + [st.tokens for st in states[:-1]]


def check_order_fields(a, st) -> None:
    """rank: the place of each masked token in the order of descending score + noise, -1 elsewhere; the
    revealed tokens are the first `drawn`; drawn, expected and the NaN / zero conventions."""
    m = st.mask_before
    assert torch.equal(a.drawn, st.revealed.sum(1))
    assert torch.equal(a.remasked_count, st.remasked.sum(1))
    close(a.expected, m.sum(1).float() * a.reveal_p, 1e-6)
    assert bool(a.score[~m].isnan().all()) and bool((a.rank[~m] == -1).all())
    for b in range(m.shape[0]):
        idx = m[b].nonzero().squeeze(1)
        key = (a.score[b, idx] + a.noise[b, idx]).double()
        order = idx[torch.argsort(-key, stable=True)]
        assert torch.equal(a.rank[b, order], torch.arange(len(idx)))
        assert torch.equal(st.revealed[b].nonzero().squeeze(1).sort().values, order[: int(a.drawn[b])].sort().values)


# ----------------------------------------------------------------------------- categorical head


@pytest.fixture(scope="module")
def maskgit_run():
    nets = tiny_maskgit()
    g = GuidanceConfig(cfg_scale=2.5, sg_scale=0.8, sg_interval=(0.0, 0.7))
    cfg = SamplerConfig(num_steps=6, schedule="cosine", count_rule="exact", order="confidence", temperature=1.3)
    states = list(sample_steps(nets, [1, 7, 4], [3, 4, 5], cfg, g, anatomy=AnatomyOptions()))
    return nets, g, cfg, states


def test_categorical_anatomy_every_field(maskgit_run):
    nets, g, cfg, states = maskgit_run
    head, (w, s) = nets.model.head, (g.cfg_scale, g.sg_scale)
    zeros = torch.zeros_like(states[0].tokens)
    assert {"smoothed"} <= set().union(*(st.anatomy.raw for st in states))
    for st, before in zip(states, before_each(states, zeros)):
        a, m, k = st.anatomy, st.mask_before, st.step
        rows, cols = m.nonzero(as_tuple=True)
        zs = branch_z(nets, st, before, g)
        with torch.no_grad():
            logits = {n: head.logits(v[rows, cols]) for n, v in zs.items()}
        sg_on = 0.0 < st.s <= 0.7
        names = ["conditional", "null"] + (["smoothed"] if sg_on else [])
        assert sorted(a.raw) == sorted(names + ["combined"]) and sorted(a.branches) == sorted(a.raw)
        assert set(a.weights) == ({"cfg", "self-guidance"} if sg_on else {"cfg"})
        assert bool((a.weights["cfg"] == w - 1).all()) and (not sg_on or bool((a.weights["self-guidance"] == s).all()))
        cond = logits["conditional"]
        combined = cond + (w - 1) * (cond - logits["null"]) + (s * (cond - logits["smoothed"]) if sg_on else 0)
        logits["combined"] = combined
        for n in names + ["combined"]:
            close(a.raw[n][rows, cols], logits[n])
        # every branch's codes: Gumbel-max on its own logits with the step's uniforms
        u = rng.uniform(st.seeds[rows], rng.STREAM_WHAT, k, cols, 0, tail=(head.codebook_size,))
        for n in names:
            lp = torch.log_softmax(a.raw[n][rows, cols], -1)
            assert torch.equal(a.branches[n][rows, cols], (lp / cfg.temperature - torch.log(-torch.log(u))).argmax(-1))
            assert torch.equal(a.branches[n][~m], st.draft[~m])  # committed tokens copied
        assert torch.equal(a.branches["combined"], st.draft)
        assert torch.equal(st.tokens[st.revealed], st.draft[st.revealed])
        # how sure: the entropy of the combined distribution; the confidence score: log p of the draft's code
        lp = torch.log_softmax(combined, -1)
        close(a.uncertainty[rows, cols], -(lp.exp() * lp).sum(-1))
        assert bool((a.uncertainty[~m] == 0).all())
        close(a.score[rows, cols], lp.gather(1, st.draft[rows, cols][:, None]).squeeze(1))
        # exact rule: p = drawn / masked, no remasking
        close(a.reveal_p, st.revealed.sum(1).float() / m.sum(1).float(), 1e-6)
        assert a.remask_sigma == 0.0
        check_order_fields(a, st)


# ----------------------------------------------------------------------------- diffusion head


@pytest.fixture(scope="module")
def emigm_run():
    model = tiny_model()
    g = GuidanceConfig(cfg_scale=3.0, cfg_interval=(0.1, 0.7))
    cfg = SamplerConfig(num_steps=6, schedule="exp", count_rule="binomial", order="random", head_steps=4,
                        draft_steps=2, temperature=0.9)
    opts = AnatomyOptions(uncertainty_draws=5, path_token=(1, 5))
    states = list(sample_steps(model, [2, 8], [6, 9], cfg, g, anatomy=opts))
    return model, g, cfg, opts, states


def _draws(head, z: Tensor, noise, terms, temperature: float, solver: str, steps: int) -> Tensor:
    with torch.no_grad():
        return head.sample(z, noise, guides=list(terms), temperature=temperature, solver=solver, steps=steps)


def test_diffusion_anatomy_every_field(emigm_run):
    model, g, cfg, opts, states = emigm_run
    head, w, C = model.head, g.cfg_scale, model.cfg.tokenizer.token_dim
    nets = type("Nets", (), {"model": model, "smoother": None})()
    zeros = torch.zeros_like(states[0].tokens)
    assert any(st.cfg_active for st in states) and not all(st.cfg_active for st in states)
    for st, before in zip(states, before_each(states, zeros)):
        a, m, k = st.anatomy, st.mask_before, st.step
        rows, cols = m.nonzero(as_tuple=True)
        revealed = st.revealed[rows, cols]
        zs = {n: v[rows, cols] for n, v in branch_z(nets, st, before, g).items()}
        cfg_on = 0.1 < st.s <= 0.7
        assert set(a.weights) == ({"cfg"} if cfg_on else set())
        names = ["conditional"] + (["null"] if cfg_on else [])
        assert sorted(a.branches) == sorted(names + ["combined"])
        terms = [Term("cfg", zs["null"], torch.full((len(rows),), w - 1))] if cfg_on else []
        if cfg_on:
            assert bool((a.weights["cfg"] == w - 1).all())

        def noise(i):
            return rng.normal(st.seeds[rows], rng.STREAM_WHAT, k, cols, i, tail=(C,))

        def split(z, guides):  # the full solver for the revealed tokens, the draft solver for the others
            full = _draws(head, z, noise, guides, cfg.temperature, cfg.head_solver, cfg.head_steps)
            draft = _draws(head, z, noise, guides, cfg.temperature, "dpm", cfg.draft_steps)
            return torch.where(revealed[:, None], full, draft)

        for n in names:  # each branch on its own, unguided
            close(a.branches[n][rows, cols], split(zs[n], []))
            assert torch.equal(a.branches[n][~m], st.draft[~m])
        close(st.draft[rows, cols], split(zs["conditional"], terms))  # the draft: guided
        assert torch.equal(a.branches["combined"], st.draft)
        assert torch.equal(st.tokens[st.revealed], st.draft[st.revealed])
        # how sure: the spread of K guided draft-solver draws of the conditional branch
        draws = []
        for j in range(opts.uncertainty_draws):
            def probe(i, j=j):
                return rng.normal(st.seeds[rows], rng.STREAM_PROBE, k, cols, j, i, tail=(C,))
            draws.append(_draws(head, zs["conditional"], probe, terms, cfg.temperature, "dpm", cfg.draft_steps))
        close(a.uncertainty[rows, cols], torch.stack(draws).std(0).mean(-1))
        assert bool((a.uncertainty[~m] == 0).all())
        # the path of token (1, 5) while it is masked: its value after each solver step, guided, with its
        # own noise; the full solver at the step that reveals it, the draft solver before
        if bool(m[1, 5]):
            i = int(((rows == 1) & (cols == 5)).nonzero()[0, 0])
            seen = []
            one = [Term(t.name, t.z[i:i + 1], t.weight[i:i + 1]) for t in terms]
            solver, steps = (cfg.head_solver, cfg.head_steps) if bool(st.revealed[1, 5]) else ("dpm", cfg.draft_steps)
            with torch.no_grad():
                head.sample(zs["conditional"][i:i + 1], lambda j: noise(j)[i:i + 1], guides=one,
                            temperature=cfg.temperature, solver=solver, steps=steps,
                            on_step=lambda _, x: seen.append(x[0].clone()))
            close(a.path, torch.stack(seen))
            close(a.path[-1], st.draft[1, 5])
        else:
            assert a.path is None
        # binomial rule: p = 1 - gamma(s) / gamma(t), gamma(t) = 1 - exp(-5 t); 1 at the last step
        p = 1.0 if k == cfg.num_steps - 1 else 1 - (1 - math.exp(-5 * st.s)) / (1 - math.exp(-5 * st.t))
        close(a.reveal_p, torch.full((2,), p), 1e-6)
        # random order: score = minus the uniform key, no noise
        assert bool((a.noise == 0).all())
        key = rng.uniform(st.seeds, rng.STREAM_WHERE, k, KEY_POS, tail=(st.mask_before.shape[1],))
        close(a.score[m], -key[m], 1e-6)
        check_order_fields(a, st)
    assert sum(st.anatomy.path is not None for st in states) >= 2


# ----------------------------------------------------------------------------- remasking


@pytest.mark.parametrize("remask,eta,kind", [("cap", 0.3, "categorical"), ("rescale", 0.5, "categorical"),
                                             ("cap", 0.4, "diffusion")])
def test_remasking_fields_and_tokens(remask, eta, kind):
    """ReMDM: sigma = min(eta, sigma_max) (cap) or eta sigma_max (rescale), sigma_max = min(1, (1 - alpha_s) /
    alpha_t), alpha(t) = 1 - gamma(t) / gamma(1); p = (alpha_s - (1 - sigma) alpha_t) / (1 - alpha_t) clipped
    to [0, 1]; only committed tokens are re-masked, they are zero afterwards and masked again, and their
    revision count rises."""
    nets = tiny_maskgit() if kind == "categorical" else tiny_model()
    cfg = SamplerConfig(num_steps=8, schedule="linear", count_rule="binomial", order="random", remask=remask,
                        remask_eta=eta, head_steps=2)
    states = list(sample_steps(nets, [1, 2, 3, 4], [0, 1, 2, 3], cfg, GuidanceConfig(), anatomy=AnatomyOptions()))
    assert sum(int(st.remasked.sum()) for st in states) > 0
    revisions = torch.zeros_like(states[0].revisions)
    before = torch.zeros_like(states[0].tokens)
    for st in states:
        a, k = st.anatomy, st.step
        alpha_t, alpha_s = 1 - st.t, 1 - st.s  # linear: gamma(t) = t, gamma(1) = 1
        if k == cfg.num_steps - 1 or alpha_t <= 0:
            sigma = 0.0
        else:
            sigma_max = min(1.0, (1 - alpha_s) / alpha_t)
            sigma = min(eta, sigma_max) if remask == "cap" else eta * sigma_max
        assert a.remask_sigma == pytest.approx(sigma, abs=1e-12)
        if k == cfg.num_steps - 1:
            p = 1.0
        elif sigma > 0:
            p = min(1.0, max(0.0, (alpha_s - (1 - sigma) * alpha_t) / (1 - alpha_t)))
        else:
            p = 1 - st.s / st.t
        close(a.reveal_p, torch.full((4,), p), 1e-6)
        assert not bool((st.remasked & st.mask_before).any())  # only committed tokens
        assert torch.equal(st.mask_after, (st.mask_before & ~st.revealed) | st.remasked)
        assert bool((st.tokens[st.remasked] == 0).all()) and bool((st.tokens[st.mask_after] == 0).all())
        kept = ~st.mask_after & ~st.revealed  # committed before and not re-masked: unchanged
        assert torch.equal(st.tokens[kept], before[kept])
        before = st.tokens
        revisions = revisions + st.remasked.long()
        assert torch.equal(st.revisions, revisions)
        check_order_fields(a, st)
    assert not bool(states[-1].mask_after.any())


def test_remask_counts_follow_sigma():
    """Over 3000 samples the re-masked count of a step is Binomial(committed, sigma) (5 standard deviations)."""
    from emigm.sample.plan import plan_steps

    cfg = SamplerConfig(num_steps=10, schedule="cosine", remask="cap", remask_eta=0.2)
    L, B = 64, 3000
    counts = plan_steps(torch.arange(B), L, cfg)
    masked = torch.full((B,), L)
    for k in range(cfg.num_steps):
        sigma = counts.sigma[k]
        committed = (L - masked).double()
        got = float(counts.remasked[k].double().sum())
        want = float(committed.sum()) * sigma
        assert abs(got - want) <= 5 * math.sqrt(float(committed.sum()) * sigma * (1 - sigma)) + 1e-9, (k, got, want)
        masked = masked - counts.revealed[k] + counts.remasked[k]
    assert any(s > 0 for s in counts.sigma) and int(masked.sum()) == 0
