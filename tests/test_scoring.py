"""Scoring generators with the shipped classifier: the evaluate command and the claims benchmark."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from emigm.core.fileio import ASSETS_DIR
from emigm.core.presets import get_preset
from emigm.data.datasets import DEFAULT_FASHION_MNIST
from emigm.nn.model import MaskedGenerator
from emigm.sample.sampler import GuidanceConfig, SamplerConfig
from emigm.tokenize.tokenizers import build_tokenizer

ROOT = Path(__file__).resolve().parent.parent
needs_data = pytest.mark.skipif(
    not (os.path.isdir(DEFAULT_FASHION_MNIST) and (ASSETS_DIR / "classifier").is_dir()),
    reason="needs Fashion-MNIST (apt-get install dataset-fashion-mnist) and assets/classifier")


@pytest.fixture(scope="module")
def mini():
    torch.manual_seed(0)
    cfg = get_preset("fmnist-emigm-mini")
    return MaskedGenerator(cfg).eval(), build_tokenizer(cfg.tokenizer)


def test_generate_is_batch_size_invariant(mini):
    from emigm.eval.scoring import generate

    model, tok = mini
    cfg = SamplerConfig(num_steps=4, head_steps=2)
    a, la, cost = generate(model, tok, 6, cfg, GuidanceConfig(), batch_size=6)
    b, lb, _ = generate(model, tok, 6, cfg, GuidanceConfig(), batch_size=4)
    assert la.tolist() == [0, 1, 2, 3, 4, 5] and torch.equal(la, lb)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert cost["passes"] == 4 and a.shape == (6, 1, 28, 28)


@needs_data
def test_evaluate_generator_reports_metrics_and_floor(mini):
    from emigm.eval.scoring import evaluate_generator

    model, tok = mini
    r = evaluate_generator(model, tok, 20, SamplerConfig(num_steps=4, head_steps=2),
                           GuidanceConfig(cfg_scale=2.0, cfg_interval=(0.0, 0.5)), batch_size=10)
    for key in ("fd", "class_accuracy", "precision", "recall", "passes", "head_evals", "images_per_s"):
        assert key in r
    assert r["passes"] == 4 + 2  # CFG at the two steps with s <= 0.5
    assert r["floor"]["fd"] < r["fd"]  # random weights are far from real data
    correct = r["class_accuracy"] * 20  # a fraction of the 20 samples
    assert 0 <= correct <= 20 and correct == pytest.approx(round(correct), abs=1e-9)


def test_evaluate_refuses_images_the_classifier_cannot_score():
    from emigm.eval.scoring import evaluate_generator

    cfg = get_preset("test-tiny")
    with pytest.raises(ValueError, match="1 x 28 x 28"):
        evaluate_generator(MaskedGenerator(cfg), build_tokenizer(cfg.tokenizer), 4, SamplerConfig(), GuidanceConfig())


@needs_data
def test_evaluate_cli_json(capsys):
    from emigm.cli.main import main

    assert main(["evaluate", "--preset", "fmnist-emigm-mini", "--random-init", "--num-samples", "10",
                 "--steps", "3", "--head-steps", "2", "--device", "cpu", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["passes"] == 3 and "floor" in doc and doc["sampler"]["num_steps"] == 3


def test_shards_cover_every_index_once():
    from emigm.eval.scoring import shard

    for n, w in ((20, 2), (7, 3), (2, 4), (50000, 8)):
        parts = [shard(n, r, w) for r in range(w)]
        assert parts[0][0] == 0 and parts[-1][1] == n and all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
        assert max(hi - lo for lo, hi in parts) - min(hi - lo for lo, hi in parts) <= 1


def test_generate_part_is_the_slice_of_the_whole(mini):
    from emigm.eval.scoring import generate

    model, tok = mini
    cfg = SamplerConfig(num_steps=3, head_steps=2)
    whole, labels, _ = generate(model, tok, 7, cfg, GuidanceConfig(), batch_size=7, seed=5)
    part, part_labels, _ = generate(model, tok, 7, cfg, GuidanceConfig(), batch_size=2, seed=5, part=(3, 7))
    assert part_labels.tolist() == labels[3:].tolist() == [3, 4, 5, 6]
    torch.testing.assert_close(part, whole[3:], atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="not a range"):
        generate(model, tok, 7, cfg, GuidanceConfig(), part=(3, 8))


@pytest.mark.slow  # torchrun with two gloo ranks, and the one-process run beside it
@needs_data
def test_evaluate_under_torchrun_equals_one_process(tmp_path):
    """`python -m emigm evaluate` under torchrun: the 2 ranks sample seeds 0-9 and 10-19 (here the
    one-process batches too), rank 0 gathers the features; the scores equal the one-process run's."""
    args = ["-m", "emigm", "evaluate", "--preset", "fmnist-emigm-mini", "--random-init", "--num-samples", "20",
            "--batch-size", "10", "--steps", "3", "--head-steps", "2", "--cfg", "2.0", "--device", "cpu", "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          *args], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert two.returncode == 0, two.stderr
    a, b = json.loads(one.stdout), json.loads(two.stdout)  # rank 1 prints nothing: stdout is one document
    assert a["ranks"] == 1 and b["ranks"] == 2 and a["n"] == b["n"] == 20
    assert a["shards"] == [[0, 20]] and b["shards"] == [[0, 10], [10, 20]]  # what each rank sampled
    for key in ("fd", "class_accuracy", "precision", "recall", "seam_ratio"):
        assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-9), key
    assert b["passes"] == a["passes"] and b["floor"] == a["floor"]


