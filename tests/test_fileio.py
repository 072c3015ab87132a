"""Atomic writes: content and mode, and the failures: a full disk, a read-only folder, a file in the way.
Each failure is one line naming the path, leaves no temp file and keeps the existing file."""
from __future__ import annotations

import errno
import os
import stat
import tempfile

import pytest
import torch

from emigm.core import fileio
from emigm.core.fileio import WriteError, atomic_write, ensure_writable_dir, torch_save, write_bytes, write_text


def _leftovers(folder) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n.endswith(".tmp"))


def test_write_bytes_and_torch_save(tmp_path) -> None:
    path = write_bytes(tmp_path / "sub" / "a.bin", b"hello")
    assert path.read_bytes() == b"hello"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    write_text(path, "again")
    assert path.read_text() == "again"
    torch_save({"x": torch.arange(3)}, tmp_path / "t.pt")
    assert torch.equal(torch.load(tmp_path / "t.pt")["x"], torch.arange(3))
    assert _leftovers(tmp_path) == [] and _leftovers(tmp_path / "sub") == []


@pytest.fixture
def dev_full(monkeypatch):
    """Temp files whose descriptor writes to /dev/full: the kernel answers ENOSPC, as on a full disk."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    real = tempfile.mkstemp

    def mkstemp(*args, **kwargs):
        fd, name = real(*args, **kwargs)
        os.close(fd)
        return os.open("/dev/full", os.O_WRONLY), name

    monkeypatch.setattr(fileio.tempfile, "mkstemp", mkstemp)


@pytest.mark.parametrize("writer", ["bytes", "torch"])
def test_full_disk_says_disk_full_and_keeps_the_old_file(tmp_path, dev_full, writer) -> None:
    target = tmp_path / "ckpt.pt"
    target.write_bytes(b"old")
    with pytest.raises(WriteError) as info:
        if writer == "bytes":
            write_bytes(target, b"x" * 100_000)
        else:
            torch_save({"w": torch.zeros(100_000)}, target)
    msg = str(info.value)
    assert "disk full" in msg and str(target) in msg and "\n" not in msg
    assert info.value.errno == errno.ENOSPC
    assert target.read_bytes() == b"old" and _leftovers(tmp_path) == []


def test_read_only_folder_is_named(tmp_path, monkeypatch) -> None:
    def refuse(*args, **kwargs):  # as on a read-only mount (root ignores chmod, so we simulate)
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(fileio.tempfile, "mkstemp", refuse)
    with pytest.raises(WriteError, match=r"cannot write .*x\.json: the folder is read-only or not writable"):
        write_text(tmp_path / "x.json", "{}")
    with pytest.raises(WriteError, match=r"cannot use run folder .*: the folder is read-only or not writable"):
        ensure_writable_dir(tmp_path / "run", "run folder")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_for_real(tmp_path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    (folder / "keep").write_text("old")
    folder.chmod(0o555)
    try:
        with pytest.raises(WriteError, match="read-only or not writable"):
            write_text(folder / "keep", "new")
        assert (folder / "keep").read_text() == "old"
    finally:
        folder.chmod(0o755)


def test_a_file_in_the_way(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(WriteError, match=r"cannot use run folder .*file/run: a file is in the way"):
        ensure_writable_dir(blocker / "run", "run folder")
    with pytest.raises(WriteError, match="a file is in the way"):
        ensure_writable_dir(blocker, "run folder")
    with pytest.raises(WriteError, match="a file is in the way"):
        write_bytes(blocker / "x.bin", b"")


def test_other_exceptions_pass_through_and_clean_up(tmp_path) -> None:
    def boom(f):
        f.write(b"partial")
        raise KeyError("not an OS error")

    with pytest.raises(KeyError):
        atomic_write(tmp_path / "y.bin", boom)
    assert os.listdir(tmp_path) == []
