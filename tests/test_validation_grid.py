"""Validation grids during training (`--train.sample_every K`): a class grid at fixed seeds every K steps
and at the end, in the run folder's samples/; writing them changes no training draw, so a run with
grids equals one without, and a resumed run with grids equals an uninterrupted one, bit for bit."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from emigm.cli import main as cli
from emigm.core.config import RunConfig, apply_overrides
from emigm.core.presets import get_preset
from emigm.core.statedict import load_torch
from emigm.train.generator import GRID_COLUMNS, train


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(**overrides) -> RunConfig:
    pairs = [("data.limit", 16), ("train.log_every", 1), ("train.ckpt_every", 100), ("train.steps", 4)]
    return apply_overrides(get_preset("test-tiny"), pairs + [(k.replace("__", "."), v) for k, v in overrides.items()])


def run(cfg: RunConfig, out_dir, max_steps: int | None = None) -> dict:
    return train(cfg, out_dir, max_steps, device="cpu", command="pytest", progress=False)


def _same(a, b, where: str) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    else:
        assert a == b, where


def test_grids_leave_training_and_resume_bit_for_bit(tmp_path):
    plain = run(tiny(), tmp_path / "plain")
    whole = run(tiny(train__sample_every=2), tmp_path / "whole")
    first = run(tiny(train__sample_every=2), tmp_path / "split", max_steps=3)
    second = run(tiny(train__sample_every=2), tmp_path / "split")
    assert first["step"] == 3 and second["resumed_from"].endswith("ckpt-0000003.pt")
    ref = load_torch(tmp_path / "plain" / "ckpt-0000004.pt")
    for name in ("whole", "split"):
        ck = load_torch(tmp_path / name / "ckpt-0000004.pt")
        for key in ("model", "ema", "optimizer", "rng", "data", "step", "loss"):
            _same(ref[key], ck[key], f"{name}:{key}")
    assert plain["final_loss"] == whole["final_loss"] == second["final_loss"]

    assert not (tmp_path / "plain" / "samples").exists()
    grids = {n: sorted(p.name for p in (tmp_path / n / "samples").iterdir()) for n in ("whole", "split")}
    assert grids["whole"] == ["step-0000002.png", "step-0000004.png"]
    assert grids["split"] == ["step-0000002.png", "step-0000003.png", "step-0000004.png"]  # 3: where it stopped
    for step in ("step-0000002.png", "step-0000004.png"):  # fixed seeds, same weights: the same pixels
        whole_png, split_png = (tmp_path / n / "samples" / step for n in ("whole", "split"))
        assert whole_png.read_bytes() == split_png.read_bytes()
    model = whole["model"]
    size = tiny().tokenizer.image_size
    with Image.open(tmp_path / "whole" / "samples" / "step-0000004.png") as im:
        rows = min(model.num_classes, 10)
        assert im.size == (2 * (GRID_COLUMNS * (size + 2) + 2), 2 * (rows * (size + 2) + 2))


def test_sample_every_from_the_command_line(tmp_path, capsys):
    run_dir = tmp_path / "cli"
    code = cli.main(["train", "--preset", "test-tiny", "--device", "cpu", "--no-progress", "--out-dir", str(run_dir),
                     "--data.limit", "16", "--train.steps", "3", "--train.sample_every", "5"])
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in (run_dir / "samples").iterdir()) == ["step-0000003.png"]  # only the end
    assert cli.main(["train", "--preset", "test-tiny", "--device", "cpu", "--no-progress", "--out-dir",
                     str(tmp_path / "bad"), "--train.sample_every", "-1"]) == 2
    assert "sample_every" in capsys.readouterr().err