def _paper_claims():
    import importlib.util

    spec = importlib.util.spec_from_file_location("paper_claims", ROOT / "benchmarks" / "paper_claims.py")
    pc = importlib.util.module_from_spec(spec)
    sys.modules["paper_claims"] = pc  # dataclasses look their module up
    spec.loader.exec_module(pc)
    return pc


pc = _paper_claims()


def _pt(group, label, fd_runs, model="m", sampler=None, guidance=None, passes=16):
    """A claims.json point with the given per-seed-set FDs."""
    mean, sd = pc.summarise(fd_runs)
    p = {"group": group, "label": label, "model": model, "emigm": model.removesuffix("-fakecfg"),
         "sampler": {**pc.to_dict(pc.BASE), **(sampler or {})},
         "guidance": {**pc.to_dict(GuidanceConfig()), **(guidance or {})}, "nfe": passes, "passes": passes,
         "head_evals": 0, "images_per_s": 1.0, "seed_sets": [[0, 9], [10, 19], [20, 29]][:len(fd_runs)],
         "fd": mean, "fd_sd": sd, "fd_runs": list(fd_runs)}
    for m in ("class_accuracy", "precision", "recall"):
        p[m], p[f"{m}_sd"], p[f"{m}_runs"] = 0.5, 0.0, [0.5] * len(fd_runs)
    return p


def _schedule_points(model="m", fds=None):
    fds = fds or {"linear": [3.0, 3.1, 2.9], "cosine": [2.0, 2.1, 1.9], "exp": [1.0, 1.1, 0.9]}
    return [_pt("schedule", f"{s} S=4", v, model, {"schedule": s, "num_steps": 4}, passes=4) for s, v in fds.items()]


