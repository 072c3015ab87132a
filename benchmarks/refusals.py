"""What each refusal of issue 23's and issue 31's hostile probes costs: wall time and peak memory of the refused
command, each run as a fresh process, and that it is one line with exit code 2.

Every case is a real command line (`python -m emigm ...`, or for the explorer's permalink a short
Python call) on files built here in a temporary folder: a run folder (config.json, metrics, lock and
a checkpoint of random weights; nothing is trained), exports with finite but huge weights, copies of
the shipped fmnist-maskgit whose self-guidance module does not belong to its base, a 1.0 MB `.pth`
whose zip records inflate to 1 GiB, outputs that are a fifo or a read-only file, a run config.json
edited by hand; and for issue 31 (items 31.N: its classes) outputs aimed at shipped and run files,
damaged training states, a fifo metrics log, a gzip IDX file inflating to 2 GiB, a PNG declaring
60000 x 60000 pixels, an export with 64 flipped bytes, a classifier whose features overflow. Peak memory is the child's maximum resident set (`resource.getrusage(RUSAGE_CHILDREN)
.ru_maxrss`, read by a small wrapper process whose only child is the case).

    python benchmarks/refusals.py [--only SUBSTRING] [--bomb-mib 1024] [--keep DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from emigm.core.config import TokenizerConfig, apply_overrides, to_dict  # noqa: E402
from emigm.core.fileio import ASSETS_DIR  # noqa: E402
from emigm.core.presets import get_preset  # noqa: E402
from emigm.io.exports import save_export  # noqa: E402
from emigm.nn.model import MaskedGenerator  # noqa: E402

# runs `argv` as its only child and reports the child's time, peak RSS, exit code and output
WRAPPER = ("import json, resource, subprocess, sys, time\n"
           "t = time.perf_counter()\n"
           "r = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
           "print(json.dumps({'s': time.perf_counter() - t, 'kib': resource.getrusage(resource.RUSAGE_CHILDREN)"
           ".ru_maxrss, 'rc': r.returncode, 'err': r.stderr, 'out': r.stdout}))\n")
TINY = [("data.limit", 16), ("train.steps", 2), ("train.ckpt_every", 1), ("train.log_every", 1)]
PY = sys.executable


def inflating_checkpoint(path: Path, mib: int, scratch: Path) -> None:
    """A torch checkpoint of one `mib` MiB zero tensor with its zip records re-packed by deflate: about
    mib / 1000 MiB on disk. Streamed through a scratch file: never `mib` MiB in memory."""
    plain = scratch / "plain.pt"
    torch.save({"w": torch.zeros(mib << 18)}, plain)
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            with src.open(info) as r, dst.open(info.filename, "w", force_zip64=True) as w:
                shutil.copyfileobj(r, w, 1 << 20)
    plain.unlink()


def fake_run(folder: Path) -> None:
    """A run folder as the trainer leaves it (config.json, metrics, lock, one checkpoint) holding random
    weights: the refusals below never read past the folder's kind or config.json."""
    cfg = apply_overrides(get_preset("test-tiny"), TINY)
    folder.mkdir(parents=True)
    state = MaskedGenerator(cfg).state_dict()
    (folder / "config.json").write_text(json.dumps(to_dict(cfg), indent=2, sort_keys=True) + "\n")
    (folder / "metrics.jsonl").write_text(json.dumps({"step": 2, "loss": 1.0}) + "\n")
    (folder / ".lock").write_text("")
    torch.save({"format": "emigm-train-state", "version": 1, "step": 2, "config": to_dict(cfg), "model": state,
                "ema": state, "optimizer": {}, "scaler": None, "data": {"epoch": 0, "index": 0}, "elapsed": 0.0,
                "loss": 1.0, "rng": {}}, folder / "ckpt-0000002.pt")


