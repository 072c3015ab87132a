"""The prepared GPU run, dry-run on the CPU: `benchmarks/gpu_run.sh --smoke` end to end (every phase,
tiny sizes), what it leaves in $OUT (at most 8 files of at most 16 MiB, names the device tool brings
back), unpacking to fp32 exports that load and sample, the transport budget of the GPU presets, and
its one-line errors."""
from __future__ import annotations

import gzip
import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_run  # noqa: E402
import unpack_gpu_run  # noqa: E402


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def tiny_fmnist(tmp_path_factory) -> Path:
    """256 Fashion-MNIST-shaped images: a bright blob whose place depends on the class."""
    folder = tmp_path_factory.mktemp("fmnist")
    rng = np.random.default_rng(0)
    labels = np.arange(256) % 10
    images = rng.integers(0, 40, (256, 28, 28))
    for i, c in enumerate(labels):
        images[i, 2 + 2 * c:8 + 2 * c, 4:24] = 220
    write_idx(folder / "train-images-idx3-ubyte.gz", images)
    write_idx(folder / "train-labels-idx1-ubyte.gz", labels)
    return folder


def test_gpu_presets_fit_what_comes_back():
    """The three Fashion-MNIST GPU presets and the self-guidance smoother, in fp32, fit the budget the
    packer keeps for models (so they travel exactly, without bf16 rounding)."""
    from emigm.core.presets import get_preset
    from emigm.nn.budget import weight_bytes as estimate_bytes
    from emigm.nn.model import MaskedGenerator
    from emigm.nn.smoother import Smoother, config_for

    total = sum(estimate_bytes(get_preset(p)) for p in gpu_run.FMNIST_PRESETS)
    with torch.device("meta"):
        base = MaskedGenerator(get_preset(gpu_run.SG_BASE))
        total += 4 * sum(p.numel() for p in Smoother(config_for(base)).parameters())
    assert total < gpu_run.MODELS_BUDGET, f"{total / 2**20:.1f} MiB"
    assert gpu_run.MODELS_BUDGET + 4 * 2**20 < 64 * 2**20 and gpu_run.PART_BYTES < 16 * 2**20


def test_steps_are_sized_from_the_measured_rate():
    # 300 s, 3 runs sharing the GPU, 3000 img/s alone at batch 256 -> 0.75 * 300 * 3000 / 256 / 3
    assert gpu_run.plan_steps(3000.0, 256, 300.0, 3, smoke=False) == 878
    assert gpu_run.plan_steps(1.0, 256, 10.0, 3, smoke=False) == 50
    assert gpu_run.plan_steps(3000.0, 256, 300.0, 3, smoke=True) == 4


@pytest.mark.slow
def test_smoke_run_end_to_end_then_unpack(tiny_fmnist, tmp_path):
    """The whole prepared run with tiny sizes. The budget is generous: on a loaded 2-core machine the
    phases take minutes, and a deadline that cuts the self-guidance run short is not what this checks."""
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_run.sh"), "--smoke", "--data", str(tiny_fmnist),
                           "--budget", "900"], env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = sorted(p for p in out.rglob("*") if p.is_file())
    assert 4 <= len(files) <= 8 and all(p.parent == out for p in files)
    assert all(p.stat().st_size <= 16 * 2**20 and re.fullmatch(r"[A-Za-z0-9._-]+", p.name) for p in files)
    names = {p.name for p in files}
    assert {"summary.md", "results.json", "log.txt.gz", "models.tar.gz.part00"} <= names
    summary = (out / "summary.md").read_text()
    assert summary in proc.stdout  # printed last, pasteable as it is
    for needle in ("pytest -m gpu", "| test-tiny | 16x1.2 | 4 |", "| fast |", "| graphs |", "| plain |",
                   "| in256-b | 8 |", "| fmnist-maskgit-gpu |", "Exports packed in fp32"):
        assert needle in summary, needle
    res = json.loads((out / "results.json").read_text())
    assert res["errors"] == [] and len(res["models"]) == 3 and not list(tmp_path.glob("emigm-gpu-run-*"))
    assert {r["setting"] for r in res["sampler"]["rows"]} == {"16x1.2", "128"}
    assert gzip.decompress((out / "log.txt.gz").read_bytes()).count(b"exit 0") >= 5

    from emigm.io.loading import load_pipeline
    from emigm.sample.sampler import GuidanceConfig, SamplerConfig, sample

    written = unpack_gpu_run.unpack(out, tmp_path / "assets")
    assert sorted(w.name for w in written) == ["fmnist-emigm", "fmnist-emigm-fakecfg", "fmnist-maskgit"]
    for folder in written:
        gen = load_pipeline(folder)
        cfg = SamplerConfig(num_steps=4, order="confidence", count_rule="exact") if gen.model.discrete \
            else SamplerConfig(num_steps=4)
        g = GuidanceConfig(cfg_scale=2.0, sg_scale=1.0 if gen.smoother is not None else 0.0,
                           cfg_mode="fake" if "fakecfg" in folder.name else "")
        state = sample(gen, [1, 2], [0, 1], cfg, g)
        assert not state.mask_after.any() and gen.decode(state.tokens).shape == (2, 1, 28, 28)
        assert (gen.smoother is not None) == (folder.name == "fmnist-maskgit")
    with pytest.raises(FileExistsError, match="--overwrite"):
        unpack_gpu_run.unpack(out, tmp_path / "assets")


def test_bf16_transport_round_trip(tmp_path):
    """Past the budget the weights travel in bf16 and come back as fp32 exports holding the bf16 values."""
    from emigm.core.presets import get_preset
    from emigm.io.exports import load_export, save_export
    from emigm.nn.model import MaskedGenerator

    torch.manual_seed(0)
    model = MaskedGenerator(get_preset("test-tiny"))
    save_export(model, model.cfg, tmp_path / "export")
    log = gpu_run.Log(tmp_path / "log.txt", 0.0)
    out = tmp_path / "out"
    out.mkdir()
    info = gpu_run.pack({"test-tiny-gpu": tmp_path / "export"}, tmp_path, out, budget=0, log=log)
    assert info["dtype"] == "bf16" and info["parts"] == 1
    unpack_gpu_run.unpack(out, tmp_path / "assets")
    back, _, _ = load_export(tmp_path / "assets" / "test-tiny")
    for (name, a), b in zip(model.state_dict().items(), back.state_dict().values()):
        assert b.dtype == a.dtype and torch.equal(b, a.to(torch.bfloat16).float()), name


def test_one_line_errors(tiny_fmnist, tmp_path, capsys):
    assert gpu_run.main(["--out", str(tmp_path / "o"), "--data", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: Fashion-MNIST files train-images-idx3-ubyte.gz") \
        and "mkdir -p" in err
    if not torch.cuda.is_available():
        assert gpu_run.main(["--out", str(tmp_path / "o"), "--data", str(tiny_fmnist), "--device", "cuda"]) == 2
        err = capsys.readouterr().err.strip()
        assert err == (f"error: device 'cuda' was requested but no CUDA device is available (torch "
                       f"{torch.__version__}); use --device cpu")
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_run.py")], env=env, capture_output=True,
                          text=True)
    assert proc.returncode == 2 and proc.stderr.strip() == "error: no output folder: set OUT or pass --out"