def test_verdict_rule():
    """holds beyond +2 sd, does not hold beyond -2 sd, undecided between (and with no sd); two settings'
    sds add in quadrature; "within p %" scales b's sd by (1 + p); a claim needs all its tests."""
    assert [pc.judge(m, 1.0) for m in (2.01, 2.0, 0.0, -2.0, -2.01)] == \
        ["holds", "undecided", "undecided", "undecided", "does not hold"]
    assert pc.judge(5.0, None) == "undecided"
    a, b = _pt("x", "a", [10.0, 10.3, 9.7]), _pt("x", "b", [11.2, 11.6, 10.8])
    t = pc.below(a, b)
    assert t["margin"] == pytest.approx(1.2) and t["sd"] == pytest.approx(math.sqrt(0.3 ** 2 + 0.4 ** 2))
    assert t["verdict"] == "holds"  # 1.2 > 2 x 0.5
    assert pc.below(b, a)["verdict"] == "does not hold"
    w = pc.below(b, a, 1.1)  # b within 10 % of a
    assert w["margin"] == pytest.approx(1.1 * 10.0 - 11.2) and w["sd"] == pytest.approx(math.sqrt(0.4 ** 2 + (1.1 * 0.3) ** 2))
    assert w["verdict"] == "undecided"
    up = pc.above(b, a, 0.9)  # b at most 10 % below a
    assert up["margin"] == pytest.approx(11.2 - 9.0) and up["verdict"] == "holds"
    assert pc.all_of(["holds", "holds"]) == "holds" and pc.all_of(["holds", "undecided"]) == "undecided"
    assert pc.all_of(["undecided", "does not hold", "holds"]) == "does not hold"


FP = {"network": "a" * 64, "tokenizer": "b" * 64, "self_guidance": None, "classifier": "c" * 64}


def test_seed_sets_are_disjoint_and_each_scored(monkeypatch):
    """Every setting runs once per seed set, set k from seed k N; a setting shared by groups runs once."""
    calls = []

    def fake_eval(gen, tok, n, sampler, guidance, batch_size, seed, floor):
        calls.append((sampler.schedule, sampler.num_steps, guidance.cfg_scale, sampler.head_steps, seed, n))
        return {"fd": 10.0 + seed / 1000, "class_accuracy": 0.9, "precision": 0.8, "recall": 0.4,
                "passes": sampler.num_steps, "head_evals": 8 * sampler.num_steps, "images_per_s": 5.0}

    monkeypatch.setattr(pc, "evaluate_generator", fake_eval)
    monkeypatch.setattr(pc, "load", lambda *a, **k: type("G", (), {"tokenizer": None})())
    monkeypatch.setattr(pc, "pipeline_fingerprint", lambda *a, **k: dict(FP))
    assert pc.seed_sets(100, 3) == [[0, 99], [100, 199], [200, 299]]
    rows = [r for r in pc.suite({"m"}, "m", (8, 16)) if r.group in ("schedule", "cfg")]
    points = pc.measure(rows, 100, 3, 50, True, "cpu", log=lambda _: None)
    assert sorted({c[4] for c in calls}) == [0, 100, 200] and all(c[5] == 100 for c in calls)
    shared = [c for c in calls if c[:4] == ("exp", 16, 1.0, 8)]  # exp S=16 no CFG is also the cfg group's "no CFG"
    # 6 schedule settings and exp S=16 with 14 head steps, 5 more in the cfg group
    assert len(shared) == 3 and len(calls) == 3 * (7 + 5)
    p = next(q for q in points if q["label"] == "exp S=16")
    assert p["fd_runs"] == [10.0, 10.1, 10.2] and p["fd"] == pytest.approx(10.1) and p["fd_sd"] == pytest.approx(0.1)
    assert p["seed_sets"] == [[0, 99], [100, 199], [200, 299]] and p["class_accuracy_sd"] == 0.0


