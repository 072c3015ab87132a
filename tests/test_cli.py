"""The command line: outputs, exit code 2 and one-line errors for bad input."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "emigm", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def main_out(capsys, *args) -> tuple[int, str, str]:
    """The CLI in this process (the real process is tested once, below): exit code, stdout, stderr."""
    from emigm.cli.main import main

    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_schedule_json_gives_the_papers_pass_count(capsys):
    code, out, err = main_out(capsys, "schedule", "--schedule", "exp", "--steps", "16", "--tokens", "256", "--cfg",
                              "4", "--cfg-interval", "0.1", "0.3", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["cfg_steps"] == 3 and doc["passes"] == 19
    reveals = [round(s["expected_revealed"], 1) for s in doc["steps"]]
    assert reveals[:4] == [0.6, 0.9, 1.2, 1.6] and reveals[-1] == 69.2
    assert [s["step"] for s in doc["steps"] if s["cfg"]] == [12, 13, 14]


def test_schedule_table_is_readable(capsys):
    code, out, _ = main_out(capsys, "schedule", "--steps", "4", "--tokens", "16")
    assert code == 0 and "transformer passes: 4" in out


@pytest.mark.parametrize("args,needle", [
    (["schedule", "--schedule", "sigmoid"], "valid: linear, cosine, exp"),
    (["schedule", "--steps", "0"], "--steps must be in [1, 1024], got 0"),  # the option as typed
    (["schedule", "--cfg-interval", "0.4", "0.2"], "--cfg-interval needs t_lo < t_hi"),
    (["schedule", "--cfg", "-1"], "--cfg must be in [0, 50]"),
    (["schedule", "--head-solver", "euler"], "ddpm, dpm, dpm2m"),
    (["sample", "--checkpoint", "no-such-model"], "no model export"),
    (["sample", "--preset", "nope", "--random-init"], "unknown preset"),
    (["sample", "--preset", "test-tiny", "--random-init", "--class", "12"], "out of range"),
    (["sample", "--preset", "test-tiny", "--random-init", "--order", "spiral"], "random, confidence, margin, entropy, halton, raster, fixed"),
    (["bogus-command"], "invalid choice"),
])
def test_bad_input_is_one_line_exit_2(args, needle, capsys):
    from emigm.cli.main import main

    assert main(args) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_process_exit_code_is_2_without_traceback():
    r = run("schedule", "--schedule", "sigmoid")
    assert r.returncode == 2 and r.stderr.startswith("error: unknown --schedule") and "Traceback" not in r.stderr


def test_corrupt_checkpoint_is_refused(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{not json")
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 10)
    from emigm.cli.main import main
    assert main(["sample", "--checkpoint", str(tmp_path)]) == 2
    assert "bad model config" in capsys.readouterr().err
    from emigm.core.config import to_dict
    from emigm.core.presets import get_preset
    (tmp_path / "config.json").write_text(json.dumps({"config": to_dict(get_preset("test-tiny"))}))
    assert main(["sample", "--checkpoint", str(tmp_path)]) == 2
    assert "cannot read model weights" in capsys.readouterr().err


def test_sample_class_all_gives_a_row_per_class(tmp_path, capsys):
    """--class all: --num-images per class, class k on row k, seeds counting on across rows."""
    out, trace = tmp_path / "all.png", tmp_path / "all.json"
    code, stdout, err = main_out(capsys, "sample", "--preset", "test-tiny", "--random-init", "--class", "all",
                                 "--seed", "5", "--steps", "4", "--head-steps", "2", "--num-images", "2",
                                 "--out", str(out), "--trace", str(trace), "--device", "cpu")
    assert code == 0, err
    assert "2 per class, a row per class" in stdout
    doc = json.loads(trace.read_text())
    assert doc["labels"] == [c for c in range(10) for _ in range(2)] and doc["seeds"] == list(range(5, 25))
    from PIL import Image
    img = Image.open(out)
    side = 8 * 4  # test-tiny: 8 x 8 images, upscaled 4x; 2 px (8 after upscaling) between tiles
    assert img.size == (2 * side + 3 * 8, 10 * side + 11 * 8)


@pytest.mark.parametrize("preset, flags, rule", [
    ("fmnist-maskgit", [], ("cosine", "exact", "confidence")),  # a categorical model: MaskGIT's rule
    ("test-tiny", [], ("exp", "binomial", "random")),  # eMIGM's
    ("fmnist-maskgit", ["--order", "random", "--schedule", "linear"], ("linear", "exact", "random")),  # given wins
])
def test_sample_defaults_to_the_rule_the_model_was_trained_for(tmp_path, capsys, preset, flags, rule):
    trace = tmp_path / "t.json"
    code, _, err = main_out(capsys, "sample", "--preset", preset, "--random-init", "--steps", "4", "--head-steps", "2",
                            "--num-images", "1", "--out", str(tmp_path / "g.png"), "--trace", str(trace),
                            "--device", "cpu", *flags)
    assert code == 0, err
    s = json.loads(trace.read_text())["sampler"]
    assert (s["schedule"], s["count_rule"], s["order"]) == rule


def test_a_bad_rule_value_is_refused_before_loading(capsys):
    code, _, err = main_out(capsys, "sample", "--checkpoint", "no-such-model", "--order", "sideways")
    assert code == 2 and "order" in err and "no-such-model" not in err


def test_sample_writes_grid_and_trace(tmp_path, capsys):
    out, trace = tmp_path / "grid.png", tmp_path / "trace.json"
    code, _, err = main_out(capsys, "sample", "--preset", "test-tiny", "--random-init", "--class", "Dress", "--seed",
                            "3", "--steps", "6", "--cfg", "4.0", "--cfg-interval", "0.1", "0.5", "--head-steps", "4",
                            "--num-images", "3", "--out", str(out), "--trace", str(trace), "--device", "cpu")
    assert code == 0, err
    from PIL import Image
    assert Image.open(out).format == "PNG"
    doc = json.loads(trace.read_text())
    assert doc["labels"] == [3, 3, 3] and doc["seeds"] == [3, 4, 5] and len(doc["steps"]) == 6
    for i in range(3):
        seen = sorted(p for s in doc["steps"] for p in s["revealed"][i])
        assert seen == list(range(16))
    assert doc["steps"][-1]["passes"] == doc["total_passes"]
    assert doc["guidance"]["cfg_interval"] == [0.1, 0.5]
