"""Refusals that need more setup than a command line (the rest are the table of tests/test_bad_input.py):

- a run whose network overflows (finite weights within the load bound can still make inf) is refused
  at every sampling door (sample, evaluate, the library's scoring, the explorer's engine) with one line
  naming the model and the first non-finite step, and nothing is written;
- a class and a seed parse the same way at every door (CLI, library, explorer, permalink);
- a refused export leaves the run it was pointed at byte for byte as it was;
- a checkpoint larger than its run's config can hold is refused before it is read;
- the 942M model's refusal costs no build (seconds, not a minute)."""
from __future__ import annotations

import json
import re
import shutil
import time
import warnings
from pathlib import Path

import pytest
import torch

from emigm.cli import main as cli
from emigm.core.config import apply_overrides
from emigm.core.labels import parse_class
from emigm.core.names import FASHION_MNIST_CLASSES
from emigm.core.presets import get_preset
from emigm.core.seeds import MAX_SEED, parse_seed
from emigm.core.statedict import CheckpointError, load_torch
from emigm.io.loading import load_pipeline, random_pipeline

OLD = b"old picture"
HAVE_SCORING = Path("/usr/share/datasets/fashion-mnist").is_dir() and \
    (Path(__file__).resolve().parents[1] / "assets" / "classifier").is_dir()


def _overflowing(pipe):
    """The pipeline with z_proj's weights at 3e38 (as a hostile file would, past the loader): the first
    step (nothing visible yet) stays finite, the second overflows."""
    with torch.no_grad():
        pipe.model.z_proj.weight.fill_(3e38)
    return pipe


# ----------------------------------------------------------------------------- overflowing runs

SAMPLE = ["sample", "--preset", "test-tiny", "--random-init", "--device", "cpu", "--steps", "4"]
EVALUATE = ["evaluate", "--checkpoint", "fmnist-emigm-mini", "--device", "cpu", "--steps", "4",
            "--num-samples", "10", "--batch-size", "10"]


@pytest.mark.parametrize("argv,loader,needle", [
    (SAMPLE, lambda a, d: random_pipeline("test-tiny", d),
     "test-tiny (random init) produced NaN or infinite tokens (first at step 2 of 4); nothing was written"),
    pytest.param(EVALUATE, lambda a, d: load_pipeline("fmnist-emigm-mini", d),
                 "fmnist-emigm-mini produced NaN or infinite tokens (first at step 2 of 4); nothing was written",
                 marks=pytest.mark.skipif(not HAVE_SCORING, reason="needs Fashion-MNIST and assets/classifier")),
], ids=["sample", "evaluate"])
def test_an_overflowing_run_is_one_line_and_writes_nothing(argv, loader, needle, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "load_for_sampling", lambda a, device: _overflowing(loader(a, device)))
    out, trace = tmp_path / "grid.png", tmp_path / "trace.json"
    out.write_bytes(OLD)
    extra = ["--out", str(out), "--trace", str(trace), "--overwrite"] if argv is SAMPLE else []
    assert cli.main(argv + extra) == 2
    lines = capsys.readouterr().err.splitlines()
    # evaluate may first report the stages it finished (progress lines); the refusal is one line, the last
    assert [line for line in lines if line.startswith("error: ")] == lines[-1:] and needle in lines[-1], lines
    assert not any("Traceback" in line for line in lines), lines
    assert out.read_bytes() == OLD and not trace.exists()


def test_the_scoring_fast_path_names_the_step_only_after_a_failure():
    from emigm.eval.scoring import generate
    from emigm.sample.sampler import GuidanceConfig, SamplerConfig

    pipe, steps = random_pipeline("test-tiny"), SamplerConfig(num_steps=4)
    generate(pipe, pipe.tokenizer, 4, steps, GuidanceConfig(), batch_size=4)  # finite: no re-run
    with pytest.raises(ValueError, match=r"test-tiny \(random init\) produced NaN .*first at step 2 of 4"):
        generate(_overflowing(pipe), pipe.tokenizer, 4, steps, GuidanceConfig(), batch_size=4)