def _all_claims_points():
    """Points for every claim: FDs with a clear ordering where a claim should hold."""
    pts = [_pt("schedule", f"{s} S={S}", [fd + d for d in (0.0, 0.05, -0.05)], "m", {"schedule": s, "num_steps": S},
               passes=S)
           for s, base in (("linear", 14.0), ("cosine", 13.0), ("exp", 12.0))
           for S, fd in ((4, base), (8, base - 1), (16, base - 1.5), (32, base - 1.55))]
    pts += [_pt("solver", f"dpm head={h}", [fd, fd + 0.1, fd - 0.1], "m", {"head_steps": h})
            for h, fd in ((4, 40.0), (8, 13.0), (14, 12.0))]
    pts.append(_pt("solver", "ddpm head=100", [12.2, 12.3, 12.1], "m", {"head_solver": "ddpm", "head_steps": 100}))
    pts += [_pt("cfg", "no CFG", [13.0, 13.1, 12.9]),
            _pt("cfg", "CFG every step", [14.0, 14.1, 13.9], guidance={"cfg_scale": 3.0}, passes=32),
            _pt("cfg", "CFG in (0.1, 0.3]", [11.0, 11.1, 10.9], guidance={"cfg_scale": 3.0, "cfg_interval": [0.1, 0.3]},
                passes=19)]
    pts += [_pt("null", f"{m} w={w}", [fd, fd + 0.1, fd - 0.1], m, guidance={"cfg_scale": w}, passes=32)
            for m, off in (("m", 0.0), ("m-fakecfg", 0.05)) for w, fd in ((2.0, 12.0 + off), (3.0, 11.5 + off))]
    mg = {"schedule": "cosine", "count_rule": "exact", "order": "confidence"}
    for S in (8, 16):
        pts += [_pt("discrete", f"maskgit S={S}", [18.0, 18.1, 17.9], "g", {**mg, "num_steps": S}, passes=S),
                _pt("discrete", f"emigm S={S}", [12.0, 12.1, 11.9], "m", {"num_steps": S}, passes=S)]
        pts[-2]["emigm"] = "m"
        pts += [_pt("sg", f"maskgit S={S} s={s:g}", [fd, fd + 0.1, fd - 0.1], "g", {**mg, "num_steps": S},
                    {"sg_scale": s}, passes=S * (2 if s else 1)) for s, fd in ((0.0, 18.0), (1.0, 17.0))]
    pts += [_pt("sg-scale", f"maskgit S=16 s={s:g}", [fd, fd + 0.1, fd - 0.1], "g", {**mg, "num_steps": 16},
                {"sg_scale": s}, passes=32) for s, fd in ((0.5, 17.5), (2.0, 17.6), (3.0, 20.0))]
    pts += [_pt("sg-tau", f"maskgit S=16 tau={t:g} s={s:g}", [fd + s * d, fd + s * d + 0.1, fd + s * d - 0.1], "g",
                {**mg, "num_steps": 16, "order_temperature": t}, {"sg_scale": s}, passes=16 * (2 if s else 1))
            for t, fd, d in ((1.0, 27.0, 2.0), (4.5, 18.0, -1.0), (10.0, 17.0, 0.05)) for s in (0.0, 1.0)]
    return pts


def test_every_claim_with_its_verdict_and_an_axis_that_varies():
    claims = {c["id"]: c for c in pc.verdicts(_all_claims_points())}
    assert list(claims) == ["schedule", "steps", "ddpm", "head-steps", "interval-cfg", "null", "discrete",
                            "sg-same-steps", "sg-equal-nfe", "sg-scale", "sg-tau"]
    verdict = {k: c["verdict"] for k, c in claims.items()}
    assert verdict == {"schedule": "holds", "steps": "holds",  # S=16 and S=32 each > 2 sd below S=8
                       "ddpm": "holds", "head-steps": "does not hold", "interval-cfg": "holds", "null": "undecided",
                       "discrete": "holds", "sg-same-steps": "holds", "sg-equal-nfe": "holds", "sg-scale": "holds",
                       "sg-tau": "does not hold"}
    assert [t["verdict"] for t in claims["sg-tau"]["tests"]] == ["does not hold", "holds", "undecided"]
    d = claims["ddpm"]
    assert "best head steps (14)" in d["claim"] and [t["test"] for t in d["tests"]] == \
        ["ddpm head=100 below 1.1 x dpm head=14", "ddpm head=100 above 0.9 x dpm head=14"]
    for c in claims.values():  # every panel's x axis says something: more than one x value
        xs = {x for line in c["plot"]["series"] for x in line["x"]}
        assert len(xs) > 1, c["id"]
        assert all(len(line["x"]) == len(line["y"]) == len(line["sd"]) == len(line["labels"])
                   for line in c["plot"]["series"])
        assert c["evidence"] and all(" ± " in v for v in c["evidence"].split(" · "))
        assert all(t["text"].endswith(f"({t['verdict']})") for t in c["tests"])
    assert claims["head-steps"]["plot"]["series"][0]["x"] == [4, 8, 14]
    assert claims["sg-tau"]["plot"]["x_log"] and claims["sg-tau"]["plot"]["series"][0]["x"] == [1.0, 4.5, 10.0]


