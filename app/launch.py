"""The explorer's launcher: `python app.py ...` from the repository, `emigm-explorer ...` installed
(`[--model NAME_OR_PATH ...] [--checkpoint X.pth --vae kl16.ckpt] [--device auto|cpu|cuda] [--host H]
[--port P] [--share]`).

Offers the shipped models (assets/<name>/), any export folder or checkpoint given, or, when there is
none, random-init presets with a banner.
"""
from __future__ import annotations

import argparse
import atexit
import os
import shutil
import signal
import socket
import sys
import tempfile

from emigm.core.fields import parse_int  # no torch: the environment is set before torch loads


def _prog() -> str:
    """The command as the user typed it: `emigm-explorer` when installed, else `python app.py`."""
    return "emigm-explorer" if os.path.basename(sys.argv[0]).startswith("emigm-explorer") else "python app.py"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=_prog(), description="eMIGM Explorer: watch a masked image generator reveal an image token by token.")
    p.add_argument("--model", action="append", default=None, metavar="NAME_OR_PATH",
                   help="model to offer (repeatable): a shipped model name, any export folder, a Hub model "
                        "(hf:OWNER/NAME[@REVISION]), a training checkpoint (ckpt-*.pt), or a preset (random init); "
                        "default: every shipped model, else "
                        "the random-init presets whose tokenizer is shipped")
    p.add_argument("--checkpoint", action="append", default=None, metavar="PATH",
                   help="an official eMIGM / MAR ImageNet checkpoint (.pth) to offer (repeatable; needs --vae)")
    p.add_argument("--vae", default="", help="the KL-16 VAE (kl16.ckpt) that official ImageNet checkpoints decode with")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--threads", default="1",
                   help="torch threads while sampling on CPU (default 1: the per-token ops are tiny and extra "
                        "threads only contend on a small shared CPU; 0 leaves torch's default)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for every interface)")
    p.add_argument("--port", default="7860", help="port to listen on, in [1, 65535]")
    p.add_argument("--share", action="store_true", help="also serve through a public Gradio share link")
    return p.parse_args(argv)


def private_temp_dir() -> None:
    """Gradio's cache in a folder of this process (unless GRADIO_TEMP_DIR is set), removed at exit, also
    on SIGTERM: temp files never outlive the app."""
    if "GRADIO_TEMP_DIR" not in os.environ:
        os.environ["GRADIO_TEMP_DIR"] = tempfile.mkdtemp(prefix="emigm-explorer-cache-")
        atexit.register(shutil.rmtree, os.environ["GRADIO_TEMP_DIR"], True)
    # the lessons' lazily cached runs go there too, not into the current folder (.gradio/)
    os.environ.setdefault("GRADIO_EXAMPLES_CACHE", os.path.join(os.environ["GRADIO_TEMP_DIR"], "examples"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))


def one_thread_count(threads: int) -> None:
    """Every thread of the process samples with `threads` torch threads (before torch starts). Why: the
    requests run on a pool of worker threads, and OpenMP gives each its own thread count; set once here,
    no request ever changes the process-wide count while another one computes."""
    if threads and "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(threads)


def check_flags(args: argparse.Namespace) -> None:
    """--threads and --port read in ASCII digits (the CLI's parser) and in range, and the port free, before
    anything is loaded or sampled: ValueError, one line naming the flag as typed."""
    for flag, low, high in (("threads", 0, 1024), ("port", 1, 65535)):
        raw = getattr(args, flag)
        try:
            value = parse_int(str(raw))
        except ValueError:
            raise ValueError(f"--{flag} must be a whole number in [{low}, {high}], got {raw!r}") from None
        if not low <= value <= high:
            raise ValueError(f"--{flag} must be in [{low}, {high}], got {raw}")
        setattr(args, flag, value)
    with socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET) as s:
        try:
            s.bind((args.host, args.port))
        except OSError as e:
            raise ValueError(f"--port {args.port} on {args.host} cannot be used ({e.strerror or e}); another "
                             "program holds it: stop it or give another --port") from None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        check_flags(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    private_temp_dir()
    one_thread_count(args.threads)
    # torch and gradio are imported only now, after the environment they read at import is set
    from emigm.core.devices import resolve_device

    try:
        device = resolve_device(args.device)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from app.engine import Engine
    from app.memory import limit_arenas
    from app.ui import build_demo, launch_kwargs

    limit_arenas()

    try:
        engine = Engine((args.model or []) + (args.checkpoint or []), device=device,
                        num_threads=(args.threads or None) if device.type == "cpu" else None, vae=args.vae)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    demo = build_demo(engine)  # samples the opening run once, so the page shows it at once
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, **launch_kwargs())
    return 0


if __name__ == "__main__":
    sys.exit(main())
