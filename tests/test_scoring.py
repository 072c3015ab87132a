"""Scoring generators with the shipped classifier: the evaluate command and the claims benchmark."""
import json
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
        assert b[key] == pytest.approx(a[key], rel=1e-9, abs=1e-12), key
    assert b["passes"] == a["passes"] and b["floor"] == a["floor"]


@pytest.mark.slow  # a benchmark subprocess
@needs_data
def test_claims_benchmark_pipeline(tmp_path):
    r = subprocess.run([sys.executable, "benchmarks/paper_claims.py", "--random-init", "--emigm", "fmnist-emigm-mini",
                        "--num-samples", "10", "--batch-size", "10", "--only", "schedule", "--steps", "2",
                        "--out-dir", str(tmp_path), "--device", "cpu"], cwd=ROOT, capture_output=True, text=True,
                       timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    doc = json.loads((tmp_path / "claims.json").read_text())
    assert [p["label"] for p in doc["points"]] == ["linear S=2", "cosine S=2", "exp S=2"]
    assert [p["setting"] for p in doc["points"]] == ["schedule linear", "schedule cosine", "schedule exp"]
    assert doc["random_init"] and "RANDOM WEIGHTS" in (tmp_path / "claims.md").read_text()


def test_claims_merge_recomputes_verdicts(tmp_path, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("paper_claims", ROOT / "benchmarks" / "paper_claims.py")
    pc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pc)
    pts = [{"claim": "schedule", "label": f"{s} S=4", "model": "m", "passes": 4, "fd": fd, "class_accuracy": 0.5,
            "precision": 0.5, "recall": 0.5, "sampler": {"schedule": s}} for s, fd in (("linear", 3.0), ("cosine", 2.0), ("exp", 1.0))]
    pc.write(tmp_path / "a", "m", 10, "cpu", False, pts[:2])
    pc.write(tmp_path / "b", "m", 10, "cpu", False, pts[2:])
    monkeypatch.setattr(sys, "argv", ["paper_claims.py", "--merge", str(tmp_path / "a"), str(tmp_path / "b"),
                                      "--out-dir", str(tmp_path / "all")])
    pc.main()
    doc = json.loads((tmp_path / "all" / "claims.json").read_text())
    assert len(doc["points"]) == 3
    assert doc["claims"] == [{"claim": "exp schedule is best at few steps (S=4)", "holds": True,
                              "numbers": {"linear": 3.0, "cosine": 2.0, "exp": 1.0},
                              "evidence": json.dumps({"linear": 3.0, "cosine": 2.0, "exp": 1.0})}]


def test_null_mode_verdict_is_per_model_pair():
    """Mask vs fake class is judged within each pair (a model and its -fakecfg twin), best FD over scales;
    two pairs are reported side by side and the claim holds only if it holds for both."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("paper_claims", ROOT / "benchmarks" / "paper_claims.py")
    pc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pc)

    def pt(model, fd):
        return {"claim": "null", "model": model, "fd": fd, "label": model, "sampler": {}}

    one = pc.verdicts([pt("a", 5.0), pt("a", 4.0), pt("a-fakecfg", 4.5), pt("a-fakecfg", 6.0)])
    assert one == [{"claim": "CFG with mask beats fake class (best FD over scales)", "holds": True,
                    "numbers": {"mask": 4.0, "fake": 4.5}}]
    two = pc.verdicts([pt("a", 4.0), pt("a-fakecfg", 4.5), pt("b", 9.0), pt("b-fakecfg", 8.0), pt("c", 1.0)])
    assert two[0]["holds"] is False  # b's fake class wins; c has no twin and is left out
    assert two[0]["numbers"] == {"a mask": 4.0, "a fake": 4.5, "b mask": 9.0, "b fake": 8.0}
