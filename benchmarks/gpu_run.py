"""The one prepared GPU run: every GPU check, benchmark and training of the project in one command that
ends within its time budget and leaves at most 8 files of at most 15 MiB in one folder.

    OUT=/path/to/out python3 benchmarks/gpu_run.py                 # on the GPU machine (benchmarks/README.md)
    OUT=/tmp/out python3 benchmarks/gpu_run.py --smoke --data DIR   # the same script on the CPU, tiny sizes

Phases (each a subprocess with its own time limit; a failed phase is reported and the run goes on):
1. `pytest -m gpu tests/test_gpu.py`: CUDA sampler = CPU sampler, a bf16 CUDA training run, the fast path;
2. benchmarks/gpu_sampler.py: in256-b and in256-l with random weights, plain / fast / graphs;
3. training throughput: in256-b in bf16 at batch 64 (synthetic latents) and each Fashion-MNIST GPU preset;
4. the Fashion-MNIST GPU presets trained concurrently on the one GPU (train.steps sized from the measured
   throughput to end before the deadline; a run still going at the deadline is stopped and exported from
   its newest checkpoint), then the self-guidance smoother of the MaskGIT model on its export;
5. packing: the exports in fp32 if they fit the transport budget, else in bf16 (unpack_gpu_run.py makes
   fp32 exports again), a tar.gz split into parts; summary.md, results.json and the full log beside them.
The summary printed last can be pasted into the README.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PART_BYTES = 15 * 2**20  # each file that comes back: at most 16 MiB; keep a margin
MAX_FILES = 8
MODELS_BUDGET = 52 * 2**20  # packed models: the 64 MiB that come back, less the summary and the log
FMNIST_PRESETS = ("fmnist-emigm-gpu", "fmnist-emigm-fakecfg-gpu", "fmnist-maskgit-gpu")
SG_BASE = "fmnist-maskgit-gpu"
FMNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")
# Tiny networks for --smoke: the same code paths on the CPU in seconds.
TINY = [("backbone.width", "32"), ("backbone.decoder_width", "32"), ("backbone.encoder_depth", "1"),
        ("backbone.decoder_depth", "1"), ("backbone.num_heads", "2"), ("backbone.decoder_num_heads", "2"),
        ("head.width", "32"), ("head.depth", "1")]


class Log:
    """Everything to log.txt; progress lines also to stdout."""

    def __init__(self, path: Path, t0: float) -> None:
        self.file, self.t0 = open(path, "a"), t0

    def __call__(self, msg: str, echo: bool = True) -> None:
        line = f"[{time.monotonic() - self.t0:6.1f}s] {msg}"
        self.file.write(line + "\n")
        self.file.flush()
        if echo:
            print(line, flush=True)

    def block(self, text: str) -> None:
        self.file.write(text if text.endswith("\n") else text + "\n")
        self.file.flush()


def _env(threads: int = 4) -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}


def run_phase(name: str, cmd: list[str], timeout: float, log: Log) -> tuple[int, str]:
    """Run one phase; its output goes to the log. Returns (exit code, output); 124 on timeout."""
    log(f"{name}: {' '.join(cmd)} (limit {timeout:.0f} s)")
    t = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=max(1.0, timeout))
        code, out = proc.returncode, proc.stdout
    except subprocess.TimeoutExpired as e:
        code, out = 124, (e.stdout.decode() if isinstance(e.stdout, bytes) else e.stdout or "") + "\n(time limit)"
    log.block(out)
    log(f"{name}: exit {code} after {time.monotonic() - t:.0f} s")
    return code, out


# ----------------------------------------------------------------------------- phase 4: training


def plan_steps(rate: float, batch: int, seconds: float, share: int, smoke: bool) -> int:
    """Optimiser steps that fit `seconds` when `share` runs split the GPU, from a measured rate (img/s
    alone), with a 25 % margin for start-up, checkpoints and contention."""
    if smoke:
        return 4
    return max(50, int(0.75 * seconds * rate / batch / share))


def train_cmd(preset: str, run_dir: Path, steps: int, device: str, data: str, smoke: bool) -> list[str]:
    over = [("train.steps", steps), ("train.warmup_steps", min(400, max(1, steps // 10))),
            ("train.ckpt_every", max(1, steps // 8)), ("train.log_every", max(1, min(100, steps // 20))),
            ("data.path", data)]
    if smoke:
        over += TINY + [("train.batch_size", "16"), ("data.limit", "128")]
    args = [a for k, v in over for a in (f"--{k}", str(v))]
    return [sys.executable, "-m", "emigm", "train", "--preset", preset, "--device", device, "--out-dir",
            str(run_dir), "--no-progress", *args]


def sg_cmd(base_export: Path, run_dir: Path, steps: int, device: str, smoke: bool) -> list[str]:
    over = [("train.steps", steps), ("train.warmup_steps", min(100, max(1, steps // 10))),
            ("train.ckpt_every", max(1, steps // 8)), ("train.log_every", max(1, min(100, steps // 20)))]
    over += [("train.batch_size", 16 if smoke else 256), ("train.precision", "fp32" if smoke else "bf16")]
    args = [a for k, v in over for a in (f"--{k}", str(v))]
    return [sys.executable, "-m", "emigm", "train-sg", "--base", str(base_export), "--device", device,
            "--out-dir", str(run_dir), "--no-progress", *args]


def export_sg_checkpoint(run_dir: Path, out: Path) -> Path:
    """The self-guidance smoother's export from its newest checkpoint (a run stopped before its end)."""
    from emigm.core.config import from_dict
    from emigm.io.runs import latest_checkpoint
    from emigm.nn.smoother import Smoother, SmootherConfig, save_smoother

    found = latest_checkpoint(run_dir)
    if found is None:
        raise FileNotFoundError(f"no checkpoint in {run_dir}")
    path, ck = found
    conf = ck["config"]
    smoother = Smoother(from_dict(SmootherConfig, conf["smoother"]))
    base = {**conf["base"]["config"], "label": conf["base"]["label"], "fingerprint": conf["base"]["fingerprint"]}
    return save_smoother(smoother, out, base, meta={"steps": ck["step"], "exported_from": path.name},
                         state=ck["ema"])


