"""Progress of long work: a tqdm bar with an ETA on a terminal, one line per stage otherwise (written
once the stage has done its first piece of work), nothing with EMIGM_PROGRESS=off; `train` says what it
is doing before the data is encoded."""
from __future__ import annotations

import io
from pathlib import Path

import pytest

from emigm.core.progress import Stage, mode, track

FMNIST = Path("/usr/share/datasets/fashion-mnist")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_mode_follows_the_stream_and_the_override(monkeypatch):
    monkeypatch.delenv("EMIGM_PROGRESS", raising=False)
    assert mode(io.StringIO()) == "lines" and mode(_Terminal()) == "bar"
    for forced in ("bar", "lines", "off"):
        monkeypatch.setenv("EMIGM_PROGRESS", forced)
        assert mode(io.StringIO()) == forced and mode(_Terminal()) == forced


def test_lines_mode_writes_one_line_per_stage_after_its_first_update(monkeypatch):
    monkeypatch.delenv("EMIGM_PROGRESS", raising=False)
    out = io.StringIO()
    with Stage("encoding", total=30, unit="img", stream=out, detail="cached") as s:
        assert out.getvalue() == ""  # nothing until work has started: a refusal leaves only its error
        for _ in range(3):
            s.update(10)
    assert out.getvalue() == "encoding (30 img); cached ...\n"

    out = io.StringIO()
    with Stage("scoring", stream=out):  # no pieces: one line when it ends
        pass
    assert out.getvalue().startswith("scoring: done in ") and out.getvalue().count("\n") == 1

    out = io.StringIO()
    with pytest.raises(ValueError), Stage("sampling", total=4, stream=out):
        raise ValueError("refused")
    assert out.getvalue() == ""


def test_a_terminal_gets_a_bar_with_an_eta(monkeypatch):
    monkeypatch.delenv("EMIGM_PROGRESS", raising=False)
    out = _Terminal()
    with Stage("sampling", total=4, unit="img", stream=out) as s:
        for _ in range(4):
            s.update(1)
    text = out.getvalue()
    assert "sampling" in text and "4/4" in text and "<" in text and "img/s" in text  # elapsed<remaining, rate
    assert "\r" in text


def test_off_and_disabled_write_nothing(monkeypatch):
    out = io.StringIO()
    with Stage("quiet", total=2, stream=out, enabled=False) as s:
        s.update(2)
    monkeypatch.setenv("EMIGM_PROGRESS", "off")
    with Stage("off", total=2, stream=out) as s:
        s.update(2)
    assert out.getvalue() == ""
    assert list(track(range(3), "x")) == [0, 1, 2]


@pytest.mark.skipif(not (FMNIST / "train-images-idx3-ubyte.gz").is_file(), reason="needs Fashion-MNIST")
def test_train_says_what_it_does_before_encoding(tmp_path, capsys, monkeypatch):
    """The run's first line comes before the training set is encoded; then one line per stage."""
    from emigm.cli.main import main

    monkeypatch.delenv("EMIGM_PROGRESS", raising=False)
    run = tmp_path / "run"
    code = main(["train", "--preset", "fmnist-emigm", "--device", "cpu", "--out-dir", str(run),
                 "--data.limit", "40", "--train.batch_size", "8", "--train.steps", "2", "--train.log_every", "1",
                 "--train.warmup_steps", "1", "--train.out_dir", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 0, err
    lines = err.splitlines()
    assert lines[0].startswith(f"train fmnist-emigm: run folder {run}, 2 steps of batch 8 on cpu"), lines
    assert lines[1].startswith("encoding the training set with the tokenizer (40 img); cached in "), lines
    assert lines[2] == f"training fmnist-emigm (2 step); steps 1-2 of 2, batch 8, run folder {run} ...", lines
    assert lines[3].startswith("step 1/2: loss ") and lines[4].startswith("step 2/2: loss "), lines
    assert len(lines) == 5, lines
    assert out.startswith(f"{run}: step 2, loss ")
