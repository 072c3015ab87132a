"""The order registry (emigm.sample.orders.ORDERS) and the orders added through it: one entry per order,
read by the options, the capabilities and the sampler; the checkerboard order against an independent
construction."""
from __future__ import annotations

import pytest
import torch
from test_fast_path import assert_tokens_close, make

from emigm.core.guidance import GuidanceConfig
from emigm.sample.capabilities import choice_reasons
from emigm.sample.options import ORDER_HELP, SamplerConfig
from emigm.sample.orders import KINDS, ORDERS, Order, get_order
from emigm.sample.sampler import sample, sample_steps


@pytest.fixture(scope="module")
def emigm_like():
    return make("test-tiny")


@pytest.fixture(scope="module")
def maskgit():
    return make("test-tiny-vq", mae=False)


# ----------------------------------------------------------------------------- the registry


def test_every_entry_has_a_kind_its_functions_and_help():
    for name, o in ORDERS.items():
        assert o.kind in KINDS and o.help and ORDER_HELP[name] == o.help
        assert (o.priority is not None) == (o.kind == "priority")
        assert (o.score is not None) == (o.kind != "priority") and (o.count is not None) == (o.kind == "adaptive")
        assert (o.needs is not None) == (o.kind != "priority")  # a value score needs token probabilities


def test_an_entry_with_the_wrong_functions_for_its_kind_is_refused():
    with pytest.raises(ValueError, match="unknown order kind 'guess'"):
        Order("guess", "x", score=lambda lp, c: lp[:, 0])
    with pytest.raises(ValueError, match="a score order takes exactly the functions of its kind"):
        Order("score", "x", priority=lambda s, k, n, g: torch.zeros(n))
    with pytest.raises(ValueError, match="unknown order 'zigzag'; valid: random, confidence"):
        get_order("zigzag")
    with pytest.raises(ValueError, match="unknown order .zigzag.; valid: random, confidence"):
        SamplerConfig(order="zigzag")


def test_capabilities_refuse_exactly_the_orders_that_need_probabilities_on_a_diffusion_head(emigm_like, maskgit):
    refused = choice_reasons(emigm_like)["order"]
    assert set(refused) == {n for n, o in ORDERS.items() if o.needs is not None}
    for name in ORDERS:
        if name not in refused:
            assert name in refused["confidence"]  # the reason lists what this head can run
    assert "order" not in choice_reasons(maskgit)


# ----------------------------------------------------------------------------- checkerboard


@pytest.mark.parametrize("side", [3, 4, 7])
def test_checkerboard_keys_put_one_colour_first(side):
    L = side * side
    keys = ORDERS["checkerboard"].priority(torch.tensor([5, 9]), 2, L, None)
    colour = torch.tensor([(r + c) % 2 for r in range(side) for c in range(side)])
    assert keys.shape == (2, L)
    for row in keys:
        assert bool((row[colour == 0].max() < row[colour == 1].min()))
        assert bool(((row - colour) > 0).all() and ((row - colour) < 1).all())
    assert not torch.equal(keys[0], keys[1])  # uniform within a colour, per seed
    with pytest.raises(ValueError, match="need a square grid; 12 tokens"):
        ORDERS["checkerboard"].priority(torch.tensor([0]), 0, 12, None)


@pytest.mark.parametrize("rule", ["binomial", "exact"])
def test_checkerboard_reveals_the_skeleton_before_the_rest(emigm_like, maskgit, rule):
    """On either head kind: no token of the second colour is revealed while one of the first is masked,
    every token once; the path does not depend on guidance; batch size 1 equals batch size 2 per seed."""
    side = 4
    colour = torch.tensor([(r + c) % 2 for r in range(side) for c in range(side)]).bool()
    for model in (emigm_like, maskgit):
        cfg = SamplerConfig(num_steps=6, order="checkerboard", count_rule=rule, head_steps=2)
        states = list(sample_steps(model, [1, 4], [3, 8], cfg))
        for st in states:
            for b in range(2):
                if bool((st.revealed[b] & colour).any()):
                    assert not bool((st.mask_after[b] & ~colour).any())
        assert states[-1].done
        guided = list(sample_steps(model, [1, 4], [3, 8], cfg, GuidanceConfig(cfg_scale=3.0)))
        assert all(torch.equal(a.revealed, b.revealed) for a, b in zip(states, guided))
        one, both = sample(model, [4], [8], cfg), sample(model, [1, 4], [3, 8], cfg)
        assert torch.equal(one.revisions[0], both.revisions[1])
        if model.head.discrete:
            assert torch.equal(one.tokens[0], both.tokens[1])
        else:
            assert_tokens_close(one.tokens[0], both.tokens[1])
