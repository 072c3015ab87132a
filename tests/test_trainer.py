"""The generic training loop (emigm.train.trainer) and the faults it guards against: a small add-on trained
on top of a frozen network, the run-folder lock, torn metrics, bad --max-steps and --out-dir,
unwritable folders, and resuming runs whose config predates new fields. CPU, tiny models."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from emigm.cli import main as cli
from emigm.core.config import RunConfig, TrainConfig, apply_overrides, to_dict
from emigm.core.fileio import WriteError, torch_save
from emigm.core.presets import get_preset
from emigm.core.statedict import load_torch
from emigm.data.datasets import SyntheticDataset
from emigm.io.runs import RunLock, RunLockedError, check_resume_config, config_diff, latest_checkpoint
from emigm.nn.model import MaskedGenerator
from emigm.tokenize.tokenizers import build_tokenizer
from emigm.train.generator import train
from emigm.train.trainer import TrainTask, fit

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def same_tree(a, b, where: str = "") -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            same_tree(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            same_tree(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    else:
        assert a == b or (a != a and b != b), where


# ----------------------------------------------------------------------------- an add-on task


class AddOnTask:
    """A trainable Linear on top of a frozen tiny MaskedGenerator: it learns to predict the masked
    tokens from the frozen network's per-token output z (the shape of a self-guidance smoother)."""

    def __init__(self) -> None:
        self.cfg = get_preset("test-tiny")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.frozen = MaskedGenerator(self.cfg).eval().requires_grad_(False)
            self.trainable = nn.Linear(self.cfg.backbone.decoder_width, self.cfg.tokenizer.token_dim)
        self.tokenizer = build_tokenizer(self.cfg.tokenizer)
        self.exported: list[Path] = []

    def config_dict(self) -> dict[str, Any]:
        return {"name": "add-on", "base": to_dict(self.cfg)}

    def config_defaults(self) -> dict[str, Any]:
        return {}

    def dataset(self) -> torch.utils.data.Dataset:
        return SyntheticDataset(16, image_size=8, channels=1, seed=0)

    def to_inputs(self, batch, generator):
        x, labels = batch
        tokens = self.tokenizer.encode(x)
        mask = torch.rand(tokens.shape[:2], generator=generator) < 0.5
        z = self.frozen(tokens, mask, self.frozen.condition(labels))  # no grad: to_inputs runs under no_grad
        return {"z": z, "tokens": tokens, "mask": mask}

    def loss(self, inputs, generator):
        noise = 0.01 * torch.randn(inputs["z"].shape, generator=generator)
        err = (self.trainable(inputs["z"] + noise) - inputs["tokens"]).pow(2).mean(-1)
        m = inputs["mask"].float()
        return (err * m).sum() / m.sum().clamp_min(1)

    def export(self, ema_state, out_dir, meta) -> None:
        torch_save({"ema": ema_state, "meta": meta}, Path(out_dir) / "add-on.pt")
        self.exported.append(Path(out_dir))


LOOP = TrainConfig(steps=4, batch_size=8, blr=0.05, warmup_steps=1, ema=0.9, precision="fp32", log_every=1,
                   ckpt_every=100)


def fit_addon(run_dir, max_steps=None) -> tuple[AddOnTask, dict]:
    task = AddOnTask()
    return task, fit(task, LOOP, run_dir, device=torch.device("cpu"), max_steps=max_steps, command="pytest",
                     progress=False)


def test_addon_task_trains_only_its_module_and_resumes_exactly(tmp_path) -> None:
    assert isinstance(AddOnTask(), TrainTask)
    frozen_before = {k: v.clone() for k, v in AddOnTask().frozen.state_dict().items()}
    task, whole = fit_addon(tmp_path / "whole")
    same_tree(frozen_before, task.frozen.state_dict())  # bit-identical: frozen stays frozen
    assert not torch.equal(task.trainable.weight, AddOnTask().trainable.weight)  # the add-on learned
    ck = load_torch(tmp_path / "whole" / "ckpt-0000004.pt")
    assert set(ck["model"]) == set(ck["ema"]) == {"weight", "bias"}  # only the trainable module is saved
    assert ck["config"]["name"] == "add-on" and ck["config"]["train"]["steps"] == 4
    export = torch.load(tmp_path / "whole" / "export" / "add-on.pt")
    same_tree(export["ema"], whole["ema"])
    assert export["meta"]["steps"] == 4 and export["meta"]["command"] == "pytest"

    _, first = fit_addon(tmp_path / "split", max_steps=2)
    assert first["step"] == 2 and first["export_dir"] is None
    second_task, second = fit_addon(tmp_path / "split")
    assert second["resumed_from"].endswith("ckpt-0000002.pt") and second["steps_run"] == 2
    b = load_torch(tmp_path / "split" / "ckpt-0000004.pt")
    for key in ("model", "ema", "optimizer", "rng", "data", "step", "config", "loss"):
        same_tree(ck[key], b[key], key)
    same_tree(frozen_before, second_task.frozen.state_dict())