def build_files(tmp: Path, bomb_mib: int) -> dict[str, str]:
    f: dict[str, str] = {"tmp": str(tmp)}
    torch.manual_seed(0)
    fake_run(tmp / "run")
    f["run"] = str(tmp / "run")
    for name, edit in (("run_nan", lambda t: t.replace('"blr": 0.001', '"blr": NaN')),
                       ("run_garbage", lambda t: "{garbage")):
        shutil.copytree(tmp / "run", tmp / name)
        cfg_file = tmp / name / "config.json"
        cfg_file.write_text(edit(cfg_file.read_text()))
        f[name] = str(tmp / name)
    cfg = get_preset("test-tiny")
    model = MaskedGenerator(cfg)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["z_proj.weight"].fill_(3e38)
    save_export(model, cfg, tmp / "huge_weights", state=state)
    save_export(model, cfg, tmp / "string_width")
    doc = json.loads((tmp / "string_width" / "config.json").read_text())
    doc["config"]["backbone"]["width"] = "32"
    (tmp / "string_width" / "config.json").write_text(json.dumps(doc))
    # copies of the shipped MaskGIT model whose self-guidance module is not its base's
    base = ASSETS_DIR / "fmnist-maskgit"
    for name in ("sg_other", "sg_zeros", "sg_file", "sg_loop"):
        shutil.copytree(base, tmp / name, ignore=shutil.ignore_patterns("self-guidance") if name in
                        ("sg_file", "sg_loop") else None)
        f[name] = str(tmp / name)
    weights = load_file(str(tmp / "sg_other" / "model.safetensors"))
    key = sorted(weights)[0]
    weights[key] = weights[key] + 0.5
    save_file(weights, str(tmp / "sg_other" / "model.safetensors"))
    sg_cfg = tmp / "sg_zeros" / "self-guidance" / "config.json"
    doc = json.loads(sg_cfg.read_text())
    doc["base"]["fingerprint"] = "0" * 16
    sg_cfg.write_text(json.dumps(doc))
    (tmp / "sg_file" / "self-guidance").write_text("not a folder")
    os.symlink(tmp / "sg_loop" / "self-guidance", tmp / "sg_loop" / "self-guidance")
    # a compressed 1 GiB storage in a 1 MB file, and a small official-layout checkpoint for --vae
    inflating_checkpoint(tmp / "bomb.pth", bomb_mib, tmp)
    base_cfg = get_preset("in256-b")
    official = replace(base_cfg, tokenizer=TokenizerConfig(kind="kl16", image_size=256, channels=3, latent_channels=16,
                                                           stride=16, path="kl16.ckpt"),
                       backbone=replace(base_cfg.backbone, width=64, decoder_width=64, encoder_depth=1,
                                        decoder_depth=1, num_heads=1, decoder_num_heads=1, buffer_size=8,
                                        num_classes=7),
                       head=replace(base_cfg.head, width=32, depth=1))
    torch.save(MaskedGenerator(official).state_dict(), tmp / "official.pth")
    (tmp / "raw.pt").write_bytes(pickle.dumps({"a": 1}, protocol=4))
    os.mkfifo(tmp / "fifo.png")
    (tmp / "readonly.png").write_bytes(b"old picture")
    os.chmod(tmp / "readonly.png", 0o444)
    f["bomb_mb"] = f"{(tmp / 'bomb.pth').stat().st_size / 1e6:.1f}"
    build_issue31(tmp, f)
    return f


def _idx_header(shape) -> bytes:
    import struct
    return struct.pack(">BBBB", 0, 0, 0x08, len(shape)) + b"".join(struct.pack(">I", d) for d in shape)


