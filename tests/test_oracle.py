"""Oracle models (emigm.nn.oracle) and the sampler's exact error (emigm.eval.sampler_error): the
conditionals and joints against enumeration, the sampler's KL against enumeration on a two-token toy,
one token per step costs nothing, per-step terms are >= 0 and add up, and the shipped oracles load."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from emigm.core.guidance import GuidanceConfig
from emigm.core.presets import get_preset
from emigm.eval.sampler_error import exact_draws, run_errors, sampler_error
from emigm.nn.oracle import OracleGenerator, ReferenceSet
from emigm.sample.sampler import SamplerConfig

CFG_CODES, CFG_LATENTS = get_preset("fmnist-maskgit"), get_preset("fmnist-emigm")


def toy_codes(L: int = 3, V: int = 4, eps: float = 0.3, seed: int = 0) -> OracleGenerator:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, V, (12, L), generator=g)
    labels = torch.arange(12) % 2
    return OracleGenerator(ReferenceSet(tokens, labels, 2, V), eps, CFG_CODES)


def toy_latents(L: int = 3, sigma: float = 0.5, seed: int = 0) -> OracleGenerator:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(10, L, 4, generator=g)
    labels = torch.arange(10) % 2
    return OracleGenerator(ReferenceSet(tokens, labels, 2, 0), sigma, CFG_LATENTS)


def all_grids(L: int, V: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product(range(V), repeat=L)))


def test_log_prob_sums_to_one_per_class_and_null():
    m = toy_codes()
    grids = all_grids(3, 4)
    for c in (0, 1, -1):
        lp = m.log_prob(grids, torch.full((len(grids),), c))
        assert float(torch.logsumexp(lp, 0)) == pytest.approx(0.0, abs=1e-12)


def test_conditionals_and_joints_match_enumeration():
    """p(x_i | visible) and p(x_R | visible) against sums of the full joint p(x | c)."""
    m = toy_codes()
    grids = all_grids(3, 4)
    c = torch.tensor([[1.0]])
    joint = m.log_prob(grids, torch.ones(len(grids), dtype=torch.long)).exp()
    x = torch.tensor([[2, 0, 3]])
    visible = torch.tensor([[True, False, False]])
    lw = m.log_weights(x, visible, c)
    consistent = grids[:, 0] == 2
    p_vis = joint[consistent].sum()
    table = m.conditional_log_probs(lw).exp()[0]  # (L, V)
    for i in (1, 2):
        for k in range(4):
            want = joint[consistent & (grids[:, i] == k)].sum() / p_vis
            assert float(table[i, k]) == pytest.approx(float(want), rel=1e-10)
            one = torch.zeros(1, 3, dtype=torch.bool)
            one[0, i] = True
            y = x.clone()
            y[0, i] = k
            assert float(m.token_log_probs(lw, y, one)[0, i].exp()) == pytest.approx(float(want), rel=1e-10)
    assert torch.allclose(table.sum(-1), torch.ones(3, dtype=torch.float64), atol=1e-12)
    group = torch.tensor([[False, True, True]])
    for a, b in itertools.product(range(4), repeat=2):
        y = torch.tensor([[2, a, b]])
        want = joint[consistent & (grids[:, 1] == a) & (grids[:, 2] == b)].sum() / p_vis
        assert float(m.group_log_prob(lw, y, group).exp()) == pytest.approx(float(want), rel=1e-10)


def test_latent_joint_is_the_mixture_density():
    m = toy_latents()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 3, 4, generator=g)
    labels = torch.tensor([0, 1, 0, 1, 0])
    got = m.log_prob(x, labels)
    for b in range(5):
        refs = m.refs[m.ref_labels == labels[b]].double()
        comp = torch.distributions.Normal(refs, m.sigma).log_prob(x[b].double()).sum((1, 2))
        assert float(got[b]) == pytest.approx(float(torch.logsumexp(comp, 0) - math.log(len(refs))), rel=1e-10)
    # the conditional of one token given two visible ones is the mixture with posterior weights
    visible = torch.tensor([[True, True, False]])
    lw = m.log_weights(x[:1], visible, torch.tensor([[0.0]]))
    p_xy = m.log_prob(x[:1], labels[:1])
    p_vis = m.group_log_prob(m.log_prior(torch.tensor([[0.0]])), x[:1], visible)
    pos = torch.tensor([[False, False, True]])
    assert float(m.token_log_probs(lw, x[:1], pos)[0, 2]) == pytest.approx(float(p_xy - p_vis), rel=1e-10)


@pytest.mark.parametrize("order", ["random", "halton", "raster", "fixed"])
@pytest.mark.parametrize("kind", ["codes", "latents"])
def test_one_token_per_step_costs_nothing(kind, order):
    m = toy_codes(L=4) if kind == "codes" else toy_latents(L=4)
    labels, seeds = torch.tensor([0, 1, 1, 0, 1]), torch.arange(5)
    sampler = SamplerConfig(num_steps=4, order=order, count_rule="exact", schedule="cosine")
    out = run_errors(m, labels, seeds, sampler, GuidanceConfig())
    assert out["revealed"].eq(1).all()
    assert out["per_step"].abs().max() < 1e-9


def test_two_token_toy_against_enumeration():
    """S = 1 on two tokens samples q(x) = p(x_1 | c) p(x_2 | c); its KL from p(x | c) by enumeration
    equals the estimate within 4 standard errors (N = 3000)."""
    m = toy_codes(L=2, V=4, eps=0.2, seed=3)
    grids = all_grids(2, 4)
    c = 1
    lp = m.log_prob(grids, torch.full((16,), c))
    p = lp.exp().view(4, 4)
    q = p.sum(1, keepdim=True) * p.sum(0, keepdim=True)
    kl = float((q * (q.log() - p.log())).sum())
    assert kl > 0.05
    N = 3000
    out = run_errors(m, torch.full((N,), c), torch.arange(N), SamplerConfig(num_steps=1), GuidanceConfig())
    total = out["per_step"].sum(1)
    se = float(total.std() / math.sqrt(N))
    assert abs(float(total.mean()) - kl) < 4 * se, (float(total.mean()), kl, se)


def test_per_step_terms_nonnegative_and_sum_to_total():
    m = toy_codes(L=6, V=4, eps=0.25, seed=5)
    N = 400
    r = sampler_error(m, N, SamplerConfig(num_steps=3, schedule="cosine"), GuidanceConfig(), batch_size=200,
                      fd=False)
    assert r["kl_nats"] == pytest.approx(sum(r["per_step"]), rel=1e-9)
    for mean, se in zip(r["per_step"], r["per_step_se"]):
        assert mean > -3 * se
    assert r["kl_nats"] > 4 * r["kl_se"]


def test_exact_draws_follow_the_mixture():
    """The direct draws' empirical frequencies on a two-token toy match p(x | c) (chi-square-sized)."""
    m = toy_codes(L=2, V=3, eps=0.3, seed=7)
    N = 6000
    x = exact_draws(m, torch.zeros(N, dtype=torch.long), torch.arange(N))
    freq = torch.bincount(x[:, 0] * 3 + x[:, 1], minlength=9).double() / N
    p = m.log_prob(all_grids(2, 3), torch.zeros(9, dtype=torch.long)).exp()
    assert (freq - p).abs().max() < 4 * math.sqrt(0.25 / N)


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5])
def test_bad_eps(bad):
    with pytest.raises(ValueError, match="eps must be in"):
        toy_codes(eps=bad)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_sigma(bad):
    with pytest.raises(ValueError, match="sigma must be a finite number > 0"):
        toy_latents(sigma=bad)