def test_the_explorer_shows_no_frame_of_an_overflowing_run():
    from app.engine import Engine
    from emigm.sample.sampler import GuidanceConfig, SamplerConfig

    engine = Engine(["test-tiny"], num_threads=1)
    engine._cache["test-tiny"] = _overflowing(random_pipeline("test-tiny"))
    shown = []
    with pytest.raises(ValueError, match="test-tiny produced NaN or infinite values at step 2 of 4; nothing is shown"):
        for traj in engine.stream("test-tiny", [0], [0], SamplerConfig(num_steps=4), GuidanceConfig()):
            shown.append(len(traj.frames))
    assert shown == [1]  # the finite first step was shown, the second never


def test_a_decoder_that_overflows_is_named():
    from emigm.sample.checks import check_finite

    tokens = torch.zeros(2, 16, 4)
    images = torch.full((2, 1, 8, 8), float("inf"))
    with pytest.raises(ValueError, match="m: the tokenizer decoded finite tokens into NaN or infinite pixels"):
        check_finite("m", tokens, images)
    check_finite("m", tokens, torch.zeros(2, 1, 8, 8))


# ----------------------------------------------------------------------------- one parser per input


NAMES = list(FASHION_MNIST_CLASSES)


def _app_class(value):
    from app.shared import class_index

    return class_index(NAMES, value)


def _permalink(key, value):
    from app import permalink

    values, problems = permalink.decode({key: value}, ["m"], lambda m: NAMES)
    if problems:
        raise ValueError(problems[0].split(": ", 1)[1])
    return NAMES.index(values["class_name"]) if key == "class_name" else values["seed"]


def _app_seed(value):
    from app import controls

    return controls.app_value("seed", value)


CLASS_DOORS = {"library": lambda v: parse_class(v, NAMES), "app": _app_class,
               "permalink": lambda v: _permalink("class_name", v)}
SEED_DOORS = {"library": lambda v: parse_seed("seed", v), "app": _app_seed, "permalink": lambda v: _permalink("seed", v)}


@pytest.mark.parametrize("door", CLASS_DOORS)
@pytest.mark.parametrize("value,expected", [
    ("3", 3), (" Dress ", 3), ("dress", 3), ("9", 9),
    ("²", "unknown class '²'; valid: 0..9 or one of: T-shirt/top"),
    ("３", "unknown class '３'; valid: 0..9"),
    ("12", "class id 12 out of range; valid: 0..9"),
    ("-1", "class id -1 out of range; valid: 0..9"),
    ("Dresss", "unknown class 'Dresss'"),
])
def test_a_class_parses_the_same_at_every_door(door, value, expected):
    if isinstance(expected, int):
        assert CLASS_DOORS[door](value) == expected
    else:
        with pytest.raises(ValueError) as e:
            CLASS_DOORS[door](value)
        assert expected in str(e.value)


@pytest.mark.parametrize("door", SEED_DOORS)
@pytest.mark.parametrize("value,expected", [
    ("0", 0), (str(MAX_SEED), MAX_SEED), ("2147483648", 2**31),
    ("-1", f"seed must be in [0, {MAX_SEED}], got -1"),
    (str(MAX_SEED + 1), f"seed must be in [0, {MAX_SEED}], got {MAX_SEED + 1}"),
    ("３", f"seed must be a whole number in [0, {MAX_SEED}], got '３'"),
    ("1.5", f"seed must be a whole number in [0, {MAX_SEED}], got '1.5'"),
])
def test_a_seed_has_the_same_range_and_message_at_every_door(door, value, expected):
    if door == "app":  # the explorer's number widget sends numbers
        if not re.fullmatch(r"-?[0-9]+", value):
            pytest.skip("the explorer's seed widget sends numbers, not text")
        value = int(value)
    if isinstance(expected, int):
        assert SEED_DOORS[door](value) == expected
    else:
        with pytest.raises(ValueError) as e:
            SEED_DOORS[door](value)
        assert expected in str(e.value)


