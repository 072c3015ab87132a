"""Hostile input at the library's doors (issue 31), one test or more per class of the probe's findings:
1 files overwritten, 4 tracebacks, 5 hangs and late refusals, 6 unbounded memory, 7 silent wrong
results. The CLI's one-line refusals of the same inputs are in tests/test_bad_input.py (`write-*`
cases: class 1); the explorer's in tests/test_app.py."""
from __future__ import annotations

import gzip
import json
import os
import re
import signal
import struct
import tracemalloc
import zlib
from pathlib import Path

import pytest
import torch

from emigm.cli import main as cli
from emigm.core.config import apply_overrides
from emigm.core.fileio import ASSETS_DIR, CHECKSUMS_FILE, read_checksums, sha256_file, torch_save
from emigm.core.presets import get_preset
from emigm.core.statedict import CheckpointError, load_torch
from emigm.data.datasets import ImageFolderDataset, read_idx
from emigm.eval.evaluation import Classifier, classifier_outputs, frechet_distance
from emigm.io.exports import read_export, save_export
from emigm.io.loading import load_pipeline
from emigm.io.runs import check_output, export_checkpoint, read_training_checkpoint
from emigm.nn.model import MaskedGenerator
from emigm.train.generator import train
from emigm.train.smoother import smoother_run, train_smoother

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".ckpt", ".pth")


def tiny(**overrides):
    pairs = [("data.limit", 16), ("train.log_every", 1), ("train.ckpt_every", 1), ("train.steps", 2)]
    return apply_overrides(get_preset("test-tiny"), pairs + [(k.replace("__", "."), v) for k, v in overrides.items()])


def run(cfg, out_dir, max_steps=None) -> dict:
    return train(cfg, out_dir, max_steps, device="cpu", command="pytest", progress=False)


@pytest.fixture(scope="module")
def one_step(tmp_path_factory) -> Path:
    """A tiny run stopped at step 1 of 2 (checkpoint ckpt-0000001.pt)."""
    d = tmp_path_factory.mktemp("hostile") / "run"
    torch.set_num_threads(1)
    run(tiny(), d, max_steps=1)
    return d


