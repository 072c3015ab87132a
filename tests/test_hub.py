"""Hub references `hf:OWNER/NAME[@REVISION][:FILE]`, offline: a cache laid out as huggingface_hub's
(models--OWNER--NAME/{blobs,refs,snapshots}) in a temporary folder with HF_HUB_OFFLINE=1; nothing goes
to the network. Loading, the CLI and the one-line refusals (ids that do not parse, a revision not in
the cache, a damaged cached file)."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch

from emigm.cli import main as cli
from emigm.core.fileio import ASSETS_DIR
from emigm.core.statedict import CheckpointError
from emigm.io.hub import HubRef, parse_hub_id, resolve
from emigm.io.loading import load_pipeline

COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPO = "someone/fmnist-emigm"


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()


def hub_cache(root: Path, repo: str = REPO, files: dict[str, bytes] | None = None, commit: str = COMMIT,
              ref: str = "main") -> Path:
    """A Hub cache folder holding `files` of `repo` at `commit`, with refs/`ref` pointing to it: large
    files (safetensors) under their sha256, small ones under their git blob sha1, as the Hub names them."""
    files = files if files is not None else {
        "config.json": (ASSETS_DIR / "fmnist-emigm" / "config.json").read_bytes(),
        "model.safetensors": (ASSETS_DIR / "fmnist-emigm" / "model.safetensors").read_bytes()}
    base = root / ("models--" + repo.replace("/", "--"))
    (base / "blobs").mkdir(parents=True, exist_ok=True)
    (base / "refs").mkdir(exist_ok=True)
    snap = base / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        large = name.endswith((".safetensors", ".pth", ".ckpt"))
        h = hashlib.sha256(data).hexdigest() if large else _git_blob_sha1(data)
        (base / "blobs" / h).write_bytes(data)
        (snap / name).symlink_to(os.path.relpath(base / "blobs" / h, snap))
    (base / "refs" / ref).write_text(commit)
    return root


@pytest.fixture
def offline_cache(tmp_path, monkeypatch) -> Path:
    root = hub_cache(tmp_path / "hub")
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return root


@pytest.mark.parametrize("text,ref", [
    ("hf:GSAI-ML/eMIGM", HubRef("GSAI-ML/eMIGM")),
    ("hf:GSAI-ML/eMIGM@v1.0", HubRef("GSAI-ML/eMIGM", "v1.0")),
    ("hf:GSAI-ML/eMIGM:eMIGM_base_256_checkpoint.pth",
     HubRef("GSAI-ML/eMIGM", None, "eMIGM_base_256_checkpoint.pth")),
    ("hf:a/b@refs/pr/1:sub/f.ckpt", HubRef("a/b", "refs/pr/1", "sub/f.ckpt")),
])
def test_hub_ids_parse(text, ref):
    assert parse_hub_id(text) == ref and str(ref) == text


@pytest.mark.parametrize("text", ["hf:", "hf:eMIGM", "hf:GSAI-ML/", "hf:/eMIGM", "hf:a/b/c", "hf:a--b/c",
                                  "hf:a/b..c", "hf:-a/b", "hf:a/b@", "hf:a/b:", "hf:a/b:../x", "hf:a/b c",
                                  "hf:a/b@x@y"])
def test_bad_hub_ids_are_refused(text):
    with pytest.raises(ValueError, match=r"is not a Hub model id: the form is hf:OWNER/NAME\[@REVISION\]\[:FILE\]"):
        parse_hub_id(text)


def test_an_export_loads_from_the_offline_cache(offline_cache):
    pipe = load_pipeline(f"hf:{REPO}")
    ref = load_pipeline("fmnist-emigm")
    assert pipe.label == f"hf:{REPO}" and pipe.meta["hub"] == f"hf:{REPO}"
    for (k, a), b in zip(ref.model.state_dict().items(), pipe.model.state_dict().values()):
        assert torch.equal(a, b), k
    same = load_pipeline(f"hf:{REPO}@{COMMIT}")  # a commit works as the revision too
    assert same.label == f"hf:{REPO}@{COMMIT}"
    path = resolve(f"hf:{REPO}:config.json")  # one file of the repository
    assert path.name == "config.json"
    assert path.read_bytes() == (ASSETS_DIR / "fmnist-emigm" / "config.json").read_bytes()


def test_the_cli_samples_a_hub_model_offline(offline_cache, tmp_path, capsys):
    out = tmp_path / "grid.png"
    code = cli.main(["sample", "--checkpoint", f"hf:{REPO}", "--num-images", "2", "--steps", "4", "--device", "cpu",
                     "--out", str(out)])
    text = capsys.readouterr()
    assert code == 0, text.err
    assert out.is_file() and f"from hf:{REPO}" in text.out


def test_a_revision_not_in_the_cache_says_what_to_download(offline_cache, tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert cli.main(["sample", "--checkpoint", f"hf:{REPO}@v2", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: hf:{REPO}@v2 is not in the local Hugging Face cache"), err
    assert "HF_HUB_OFFLINE is set" in err and f"`hf download {REPO} --revision v2`" in err, err
    assert not out.exists()
    with pytest.raises(ValueError, match=r"`hf download other/model`"):
        load_pipeline("hf:other/model")
    with pytest.raises(ValueError, match=r"`hf download someone/fmnist-emigm missing.pth`"):
        resolve(f"hf:{REPO}:missing.pth")


def test_a_damaged_cached_file_is_named(offline_cache, tmp_path, capsys):
    blobs = offline_cache / ("models--" + REPO.replace("/", "--")) / "blobs"
    weights = next(p for p in blobs.iterdir() if len(p.name) == 64)
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: still a readable safetensors file
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"the cached file model.safetensors is damaged .* delete .* and "
                                              r"download it again with `hf download someone/fmnist-emigm`"):
        load_pipeline(f"hf:{REPO}")
    assert cli.main(["sample", "--checkpoint", f"hf:{REPO}", "--out", str(tmp_path / "g.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is damaged" in err and not (tmp_path / "g.png").exists()


def test_the_explorer_offers_a_hub_model(offline_cache):
    from app.engine import Engine

    engine = Engine([f"hf:{REPO}"], num_threads=1)
    assert engine.names == [f"hf:{REPO}"] and not engine.is_shipped(f"hf:{REPO}")
    pipe = engine.load(f"hf:{REPO}")
    assert pipe.label == f"hf:{REPO}" and pipe.cfg.tokenizer.kind == "kl"
    with pytest.raises(ValueError, match="is not a Hub model id"):
        Engine(["hf:not-an-id"], num_threads=1)
    missing = Engine([f"hf:{REPO}@v9"], num_threads=1)  # the catalogue lists it; loading names the download
    with pytest.raises(ValueError, match=rf"model 'hf:{REPO}@v9' cannot be loaded: .*"
                                         rf"`hf download {REPO} --revision v9`"):
        missing.load(f"hf:{REPO}@v9")