# ----------------------------------------------------------------------------- faults


def tiny(**overrides) -> RunConfig:
    pairs = [("data.limit", 16), ("train.log_every", 1), ("train.ckpt_every", 100), ("train.steps", 2)]
    return apply_overrides(get_preset("test-tiny"), pairs + [(k.replace("__", "."), v) for k, v in overrides.items()])


def run(cfg: RunConfig, out_dir, max_steps=None) -> dict:
    return train(cfg, out_dir, max_steps, device="cpu", command="pytest", progress=False)


def test_torn_last_metrics_line_is_dropped_with_a_warning(tmp_path) -> None:
    cfg = tiny(train__steps=3)
    run(cfg, tmp_path, max_steps=2)
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "loss": 0.5, "l')  # killed while writing
    with pytest.warns(UserWarning, match=r"metrics\.jsonl: dropping a torn last line"):
        out = run(cfg, tmp_path)
    assert out["step"] == 3
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]


def test_corrupt_metrics_line_in_the_middle_is_named(tmp_path) -> None:
    cfg = tiny(train__steps=3)
    run(cfg, tmp_path, max_steps=2)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    (tmp_path / "metrics.jsonl").write_text("garbage\n" + "\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"metrics\.jsonl, line 1: not valid JSON"):
        run(cfg, tmp_path)


def test_second_trainer_on_a_run_folder_is_refused(tmp_path, capsys) -> None:
    with RunLock(tmp_path / "run"):
        assert (tmp_path / "run" / ".lock").read_text().split()[0] == str(os.getpid())
        with pytest.raises(RunLockedError, match=rf"run is in use by another trainer \(pid {os.getpid()} on host"):
            run(tiny(), tmp_path / "run")
        assert not (tmp_path / "run" / "metrics.jsonl").exists()  # the first trainer's files are untouched
        code = cli.main(["train", "--preset", "test-tiny", "--out-dir", str(tmp_path / "run"), "--device", "cpu",
                         "--no-progress"])
        err = capsys.readouterr().err
        assert code == 2 and f"pid {os.getpid()}" in err and str(tmp_path / "run") in err
        assert len(err.strip().splitlines()) == 1
    assert run(tiny(), tmp_path / "run")["step"] == 2  # released: the folder is usable again


def test_lock_is_exclusive_across_processes(tmp_path) -> None:
    """A lock held by another process (here: a child holding it) names that process's pid."""
    code = ("import sys, time; sys.path.insert(0, %r); from emigm.io.runs import RunLock; "
            "l = RunLock(%r).acquire(); print('locked', flush=True); time.sleep(60)") % (str(ROOT), str(tmp_path))
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError, match=f"pid {child.pid} "):
            RunLock(tmp_path).acquire()
    finally:
        child.kill()
        child.wait()
    RunLock(tmp_path).acquire().release()  # the kernel released the dead process's lock