def copy_run(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        if f.is_file():
            (dst / f.name).write_bytes(f.read_bytes())
    return dst


class Timeout:
    """Fail instead of hanging: SIGALRM after `seconds`."""

    def __init__(self, seconds: int) -> None:
        self.seconds = seconds

    def __enter__(self):
        def fire(*_):
            raise TimeoutError(f"still blocked after {self.seconds} s")

        self.old = signal.signal(signal.SIGALRM, fire)
        signal.alarm(self.seconds)

    def __exit__(self, *exc):
        signal.alarm(0)
        signal.signal(signal.SIGALRM, self.old)


# ----------------------------------------------------------------------------- 1: files overwritten


def test_no_output_file_lands_in_an_asset_a_run_or_an_export(one_step, tmp_path) -> None:
    for target, needle in ((ASSETS_DIR / "fmnist-emigm" / "config.json", "inside the shipped assets folder"),
                           (ASSETS_DIR / "results" / "claims.json", "inside the shipped assets folder"),
                           (one_step / "config.json", "inside a training run folder"),
                           (one_step / "metrics.jsonl", "inside a training run folder"),
                           (one_step / "ckpt-0000001.pt", "inside a training run folder")):
        before = target.read_bytes()
        with pytest.raises(ValueError, match=needle):
            check_output(target, "--trace", overwrite=True)
        assert target.read_bytes() == before
    mine = tmp_path / "mine.json"
    assert check_output(mine, "--trace") == mine  # a new file
    mine.write_text("{}")
    with pytest.raises(ValueError, match=r"--trace .*mine\.json already exists; add --overwrite"):
        check_output(mine, "--trace")
    assert check_output(mine, "--trace", overwrite=True) == mine


def test_an_export_replaces_an_earlier_export_only_when_told(one_step, tmp_path) -> None:
    out = tmp_path / "e"
    export_checkpoint(one_step, out)
    first = (out / "model.safetensors").read_bytes()
    with pytest.raises(ValueError, match=r"already holds an earlier output .*add --overwrite"):
        export_checkpoint(one_step, out)
    export_checkpoint(one_step, out, overwrite=True)
    assert (out / "model.safetensors").read_bytes() == first  # same checkpoint, same bytes
    assert read_checksums(out)["model.safetensors"] == sha256_file(out / "model.safetensors")
    user = tmp_path / "user"
    user.mkdir()
    (user / "config.json").write_text("{}")
    (user / "notes.txt").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(ValueError, match=r"holding files this command does not write \(notes\.txt\)"):
            export_checkpoint(one_step, user, overwrite=overwrite)
    assert (user / "config.json").read_text() == "{}"


# ----------------------------------------------------------------------------- 5 and 4: resume schema


def _damage(ck: dict, how: str) -> None:
    if how == "no optimizer":
        del ck["optimizer"]
    elif how == "data a string":
        ck["data"] = "epoch 0"
    elif how == "data index negative":
        ck["data"] = {"epoch": 0, "index": -5}
    elif how == "step -3":
        ck["step"] = -3
    elif how == "step a string":
        ck["step"] = "1"
    elif how == "rng a list":
        ck["rng"] = [1, 2]
    elif how == "rng states strings":
        ck["rng"]["train"] = ["x"]
    elif how == "elapsed nan":
        ck["elapsed"] = float("nan")
    elif how == "model a string":
        ck["model"] = "weights"
    elif how == "optimizer groups retyped":
        ck["optimizer"]["param_groups"] = {"params": 1}
    elif how == "adam moment of another shape":
        first = next(iter(ck["optimizer"]["state"]))
        ck["optimizer"]["state"][first]["exp_avg"] = torch.zeros(3, 3, 3)
    elif how == "no loss":
        del ck["loss"]


DAMAGES = ["no optimizer", "data a string", "data index negative", "step -3", "step a string", "rng a list",
           "rng states strings", "elapsed nan", "model a string", "optimizer groups retyped",
           "adam moment of another shape", "no loss"]
NEEDLES = {"no optimizer": "optimizer: expected", "data a string": "data: expected",
           "data index negative": "data: expected", "step -3": "step -3 is negative",
           "step a string": "step: expected an integer", "rng a list": "rng: expected",
           "rng states strings": "rng: expected", "elapsed nan": "elapsed: expected",
           "model a string": "model: expected a dict of tensors",
           "optimizer groups retyped": "optimizer: expected",
           "adam moment of another shape": "does not fit its parameter",
           "no loss": "loss: expected a number, missing"}


@pytest.mark.parametrize("how", DAMAGES)
def test_a_damaged_training_state_is_refused_on_resume_in_one_line(one_step, tmp_path, how, monkeypatch) -> None:
    d = copy_run(one_step, tmp_path / "run")
    path = d / "ckpt-0000001.pt"
    ck = load_torch(path)
    _damage(ck, how)
    torch_save(ck, path, checksum=True)  # a consistent file: its content is what is wrong
    built = []
    monkeypatch.setattr(ImageFolderDataset, "__init__", lambda *a, **k: built.append(1))
    with pytest.raises(CheckpointError) as e:
        run(tiny(), d)
    msg = str(e.value)
    assert "\n" not in msg and "ckpt-0000001.pt" in msg and NEEDLES[how] in msg, msg


def test_a_negative_step_is_refused_wherever_a_checkpoint_is_read(one_step, tmp_path) -> None:
    path = tmp_path / "neg.pt"
    ck = load_torch(one_step / "ckpt-0000001.pt")
    ck["step"] = -3
    torch.save(ck, path)
    with pytest.raises(CheckpointError, match="step -3 is negative"):
        read_training_checkpoint(path, ck)
    with pytest.raises(CheckpointError, match="step -3 is negative"):
        export_checkpoint(path, tmp_path / "e")
    assert not (tmp_path / "e" / "model.safetensors").exists()


def test_a_metrics_line_with_a_string_step_is_one_line(one_step, tmp_path) -> None:
    d = copy_run(one_step, tmp_path / "run")
    lines = (d / "metrics.jsonl").read_text().splitlines()
    rec = json.loads(lines[0])
    rec["step"] = "1"
    (d / "metrics.jsonl").write_text(json.dumps(rec) + "\n" + "\n".join(lines[1:]) + "\n" + json.dumps(rec) + "\n")
    with pytest.raises(ValueError, match=r"metrics\.jsonl, line 1: not a metrics record with a step >= 0"):
        run(tiny(), d)


# ----------------------------------------------------------------------------- 5: hangs and late refusals


def test_a_fifo_where_a_run_file_belongs_is_refused_not_waited_on(one_step, tmp_path) -> None:
    for i, name in enumerate(("metrics.jsonl", "config.json")):
        d = copy_run(one_step, tmp_path / f"run{i}")
        (d / name).unlink()
        os.mkfifo(d / name)
        with Timeout(120), pytest.raises(ValueError, match=r"is a named pipe \(fifo\), not a regular file"):
            run(tiny(), d)


def test_evaluate_checks_every_input_before_sampling(tmp_path, monkeypatch, capsys) -> None:
    import emigm.eval.scoring as scoring

    def no_sampling(*a, **k):
        raise AssertionError("sampled before checking its inputs")

    monkeypatch.setattr(scoring, "generate", no_sampling)
    base = ["evaluate", "--preset", "fmnist-emigm-mini", "--random-init", "--device", "cpu", "--num-samples", "8",
            "--batch-size", "8", "--steps", "2"]
    assert cli.main(base + ["--data.path", str(tmp_path / "nowhere")]) == 2
    assert "Fashion-MNIST test files" in capsys.readouterr().err
    half = tmp_path / "half"
    half.mkdir()
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (half / name).write_bytes(Path("/usr/share/datasets/fashion-mnist", name).read_bytes())
    assert cli.main(base + ["--data.path", str(half)]) == 2  # the floor's training split is missing
    assert "Fashion-MNIST train files" in capsys.readouterr().err


# ----------------------------------------------------------------------------- 6: unbounded memory


def _idx_header(shape) -> bytes:
    return struct.pack(">BBBB", 0, 0, 0x08, len(shape)) + b"".join(struct.pack(">I", d) for d in shape)


def test_an_inflating_idx_file_is_refused_from_its_header(tmp_path) -> None:
    bomb = tmp_path / "bomb.gz"  # declares 60000 x 28 x 28, inflates to 1 GiB of zeros (1 MB on disk)
    with gzip.open(bomb, "wb", compresslevel=9) as f:
        f.write(_idx_header((60000, 28, 28)))
        for _ in range(64):
            f.write(bytes(16 << 20))
    big = tmp_path / "big.gz"  # declares 2 GiB
    with gzip.open(big, "wb") as f:
        f.write(_idx_header((2 << 30,)))
    sneaky = tmp_path / "sneaky.gz"  # a second gzip member, so the trailer's size matches the header
    payload = _idx_header((1000,)) + bytes(1000)
    with open(sneaky, "wb") as f:
        f.write(gzip.compress(payload[:-4]) + gzip.compress(bytes(4 + (64 << 20))))
    body = gzip.compress(payload)
    sneaky.write_bytes(sneaky.read_bytes()[:-4] + body[-4:])  # the last trailer says: as declared
    tracemalloc.start()
    try:
        for path, needle in ((bomb, "refused before inflating it"), (big, "refused before reading the data"),
                             (sneaky, "has trailing bytes|cannot decompress")):
            tracemalloc.reset_peak()
            with pytest.raises(ValueError, match=needle):
                read_idx(path, max_bytes=1 << 30)
            peak = tracemalloc.get_traced_memory()[1]
            assert peak < 8 << 20, (path.name, peak)  # at most the declared size, never the inflated one
    finally:
        tracemalloc.stop()
    good = tmp_path / "good.gz"
    good.write_bytes(gzip.compress(_idx_header((3, 2)) + bytes(range(6))))
    assert read_idx(good).tolist() == [[0, 1], [2, 3], [4, 5]]


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height (1-bit grey), with one tiny data chunk."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 8)) + chunk(b"IEND", b"")


def test_a_huge_image_in_an_image_folder_is_refused_before_decoding(tmp_path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "huge.png").write_bytes(_png_header(10000, 10000))  # over our bound, under PIL's refusal
    (tmp_path / "a" / "huger.png").write_bytes(_png_header(60000, 60000))  # PIL refuses it when opening
    (tmp_path / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    ds = ImageFolderDataset(str(tmp_path), 8)
    names = [Path(p).name for p, _ in ds.samples]
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"huge\.png is 10000 x 10000 pixels, .*refused before decoding"):
            ds[names.index("huge.png")]
        with pytest.raises(ValueError, match=r"huger\.png has more than 89478485 pixels .*refused before decoding"):
            ds[names.index("huger.png")]
        assert tracemalloc.get_traced_memory()[1] < 8 << 20
    finally:
        tracemalloc.stop()
    with pytest.raises(ValueError, match=r"broken\.png cannot be read"):
        ds[names.index("broken.png")]


# ----------------------------------------------------------------------------- 7: silent wrong results


def test_a_weight_file_with_flipped_bytes_is_refused(tmp_path) -> None:
    cfg = get_preset("test-tiny")
    save_export(MaskedGenerator(cfg), cfg, tmp_path / "e")
    weights = tmp_path / "e" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    for i in range(64):  # 64 bytes flipped in the tensor data (the header stays valid)
        data[-1 - 7 * i] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.safetensors is damaged: its sha256 .* differs from the"):
        read_export(tmp_path / "e")


def test_a_damaged_run_checkpoint_is_refused(one_step, tmp_path) -> None:
    d = copy_run(one_step, tmp_path / "run")
    path = d / "ckpt-0000001.pt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit, somewhere in the tensors
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"ckpt-0000001\.pt is damaged"):
        run(tiny(), d)


