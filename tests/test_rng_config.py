import json

import pytest
import torch

from emigm.core import rng
from emigm.core.config import RunConfig, apply_overrides, from_dict, from_json, to_json
from emigm.core.presets import PRESETS, get_preset


def test_uniform_and_normal_moments():
    seeds = torch.arange(8)
    u = rng.uniform(seeds, 7, tail=(20000,))
    assert 0 < float(u.min()) and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 0.005 and abs(float(u.var()) - 1 / 12) < 0.002
    n = rng.normal(seeds, 3, tail=(20000,))
    assert abs(float(n.mean())) < 0.01 and abs(float(n.std()) - 1) < 0.01


def test_addressed_not_consumed():
    """The same address gives the same numbers whatever the batch; other keys give others."""
    a = rng.normal(torch.tensor([5, 6, 7]), 1, 2, tail=(4,))
    b = rng.normal(torch.tensor([7]), 1, 2, tail=(4,))
    assert torch.equal(a[2], b[0])
    assert not torch.equal(a[0], a[1])
    c = rng.normal(torch.tensor([5]), 1, 3, tail=(4,))
    assert not torch.equal(a[0], c[0])
    # tensor keys broadcast per row
    d = rng.uniform(torch.tensor([5, 5]), torch.tensor([1, 2]))
    assert d[0] == rng.uniform(torch.tensor([5]), 1)[0] and d[1] == rng.uniform(torch.tensor([5]), 2)[0]


def test_streams_uncorrelated():
    s = torch.arange(2)
    x = rng.uniform(s, rng.STREAM_WHERE, 0, tail=(5000,)).flatten()
    y = rng.uniform(s, rng.STREAM_WHAT, 0, tail=(5000,)).flatten()
    assert abs(float(torch.corrcoef(torch.stack([x, y]))[0, 1])) < 0.05


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_round_trip_json(name):
    cfg = get_preset(name)
    assert from_json(RunConfig, to_json(cfg)) == cfg


def test_overrides_parse_types_and_reject_unknown():
    cfg = apply_overrides(get_preset("test-tiny"), [("train.blr", "3e-4"), ("backbone.mae", "false"),
                                                   ("train.betas", "0.9,0.99"), ("train.steps", "7")])
    assert cfg.train.blr == 3e-4 and cfg.backbone.mae is False and cfg.train.betas == (0.9, 0.99)
    assert cfg.train.steps == 7
    with pytest.raises(ValueError, match="valid"):
        apply_overrides(cfg, [("train.lrr", "1")])
    with pytest.raises(ValueError, match="valid: linear, cosine, exp"):
        apply_overrides(cfg, [("masking.schedule", "square")])
    with pytest.raises(ValueError, match="integer"):
        apply_overrides(cfg, [("train.steps", "many")])


def test_unknown_preset_lists_valid():
    with pytest.raises(ValueError, match="fmnist-emigm"):
        get_preset("nope")


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unknown config key"):
        from_dict(RunConfig, json.loads('{"bogus": 1}'))


def test_head_must_fit_tokenizer():
    from dataclasses import replace
    cfg = get_preset("test-tiny")
    with pytest.raises(ValueError, match="categorical"):
        replace(cfg, head=replace(cfg.head, kind="categorical"))
