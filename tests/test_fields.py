"""Option fields (emigm.core.fields): validation at construction pinned at its boundaries, and the ranges and
defaults of the user-facing sampler and guidance options (the CLI and the app read them from here)."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from emigm.core.fields import (
    Spec,
    all_of,
    check_fields,
    check_value,
    coerce_tuples,
    describe,
    field_names,
    interval_check,
    option,
    option_fields,
)


@dataclass(frozen=True)
class Opts:
    n: int = option(3, "an integer in [1, 10]", low=1, high=10)
    x: float = option(0.5, "(0, 1]", low=0.0, high=1.0, open_low=True)
    y: float = option(0.5, "[0, 1)", low=0.0, high=1.0, open_high=True)
    u: float = option(1.0, "unbounded")
    pair: tuple[float, float] = option((0.1, 0.2), "an interval", low=0.0, high=1.0)
    name: str = option("a", "a choice", choices=("a", "b", ""))
    flag: bool = option(False, "a switch")
    free: str = "not an option"

    def __post_init__(self) -> None:
        coerce_tuples(self)
        check_fields(self, all_of(interval_check("pair")))


@pytest.mark.parametrize("kwargs,match", [
    (dict(n=2.5), "n must be a whole number, got 2.5"),
    (dict(n=3.0), "n must be a whole number, got 3.0"),
    (dict(n=True), "n must be an integer, got True"),
    (dict(n="3"), "n must be an integer, got '3'"),
    (dict(n=0), r"n must be in \[1, 10\], got 0"),
    (dict(n=11), r"n must be in \[1, 10\], got 11"),
    (dict(x=float("nan")), "x must be a finite number, got nan"),
    (dict(x=float("inf")), "x must be a finite number, got inf"),
    (dict(u=float("-inf")), "u must be a finite number, got -inf"),
    (dict(u=float("nan")), "u must be a finite number"),
    (dict(x=0.0), r"x must be in \(0, 1\], got 0.0"),
    (dict(x=-1e-12), r"x must be in \(0, 1\]"),
    (dict(x=1.0000001), r"x must be in \(0, 1\]"),
    (dict(y=1.0), r"y must be in \[0, 1\), got 1.0"),
    (dict(y=-1e-12), r"y must be in \[0, 1\)"),
    (dict(x=False), "x must be a number, got False"),
    (dict(x="0.5"), "x must be a number"),
    (dict(pair=(0.3, 0.2)), r"pair needs t_lo < t_hi, got \(0.3, 0.2\)"),
    (dict(pair=(0.2, 0.2)), "pair needs t_lo < t_hi"),
    (dict(pair=(0.1,)), r"pair must be 2 numbers, got \(0.1,\)"),
    (dict(pair=(0.1, 0.2, 0.3)), "pair must be 2 numbers"),
    (dict(pair=(0.1, float("nan"))), "pair must be a finite number"),
    (dict(pair=(-0.1, 0.2)), r"pair must be in \[0, 1\]"),
    (dict(pair=(0.1, 1.5)), r"pair must be in \[0, 1\]"),
    (dict(pair=0.5), "pair must be 2 numbers"),
    (dict(name="c"), "unknown name 'c'; valid: a, b, ''"),
    (dict(flag=1), "flag must be true or false, got 1"),
])
def test_bad_values_raise_one_clear_line(kwargs, match):
    with pytest.raises(ValueError, match=match) as err:
        Opts(**kwargs)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("kwargs", [
    dict(n=1), dict(n=10), dict(x=1.0), dict(x=1e-300), dict(x=1), dict(y=0.0), dict(y=0.999999),
    dict(u=-1e300), dict(u=1e300), dict(pair=(0.0, 1.0)), dict(pair=[0.1, 0.9]), dict(name=""),
    dict(flag=True),
])
def test_allowed_values_including_bounds(kwargs):
    o = Opts(**kwargs)
    for k, v in kwargs.items():
        assert getattr(o, k) == (tuple(v) if isinstance(v, list) else v)
    assert isinstance(o.pair, tuple)


def test_range_text():
    assert Spec("h", low=1, high=10).range_text() == "[1, 10]"
    assert Spec("h", low=0.0, high=1.0, open_low=True).range_text() == "(0, 1]"
    assert Spec("h", low=0.0, high=1.0, open_high=True).range_text() == "[0, 1)"
    assert Spec("h").range_text() == "(-inf, inf)"
    assert Spec("h", low=0.5).range_text() == "[0.5, inf)"
    assert Spec("h", high=2.5).range_text() == "(-inf, 2.5]"


def test_specs_and_names():
    specs = {f.name: s for f, s in option_fields(Opts)}
    assert list(specs) == ["n", "x", "y", "u", "pair", "name", "flag"]  # `free` is no option
    assert specs["pair"].nargs == 2 and specs["n"].nargs == 0 and Spec("h").nargs == 0
    assert (Spec("h").low, Spec("h").high, Spec("h").open_low, Spec("h").open_high) == (None, None, False, False)
    assert specs["name"].names() == ("a", "b", "")
    assert Spec("h", choices=lambda: {"p": 1, "q": 2}).names() == ("p", "q")
    assert Spec("h").names() == ()
    assert field_names(Opts) == ("n", "x", "y", "u", "pair", "name", "flag")
    assert [(n, d) for n, d, _ in describe(Opts)][:2] == [("n", 3), ("x", 0.5)]


def test_check_value_directly():
    spec = Spec("h", low=0, high=5)
    check_value("k", 5, int, spec)
    with pytest.raises(ValueError, match=r"k must be in \[0, 5\], got 6"):
        check_value("k", 6, int, spec)
    check_value("c", "b", str, Spec("h", choices={"a": 1, "b": 2}))
    with pytest.raises(ValueError, match="unknown c 'z'; valid: a, b"):
        check_value("c", "z", str, Spec("h", choices={"a": 1, "b": 2}))


# ----------------------------------------------------------------------------- the user-facing options


def _ranges(cls) -> dict[str, str]:
    return {f.name: s.range_text() for f, s in option_fields(cls) if s.choices is None and f.type != "bool"}


def test_sampler_option_ranges_and_defaults():
    from emigm.sample.sampler import SamplerConfig
    assert _ranges(SamplerConfig) == {"num_steps": "[1, 1024]", "order_temperature": "[0, 100]",
                                      "temperature": "[0, 10]", "head_steps": "[1, 250]", "remask_eta": "[0, 1]",
                                      "draft_steps": "[0, 250]", "threshold_tau": "(0, 1]", "eb_gamma": "[0, 1000]"}
    c = SamplerConfig()
    # the released eMIGM setting (spec sec. 4): 16 steps, exp schedule, binomial counts, random order,
    # DPM-Solver with 8 head steps; MaskGIT's tau_0 = 4.5 for the confidence order
    assert (c.num_steps, c.schedule, c.count_rule, c.order, c.head_solver, c.head_steps) == \
        (16, "exp", "binomial", "random", "dpm", 8)
    assert (c.order_temperature, c.order_anneal, c.temperature, c.draft, c.t_end) == (4.5, "linear", 1.0, True, 1e-5)
    for bad, match in ((dict(num_steps=1025), r"\[1, 1024\]"), (dict(head_steps=251), r"\[1, 250\]"),
                       (dict(head_steps=0), r"\[1, 250\]"), (dict(order_temperature=100.5), r"\[0, 100\]"),
                       (dict(temperature=10.01), r"\[0, 10\]"), (dict(num_steps=8.0), "whole number")):
        with pytest.raises(ValueError, match=match):
            SamplerConfig(**bad)
    SamplerConfig(num_steps=1024, head_steps=250, order_temperature=100.0, temperature=10.0)
    SamplerConfig(num_steps=1, head_steps=1, order_temperature=0.0, temperature=0.0)


def test_guidance_option_ranges():
    from emigm.core.guidance import GuidanceConfig
    assert _ranges(GuidanceConfig) == {"cfg_scale": "[0, 50]", "cfg_interval": "[0, 1]", "sg_scale": "[0, 20]",
                                       "sg_interval": "[0, 1]"}
