"""Models on the Hugging Face Hub: `hf:OWNER/NAME[@REVISION][:FILE]` wherever a checkpoint is taken.

`hf:OWNER/NAME` is a model repository holding an export (config.json + model.safetensors, as
`python -m emigm export` writes them, with its README.md model card); `:FILE` names one file of the
repository instead, e.g. an official checkpoint (`hf:GSAI-ML/eMIGM:eMIGM_base_256_checkpoint.pth`).
`@REVISION` is a branch, tag or commit (default `main`). Files come through `huggingface_hub` into its
local cache (HF_HUB_CACHE / HF_HOME as it reads them); with HF_HUB_OFFLINE set nothing is fetched and the
cache must hold the revision. Every cached file used is checked against the hash the Hub names it by
(sha256 for large files, the git blob sha1 for small ones), so a damaged cache is found before loading.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from emigm.core.statedict import CheckpointError

PREFIX = "hf:"
_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_ID = re.compile(rf"^hf:(?P<owner>{_PART})/(?P<name>{_PART})(?:@(?P<revision>[^\s:@]+))?(?::(?P<file>[^\s:]+))?$")
_FORM = "hf:OWNER/NAME[@REVISION][:FILE], e.g. hf:GSAI-ML/eMIGM:eMIGM_base_256_checkpoint.pth"


@dataclass(frozen=True)
class HubRef:
    repo_id: str
    revision: str | None = None
    filename: str | None = None

    def __str__(self) -> str:
        return (PREFIX + self.repo_id + (f"@{self.revision}" if self.revision else "")
                + (f":{self.filename}" if self.filename else ""))

    def download_command(self) -> str:
        """The command that puts this reference into the local cache (run where there is network)."""
        rev = f" --revision {self.revision}" if self.revision else ""
        return f"hf download {self.repo_id}{' ' + self.filename if self.filename else ''}{rev}"


def is_hub_id(source: object) -> bool:
    return isinstance(source, str) and source.startswith(PREFIX)


def parse_hub_id(text: str) -> HubRef:
    """HubRef of `hf:OWNER/NAME[@REVISION][:FILE]`; ValueError (one line) for anything else."""
    m = _ID.match(text)
    bad = m is None or any(s in m.group("owner") + "/" + m.group("name") for s in ("--", ".."))
    if not bad and m.group("file"):
        parts = m.group("file").split("/")
        bad = any(p in ("", ".", "..") for p in parts)
    if bad:
        raise ValueError(f"{text!r} is not a Hub model id: the form is {_FORM}")
    return HubRef(f"{m.group('owner')}/{m.group('name')}", m.group("revision"), m.group("file"))


def offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub reads it (1, ON, YES, TRUE), read now rather than at import."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def cache_dir() -> str | None:
    """The Hub cache huggingface_hub uses (HF_HUB_CACHE, else HF_HOME/hub), read now; None: its default."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return None


def resolve(source: str) -> Path:
    """The local path of `hf:...`: the snapshot folder of the repository at the revision, or the one file
    named; downloaded into the cache unless HF_HUB_OFFLINE is set; every file checked against its Hub
    hash. One-line errors (ValueError / CheckpointError) say what is missing and how to get it."""
    ref = parse_hub_id(source)
    local = offline()
    try:
        if ref.filename:
            path = Path(hf_hub_download(ref.repo_id, ref.filename, revision=ref.revision, cache_dir=cache_dir(),
                                        local_files_only=local))
            check_cached(path, ref)
            return path
        folder = Path(snapshot_download(ref.repo_id, revision=ref.revision, cache_dir=cache_dir(),
                                        local_files_only=local))
    except (RepositoryNotFoundError, GatedRepoError):
        raise ValueError(f"{ref}: no such model repository on the Hub, or it is private or gated (log in with "
                         "`hf auth login` if you have access)") from None
    except RevisionNotFoundError:
        raise ValueError(f"{ref}: the repository {ref.repo_id} has no revision {ref.revision!r}") from None
    except LocalEntryNotFoundError:
        where = f" ({cache_dir()})" if cache_dir() else ""
        why = "HF_HUB_OFFLINE is set" if local else "the Hub cannot be reached"
        raise ValueError(f"{ref} is not in the local Hugging Face cache{where} and {why}: download it where "
                         f"there is network with `{ref.download_command()}` (same cache), then run again") from None
    except EntryNotFoundError:
        raise ValueError(f"{ref}: the repository {ref.repo_id} has no file {ref.filename!r}") from None
    except HfHubHTTPError as e:
        raise ValueError(f"{ref}: the Hub answered {str(e).splitlines()[0][:200]}") from None
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            check_cached(path, ref)
    return folder


def check_cached(path: Path, ref: HubRef) -> None:
    """A cached file's bytes against the hash its blob is named by: sha256 (64 hex digits, large files)
    or the git blob sha1 (40 hex digits); a file not laid out as the Hub cache's is left alone."""
    blob = Path(os.path.realpath(path))
    name = blob.name
    if blob.parent.name != "blobs" or not re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", name):
        return
    if len(name) == 64:
        h = hashlib.sha256()
    else:
        h = hashlib.sha1()
        h.update(f"blob {blob.stat().st_size}\0".encode())
    with open(blob, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    if h.hexdigest() != name:
        raise CheckpointError(f"{ref}: the cached file {path.name} is damaged (its bytes do not match the Hub's "
                              f"hash {name[:12]}...); delete {blob} and download it again with "
                              f"`{ref.download_command()}`")
