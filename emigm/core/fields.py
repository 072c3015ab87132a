"""Option fields: the one description of every user-facing config field.

A field declared with `option(...)` carries its help text, its valid choices (a registry dict or a
tuple) or numeric range, and how the CLI spells it. From that one description:
- `check_fields(cfg)` validates a dataclass at construction (its `__post_init__`): numbers must be
  finite and in range, integers whole, choices known; errors are one line naming the field, the value
  and what is allowed;
- `emigm.cli.main` generates its arguments (`add_field_args`) and `app.controls` its widgets from the same
  fields, so no name, default, choice list or range is written twice.

A refused value raises `FieldError`, a ValueError that knows which field it is about: `named(x)` gives the
same message naming the field as the user spelled it (the CLI's `--steps` for `num_steps`, a config file's
`backbone.width`), and the explorer shows it next to that field's control.
"""
from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

Choices = Mapping[str, Any] | tuple[str, ...] | Callable[[], Iterable[str]]


NAME = "{name}"  # where a FieldError's message names its field


class FieldError(ValueError):
    """A value refused for one field. field: the name the message is about; str(): the one-line
    message; named(x): the same message naming the field as x."""

    def __init__(self, field: str, template: str) -> None:
        self.field = field
        self.template = template  # the message with NAME where the field's name goes
        super().__init__(template.replace(NAME, field))

    def named(self, name: str) -> str:
        return self.template.replace(NAME, name)

    def renamed(self, name: str) -> "FieldError":
        """The same error about a field now called `name`."""
        return FieldError(name, self.template)


@dataclass(frozen=True)
class Spec:
    """What a field accepts. low / high: inclusive bounds (None: unbounded); choices: a registry (its
    keys are the valid names), a tuple of names, or a callable returning either; cli: the option's CLI spelling (default
    --field-name); labels: short descriptions of the choices for menus."""

    help: str
    low: float | None = None
    high: float | None = None
    choices: Choices | None = None
    cli: str = ""
    labels: Mapping[str, str] | None = None
    nargs: int = 0  # tuple fields: number of values
    open_low: bool = False  # low itself is not allowed
    open_high: bool = False  # high itself is not allowed

    def range_text(self) -> str:
        """The allowed range as an interval, e.g. [1, 49] or (0, inf)."""
        left = "(" if self.open_low or self.low is None else "["
        right = ")" if self.open_high or self.high is None else "]"
        return f"{left}{_fmt(self.low, '-inf')}, {_fmt(self.high)}{right}"

    def names(self) -> tuple[str, ...]:
        """The valid choices; a callable `choices` is resolved here (lazy registries that would
        otherwise be circular imports)."""
        if self.choices is None:
            return ()
        return tuple(self.choices() if callable(self.choices) else self.choices)


def option(default: Any, help: str, *, low: float | None = None, high: float | None = None,
           choices: Choices | None = None, cli: str = "", labels: Mapping[str, str] | None = None,
           open_low: bool = False, open_high: bool = False) -> Any:
    """A dataclass field with a Spec in its metadata."""
    nargs = len(default) if isinstance(default, tuple) else 0
    spec = Spec(help, low, high, choices, cli, labels, nargs, open_low, open_high)
    return field(default=default, metadata={"spec": spec})


def spec_of(f: dataclasses.Field) -> Spec | None:
    return f.metadata.get("spec")


def option_fields(cls_or_obj: Any) -> list[tuple[dataclasses.Field, Spec]]:
    """(field, spec) for every option field of a dataclass, in declaration order."""
    return [(f, s) for f in dataclasses.fields(cls_or_obj) if (s := spec_of(f)) is not None]


def show(value: Any) -> str:
    """A value for an error message: repr, with very long integers shortened (1e300 parsed as an int
    would otherwise fill the terminal)."""
    text = repr(value)
    if isinstance(value, int) and not isinstance(value, bool) and len(text) > 24:
        return f"{'-' if value < 0 else ''}a {len(text.lstrip('-'))}-digit number"
    return text


_INT = re.compile(r"[+-]?[0-9]+")
_EXP_INT = re.compile(r"[+-]?[0-9]+(?:\.[0-9]*)?[eE][+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[+-]?(?:nan|inf|infinity)", re.IGNORECASE)


