"""Argument types shared by the CLI's commands: numbers read in ASCII only."""
from __future__ import annotations

import argparse
from typing import Callable

from emigm.core.fields import parse_float, parse_int


def _arg_type(parse: Callable[[str], object], kind: str):
    """An argparse type that reads numbers in ASCII only (emigm.core.fields.parse_int / parse_float:
    int() and float() would take '３' or '1_000'); argparse reports "invalid int value: 'x'"."""
    def convert(text: str):
        try:
            return parse(text)
        except ValueError:
            hint = " (ASCII digits only)" if not text.isascii() else ""
            raise argparse.ArgumentTypeError(f"invalid {kind} value: {text!r}{hint}") from None
    convert.__name__ = kind
    return convert


INT, FLOAT = _arg_type(parse_int, "int"), _arg_type(parse_float, "float")