def train_models(args, runs: Path, rates: dict, deadline: float, log: Log) -> dict:
    """Phase 4: the Fashion-MNIST GPU presets concurrently, then self-guidance on the MaskGIT export."""
    from emigm.core.presets import get_preset

    window = deadline - time.monotonic()
    log(f"training: {window:.0f} s for {', '.join(FMNIST_PRESETS)} (+ self-guidance on {SG_BASE})")
    procs, info = {}, {}
    for preset in FMNIST_PRESETS:
        batch = 16 if args.smoke else get_preset(preset).train.batch_size
        share = len(FMNIST_PRESETS)
        seconds = window * (0.5 if preset == SG_BASE else 1.0) - 30
        steps = plan_steps(rates.get(preset, 1500.0), batch, seconds, share, args.smoke)
        run_dir = runs / preset
        log(f"training {preset}: {steps} steps of {batch} (measured alone: {rates.get(preset, 0):.0f} img/s)")
        procs[preset] = subprocess.Popen(train_cmd(preset, run_dir, steps, args.device, args.data, args.smoke),
                                         cwd=ROOT, env=_env(), stdout=open(runs / f"{preset}.log", "w"),
                                         stderr=subprocess.STDOUT)
        info[preset] = {"steps_planned": steps, "batch": batch, "start": time.monotonic()}
    sg_name = f"{SG_BASE}-sg"
    while procs:
        time.sleep(0.5 if args.smoke else 2.0)
        for name, proc in list(procs.items()):
            if proc.poll() is not None:
                info[name].update(exit=proc.returncode, seconds=time.monotonic() - info[name]["start"])
                log(f"training {name}: exit {proc.returncode} after {info[name]['seconds']:.0f} s")
                del procs[name]
                export = runs / SG_BASE / "export"
                if name == SG_BASE and (export / "model.safetensors").is_file():
                    left = deadline - time.monotonic() - 20
                    steps = plan_steps(0.6 * rates.get(SG_BASE, 1500.0), 16 if args.smoke else 256, left, 3,
                                       args.smoke)
                    if left > 30 or args.smoke:
                        log(f"training {sg_name}: {steps} steps on {export}")
                        procs[sg_name] = subprocess.Popen(sg_cmd(export, runs / sg_name, steps, args.device, args.smoke),
                                                          cwd=ROOT, env=_env(), stdout=open(runs / f"{sg_name}.log", "w"),
                                                          stderr=subprocess.STDOUT)
                        info[sg_name] = {"steps_planned": steps, "batch": 16 if args.smoke else 256,
                                         "start": time.monotonic()}
        if time.monotonic() > deadline:
            for name, proc in procs.items():
                log(f"training {name}: deadline reached, stopping it (exported from its newest checkpoint)")
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                info[name].update(exit="stopped at the deadline", seconds=time.monotonic() - info[name]["start"])
            procs = {}
    for name in info:
        log.block((runs / f"{name}.log").read_text(errors="replace")[-4000:])
    return info