def parse_int(text: str, allow_exponent: bool = False) -> int:
    """An integer written in ASCII digits with an optional sign (with `allow_exponent`, also a whole
    number such as 1e3). ValueError otherwise. Why not int(): it also reads '３' (fullwidth), other
    scripts' digits and '1_000', so a typo could pass as a number."""
    t = text.strip()
    if _INT.fullmatch(t):
        return int(t)
    if allow_exponent and _EXP_INT.fullmatch(t):
        x = float(t)
        if math.isfinite(x) and x.is_integer():
            return int(x)
    raise ValueError(f"not an integer in ASCII digits: {text!r}")


def parse_float(text: str) -> float:
    """A number written in ASCII (digits, '.', an exponent, or nan / inf, which the range checks then
    refuse by name). ValueError otherwise; float() would also read '３.５'."""
    t = text.strip()
    if not _FLOAT.fullmatch(t):
        raise ValueError(f"not a number in ASCII: {text!r}")
    return float(t)


def _number(name: str, value: Any, integer: bool, spec: Spec) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FieldError(name, f"{NAME} must be {'an integer' if integer else 'a number'}, got {show(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise FieldError(name, f"{NAME} must be a finite number, got {value!r}")
    if integer and not isinstance(value, int):
        raise FieldError(name, f"{NAME} must be a whole number, got {value!r}")
    lo, hi = spec.low, spec.high
    below = lo is not None and (value <= lo if spec.open_low else value < lo)
    above = hi is not None and (value >= hi if spec.open_high else value > hi)
    if below or above:
        raise FieldError(name, f"{NAME} must be in {spec.range_text()}, got {show(value)}")


def check_number(name: str, value: Any, low: float | None = None, high: float | None = None, *,
                 integer: bool = False, open_low: bool = False, open_high: bool = False) -> None:
    """Validate one number outside a dataclass (a CLI option such as --num-images, a library argument),
    with the same one-line message as the option fields: finite, whole when `integer`, in range."""
    _number(name, value, integer, Spec("", low, high, open_low=open_low, open_high=open_high))


def _fmt(x: float | None, none: str = "inf") -> str:
    if x is None:
        return none
    return str(int(x)) if float(x).is_integer() else str(x)


def check_value(name: str, value: Any, tp: Any, spec: Spec) -> None:
    """Raise ValueError (one line) unless `value` fits the field's type and spec."""
    if spec.choices is not None:
        if value not in spec.names():
            valid = ", ".join(repr(n) if n == "" else n for n in spec.names())
            raise FieldError(name, f"unknown {NAME} {value!r}; valid: {valid}")
        return
    origin = typing.get_origin(tp)
    if origin is tuple:
        if not isinstance(value, tuple) or len(value) != spec.nargs:
            raise FieldError(name, f"{NAME} must be {spec.nargs} numbers, got {value!r}")
        for v in value:
            _number(name, v, False, spec)
        return
    if tp is bool:
        if not isinstance(value, bool):
            raise FieldError(name, f"{NAME} must be true or false, got {value!r}")
        return
    if tp in (int, float):
        _number(name, value, tp is int, spec)


def check_fields(obj: Any, extra: Callable[[Any], None] | None = None) -> None:
    """Validate every option field of the dataclass instance `obj` (call from __post_init__)."""
    hints = typing.get_type_hints(type(obj))
    for f, spec in option_fields(obj):
        check_value(f.name, getattr(obj, f.name), hints[f.name], spec)
    if extra is not None:
        extra(obj)


def coerce_tuples(obj: Any) -> None:
    """Turn list values of tuple-typed fields into tuples (JSON gives lists); for frozen dataclasses."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if typing.get_origin(hints[f.name]) is tuple and isinstance(v, list):
            object.__setattr__(obj, f.name, tuple(v))


def field_names(*classes: Any) -> tuple[str, ...]:
    return tuple(f.name for cls in classes for f, _ in option_fields(cls))


def interval_check(name: str) -> Callable[[Any], None]:
    """An `extra` check for a (t_lo, t_hi) field: 0 <= t_lo < t_hi <= 1."""
    def check(obj: Any) -> None:
        lo, hi = getattr(obj, name)
        if not lo < hi:
            raise FieldError(name, f"{NAME} needs t_lo < t_hi, got ({lo}, {hi})")
    return check


def all_of(*checks: Callable[[Any], None]) -> Callable[[Any], None]:
    def run(obj: Any) -> None:
        for check in checks:
            check(obj)
    return run


def describe(cls: Any) -> Iterable[tuple[str, Any, Spec]]:
    """(name, default, spec) per option field: for help texts and generated controls."""
    for f, spec in option_fields(cls):
        yield f.name, f.default, spec