def test_every_shipped_weight_file_has_its_recorded_sha256() -> None:
    """Every folder of assets/ that holds weights records their sha256 (checksums.json), and they match:
    the rule for every asset shipped, now and later."""
    folders = {f.parent for f in ASSETS_DIR.rglob("*") if f.is_file() and f.suffix in WEIGHT_SUFFIXES}
    assert len(folders) >= 9
    for folder in sorted(folders):
        recorded = read_checksums(folder)
        weights = sorted(f.name for f in folder.iterdir() if f.is_file() and f.suffix in WEIGHT_SUFFIXES)
        assert (folder / CHECKSUMS_FILE).is_file() and sorted(recorded) == weights, folder
        for name in weights:
            assert sha256_file(folder / name) == recorded[name], folder / name


@pytest.mark.slow
def test_train_sg_is_bit_identical_across_repeats_and_resume(tmp_path) -> None:
    """Two runs of the same command, and one stopped at every step and resumed, end with the same
    module, bit for bit (its initial weights came from the global RNG: repeats differed at step 1)."""
    torch.set_num_threads(1)
    pipe = load_pipeline("fmnist-maskgit", "cpu")
    base = smoother_run(pipe)
    run_cfg = apply_overrides(base, [("train.steps", 3), ("train.batch_size", 4), ("train.warmup_steps", 1),
                                     ("train.log_every", 1), ("train.ckpt_every", 1)])
    outs = [train_smoother(pipe, run_cfg, tmp_path / f"r{i}", device=torch.device("cpu"), progress=False)
            for i in range(2)]
    for step in (1, 2, None):
        last = train_smoother(pipe, run_cfg, tmp_path / "resumed", device=torch.device("cpu"), max_steps=step,
                              progress=False)
    metrics = [(tmp_path / d / "metrics.jsonl").read_text().splitlines() for d in ("r0", "r1", "resumed")]
    strip = [[{k: v for k, v in json.loads(x).items() if k not in ("images_per_s", "elapsed")} for x in m]
             for m in metrics]
    assert strip[0] == strip[1] == strip[2]
    for out in (outs[1], last):
        for k, v in outs[0]["ema"].items():
            assert torch.equal(v, out["ema"][k]), k


