"""Which weights a measurement used: the sha256 of each weight file, and the source commit.

A measured figure (FD, class accuracy, ...) is a fact about one set of weights. `fingerprint(source)`
names them: {"network": sha256 of model.safetensors, "tokenizer": sha256 of the tokenizer's weights
(None for patch tokens), "self_guidance": sha256 of the self-guidance module's weights (None when the
export has none or `self_guidance=False`), "classifier": sha256 of the classifier's weights (None when
not given)}. A model with random weights (`random_pipeline`) has no file: its network entry is
"state:" + the sha256 of its tensors. `same_weights(recorded, current)` compares a recorded fingerprint
with the files on disk, role by role, over the roles the recording names (a measurement that did not
use self-guidance does not depend on the module).
"""
from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path
from typing import Any

import torch

from emigm.core import fileio
from emigm.io.exports import WEIGHTS_FILE, read_export_config, resolve_export
from emigm.io.loading import Pipeline, oracle_folder, smoother_folder, tokenizer_roots
from emigm.nn.oracle import ORACLE_FILE, oracle_config
from emigm.tokenize.tokenizers import resolve_weights

ROLES = ("network", "tokenizer", "self_guidance", "classifier")
_CACHE: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256: files are hashed once


def sha256_file(path: str | os.PathLike) -> str:
    """The hex sha256 of a file's bytes (cached per path, size and modification time)."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _CACHE:
        _CACHE[key] = fileio.sha256_file(p)  # the one sha256 of files (also behind checksums.json)
    return _CACHE[key]


def state_sha256(module: torch.nn.Module) -> str:
    """The sha256 of a module's tensors (names, dtypes, shapes and bytes, in name order)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def tokenizer_file(cfg, folder: Path | None) -> Path | None:
    """The weights file of a model's tokenizer, found where loading finds it (beside the export, its
    parent folder, assets/); None for a tokenizer without weights (patches)."""
    tk = cfg.tokenizer
    if tk.kind in ("patch", "dcae") or not tk.path:
        return None
    if os.path.isabs(os.path.expanduser(tk.path)):
        return Path(resolve_weights(tk, None))
    for root in tokenizer_roots(folder):
        if (root / tk.path).exists():
            return Path(resolve_weights(tk, str(root)))
    return None


def weight_files(source: str | os.PathLike, classifier: str | os.PathLike | None = None,
                 self_guidance: bool = True) -> dict[str, Path | None]:
    """{role: the file} of an export folder or shipped name (see the module docstring)."""
    oracle = oracle_folder(source)
    if oracle is not None:  # an oracle's "weights": oracle.json, its kernel width and its reference set's sha256
        return {"network": oracle / ORACLE_FILE, "tokenizer": tokenizer_file(oracle_config(oracle), oracle),
                "self_guidance": None, "classifier": Path(classifier) if classifier is not None else None}
    folder = resolve_export(source)
    cfg, _ = read_export_config(folder)
    sg = smoother_folder(folder) if self_guidance else None
    return {"network": folder / WEIGHTS_FILE, "tokenizer": tokenizer_file(cfg, folder),
            "self_guidance": sg / WEIGHTS_FILE if sg is not None else None,
            "classifier": Path(classifier) if classifier is not None else None}


def fingerprint(source: str | os.PathLike, classifier: str | os.PathLike | None = None,
                self_guidance: bool = True) -> dict[str, str | None]:
    """{role: sha256} of the files an export uses (module docstring); a missing file is an error."""
    return {role: (sha256_file(f) if f is not None else None)
            for role, f in weight_files(source, classifier, self_guidance).items()}


def pipeline_fingerprint(pipe: Pipeline, classifier: str | os.PathLike | None = None,
                         self_guidance: bool = True) -> dict[str, str | None]:
    """The fingerprint of a loaded pipeline: its export's files, or for random weights the sha256 of
    the network's tensors ("state:..."), with the tokenizer's file as configured."""
    folder = pipe.meta.get("export_dir")
    if folder:
        return fingerprint(folder, classifier, self_guidance and pipe.smoother is not None)
    tok = tokenizer_file(pipe.cfg, None)
    return {"network": "state:" + state_sha256(pipe.model), "tokenizer": sha256_file(tok) if tok else None,
            "self_guidance": ("state:" + state_sha256(pipe.smoother)) if self_guidance and pipe.smoother else None,
            "classifier": sha256_file(classifier) if classifier is not None else None}


def same_weights(recorded: Any, current: dict[str, str | None]) -> bool:
    """True when every role the recorded fingerprint names (a non-empty sha256) has the same sha256 in
    `current`; False for a missing or malformed recording, or one naming no network."""
    if not isinstance(recorded, dict) or not isinstance(recorded.get("network"), str):
        return False
    for role in ROLES:
        want = recorded.get(role)
        if want is None:
            continue
        if not isinstance(want, str) or current.get(role) != want:
            return False
    return True


def differing_roles(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The roles whose sha256 differ between two fingerprints (None counts as a value)."""
    return [r for r in ROLES if a.get(r) != b.get(r)]


def source_commit(root: str | os.PathLike) -> str | None:
    """The git commit the code at `root` is at ("+dirty" when tracked files differ from it), or None
    outside a git checkout."""
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=30)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=60)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None