def test_claims_per_model_when_groups_ran_on_several():
    pts = _schedule_points("a") + _schedule_points("b", {"linear": [1.0, 1.1, 0.9], "cosine": [2.0, 2.1, 1.9],
                                                         "exp": [3.0, 3.1, 2.9]})
    claims = pc.verdicts(pts)
    assert [(c["id"], c["model"], c["verdict"]) for c in claims] == [("schedule@a", "a", "holds"),
                                                                      ("schedule@b", "b", "does not hold")]
    assert claims[0]["claim"].endswith(" on a")


def test_null_mode_verdict_is_per_model_pair():
    """Mask vs fake class is judged within each pair (a model and its -fakecfg twin), best FD over scales;
    two pairs are one claim that holds only if it holds for both."""
    def pt(model, fds, w):
        return _pt("null", f"{model} w={w}", fds, model, guidance={"cfg_scale": w})

    one = pc.verdicts([pt("a", [5.0, 5.1, 4.9], 2.0), pt("a", [4.0, 4.1, 3.9], 3.0), pt("a-fakecfg", [4.5, 4.6, 4.4], 2.0),
                       pt("a-fakecfg", [6.0, 6.1, 5.9], 3.0)])
    assert [(c["id"], c["verdict"]) for c in one] == [("null", "holds")]
    assert [t["test"] for t in one[0]["tests"]] == ["a: best with mask (a w=3.0) below best with fake class (a-fakecfg w=2.0)"]
    two = pc.verdicts([pt("a", [4.0, 4.1, 3.9], 3.0), pt("a-fakecfg", [4.5, 4.6, 4.4], 3.0),
                       pt("b", [9.0, 9.1, 8.9], 3.0), pt("b-fakecfg", [8.0, 8.1, 7.9], 3.0), pt("c", [1.0, 1.1, 0.9], 3.0)])
    assert two[0]["verdict"] == "does not hold"  # b's fake class wins; c has no twin and is left out
    assert [t["verdict"] for t in two[0]["tests"]] == ["holds", "does not hold"]


@pytest.mark.needs_fashion_mnist
def test_claims_merge_recomputes_verdicts(tmp_path):
    pts = _schedule_points()
    for d, part in (("a", pts[:2]), ("b", pts[2:])):
        pc.write(tmp_path / d, pc.build_doc(part, "m", 10, pc.seed_sets(10, 3), "cpu", False))
    assert json.loads((tmp_path / "a" / "claims.json").read_text())["claims"] == []
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{pc.README_BEGIN}\nold\n{pc.README_END}\n\nafter\n")
    pc.main(["--merge", str(tmp_path / "a"), str(tmp_path / "b"), "--out-dir", str(tmp_path / "all"), "--readme",
             "--readme-file", str(readme)])
    doc = json.loads((tmp_path / "all" / "claims.json").read_text())
    assert len(doc["points"]) == 3 and doc["seed_sets"] == [[0, 9], [10, 19], [20, 29]]
    assert [(c["id"], c["verdict"]) for c in doc["claims"]] == [("schedule", "holds")]
    text = readme.read_text()
    assert text.startswith("# x\n\n") and text.endswith("\n\nafter\n") and "\nold\n" not in text
    assert pc.readme_block(doc) in text
    # model "m" has no fingerprint of shipped files: the block names the claim but shows none of its numbers
    assert "| the exp schedule is the best at few steps (S = 4) | not measured on these weights | - | - |" in text
    other = pc.build_doc(pts[:1], "m", 20, pc.seed_sets(20, 3), "cpu", False)
    pc.write(tmp_path / "c", other)
    with pytest.raises(SystemExit, match="num_samples 20 differs"):
        pc.main(["--merge", str(tmp_path / "a"), str(tmp_path / "c"), "--out-dir", str(tmp_path / "x")])