# ----------------------------------------------------------------------------- 4: tracebacks


def test_non_finite_classifier_features_are_one_line_not_linalg_error() -> None:
    feats = torch.randn(50, 8, generator=torch.Generator().manual_seed(0))
    feats[3, 2] = float("nan")
    with pytest.raises(ValueError, match="features hold NaN or infinite values"):
        frechet_distance(feats, torch.randn(50, 8))
    clf = Classifier().eval()
    with torch.no_grad():
        clf.proj.weight.fill_(float("inf"))  # as a classifier whose weights overflow on these images
    with pytest.raises(ValueError, match=r"classifier's features are NaN or infinite for 4 of 4 images"):
        classifier_outputs(clf, torch.zeros(4, 1, 28, 28))


def test_a_smoother_record_with_a_retyped_base_is_one_line(tmp_path) -> None:
    from emigm.nn.smoother import read_smoother

    folder, cfg, _, state = read_export("fmnist-maskgit")
    module = tmp_path / "self-guidance"
    module.mkdir()
    for name in ("model.safetensors", "config.json", CHECKSUMS_FILE):
        (module / name).write_bytes((folder / "self-guidance" / name).read_bytes())
    doc = json.loads((module / "config.json").read_text())
    for bad, needle in ((5, "base.tokenizer: expected an object, got int"),
                        ([1], "base.tokenizer: expected an object, got list"),
                        ({"kind": [1]}, "was trained on a base with tokenizer.kind [1]")):
        doc["base"]["tokenizer"] = bad
        (module / "config.json").write_text(json.dumps(doc))
        with pytest.raises(CheckpointError, match=re.escape(needle)):
            read_smoother(module, cfg, state)


