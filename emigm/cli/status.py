"""A transient status on a terminal while the command's modules (PyTorch) load, which takes seconds:
`python -m emigm` / `emigm` show "loading PyTorch ..." at once and erase it before the command's own
output, so a bad input still gets its one error line and a log (not a terminal) gets nothing."""
from __future__ import annotations

import os
import sys
from typing import Callable


def loading(text: str = "emigm: loading PyTorch ...") -> Callable[[], None]:
    """Show `text` on stderr when it is a terminal (and EMIGM_PROGRESS is not `off` or `lines`); return
    the function that erases it."""
    forced = os.environ.get("EMIGM_PROGRESS", "").strip().lower()
    try:
        shown = forced == "bar" or (forced not in ("off", "lines") and sys.stderr.isatty())
    except (AttributeError, ValueError):
        shown = False
    if not shown or len(sys.argv) > 1 and sys.argv[1] in ("-h", "--help"):
        return lambda: None
    sys.stderr.write(text)
    sys.stderr.flush()

    def erase() -> None:
        sys.stderr.write("\r\033[K")
        sys.stderr.flush()

    return erase