def collect_exports(runs: Path, info: dict, log: Log) -> dict:
    """name -> export folder (with self-guidance/ inside the MaskGIT one when trained)."""
    from emigm.io.runs import export_checkpoint

    exports = {}
    for preset in FMNIST_PRESETS:
        export = runs / preset / "export"
        if not (export / "model.safetensors").is_file():
            try:
                export_checkpoint(runs / preset, export)
                log(f"{preset}: exported from its newest checkpoint")
            except Exception as e:  # no checkpoint: nothing to ship
                log(f"{preset}: no export ({type(e).__name__}: {e})")
                continue
        exports[preset] = export
    sg_run = runs / f"{SG_BASE}-sg"
    if SG_BASE in exports and sg_run.is_dir():
        target = exports[SG_BASE] / "self-guidance"
        try:
            if (sg_run / "export" / "model.safetensors").is_file():
                shutil.copytree(sg_run / "export", target, dirs_exist_ok=True)
            else:
                export_sg_checkpoint(sg_run, target)
                log("self-guidance: exported from its newest checkpoint")
        except Exception as e:
            log(f"self-guidance: no export ({type(e).__name__}: {e})")
    return exports


def describe_exports(exports: dict, runs: Path) -> list[dict]:
    rows = []
    for preset, export in exports.items():
        meta = json.loads((export / "config.json").read_text()).get("meta", {})
        metrics = runs / preset / "metrics.jsonl"
        last = json.loads(metrics.read_text().splitlines()[-1]) if metrics.is_file() and metrics.read_text().strip() else {}
        sg = export / "self-guidance" / "config.json"
        sg_meta = json.loads(sg.read_text()).get("meta", {}) if sg.is_file() else None
        rows.append({"model": preset, "steps": meta.get("steps", last.get("step")), "final_loss": last.get("loss"),
                     "seconds": last.get("elapsed"), "images_per_s": last.get("images_per_s"),
                     "weights_mb": (export / "model.safetensors").stat().st_size / 1e6,
                     "self_guidance_steps": sg_meta.get("steps") if sg_meta else None})
    return rows


# ----------------------------------------------------------------------------- phase 5: packing


def _weights_to(path: Path, dtype_name: str) -> bytes:
    import torch
    from safetensors.torch import load_file, save

    state = load_file(str(path))
    if dtype_name == "bf16":
        state = {k: (v.to(torch.bfloat16) if v.dtype == torch.float32 else v) for k, v in state.items()}
    return save(state)


def pack(exports: dict, runs: Path, out: Path, budget: int, log: Log) -> dict:
    """The exports as models.tar.gz.partNN in `out`: fp32 when everything fits `budget`, else bf16
    (float32 tensors only); a manifest with each original file's sha256 travels inside."""
    files = {name: sorted(p for p in folder.rglob("*") if p.is_file()) for name, folder in exports.items()}
    fp32_bytes = sum(p.stat().st_size for ps in files.values() for p in ps)
    dtype = "fp32" if fp32_bytes <= budget else "bf16"
    manifest = {"transport_dtype": dtype, "models": {}}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=6) as tar:
        def add(name: str, data: bytes) -> None:
            ti = tarfile.TarInfo(name)
            ti.size, ti.mtime = len(data), int(time.time())
            tar.addfile(ti, io.BytesIO(data))

        for name, paths in files.items():
            entry = manifest["models"][name] = {"files": {}}
            for p in paths:
                rel = f"{name}/{p.relative_to(exports[name]).as_posix()}"
                raw = p.read_bytes()
                data = _weights_to(p, dtype) if p.suffix == ".safetensors" and dtype != "fp32" else raw
                entry["files"][rel] = hashlib.sha256(raw).hexdigest()
                add(rel, data)
            metrics = runs / name / "metrics.jsonl"
            if metrics.is_file():
                add(f"{name}/metrics.jsonl", metrics.read_bytes())
        add("manifest.json", json.dumps(manifest, indent=2).encode())
    blob = buf.getvalue()
    parts = math.ceil(len(blob) / PART_BYTES) or 1
    if parts > MAX_FILES - 3:
        raise ValueError(f"the packed models take {len(blob) / 2**20:.1f} MiB, {parts} parts: more than the "
                         f"{MAX_FILES - 3} files left for them")
    for i in range(parts):
        (out / f"models.tar.gz.part{i:02d}").write_bytes(blob[i * PART_BYTES:(i + 1) * PART_BYTES])
    log(f"packed {len(exports)} export(s) in {dtype}: {fp32_bytes / 2**20:.1f} MiB of files -> "
        f"{len(blob) / 2**20:.1f} MiB in {parts} part(s)")
    return {"dtype": dtype, "fp32_mib": fp32_bytes / 2**20, "packed_mib": len(blob) / 2**20, "parts": parts}