def test_the_cli_seed_range_is_the_library_range(tmp_path, capsys):
    out = str(tmp_path / "x.png")
    assert cli.main(["sample", "--preset", "test-tiny", "--random-init", "--device", "cpu", "--steps", "2",
                     "--num-images", "1", "--seed", str(MAX_SEED), "--out", out]) == 0
    assert cli.main(["sample", "--preset", "test-tiny", "--random-init", "--out", out, "--seed", "-1"]) == 2
    assert f"--seed must be in [0, {MAX_SEED}], got -1" in capsys.readouterr().err


# ----------------------------------------------------------------------------- files kept, budgets


def _tiny_run(tmp_path: Path) -> tuple[Path, list[str]]:
    from emigm.train.generator import train

    pairs = [("data.limit", 16), ("train.steps", 2), ("train.ckpt_every", 1), ("train.log_every", 1)]
    run = tmp_path / "run"
    train(apply_overrides(get_preset("test-tiny"), pairs), run, device="cpu", progress=False)
    argv = ["train", "--preset", "test-tiny", "--device", "cpu", "--no-progress", "--out-dir", str(run),
            *[x for k, v in pairs for x in (f"--{k}", str(v))]]
    return run, argv


def test_a_refused_export_leaves_the_run_as_it_was(tmp_path, capsys):
    run, _ = _tiny_run(tmp_path)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert cli.main(["export", str(run), "--out", str(run)]) == 2
    assert "is a training run folder" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    assert cli.main(["export", str(run), "--out", str(run / "export")]) == 0  # its own export/ is fine
    assert json.loads((run / "export" / "config.json").read_text())["meta"]["steps"] == 2


def test_a_checkpoint_larger_than_its_config_allows_is_refused_before_reading(tmp_path, capsys):
    run, argv = _tiny_run(tmp_path)
    newest = sorted(run.glob("ckpt-*.pt"))[-1]
    ck = torch.load(newest, weights_only=True)
    ck["padding"] = torch.zeros(40 << 18)  # 40 MiB more than weights, EMA and Adam state of this model
    torch.save(ck, newest)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot read checkpoint {newest}: it holds" in err and "expected here" in err, err


def test_torch_warnings_about_a_file_are_not_printed(tmp_path):
    import pickle

    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(CheckpointError, match="weights-only loader refuses"):
            load_torch(raw)
    assert not seen, [str(w.message) for w in seen]


def test_the_942m_refusal_builds_nothing(tmp_path, capsys):
    """`sample --preset in256-h --random-init` without kl16.ckpt: refused before the 942M model is built."""
    start = time.perf_counter()
    code = cli.main(["sample", "--preset", "in256-h", "--random-init", "--device", "cpu",
                     "--out", str(tmp_path / "x.png")])
    assert code == 2 and time.perf_counter() - start < 5.0
    assert "kl16" in capsys.readouterr().err


def test_a_tokenizer_retrain_never_overwrites_the_shipped_one(tmp_path, capsys):
    from emigm.core.fileio import ASSETS_DIR

    shipped = ASSETS_DIR / "fmnist-kl"
    if not shipped.is_dir():
        pytest.skip("no shipped fmnist-kl")
    before = {p.name: p.stat().st_mtime_ns for p in shipped.iterdir()}
    assert cli.main(["train-tokenizer", "--out", str(shipped), "--run-dir", str(tmp_path / "r"), "--device", "cpu"]) == 2
    assert "is the shipped asset assets/fmnist-kl" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in shipped.iterdir()} == before and not (tmp_path / "r").exists()
    shutil.rmtree(tmp_path, ignore_errors=True)
