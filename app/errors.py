"""User errors as gr.Error: bad input (out-of-range values, unknown names, missing assets) reaches the
user as one line, never a stack trace and never a server path, and the app keeps serving.

A handler wrapped with `user_errors(on_error=...)` first yields `on_error(self, message, notes)`, so the
status line says what to change, the refused value's control gets the message next to it (`notes`:
{control: message}, from the FieldError's field) and every other view keeps what it showed; then it
raises the gr.Error that gradio_client reports, with no toast on the page (the page already says it)."""
from __future__ import annotations

import functools
import inspect
import logging
import os
import re
from pathlib import Path
from typing import Any, Callable

import gradio as gr

from emigm.core.fields import FieldError

from .controls import control_of

log = logging.getLogger("emigm.app")
USER_ERRORS = (ValueError, KeyError, OSError)  # CheckpointError is a ValueError
ROOT = str(Path(__file__).resolve().parent.parent)
_PATH = re.compile(r"(?<![\w.])(/[^\s'\"`:,;()]+)")


def _short_path(match: re.Match) -> str:
    p = match.group(1)
    if p.startswith(ROOT + os.sep):
        return os.path.relpath(p, ROOT)
    parts = Path(p).parts
    return os.path.join("…", *parts[-2:]) if len(parts) > 2 else p


def clean(text: str) -> str:
    """The first line of a message with absolute paths shortened (repository-relative, or …/dir/file)."""
    first = text.splitlines()[0] if text else ""
    return _PATH.sub(_short_path, first)


def message(e: BaseException) -> str:
    text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    return clean(text) or type(e).__name__


def as_gr_error(fn_name: str, e: BaseException, toast: bool = True) -> gr.Error:
    """A gr.Error carrying the user error's message, logged as one line (no traceback); `toast`: shown
    by the page as a toast (off where the page shows it itself)."""
    if isinstance(e, gr.Error):
        return gr.Error(clean(str(e.message)), duration=8, print_exception=False, visible=toast)
    msg = message(e)
    log.info("user error in %s: %s", fn_name, msg)
    return gr.Error(msg, duration=8, print_exception=False, visible=toast)


def notes_of(e: BaseException) -> dict[str, str]:
    """{control: message} for a refused value (a FieldError names its field), else {}."""
    return {control_of(e.field): message(e)} if isinstance(e, FieldError) else {}


def user_errors(fn: Callable | None = None, *, on_error: Callable[[Any, str, dict], Any] | None = None):
    """Wrap a handler (plain or generator; a method when on_error takes self) so USER_ERRORS and gr.Error
    become one clean gr.Error. on_error(self, message, notes) -> the outputs to show first (a generator
    handler yields them; keeps the previous views with gr.skip())."""
    def wrap(fn):
        name = fn.__name__
        if inspect.isgeneratorfunction(fn):
            @functools.wraps(fn)
            def gen(*args, **kwargs):
                try:
                    yield from fn(*args, **kwargs)
                except (*USER_ERRORS, gr.Error) as e:
                    err = as_gr_error(name, e, toast=on_error is None)
                    if on_error is not None:
                        yield on_error(args[0] if args else None, err.message, notes_of(e))
                    raise err from None
            return gen

        @functools.wraps(fn)
        def call(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except (*USER_ERRORS, gr.Error) as e:
                raise as_gr_error(name, e) from None
        return call

    return wrap(fn) if fn is not None else wrap