@pytest.mark.parametrize("value", ["-1", "0"])
def test_non_positive_max_steps_is_refused(tmp_path, capsys, value: str) -> None:
    code = cli.main(["train", "--preset", "test-tiny", "--out-dir", str(tmp_path / "run"), "--max-steps", value,
                     "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and err.strip() == f"error: --max-steps must be >= 1, got {value}"
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="max_steps must be >= 1"):
        run(tiny(), tmp_path / "lib", max_steps=int(value))


def test_a_run_with_nothing_to_do_reports_no_nan(tmp_path, capsys) -> None:
    args = ["train", "--preset", "test-tiny", "--out-dir", str(tmp_path), "--device", "cpu", "--no-progress",
            "--data.limit", "16", "--train.steps", "2"]
    assert cli.main(args) == 0
    capsys.readouterr()
    assert cli.main(args) == 0  # finished already
    out = capsys.readouterr().out
    assert "nan" not in out and "already at step 2 of 2; nothing to train" in out


def test_out_dir_under_a_file_and_unwritable_folders(tmp_path, capsys, monkeypatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    code = cli.main(["train", "--preset", "test-tiny", "--out-dir", str(blocker / "run"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot use run folder" in err and "a file is in the way" in err
    assert str(blocker / "run") in err and len(err.strip().splitlines()) == 1

    import emigm.core.fileio as fileio

    def refuse(*args, **kwargs):  # a read-only mount (root ignores chmod, so simulate the kernel's answer)
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(fileio.tempfile, "mkstemp", refuse)
    code = cli.main(["train", "--preset", "test-tiny", "--out-dir", str(tmp_path / "ro"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "read-only or not writable" in err and str(tmp_path / "ro") in err


def _dev_full_mkstemp(real):
    """mkstemp whose descriptor writes to /dev/full: the kernel answers ENOSPC, as on a full disk."""
    def mkstemp(*args, **kwargs):
        fd, name = real(*args, **kwargs)
        os.close(fd)
        return os.open("/dev/full", os.O_WRONLY), name
    return mkstemp


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
def test_full_disk_says_disk_full(tmp_path, capsys, monkeypatch) -> None:
    import emigm.core.fileio as fileio
    import emigm.train.trainer as trainer

    real = fileio.tempfile.mkstemp
    with monkeypatch.context() as m:  # full before the start: refused before any work
        m.setattr(fileio.tempfile, "mkstemp", _dev_full_mkstemp(real))
        code = cli.main(["train", "--preset", "test-tiny", "--out-dir", str(tmp_path / "a"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and f"cannot use run folder {tmp_path / 'a'}: disk full" in err

    def save_on_a_full_disk(obj, path, **kw):  # full by the time of the first checkpoint
        with monkeypatch.context() as m:
            m.setattr(fileio.tempfile, "mkstemp", _dev_full_mkstemp(real))
            return fileio.torch_save(obj, path, **kw)

    monkeypatch.setattr(trainer, "torch_save", save_on_a_full_disk)
    with pytest.raises(WriteError, match=r"cannot write .*ckpt-0000002\.pt: disk full"):
        run(tiny(), tmp_path / "b")
    assert latest_checkpoint(tmp_path / "b") is None
    assert not [n for n in os.listdir(tmp_path / "b") if n.endswith(".tmp")]


# ----------------------------------------------------------------------------- resume compatibility


def test_resume_accepts_keys_added_later_at_their_default() -> None:
    defaults = to_dict(RunConfig())
    requested = to_dict(tiny())
    saved = json.loads(json.dumps(requested))
    del saved["backbone"]["attn_drop"], saved["data"]["cache_latents"]  # a run started before these existed
    check_resume_config(saved, requested, 1, "old.pt", defaults)
    assert config_diff(saved, requested, defaults) == {}
    changed = apply_overrides(tiny(), [("backbone.attn_drop", 0.1)])
    with pytest.raises(ValueError, match=r"backbone\.attn_drop: \(absent\) -> 0\.1"):
        check_resume_config(saved, to_dict(changed), 1, "old.pt", defaults)
    with pytest.raises(ValueError, match="attn_drop"):  # without defaults nothing is assumed
        check_resume_config(saved, requested, 1, "old.pt")


def test_old_checkpoint_without_new_keys_resumes(tmp_path) -> None:
    cfg = tiny(train__steps=3)
    run(cfg, tmp_path / "whole")
    run(cfg, tmp_path / "split", max_steps=2)
    path = tmp_path / "split" / "ckpt-0000002.pt"
    ck = load_torch(path)
    del ck["config"]["backbone"]["proj_drop"], ck["config"]["masking"]["shared_count"]
    torch_save(ck, path, checksum=True)  # an edited file: its hash recorded again
    doc = json.loads((tmp_path / "split" / "config.json").read_text())
    del doc["backbone"]["proj_drop"]
    (tmp_path / "split" / "config.json").write_text(json.dumps(doc))
    out = run(cfg, tmp_path / "split")
    assert out["resumed_from"].endswith("ckpt-0000002.pt") and out["step"] == 3
    a, b = (load_torch(tmp_path / d / "ckpt-0000003.pt") for d in ("whole", "split"))
    for key in ("model", "ema", "optimizer", "rng", "config"):
        same_tree(a[key], b[key], key)
    with pytest.raises(ValueError, match=r"masking\.shared_count"):  # a changed value is still refused
        run(apply_overrides(cfg, [("masking.shared_count", False), ("train.steps", 4)]), tmp_path / "split")