# ----------------------------------------------------------------------------- summary


def summary_text(res: dict) -> str:
    from gpu_sampler import table as sampler_table

    lines = [f"### GPU run: {res['device']}, torch {res['torch']} ({res['date']})", ""]
    lines += [f"- `pytest -m gpu tests/test_gpu.py`: {res['pytest']['line']}",
              f"- total {res['seconds']:.0f} s of the {res['budget']:.0f} s budget; phases: "
              + ", ".join(f"{k} {v:.0f} s" for k, v in res["phase_seconds"].items()), ""]
    if res.get("sampler"):
        lines += [sampler_table(res["sampler"]), ""]
    elif res.get("sampler_error"):
        lines += [f"Sampler benchmark: {res['sampler_error']}", ""]
    if res.get("throughput"):
        lines += ["Training throughput (alone on the GPU):", "",
                  "| preset | batch | precision | img/s | ms/step |", "|---|---|---|---|---|"]
        lines += [f"| {r['preset']} | {r['batch']} | {r['precision']} | {r['images_per_s']:.0f} | {r['ms_per_step']:.1f} |"
                  for r in res["throughput"]]
        lines.append("")
    if res.get("models"):
        lines += ["Fashion-MNIST GPU presets, trained concurrently on the one GPU:", "",
                  "| model | steps | final loss | seconds | img/s | weights MB | self-guidance steps |",
                  "|---|---|---|---|---|---|---|"]
        for r in res["models"]:
            loss = f"{r['final_loss']:.4f}" if isinstance(r["final_loss"], float) else ""
            secs = f"{r['seconds']:.0f}" if r["seconds"] else ""
            ips = f"{r['images_per_s']:.0f}" if r["images_per_s"] else ""
            lines.append(f"| {r['model']} | {r['steps']} | {loss} | {secs} | {ips} | {r['weights_mb']:.1f} | "
                         f"{r['self_guidance_steps'] or ''} |")
        p = res.get("pack", {})
        lines += ["", f"Exports packed in {p.get('dtype')} ({p.get('packed_mib', 0):.1f} MiB, {p.get('parts')} "
                      "part(s)); `python3 benchmarks/unpack_gpu_run.py OUT --dest assets` makes fp32 exports."]
    if res.get("errors"):
        lines += ["", "Problems: " + "; ".join(res["errors"])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT", ""), help="output folder (default: $OUT)")
    p.add_argument("--data", default=".data/fashion-mnist", help="Fashion-MNIST IDX folder (git-ignored)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--budget", type=float, default=540.0, help="seconds for the whole run")
    p.add_argument("--smoke", action="store_true", help="the whole run on the CPU with tiny sizes")
    args = p.parse_args(argv)
    t0 = time.monotonic()
    if not args.out:
        print("error: no output folder: set OUT or pass --out", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(args.data) if os.path.isabs(args.data) else ROOT / args.data
    missing = [f for f in FMNIST_FILES if not (data / f).is_file()]
    if missing:
        print(f"error: Fashion-MNIST files {', '.join(missing)} are not in {data}; fill it first: mkdir -p "
              f"{args.data} && cp /usr/share/datasets/fashion-mnist/*.gz {args.data}/ (benchmarks/README.md)",
              file=sys.stderr)
        return 2
    args.data = str(data)
    if args.smoke:
        args.device = "cpu"
    import torch

    from emigm.core.devices import device_name, resolve_device

    try:
        device = resolve_device(args.device)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"emigm-gpu-run-{os.getpid()}"
    runs = work / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    log = Log(work / "log.txt", t0)
    end = t0 + args.budget
    res = {"device": device_name(device), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
           "budget": args.budget, "smoke": args.smoke, "phase_seconds": {}, "errors": []}
    log(f"{res['device']}, torch {res['torch']}, budget {args.budget:.0f} s, work folder {work}")
    if device.type == "cuda":
        run_phase("nvidia-smi", ["nvidia-smi"], 20, log)

    def phase(name: str):
        start = time.monotonic()
        return lambda: res["phase_seconds"].__setitem__(name, time.monotonic() - start)

    # 1. GPU tests
    done = phase("pytest")
    code, text = run_phase("pytest", [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu",
                                      "tests/test_gpu.py"], min(120, 0.2 * args.budget), log)
    tail = [ln for ln in text.strip().splitlines() if ln.strip()]
    res["pytest"] = {"exit": code, "line": tail[-1].strip("= ") if tail else f"exit {code}"}
    if code not in (0, 5):
        res["errors"].append(f"pytest -m gpu exit {code}")
    done()

    # 2. sampler benchmark
    done = phase("sampler")
    sampler_json = work / "sampler.json"
    budget = 0.33 * args.budget
    cmd = [sys.executable, "benchmarks/gpu_sampler.py", "--json", str(sampler_json), "--budget", f"{budget:.0f}",
           "--repeats", "2"] + (["--smoke"] if args.smoke else ["--device", args.device])
    code, _ = run_phase("sampler", cmd, budget + 90, log)
    if sampler_json.is_file():
        res["sampler"] = json.loads(sampler_json.read_text())
    else:
        res["sampler_error"] = f"gpu_sampler.py exit {code} (see the log)"
        res["errors"].append(res["sampler_error"])
    done()

    # 3. training throughput
    done = phase("throughput")
    res["throughput"] = []
    steps = "3" if args.smoke else "20"
    tiny = [a for k, v in TINY for a in ("--override", k, v)] if args.smoke else []
    jobs = [("in256-b", ["--presets", "in256-b", "--latents", "synthetic", "--override", "train.batch_size",
                         "8" if args.smoke else "64", "--override", "train.precision", "bf16"]),
            ("fmnist", ["--presets", *FMNIST_PRESETS, "--override", "data.path", args.data]
             + (["--override", "train.batch_size", "16", "--override", "data.limit", "128"] if args.smoke else []))]
    for name, extra in jobs:
        path = work / f"throughput-{name}.json"
        cmd = [sys.executable, "benchmarks/train_throughput.py", "--device", args.device, "--steps", steps,
               "--json", str(path), *extra, *tiny]
        limit = 60 if name == "in256-b" else 120
        # --smoke runs on a CPU that may be shared: its phases are tiny but can be slow to start
        code, _ = run_phase(f"throughput {name}", cmd, 3 * limit if args.smoke else limit, log)
        if path.is_file():
            res["throughput"] += json.loads(path.read_text())
        else:
            res["errors"].append(f"training throughput of {name}: exit {code}")
    rates = {r["preset"]: r["images_per_s"] for r in res["throughput"]}
    done()

    # 4. training, concurrently, until the deadline (pack and summary need ~40 s)
    done = phase("training")
    info = train_models(args, runs, rates, end - (15 if args.smoke else 45), log)
    exports = collect_exports(runs, info, log)
    res["training"] = info
    res["models"] = describe_exports(exports, runs)
    missing = [pr for pr in FMNIST_PRESETS if pr not in exports]
    if missing:
        res["errors"].append(f"no export for {', '.join(missing)}")
    done()

    # 5. pack, summary
    done = phase("pack")
    if exports:
        try:
            res["pack"] = pack(exports, runs, out, MODELS_BUDGET, log)
        except ValueError as e:
            res["errors"].append(str(e))
    done()
    res["seconds"] = time.monotonic() - t0
    text = summary_text(res)
    (out / "summary.md").write_text(text)
    (out / "results.json").write_text(json.dumps(res, indent=2, default=str))
    log.block(text)
    log.file.close()
    with open(work / "log.txt", "rb") as src, gzip.open(out / "log.txt.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    shutil.rmtree(work, ignore_errors=True)
    print()
    print(text)
    return 0 if not res["errors"] else 1


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