@pytest.mark.slow
def test_train_sg_resumes_a_run_begun_before_a_base_config_field_existed(tmp_path) -> None:
    """The base's run config is recorded in a self-guidance run's config (base.config): a field added to
    RunConfig since the run began resumes at its default, as for the generator's own config."""
    torch.set_num_threads(1)
    pipe = load_pipeline("fmnist-maskgit", "cpu")
    run_cfg = apply_overrides(smoother_run(pipe), [("train.steps", 2), ("train.batch_size", 4),
                                                   ("train.warmup_steps", 1), ("train.ckpt_every", 1)])
    d = tmp_path / "sg"
    train_smoother(pipe, run_cfg, d, device=torch.device("cpu"), max_steps=1, progress=False)
    path = d / "ckpt-0000001.pt"
    ck = load_torch(path)
    del ck["config"]["base"]["config"]["train"]["sample_every"]  # as written before the field existed
    torch_save(ck, path, checksum=True)
    doc = json.loads((d / "config.json").read_text())
    del doc["base"]["config"]["train"]["sample_every"]
    (d / "config.json").write_text(json.dumps(doc))
    out = train_smoother(pipe, run_cfg, d, device=torch.device("cpu"), progress=False)
    assert out["step"] == 2 and out["resumed_from"].endswith("ckpt-0000001.pt")