def build_issue31(tmp: Path, f: dict[str, str]) -> None:
    """The files of issue 31's refusals (see the module docstring)."""
    import gzip
    import struct
    import zlib

    from emigm.core.fileio import torch_save
    from emigm.eval.evaluation import Classifier, save_classifier

    cfg = get_preset("test-tiny")
    save_export(MaskedGenerator(cfg), cfg, tmp / "an_export")
    (tmp / "userdir").mkdir()
    (tmp / "userdir" / "config.json").write_text("{}")
    (tmp / "userdir" / "notes.txt").write_text("mine")
    (tmp / "userdir" / "old.png").write_bytes(b"an earlier picture")
    save_export(MaskedGenerator(cfg), cfg, tmp / "flipped")
    weights = tmp / "flipped" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    for i in range(64):
        data[-1 - 7 * i] ^= 0xFF
    weights.write_bytes(bytes(data))
    # damaged training states in copies of the run (written with their sha256, so the content is what is wrong)
    ck = torch.load(tmp / "run" / "ckpt-0000002.pt", weights_only=True)
    ck.update(optimizer={"state": {}, "param_groups": [{"params": []}]},
              rng={"world_size": 1, "device": "cpu", "train": [torch.Generator().get_state()]})
    for name, edit in (("run_neg", lambda c: c.update(step=-3)), ("run_nokey", lambda c: c.pop("data")),
                       ("run_fifo", lambda c: None)):
        shutil.copytree(tmp / "run", tmp / name)
        c = dict(ck)
        edit(c)
        torch_save(c, tmp / name / "ckpt-0000002.pt", checksum=True)
        f[name] = str(tmp / name)
    os.unlink(tmp / "run_fifo" / "ckpt-0000002.pt")  # a run stopped before its first checkpoint: its metrics next
    os.unlink(tmp / "run_fifo" / "metrics.jsonl")
    os.mkfifo(tmp / "run_fifo" / "metrics.jsonl")
    neg = dict(ck, step=-3)
    torch.save(neg, tmp / "neg.pt")
    # Fashion-MNIST files whose images inflate to 2 GiB from about 2 MB
    (tmp / "idx_bomb").mkdir()
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    with open(tmp / "idx_bomb" / "train-images-idx3-ubyte.gz", "wb") as out:
        out.write(z.compress(_idx_header((60000, 28, 28))))
        block = bytes(16 << 20)
        for _ in range(128):
            out.write(z.compress(block))
        out.write(z.flush())
    (tmp / "idx_bomb" / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx_header((60000,)) + bytes(60000)))
    f["idx_mb"] = f"{(tmp / 'idx_bomb' / 'train-images-idx3-ubyte.gz').stat().st_size / 1e6:.1f}"

    # an image folder with a PNG whose header declares 60000 x 60000 pixels
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    (tmp / "images" / "a").mkdir(parents=True)
    for i in range(8):  # a batch of ordinary images beside it, so the folder makes a batch
        (tmp / "images" / "a" / f"ok{i}.png").write_bytes(
            b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(bytes(9 * 8))) + chunk(b"IEND", b""))
    (tmp / "images" / "a" / "huge.png").write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 60000, 60000, 1, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(bytes(8))) + chunk(b"IEND", b""))
    # a classifier with finite, bounded weights whose features overflow (conv weights 1e4, zero variances)
    clf = Classifier()
    with torch.no_grad():
        for name, t in clf.state_dict().items():
            if name.endswith("running_var"):
                t.zero_()
            elif t.is_floating_point() and t.dim() > 1:
                t.fill_(1e4)
    save_classifier(clf, tmp / "clf_overflow")


