"""Unpack the exports that benchmarks/gpu_run.py packed: fp32 export folders again, checked.

    python3 benchmarks/unpack_gpu_run.py OUT_DIR --dest assets        # -> assets/fmnist-emigm, ...

OUT_DIR holds models.tar.gz.part00, part01, ... (the files the GPU run left in $OUT). Every model
becomes DEST/<name>/ (model.safetensors in float32 + config.json, and self-guidance/ where trained),
named after its preset without the "-gpu" suffix, so the app and benchmarks/paper_claims.py find
them. Weights that travelled in bf16 are widened to float32 (the values are the bf16 ones: measure
claims again on what ships); weights that travelled in fp32 are checked against the sha256 of the
file the GPU run wrote.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import tarfile
from pathlib import Path


def read_parts(folder: Path) -> bytes:
    parts = sorted(folder.glob("models.tar.gz.part*"))
    if not parts:
        raise FileNotFoundError(f"no models.tar.gz.part* in {folder}")
    return b"".join(p.read_bytes() for p in parts)


def asset_name(model: str) -> str:
    return model.removesuffix("-gpu")


def unpack(folder: Path, dest: Path, overwrite: bool = False) -> list[Path]:
    """Write the fp32 exports into dest; returns the folders written."""
    import torch
    from safetensors.torch import load, save

    from emigm.core.fileio import CHECKSUMS_FILE, record_checksum

    with tarfile.open(fileobj=io.BytesIO(read_parts(folder)), mode="r:gz") as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    manifest = json.loads(files.pop("manifest.json"))
    dtype = manifest["transport_dtype"]
    written = []
    for model, entry in manifest["models"].items():
        target = dest / asset_name(model)
        if target.exists() and any(target.iterdir()) and not overwrite:
            raise FileExistsError(f"{target} exists; pass --overwrite to replace it")
        for rel, digest in entry["files"].items():
            data = files[rel]
            if rel.endswith(".safetensors"):
                state = {k: (v.float() if v.dtype == torch.bfloat16 else v) for k, v in load(data).items()}
                data = save(state)
                if dtype == "fp32" and hashlib.sha256(data).hexdigest() != digest:
                    raise ValueError(f"{rel}: differs from the file the GPU run wrote (sha256)")
            path = dest / asset_name(model) / Path(rel).relative_to(model)
            if path.name == CHECKSUMS_FILE:
                continue  # the GPU side's record names its bf16 transport bytes; recorded anew below
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            if rel.endswith(".safetensors"):
                record_checksum(path, hashlib.sha256(data).hexdigest())
        metrics = files.get(f"{model}/metrics.jsonl")
        if metrics is not None:
            (target / "metrics.jsonl").write_bytes(metrics)
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", help="the GPU run's output folder (models.tar.gz.part*)")
    p.add_argument("--dest", default="assets", help="where the export folders go")
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)
    try:
        written = unpack(Path(a.folder), Path(a.dest), a.overwrite)
    except (OSError, ValueError, KeyError, tarfile.TarError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for w in written:
        print(f"wrote {w}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