def test_a_file_from_before_seed_sets_reads_with_every_verdict_undecided():
    old = {"model": "m", "num_samples": 10, "device": "cpu", "random_init": False, "date": "2026-01-01",
           "points": [{"claim": "schedule", "label": f"{s} S=4", "model": "m", "nfe": 4, "passes": 4, "fd": fd,
                       "class_accuracy": 0.5, "precision": 0.5, "recall": 0.5, "sampler": {"schedule": s, "num_steps": 4},
                       "guidance": {"cfg_scale": 1.0}} for s, fd in (("linear", 3.0), ("cosine", 2.0), ("exp", 1.0))]}
    doc = pc.upgrade(old)
    assert doc["seed_sets"] == [[0, 9]] and doc["points"][0]["fd_sd"] is None and doc["points"][0]["group"] == "schedule"
    claims = pc.verdicts(doc["points"])
    assert [c["verdict"] for c in claims] == ["undecided"] and "no sd" in claims[0]["tests"][0]["text"]


def test_readme_claims_block_is_generated_from_claims_json():
    """One source: README's claims table is exactly what claims.json renders to."""
    doc = json.loads((ASSETS_DIR / "results" / "claims.json").read_text())
    readme = (ROOT / "README.md").read_text()
    assert readme.count(pc.README_BEGIN) == 1 and readme.count(pc.README_END) == 1
    block = readme[readme.index(pc.README_BEGIN):readme.index(pc.README_END) + len(pc.README_END)]
    assert block == pc.readme_block(doc), "README's claims block is stale: run python3 benchmarks/paper_claims.py --readme"
    assert doc["claims"] == pc.verdicts(doc["points"])  # the stored verdicts are the rule's
    assert block.count("\n| ") - 1 == len(doc["claims"])  # one table row per claim (after the header)


@pytest.mark.slow  # benchmark subprocesses
@needs_data
def test_claims_benchmark_pipeline(tmp_path):
    """Two groups in two processes on random weights, 2 seed sets of 10, merged: every point has its
    per-set values, the claims of both groups are there, and the table is printed."""
    common = [sys.executable, "benchmarks/paper_claims.py", "--random-init", "--emigm", "fmnist-emigm-mini",
              "--num-samples", "10", "--seed-sets", "2", "--batch-size", "10", "--steps", "2", "4",
              "--head-steps", "2", "3", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for only in ("schedule", "solver"):
        r = subprocess.run([*common, "--only", only, "--out-dir", str(tmp_path / only)], cwd=ROOT,
                           capture_output=True, text=True, timeout=600, env=env)
        assert r.returncode == 0, r.stderr
        assert "setting" in r.stdout and "verdict" in r.stdout  # the printed tables
    doc = json.loads((tmp_path / "schedule" / "claims.json").read_text())
    assert [p["label"] for p in doc["points"]] == ["linear S=2", "linear S=4", "cosine S=2", "cosine S=4",
                                                   "exp S=2", "exp S=4", "exp S=4 head=3"]
    assert doc["seed_sets"] == [[0, 9], [10, 19]] and doc["random_init"] and doc["floor"]["fd"] > 0
    for p in doc["points"]:
        assert len(p["fd_runs"]) == 2 and p["fd"] == pytest.approx(sum(p["fd_runs"]) / 2) and p["fd_sd"] >= 0
    assert "RANDOM WEIGHTS" in (tmp_path / "schedule" / "claims.md").read_text()
    r = subprocess.run([sys.executable, "benchmarks/paper_claims.py", "--merge", str(tmp_path / "schedule"),
                        str(tmp_path / "solver"), "--out-dir", str(tmp_path / "all")], cwd=ROOT, capture_output=True,
                       text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr
    merged = json.loads((tmp_path / "all" / "claims.json").read_text())
    assert [c["id"] for c in merged["claims"]] == ["schedule", "steps", "ddpm", "head-steps"]
    assert all(c["verdict"] in pc.VERDICTS for c in merged["claims"])
