"""Atomic file writes: the one way this project puts a file on disk that someone may rely on.

A write goes to a temp file in the destination's folder, is flushed and fsynced, gets mode 0644 and
is renamed over the destination (`os.replace`), and then the folder itself is fsynced so the rename
survives a power cut. A reader therefore sees the old file or the new one, never a torn one. On any
failure the temp file is removed and the destination is left as it was.

OS errors become `WriteError`, whose one-line message names the path and says what went wrong in
words: "disk full", "read-only or not writable", "a file is in the way". A destination that exists
must be a regular, writable file: a rename would otherwise silently replace a named pipe, a device
or a file its owner made read-only.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable


def _assets_dir() -> Path:
    """The shipped models and files: inside the package when installed from a wheel (pyproject.toml maps
    the repository's `assets/` to `emigm/assets`), else the repository's `assets/` beside the package
    (a checkout, or `pip install -e .`)."""
    package = Path(__file__).resolve().parents[1]
    installed = package / "assets"
    return installed if installed.is_dir() else package.parent / "assets"


ASSETS_DIR = _assets_dir()

_READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_NOT_A_FOLDER = (errno.ENOTDIR, errno.EEXIST)


class WriteError(OSError):
    """A file could not be written; the message is one line naming the path and the reason."""

    def __str__(self) -> str:  # OSError would prefix "[Errno N]"
        return self.args[1] if len(self.args) > 1 else super().__str__()


def write_error(path: str | os.PathLike, err: BaseException) -> WriteError:
    """A WriteError for `path` from an OSError (or an exception caused by one, as torch.save raises)."""
    os_err = _os_error(err)
    code = os_err.errno if os_err is not None else None
    if code in _NO_SPACE:
        reason = "disk full (no space left on the device)"
    elif code in _READ_ONLY:
        reason = "the folder is read-only or not writable"
    elif code in _NOT_A_FOLDER:
        reason = "a file is in the way where a folder is needed"
    elif os_err is not None:
        reason = os_err.strerror or str(os_err)
    else:
        reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    return WriteError(code or errno.EIO, f"cannot write {path}: {reason}")


def _os_error(err: BaseException | None) -> OSError | None:
    """The OSError behind `err`: itself, or one in its cause / context chain."""
    seen = 0
    while err is not None and seen < 8:
        if isinstance(err, OSError) and err.errno is not None:
            return err
        err, seen = err.__cause__ or err.__context__, seen + 1
    return None


def fsync_dir(folder: str | os.PathLike) -> None:
    """fsync a folder so a rename inside it is durable (a no-op where the file system refuses)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


_KINDS = ((stat.S_ISFIFO, "a named pipe (fifo)"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"))


def check_replaceable(path: str | os.PathLike, option: str = "") -> None:
    """Refuse to replace an existing `path` that is not a regular file (a fifo, a device, a socket, a
    folder) or is read-only: by its mode bits, which bind root too (root ignores them, so a rename
    would silently replace the file), or by access. WriteError naming `option` (e.g. "--out") and
    the path; a path that does not exist passes."""
    name = f"{option} {os.fspath(path)}" if option else os.fspath(path)
    try:
        st = os.stat(path)  # follows a symlink: what a write would reach
    except OSError:
        return
    for test, kind in _KINDS:
        if test(st.st_mode):
            raise WriteError(errno.EINVAL, f"cannot write {name}: it is {kind}, not a regular file; give "
                                           "another file name")
    if not st.st_mode & 0o222 or not os.access(path, os.W_OK):
        raise WriteError(errno.EACCES, f"cannot write {name}: it is a read-only file; make it writable or "
                                       "give another file name")


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any], checksum: bool = False) -> Path:
    """Write `path` atomically: `write(f)` fills an open binary temp file in the same folder, which is
    then flushed, fsynced, chmod 0644 and renamed over `path`; the folder is fsynced. The parent
    folder is created if needed. An existing `path` must be a regular, writable file
    (`check_replaceable`). With `checksum` (weight files), the file's sha256 is recorded in the
    folder's CHECKSUMS_FILE (`record_checksum`; its old entry is dropped before the write, so a
    write stopped half-way never leaves a stale hash behind). Raises WriteError (temp file removed,
    `path` untouched) on OS errors; other exceptions from `write` propagate after the same clean-up."""
    path = Path(path)
    folder = path.parent
    check_replaceable(path)
    tmp: str | None = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if checksum:
            record_checksum(path, None)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        digest = sha256_file(tmp) if checksum else None
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; outputs are meant to be shared
        os.replace(tmp, path)
        tmp = None
        fsync_dir(folder)
        if digest is not None:
            record_checksum(path, digest)
    except Exception as e:
        if _os_error(e) is None:
            raise
        raise write_error(path, e) from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    return path


def write_bytes(path: str | os.PathLike, data: bytes, checksum: bool = False) -> Path:
    """Atomically write `data` to `path` (with `checksum`: its sha256 recorded, see `atomic_write`)."""
    return atomic_write(path, lambda f: f.write(data), checksum)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically write UTF-8 `text` to `path`."""
    return write_bytes(path, text.encode("utf-8"))


def torch_save(obj: Any, path: str | os.PathLike, checksum: bool = False) -> Path:
    """Atomically `torch.save` `obj` to `path` (streamed into the temp file, not held in memory; with
    `checksum`: its sha256 recorded, see `atomic_write`)."""
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f), checksum)


# ----------------------------------------------------------------------------- checksums

# Every weight file this project writes (exports, shipped assets, tokenizers, the classifier, run
# checkpoints) has its sha256 recorded in the CHECKSUMS_FILE of its folder when it is written, and is
# verified against it when read (`verify_checksum`, called by the weight readers in
# emigm.core.statedict): a file with flipped bytes is refused in one line instead of sampling other
# images. A file with no recorded hash (written by other tools, or before this rule) is read unverified.
CHECKSUMS_FILE = "checksums.json"
CHECKSUMS_FORMAT = "emigm-checksums"


class ChecksumError(ValueError):
    """A file's content differs from the sha256 recorded for it; or its folder's record is unreadable."""


def sha256_file(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, hex, read in 1 MiB blocks (the one sha256 of files in the project)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_checksums(folder: str | os.PathLike) -> dict[str, str]:
    """{file name: sha256} recorded in `folder`'s CHECKSUMS_FILE; {} when there is none. A record that
    is not a regular file or not the expected JSON is a ChecksumError naming it (never ignored: a
    damaged record must not switch verification off silently)."""
    path = Path(folder) / CHECKSUMS_FILE
    try:
        st = os.stat(path)
    except OSError:
        return {}
    if not stat.S_ISREG(st.st_mode):
        raise ChecksumError(f"{path} is {special_kind(st.st_mode)}, not a regular file")
    if st.st_size > 1 << 20:
        raise ChecksumError(f"{path} is {st.st_size} bytes, not a checksum record")
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ChecksumError(f"{path}: not valid JSON ({str(e).splitlines()[0][:100]})") from None
    files = doc.get("sha256") if isinstance(doc, dict) and doc.get("format") == CHECKSUMS_FORMAT else None
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) and len(v) == 64
                                              for k, v in files.items()):
        raise ChecksumError(f"{path}: expected {{\"format\": \"{CHECKSUMS_FORMAT}\", \"sha256\": {{file: hex}}}}")
    return dict(files)


def record_checksum(path: str | os.PathLike, digest: str | None) -> None:
    """Record `digest` (hex sha256) for `path` in its folder's CHECKSUMS_FILE (atomically), or drop
    its entry when `digest` is None."""
    path = Path(path)
    try:
        files = read_checksums(path.parent)
    except ChecksumError:
        files = {}  # a damaged record is rewritten by the writer that owns the folder
    if digest is None and path.name not in files:
        return
    if digest is None:
        files.pop(path.name)
    else:
        files[path.name] = digest
    doc = {"format": CHECKSUMS_FORMAT, "sha256": dict(sorted(files.items()))}
    write_bytes(path.parent / CHECKSUMS_FILE, (json.dumps(doc, indent=1) + "\n").encode())


def verify_checksum(path: str | os.PathLike, what: str = "file") -> None:
    """Refuse `path` (ChecksumError, one line naming `what` and the file) when its folder records a
    sha256 for it and its content differs; pass when none is recorded."""
    path = Path(path)
    expected = read_checksums(path.parent).get(path.name)
    if expected is None:
        return
    got = sha256_file(path)
    if got != expected:
        raise ChecksumError(f"{what} {path} is damaged: its sha256 {got[:16]}... differs from the "
                            f"{expected[:16]}... recorded when it was written ({path.parent / CHECKSUMS_FILE}); "
                            "restore the file or write it again")


# ----------------------------------------------------------------------------- special files


def special_kind(mode: int) -> str:
    """What a non-regular file is, in words ("a named pipe (fifo)", "a device", ...)."""
    for test, kind in _KINDS:
        if test(mode):
            return kind
    return "not a regular file"


def check_regular(path: str | os.PathLike, what: str = "file") -> bool:
    """True when `path` is a regular file (following symlinks), False when it does not exist; a fifo,
    device, socket or folder where a regular file is expected is a ValueError naming `what` and the
    path, before anything opens it (opening a fifo blocks until a writer comes)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{what} {os.fspath(path)} is {special_kind(st.st_mode)}, not a regular file; "
                         "remove it or give another path")
    return True


