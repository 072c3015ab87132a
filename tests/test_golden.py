"""Every shipped model samples as recorded: tokens, reveal steps and drafts of a short guided run with its
own sampling rule, compared against tests/golden/shipped.safetensors on any CPU.

What is discrete (reveal steps, codes of a categorical model) must match exactly. Float tokens (the
continuous heads) carry the CPU's kernel rounding (AVX-512, AVX2, the scalar `default` kernels and ARM
round differently; measured drifts are 5e-6 to 2.4e-5 on values up to 3.4), so they are compared with
the stated tolerance FLOAT_TOL, the way diffusers' full-loop tests compare a sum and a mean:
elementwise |got - want| <= atol + rtol |want|, and the mean and the mean absolute value each within
mean_atol. The same cases run again in a subprocess under ATEN_CPU_CAPABILITY=default (the scalar
kernels every CPU has), so a recording that only holds on one instruction set is caught here.

    python tests/test_golden.py --write          # re-record (only when a shipped model itself changes)
    python tests/test_golden.py --check NAME...  # compare, print the kernel capability; exit 1 on a mismatch
"""
from __future__ import annotations

import os
import subprocess
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
# float tolerance: about 6x the largest drift measured between kernel capabilities (1.7e-5 elementwise,
# 6e-7 on the mean), far below what any change to the sampler moves (a different seed moves values by ~1)
FLOAT_TOL = {"atol": 1e-4, "rtol": 1e-4, "mean_atol": 1e-5}
FORCED = os.environ.get("ATEN_CPU_CAPABILITY", "")


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


def mismatches(got: dict[str, torch.Tensor], golden: dict[str, torch.Tensor]) -> list[str]:
    """One line per recorded tensor that differs: exactly for integer tensors, within FLOAT_TOL for floats."""
    out = []
    for key, value in got.items():
        if key not in golden:
            out.append(f"{key} not recorded; re-record with python tests/test_golden.py --write")
            continue
        want = golden[key]
        if value.shape != want.shape or value.dtype != want.dtype:
            out.append(f"{key}: {value.dtype} {tuple(value.shape)}, recorded {want.dtype} {tuple(want.shape)}")
        elif not value.dtype.is_floating_point:
            if not torch.equal(value, want):
                out.append(f"{key}: {int((value != want).sum())} of {value.numel()} entries differ (exact)")
        else:
            err = (value - want).abs()
            bound = FLOAT_TOL["atol"] + FLOAT_TOL["rtol"] * want.abs()
            d_mean = abs(float(value.mean() - want.mean()))
            d_abs = abs(float(value.abs().mean() - want.abs().mean()))
            if bool((err > bound).any()) or max(d_mean, d_abs) > FLOAT_TOL["mean_atol"]:
                out.append(f"{key}: max |diff| {float(err.max()):.3g}, {int((err > bound).sum())} entries beyond "
                           f"atol + rtol|want|; mean diff {d_mean:.3g}, mean |x| diff {d_abs:.3g} "
                           f"(tolerance {FLOAT_TOL})")
    return out


def check(name: str) -> list[str]:
    from safetensors.torch import load_file

    got = record(name)
    out = mismatches(got, load_file(str(GOLDEN)))
    # the step generator's tokens are the fast path's to float rounding (exact for codes)
    tokens, fast = got[f"{name}/tokens"], got[f"{name}/fast"]
    if not tokens.dtype.is_floating_point:
        if not torch.equal(tokens, fast):
            out.append(f"{name}: the fast path's codes differ from the step generator's")
    elif float((tokens - fast).abs().max()) > 1e-4 * max(1.0, float(fast.abs().max())):
        out.append(f"{name}: the fast path's tokens differ from the step generator's beyond 1e-4")
    return out


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("name", shipped_models())
def test_shipped_model_samples_as_recorded(name):
    problems = check(name)
    assert not problems, "\n".join(problems)