# ---------------------------------------------------------------------- the shipped oracle, the CLI


def test_shipped_oracle_runs_every_sampler_feature():
    """fmnist-oracle loads like a model and the sampler runs on it unchanged: CFG from the class and
    null conditionals, a score order, remasking, the step anatomy; a batch of 1 equals a batch of 3."""
    from emigm.io.loading import load_pipeline
    from emigm.sample.options import AnatomyOptions
    from emigm.sample.sampler import sample, sample_steps

    pipe = load_pipeline("fmnist-oracle")
    assert pipe.source == "oracle" and pipe.model.num_tokens == 49 and pipe.class_names[3] == "Dress"
    labels, seeds = torch.tensor([3, 5, 9]), torch.tensor([0, 1, 2])
    guided = GuidanceConfig(cfg_scale=3.0, cfg_interval=(0.0, 1.0))
    for sampler in (SamplerConfig(num_steps=6, order="confidence", count_rule="exact", draft=False),
                    SamplerConfig(num_steps=6, remask="cap", remask_eta=0.2, draft=False)):
        last = sample(pipe, labels, seeds, sampler, guided, fast=False)
        assert not last.mask_after.any() and last.tokens.min() >= 0 and last.tokens.max() < 512
    states = list(sample_steps(pipe, labels, seeds, SamplerConfig(num_steps=4), guided, anatomy=AnatomyOptions()))
    assert states[0].anatomy is not None and states[-1].passes == 8
    one = sample(pipe, labels[1:2], seeds[1:2], SamplerConfig(num_steps=4, draft=False), guided, fast=False)
    three = sample(pipe, labels, seeds, SamplerConfig(num_steps=4, draft=False), guided, fast=False)
    assert torch.equal(one.tokens[0], three.tokens[1])
    images = pipe.decode(three.tokens)
    assert images.shape == (3, 1, 28, 28)


