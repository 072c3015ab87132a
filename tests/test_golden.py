"""Every shipped model samples exactly as recorded: tokens, reveal steps and drafts of a short guided run
with its own sampling rule, compared bit for bit against tests/golden/shipped.safetensors.

    python tests/test_golden.py --write     # re-record (only when a shipped model itself changes)
"""
from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emigm.core.guidance import GuidanceConfig  # noqa: E402
from emigm.io.exports import shipped_models  # noqa: E402
from emigm.io.loading import load_pipeline  # noqa: E402
from emigm.sample.capabilities import suggested_settings  # noqa: E402
from emigm.sample.sampler import SamplerConfig, sample, sample_steps  # noqa: E402

GOLDEN = Path(__file__).parent / "golden" / "shipped.safetensors"
LABELS, SEEDS = [0, 7], [0, 1]


def record(name: str) -> dict[str, torch.Tensor]:
    """The generator's last tokens, per-token reveal step and final draft, and the fast path's tokens."""
    gen = load_pipeline(name)
    sampler = SamplerConfig(num_steps=8, **suggested_settings(gen.model))
    guidance = GuidanceConfig(cfg_scale=3.0, cfg_interval=(0.0, 0.5),
                              sg_scale=1.0 if gen.smoother is not None else 0.0, sg_interval=(0.2, 1.0))
    when = torch.zeros(len(LABELS), gen.model.num_tokens, dtype=torch.long)
    for state in sample_steps(gen, LABELS, SEEDS, sampler, guidance):
        when[state.revealed] = state.step + 1
    fast = sample(gen, LABELS, SEEDS, replace(sampler, draft=False), guidance)
    return {f"{name}/tokens": state.tokens, f"{name}/when": when, f"{name}/draft": state.draft,
            f"{name}/fast": fast.tokens}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("name", shipped_models())
def test_shipped_model_samples_as_recorded(name):
    from safetensors.torch import load_file

    golden = load_file(str(GOLDEN))
    got = record(name)
    for key, value in got.items():
        assert key in golden, f"{key} not recorded; re-record with python tests/test_golden.py --write"
        assert torch.equal(value, golden[key]), f"{key} differs from the recording"
    # the step generator's tokens are the fast path's to float rounding
    scale = max(1.0, float(got[f"{name}/fast"].abs().max()))
    assert float((got[f"{name}/tokens"] - got[f"{name}/fast"]).abs().max()) <= 1e-4 * scale


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    GOLDEN.parent.mkdir(exist_ok=True)
    save_file({k: v.contiguous() for n in shipped_models() for k, v in record(n).items()}, str(GOLDEN))
    print(f"wrote {GOLDEN}")
