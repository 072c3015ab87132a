"""Time to the first output of `python -m emigm train`, on a terminal (a pseudo-terminal) and into a
pipe (a log). Prints, per mode, the seconds to the first byte (on a terminal, the transient "loading
PyTorch" status), to the first complete line, and the first lines themselves; stops the run after
--lines lines or --seconds.

    python3 benchmarks/first_line.py [--preset fmnist-emigm] [--lines 2] [--seconds 120]
"""
from __future__ import annotations

import argparse
import fcntl
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import tempfile
import termios
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def measure(argv: list[str], terminal: bool, want_lines: int, limit: float) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "120"}
    env.pop("EMIGM_PROGRESS", None)
    if terminal:
        parent, child = pty.openpty()
        fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a 120-column terminal
        proc = subprocess.Popen(argv, stdout=child, stderr=child, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
        os.close(child)
        fd = parent
    else:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)
        fd = proc.stdout.fileno()
    start = time.perf_counter()
    first_byte = first_line = None
    buf, lines = b"", []
    try:
        while time.perf_counter() - start < limit and len(lines) < want_lines:
            ready, _, _ = select.select([fd], [], [], 0.05)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            now = time.perf_counter() - start
            first_byte = first_byte if first_byte is not None else now
            buf += chunk
            while b"\n" in buf:
                raw, buf = buf.split(b"\n", 1)
                text = raw.decode(errors="replace").rstrip("\r").split("\r")[-1].replace("\x1b[K", "").strip()
                if text:
                    first_line = first_line if first_line is not None else now
                    lines.append(f"{now:6.2f} s  {text[:110]}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()
        if terminal:
            os.close(fd)
    return {"first_byte": first_byte, "first_line": first_line, "lines": lines}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="fmnist-emigm")
    p.add_argument("--lines", type=int, default=2)
    p.add_argument("--seconds", type=float, default=120.0)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for terminal in (True, False):
            argv = [sys.executable, "-m", "emigm", "train", "--preset", a.preset, "--device", "cpu", "--max-steps",
                    "3", "--out-dir", f"{tmp}/run-{int(terminal)}", "--train.out_dir", tmp]
            r = measure(argv, terminal, a.lines, a.seconds)
            fmt = lambda v: f"{v:.2f} s" if v is not None else "none"
            print(f"{'terminal' if terminal else 'pipe':<8}  first byte {fmt(r['first_byte'])}, "
                  f"first line {fmt(r['first_line'])}")
            for ln in r["lines"]:
                print(f"          {ln}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