def cases(f: dict[str, str], bomb_mib: int) -> list[tuple[int, str, list[str]]]:
    """(issue item, what, argv) for every refusal of the probe."""
    t = f["tmp"]
    tiny = [PY, "-m", "emigm", "sample", "--preset", "test-tiny", "--random-init", "--device", "cpu"]
    out = ["--out", f"{t}/out.png"]
    dry = [PY, "-m", "emigm", "train", "--preset", "test-tiny", "--dry-run"]
    resume = [PY, "-m", "emigm", "train", "--preset", "test-tiny", "--device", "cpu", "--no-progress",
              *[x for k, v in TINY for x in (f"--{k}", str(v))], "--out-dir"]

    def sample(path: str, *extra: str) -> list[str]:
        return [PY, "-m", "emigm", "sample", "--checkpoint", path, "--device", "cpu", *extra, *out]

    size = f"{bomb_mib // 1024} GiB" if bomb_mib >= 1024 else f"{bomb_mib} MiB"
    return [
        (1, "export RUN --out RUN", [PY, "-m", "emigm", "export", f["run"], "--out", f["run"]]),
        (2, "export with a weight of 3e38", sample(f"{t}/huge_weights")),
        (3, "self-guidance module, one base tensor +0.5", sample(f["sg_other"])),
        (3, "self-guidance module, fingerprint zeros", sample(f["sg_zeros"])),
        (4, f"{f['bomb_mb']} MB .pth inflating to {size} (sample)", sample(f"{t}/bomb.pth")),
        (4, "... the same file given to export", [PY, "-m", "emigm", "export", f"{t}/bomb.pth", "--out", f"{t}/e"]),
        (4, "... the same file given as --vae", sample(f"{t}/official.pth", "--vae", f"{t}/bomb.pth")),
        (5, "942M in256-h --random-init, no kl16 file", [PY, "-m", "emigm", "sample", "--preset", "in256-h",
                                                          "--random-init", "--device", "cpu", *out]),
        (6, "--out a read-only file", tiny + ["--out", f"{t}/readonly.png"]),
        (6, "--out a fifo", tiny + ["--out", f"{t}/fifo.png"]),
        (7, "--data.image_size 7 (tokenizer: 8)", dry + ["--data.image_size", "7"]),
        (7, "--backbone.encoder_depth 0", dry + ["--backbone.encoder_depth", "0"]),
        (7, "--train.warmup_steps 1000 with 20 steps", dry + ["--train.warmup_steps", "1000", "--train.steps", "20"]),
        (8, "resume: config.json with \"blr\": NaN", resume + [f["run_nan"]]),
        (8, "resume: config.json is {garbage", resume + [f["run_garbage"]]),
        (9, "--class ²", tiny + ["--class", "²"] + out),
        (9, "--class ３ (fullwidth)", tiny + ["--class", "３"] + out),
        (9, "export config \"width\": \"32\"", sample(f"{t}/string_width")),
        (9, "self-guidance entry is a file", sample(f["sg_file"])),
        (9, "self-guidance entry is a symlink loop", sample(f["sg_loop"])),
        (9, "raw-pickle .pt", sample(f"{t}/raw.pt")),
        (10, "permalink seed=-1 (the app's message)",
         [PY, "-c", "import sys; from app import permalink; v, p = permalink.decode({'seed': '-1'}, ['m'], "
                    "lambda m: ['a']); print(p[0], file=sys.stderr); sys.exit(2 if p else 0)"]),
        (10, "sample --seed -1 (the CLI's message)", tiny + ["--seed", "-1"] + out),
        ("31.1", "sample --trace assets/fmnist-emigm/config.json --overwrite",
         tiny + out + ["--overwrite", "--trace", str(ASSETS_DIR / "fmnist-emigm" / "config.json")]),
        ("31.1", "sample --trace RUN/metrics.jsonl --overwrite", tiny + out + ["--overwrite", "--trace",
                                                                              f"{f['run']}/metrics.jsonl"]),
        ("31.1", "sample --out an existing file (no --overwrite)", tiny + ["--out", f"{t}/userdir/old.png"]),
        ("31.1", "export RUN --out an existing export", [PY, "-m", "emigm", "export", f["run"], "--out",
                                                         f"{t}/an_export"]),
        ("31.1", "export RUN --out a user's folder --overwrite", [PY, "-m", "emigm", "export", f["run"], "--out",
                                                                  f"{t}/userdir", "--overwrite"]),
        ("31.4", "evaluate, classifier features overflow", [PY, "-m", "emigm", "evaluate", "--checkpoint",
                                                            "fmnist-emigm-mini", "--device", "cpu", "--classifier",
                                                            f"{t}/clf_overflow", "--num-samples", "800"]),
        ("31.5", "resume: checkpoint without 'data'", resume + [f["run_nokey"]]),
        ("31.5", "resume: metrics.jsonl is a fifo", resume + [f["run_fifo"]]),
        ("31.5", "evaluate --data.path missing (800 samples)", [PY, "-m", "emigm", "evaluate", "--checkpoint",
                                                                "fmnist-emigm-mini", "--device", "cpu", "--data.path",
                                                                f"{t}/nowhere", "--num-samples", "800"]),
        ("31.6", f"IDX {f['idx_mb']} MB gzip inflating to 2 GiB (train)",
         resume[:-1] + ["--data.name", "fashion-mnist", "--data.path", f"{t}/idx_bomb", "--out-dir", f"{t}/r1"]),
        ("31.6", "image folder: PNG of 60000 x 60000 (train)",
         resume[:-1] + ["--data.name", "imagefolder", "--data.path", f"{t}/images", "--out-dir", f"{t}/r2"]),
        ("31.7", "export with 64 flipped bytes", sample(f"{t}/flipped")),
        ("31.7", "checkpoint with step -3 (sample)", sample(f"{t}/neg.pt")),
        ("31.7", "resume: checkpoint with step -3", resume + [f["run_neg"]]),
    ]


