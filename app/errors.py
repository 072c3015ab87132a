"""User errors as gr.Error: bad input (out-of-range values, unknown names, missing assets) reaches the
user as one line, never a stack trace, and the app keeps serving."""
from __future__ import annotations

import functools
import inspect
import logging

import gradio as gr

log = logging.getLogger("emigm.app")
USER_ERRORS = (ValueError, KeyError, OSError)  # CheckpointError is a ValueError


def _message(e: Exception) -> str:
    text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    return text.splitlines()[0] if text else type(e).__name__


def _as_gr_error(fn, e: Exception) -> gr.Error:
    """A gr.Error carrying the user error's message (a gr.Error passes through unchanged)."""
    if isinstance(e, gr.Error):
        return e
    log.info("user error in %s: %s", fn.__name__, e)
    return gr.Error(_message(e), print_exception=False)


def user_errors(fn):
    """Wrap a handler (plain or generator) so USER_ERRORS become gr.Error with their message.
    functools.wraps keeps the signature, so API parameter names and gr.Request injection still work."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except USER_ERRORS as e:
                raise _as_gr_error(fn, e) from None
        return gen

    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as e:
            raise _as_gr_error(fn, e) from None
    return call