def _cli(args, capsys):
    from emigm.cli.main import main

    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_sampler_error_json(capsys):
    code, out, err = _cli(["sampler-error", "--checkpoint", "fmnist-oracle", "--steps", "4", "--num-samples", "20",
                           "--no-fd", "--json"], capsys)
    assert code == 0, err
    import json

    r = json.loads(out)
    assert set(r) >= {"kl_nats", "kl_se", "per_step", "log_p", "exact_log_p", "effective_refs_per_step"}
    assert len(r["per_step"]) == 4 and r["kl_nats"] == pytest.approx(sum(r["per_step"]), rel=1e-9)
    assert r["effective_refs_per_step"][0] == pytest.approx(1000.0)


@pytest.mark.parametrize("args, says", [
    (["--eps", "0"], "--eps must be in (0, 1)"),
    (["--eps", "1"], "--eps must be in (0, 1)"),
    (["--eps", "-0.5"], "--eps must be in (0, 1)"),
    (["--sigma", "0"], "--sigma must be a finite number > 0"),
    (["--sigma", "-1"], "--sigma must be a finite number > 0"),
])
def test_cli_bad_kernel(args, says, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = _cli(["sampler-error", "--checkpoint", "fmnist-oracle", "--num-samples", "2", *args], capsys)
    assert code == 2 and err.count("\n") == 1 and says in err and out == ""
    assert list(tmp_path.iterdir()) == []


def test_cli_refuses_a_learned_model(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = _cli(["sampler-error", "--checkpoint", "fmnist-maskgit", "--num-samples", "2"], capsys)
    assert code == 2 and err.count("\n") == 1 and out == ""
    assert "needs an oracle model" in err and "fmnist-oracle" in err and "learned" in err
    assert list(tmp_path.iterdir()) == []


def _copy_oracle(tmp_path):
    import shutil

    from emigm.core.fileio import ASSETS_DIR

    dst = tmp_path / "my-oracle"
    shutil.copytree(ASSETS_DIR / "fmnist-oracle", dst)
    return dst


def test_damaged_or_foreign_reference_sets(capsys, tmp_path):
    import json

    from safetensors.torch import save

    from emigm.nn.oracle import REFERENCE_FILE, file_sha256

    folder = _copy_oracle(tmp_path)
    ref = folder / REFERENCE_FILE
    data = bytearray(ref.read_bytes())
    data[-5] ^= 0xFF
    ref.write_bytes(bytes(data))
    before = sorted(p.name for p in folder.iterdir())
    code, out, err = _cli(["sampler-error", "--checkpoint", str(folder), "--num-samples", "2"], capsys)
    assert code == 2 and err.count("\n") == 1 and "sha256 does not match" in err
    assert sorted(p.name for p in folder.iterdir()) == before
    # a foreign safetensors file with a matching fingerprint (and no checksums.json): named tensors checked
    (folder / "checksums.json").unlink(missing_ok=True)
    ref.write_bytes(save({"weight": torch.zeros(3)}))
    desc = json.loads((folder / "oracle.json").read_text())
    desc["sha256"] = file_sha256(ref)
    (folder / "oracle.json").write_text(json.dumps(desc))
    code, out, err = _cli(["sampler-error", "--checkpoint", str(folder), "--num-samples", "2"], capsys)
    assert code == 2 and err.count("\n") == 1 and "expected tensors tokens and labels" in err
    # codes out of range
    ref.write_bytes(save({"tokens": torch.full((10, 49), 600, dtype=torch.int16),
                          "labels": torch.arange(10, dtype=torch.uint8)}))
    desc["sha256"] = file_sha256(ref)
    (folder / "oracle.json").write_text(json.dumps(desc))
    code, out, err = _cli(["sampler-error", "--checkpoint", str(folder), "--num-samples", "2"], capsys)
    assert code == 2 and "codes outside 0..511" in err
    # not an oracle description
    (folder / "oracle.json").write_text("{\"format\": \"something-else\"}")
    code, out, err = _cli(["sampler-error", "--checkpoint", str(folder), "--num-samples", "2"], capsys)
    assert code == 2 and "not an oracle description" in err


def test_oracle_fingerprint_names_its_description_and_tokenizer():
    """A claim measured on an oracle records the sha256 of oracle.json (kernel width and the reference
    set's own sha256) and of the tokenizer's weights."""
    from emigm.core.fileio import ASSETS_DIR
    from emigm.io.fingerprint import fingerprint, sha256_file
    from emigm.nn.oracle import ORACLE_FILE

    fp = fingerprint("fmnist-oracle")
    assert fp["network"] == sha256_file(ASSETS_DIR / "fmnist-oracle" / ORACLE_FILE)
    assert fp["tokenizer"] == sha256_file(ASSETS_DIR / "fmnist-vq" / "vq.safetensors")
    assert fp["self_guidance"] is None


def test_shipped_latent_oracle_samples_guided_and_unguided():
    """fmnist-oracle-kl: exact draws unguided; under CFG the probability-flow ODE of the two mixtures
    gives finite latents; its exact error is refused when guided (no density)."""
    from emigm.io.loading import load_pipeline
    from emigm.sample.sampler import sample

    pipe = load_pipeline("fmnist-oracle-kl")
    assert pipe.model.sigma == pytest.approx(0.25) and not pipe.model.discrete
    labels, seeds = torch.tensor([0, 7]), torch.tensor([3, 4])
    for guidance in (GuidanceConfig(), GuidanceConfig(cfg_scale=2.0)):
        last = sample(pipe, labels, seeds, SamplerConfig(num_steps=3, head_steps=4, draft=False), guidance, fast=False)
        assert last.tokens.shape == (2, 49, 4) and torch.isfinite(last.tokens).all()
    with pytest.raises(ValueError, match="unguided"):
        run_errors(pipe, labels, seeds, SamplerConfig(num_steps=3), GuidanceConfig(cfg_scale=2.0))


def test_oracle_claims_file_is_readmes_block_and_fingerprinted():
    """assets/results/oracle-claims.json is read by ClaimsFile (format, fingerprints), every claim in it
    was measured on the shipped oracle's files, and README's block is generated from it."""
    import importlib.util
    from pathlib import Path

    from emigm.eval.claims import ClaimsFile

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("oracle_claims", root / "benchmarks" / "oracle_claims.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cf = ClaimsFile.read(mod.RESULTS)
    assert cf.problem is None, cf.problem
    current = cf.current_fingerprints()
    assert set(current) == {"fmnist-oracle"}
    judged = cf.claims(current)
    assert judged and all(ok for _, ok in judged)
    readme = (root / "README.md").read_text()
    i, j = readme.index(mod.README_BEGIN), readme.index(mod.README_END) + len(mod.README_END)
    assert readme[i:j] == mod.readme_block(cf.doc)