def measure(argv: list[str]) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    r = subprocess.run([PY, "-c", WRAPPER, *argv], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    return json.loads(r.stdout)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default="", help="run the cases whose description contains this (or one of these, "
                                               "comma-separated)")
    p.add_argument("--bomb-mib", type=int, default=1024, help="what the inflating checkpoint inflates to")
    p.add_argument("--keep", default="", help="build the files in this folder and keep them")
    a = p.parse_args()
    tmp = Path(a.keep or tempfile.mkdtemp(prefix="refusals-"))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        files = build_files(tmp, a.bomb_mib)
        rows, worst = [], {"s": 0.0, "mb": 0.0}
        print("| item | case | exit | one line | wall s | peak RSS MB | message |")
        print("|---|---|---|---|---|---|---|")
        for item, what, argv in cases(files, a.bomb_mib):
            if a.only and not any(x in what for x in a.only.split(",")):
                continue
            r = measure(argv)
            lines = r["err"].strip().splitlines()
            one = len(lines) == 1 and not r["out"].strip()
            mb = r["kib"] / 1024
            msg = (lines[0] if lines else "").replace(str(tmp), "TMP").replace(str(ROOT) + "/", "")
            msg = msg if len(msg) <= 110 else msg[:107] + "..."
            print(f"| {item} | {what} | {r['rc']} | {'yes' if one else 'NO'} | {r['s']:.2f} | {mb:.0f} | "
                  f"`{msg.replace('|', '/')}` |", flush=True)
            rows.append((item, what, r["rc"], one, r["s"], mb))
            worst = {"s": max(worst["s"], r["s"]), "mb": max(worst["mb"], mb)}
        base = {what: measure([PY, "-c", code])["kib"] / 1024 for what, code in
                (("torch", "import torch"), ("the CLI", "import emigm.cli.main"), ("the app", "import app.permalink"))}
        print("\nbaselines (importing, no work): " + ", ".join(f"{k} {v:.0f} MB" for k, v in base.items()))
        bad = [w for _, w, rc, one, _, _ in rows if rc != 2 or not one]
        print(f"{len(rows)} refusals: {len(rows) - len(bad)} one line with exit 2; slowest {worst['s']:.2f} s; "
              f"highest peak RSS {worst['mb']:.0f} MB (torch {torch.__version__}, {os.cpu_count()} CPUs)")
        if bad:
            print("not refused as one line with exit 2: " + "; ".join(bad))
        return 1 if bad else 0
    finally:
        if not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
