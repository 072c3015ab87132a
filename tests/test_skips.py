"""Tests that need what a machine may lack (Fashion-MNIST) skip with a reason there instead of failing."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NEEDS_DATA = ["tests/test_scoring.py::test_claims_merge_recomputes_verdicts",
              "tests/test_self_guidance.py::test_train_sg_end_to_end_then_sample",
              "tests/test_self_guidance_official.py::test_official_resume_is_exact_with_base_dropout",
              "tests/test_scoring.py::test_evaluate_cli_json"]


@pytest.mark.slow
def test_tests_that_read_fashion_mnist_skip_with_a_reason_without_it():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)]), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-p",
                        "hide_fashion_mnist", *NEEDS_DATA], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert f"{len(NEEDS_DATA)} skipped" in out and "failed" not in out, out[-3000:]
    assert out.count("needs Fashion-MNIST") >= len(NEEDS_DATA), out[-3000:]