def ensure_writable_dir(folder: str | os.PathLike, what: str = "folder") -> Path:
    """Create `folder` if needed and prove it takes a small fsynced file, before long work starts.
    WriteError names the folder: a file in the way, read-only or not writable, disk full."""
    folder = Path(folder)
    probe = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not folder.is_dir():
            raise OSError(errno.ENOTDIR, "not a folder")
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-probe.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(b"probe\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        err = write_error(folder, e)
        raise WriteError(err.errno, str(err).replace("cannot write", f"cannot use {what}", 1)) from None
    finally:
        if probe is not None:
            try:
                os.unlink(probe)
            except OSError:
                pass
    return folder


def check_output_file(path: str | os.PathLike, option: str = "output", suffixes: tuple[str, ...] = ()) -> Path:
    """Check, before any work, that a file can be written at `path` (named `option` in errors, e.g.
    "--out"): a file name is given (with one of `suffixes`, when given), it is not a folder, no file
    stands where a folder of its path should be, and the nearest existing folder takes a small file
    (read-only and full disks are refused here). Missing folders are created when the file is
    written. An existing file must be a regular, writable one (`check_replaceable`). WriteError or
    ValueError, one line naming `option` and the path."""
    text = os.fspath(path)
    if not text.strip():
        raise ValueError(f"{option} is empty: give a file name")
    p = Path(text).expanduser()
    if p.is_dir() or text.endswith(("/", os.sep)):
        raise ValueError(f"{option} {text} is a folder; give a file name inside it")
    if suffixes and p.suffix.lower() not in suffixes:
        raise ValueError(f"{option} must be a {' or '.join(suffixes)} file, got {text}")
    check_replaceable(p, option)
    folder = p.parent
    while not folder.exists():
        if folder == folder.parent:
            break
        folder = folder.parent
    if not folder.is_dir():
        raise WriteError(errno.ENOTDIR, f"cannot write {option} {text}: {folder} is a file, not a folder")
    try:
        ensure_writable_dir(folder, "folder")
    except WriteError as e:
        reason = str(e).removeprefix(f"cannot use folder {folder}: ")
        raise WriteError(e.errno, f"cannot write {option} {text}: {reason}") from None
    return p


def command_line() -> str:
    """The command that launched this process, as a user would type it: `python -m module args` for
    modules (no interpreter path), `python script args` otherwise."""
    import shlex
    import sys

    argv = list(sys.argv)
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name:
        argv = ["python", "-m", spec.name.removesuffix(".__main__"), *argv[1:]]
    else:
        argv = ["python", *argv]
    return shlex.join(argv)
