"""Progress of long work (encoding a dataset, sampling and scoring for an evaluation, training a
tokenizer or classifier, building the static site): a tqdm bar with an ETA on a terminal, and one
line per stage when the output is not a terminal (a log file, CI, a pipe), so a log shows what is
running without a screen of carriage returns. The line is written once the stage has done its first
piece of work (its first update), or when it ends if it has no pieces: a stage refused before any work
leaves only its error line.

`EMIGM_PROGRESS` overrides the choice: `bar`, `lines` or `off`. Progress goes to stderr; results stay on
stdout.
"""
from __future__ import annotations

import io
import os
import sys
import time
from typing import Iterable, Iterator, TextIO, TypeVar

from tqdm import tqdm

T = TypeVar("T")
MODES = ("bar", "lines", "off")


def mode(stream: TextIO | None = None) -> str:
    """`bar` on a terminal, `lines` otherwise; EMIGM_PROGRESS (bar, lines, off) overrides."""
    forced = os.environ.get("EMIGM_PROGRESS", "").strip().lower()
    if forced in MODES:
        return forced
    stream = stream if stream is not None else sys.stderr
    try:
        return "bar" if stream.isatty() else "lines"
    except (AttributeError, ValueError):  # a closed or replaced stream
        return "lines"


def _columns(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return 0


def line(text: str, stream: TextIO | None = None) -> None:
    """One progress line (unless progress is off), flushed at once."""
    stream = stream if stream is not None else sys.stderr
    if mode(stream) != "off":
        print(text, file=stream, flush=True)


class Stage:
    """One stage of long work: `with Stage("sampling", total=1000, unit="img") as s: ... s.update(n)`.
    On a terminal a tqdm bar (with an ETA when the total is known); otherwise one line when it starts.
    `enabled=False` shows nothing (a worker rank, or a caller that asked for quiet)."""

    def __init__(self, desc: str, total: int | None = None, unit: str = "it", enabled: bool = True,
                 stream: TextIO | None = None, detail: str = "") -> None:
        self.desc, self.total, self.unit, self.detail = desc, total, unit, detail
        self.stream = stream if stream is not None else sys.stderr
        self.mode = mode(self.stream) if enabled else "off"
        self.bar: tqdm | None = None
        self.announced = False
        self.count, self.start = 0, time.perf_counter()

    def __enter__(self) -> "Stage":
        self.start = time.perf_counter()
        if self.mode == "bar":
            sized = _columns(self.stream) > 0  # a terminal that reports no width (0 x 0) gets 100 columns
            self.bar = tqdm(total=self.total, desc=self.desc, unit=self.unit, file=self.stream, dynamic_ncols=sized,
                            ncols=None if sized else 100, leave=True)
        self.announced = False
        return self

    def update(self, n: int = 1) -> None:
        self.count += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.mode == "lines" and not self.announced:
            self.announced = True
            size = f" ({self.total} {self.unit})" if self.total is not None else ""
            extra = f"; {self.detail}" if self.detail else ""
            print(f"{self.desc}{size}{extra} ...", file=self.stream, flush=True)

    def postfix(self, **values: object) -> None:
        """Figures shown after the bar (loss, images/s); nothing in line mode."""
        if self.bar is not None:
            self.bar.set_postfix({k: v for k, v in values.items()}, refresh=False)

    def __exit__(self, exc_type: type | None = None, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.mode == "lines" and not self.announced and exc_type is None:
            self.announced = True
            print(f"{self.desc}: done in {self.seconds:.1f} s", file=self.stream, flush=True)

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start


def track(items: Iterable[T], desc: str, total: int | None = None, unit: str = "it", enabled: bool = True,
          detail: str = "") -> Iterator[T]:
    """Iterate `items` inside a Stage, one update per item."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Stage(desc, total, unit, enabled, detail=detail) as stage:
        for item in items:
            yield item
            stage.update(1)