def test_the_comparison_is_exact_for_codes_and_tolerant_only_within_the_stated_bounds():
    codes = torch.tensor([[3, 1, 4]])
    x = torch.tensor([[0.5, -1.0, 3.0]])
    golden = {"m/codes": codes, "m/x": x}
    assert mismatches({"m/codes": codes.clone(), "m/x": x + torch.tensor([[5e-6, -5e-6, 1e-5]])}, golden) == []
    assert mismatches({"m/codes": torch.tensor([[3, 1, 5]]), "m/x": x}, golden) == \
        ["m/codes: 1 of 3 entries differ (exact)"]
    # one entry beyond atol + rtol |want| (3e-4 > 1e-4 + 1e-4 x 0.5)
    one_off = x.clone()
    one_off[0, 0] += 3e-4
    assert len(mismatches({"m/codes": codes, "m/x": one_off}, golden)) == 1
    # every entry within its elementwise bound, but all shifted the same way: the mean catches it
    shifted = x + torch.tensor([[9e-5, 9e-5, 3.5e-4]])
    assert bool((shifted - x).abs().le(FLOAT_TOL["atol"] + FLOAT_TOL["rtol"] * x.abs()).all())
    assert len(mismatches({"m/codes": codes, "m/x": shifted}, golden)) == 1
    assert mismatches({"m/x": x.double()}, golden) == ["m/x: torch.float64 (1, 3), recorded torch.float32 (1, 3)"]


@pytest.mark.skipif(not FORCED, reason="runs only inside the ATEN_CPU_CAPABILITY subprocess checks below")
def test_forced_kernel_capability_took_effect():
    assert torch.backends.cpu.get_cpu_capability() == FORCED.upper()


def _forced_env(capability: str) -> dict[str, str]:
    return {**os.environ, "ATEN_CPU_CAPABILITY": capability, "OMP_NUM_THREADS": "1"}


def _capabilities_below_native() -> list[str]:
    """Kernel capabilities this CPU can run other than its native one: always the scalar `default`; on an
    AVX-512 x86 CPU also `avx2`."""
    native = torch.backends.cpu.get_cpu_capability()
    return ["default"] + (["avx2"] if native.startswith("AVX512") else [])


@pytest.mark.skipif(bool(FORCED), reason="already under a forced kernel capability")
def test_golden_holds_under_the_default_kernels():
    """One categorical and one continuous shipped model re-run in a process with the scalar kernels."""
    names = ["fmnist-maskgit", "fmnist-emigm-mini"]
    r = subprocess.run([sys.executable, __file__, "--check", *names], env=_forced_env("default"),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "kernel capability DEFAULT" in r.stdout, r.stdout
    assert r.stdout.count(": ok") == len(names), r.stdout


@pytest.mark.slow
@pytest.mark.skipif(bool(FORCED), reason="already under a forced kernel capability")
@pytest.mark.parametrize("capability", _capabilities_below_native())
def test_golden_and_sampler_suites_pass_under_other_kernel_capabilities(capability):
    """The whole golden file and the sampler contract (tests/test_sampler.py) under a forced capability."""
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_golden.py",
                        "tests/test_sampler.py"], cwd=root, env=_forced_env(capability),
                       capture_output=True, text=True, timeout=1200)
    tail = r.stdout[-3000:] + r.stderr[-2000:]
    assert r.returncode == 0, tail
    assert " passed" in tail and "failed" not in tail, tail


if __name__ == "__main__":
    torch.set_num_threads(1)
    if sys.argv[1:] == ["--write"]:
        from safetensors.torch import save_file

        GOLDEN.parent.mkdir(exist_ok=True)
        save_file({k: v.contiguous() for n in shipped_models() for k, v in record(n).items()}, str(GOLDEN))
        print(f"wrote {GOLDEN}")
    elif sys.argv[1:2] == ["--check"] and sys.argv[2:]:
        print(f"kernel capability {torch.backends.cpu.get_cpu_capability()}")
        failed = False
        for model_name in sys.argv[2:]:
            problems = check(model_name)
            print(f"{model_name}: " + ("ok" if not problems else "; ".join(problems)))
            failed |= bool(problems)
        sys.exit(1 if failed else 0)
    else:
        sys.exit(__doc__)
