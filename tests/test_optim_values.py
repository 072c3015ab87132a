"""The optimisation recipe pinned by value: learning-rate schedule, base lr, EMA decay and update,
weight-decay groups (spec sec. 3: AdamW betas (0.9, 0.95), no decay on 1-D params, biases and the head,
lr = blr x batch / 256).

The tests reach the EMA (emigm.train.ema) only through the three helpers below, one per concept."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from emigm.core.config import TrainConfig
from emigm.train.ema import EMA, ema_decay
from emigm.train.optim import base_lr, build_optimizer, no_decay, param_groups, training_schedule
from emigm.train.optim import lr_at as _lr_at

# ----------------------------------------------------------------------------- EMA access (retarget here)


def ema_decay_at(decay: float, step: int, warmup: bool) -> float:
    """The decay used for the update at optimiser step `step`."""
    return ema_decay(decay, step, warmup)


def ema_start(module: nn.Module) -> EMA:
    """A fresh EMA of `module`: its weights, float32."""
    return EMA(module, decay=0.5)


def ema_fold(ema: EMA, module: nn.Module, decay: float) -> None:
    """One EMA update with an explicit decay, in place."""
    ema.decay_at = lambda step: decay  # type: ignore[method-assign]
    ema.update(module, step=0)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """The trainer's learning rate at 0-based optimiser step `step`."""
    return _lr_at(step, training_schedule(cfg))


# ----------------------------------------------------------------------------- learning rate


def _train(**kw) -> TrainConfig:
    base = dict(steps=12, batch_size=512, blr=1e-4, warmup_steps=4, lr_schedule="cosine", min_lr=1e-5)
    return TrainConfig(**{**base, **kw})


def test_base_lr():
    assert base_lr(_train()) == pytest.approx(2e-4)  # 1e-4 x 512 / 256
    assert base_lr(_train(batch_size=256, blr=3e-4)) == pytest.approx(3e-4)
    assert base_lr(_train(batch_size=64)) == pytest.approx(2.5e-5)


def test_warmup_reaches_the_peak_at_step_warmup_minus_one():
    cfg = _train()
    assert [lr_at(k, cfg) for k in range(4)] == pytest.approx([5e-5, 1e-4, 1.5e-4, 2e-4])  # peak (k+1)/4


def test_cosine_values_and_endpoints():
    cfg = _train()
    peak, low = 2e-4, 1e-5
    cos = lambda frac: low + (peak - low) * 0.5 * (1 + math.cos(math.pi * frac))  # noqa: E731
    assert lr_at(4, cfg) == pytest.approx(peak)  # first step after warm-up: the peak
    assert lr_at(6, cfg) == pytest.approx(cos(2 / 8))
    assert lr_at(8, cfg) == pytest.approx((peak + low) / 2)
    assert lr_at(11, cfg) == pytest.approx(cos(7 / 8))
    assert lr_at(12, cfg) == pytest.approx(low)  # min_lr at cfg.steps
    assert lr_at(40, cfg) == pytest.approx(low)  # and after it
    assert lr_at(8, _train(min_lr=0.0)) == pytest.approx(peak / 2)


def test_constant_schedule_and_no_warmup():
    cfg = _train(lr_schedule="constant")
    assert lr_at(0, cfg) == pytest.approx(5e-5) and lr_at(4, cfg) == pytest.approx(2e-4)
    assert lr_at(10**6, cfg) == pytest.approx(2e-4)
    assert lr_at(0, _train(warmup_steps=0, lr_schedule="constant")) == pytest.approx(2e-4)
    assert lr_at(0, _train(warmup_steps=0)) == pytest.approx(2e-4)  # cosine starts at the peak
    assert lr_at(6, _train(warmup_steps=0)) == pytest.approx(1e-5 + 1.9e-4 * 0.5 * (1 + math.cos(math.pi / 2)))


def test_cosine_when_warmup_fills_the_run():
    """steps == warmup_steps: the cosine part has span max(1, 0) = 1 step."""
    cfg = _train(steps=4, warmup_steps=4)
    assert lr_at(3, cfg) == pytest.approx(2e-4) and lr_at(4, cfg) == pytest.approx(2e-4)
    assert lr_at(5, cfg) == pytest.approx(1e-5)


# ----------------------------------------------------------------------------- EMA


@pytest.mark.parametrize("decay,step,warmup,expected", [
    (0.9999, 0, False, 0.9999),
    (0.9999, 10**6, False, 0.9999),
    (0.999, 0, True, 0.1),  # (1 + 0) / (10 + 0)
    (0.999, 8, True, 0.5),  # 9 / 18
    (0.999, 10, True, 0.55),  # 11 / 20
    (0.9, 80, True, 0.9),  # 81 / 90 = 0.9: equal
    (0.9, 89, True, 0.9),  # 90 / 99 > 0.9: the cap
    (0.95, 80, True, 0.9),  # below the cap
])
def test_ema_decay_values(decay, step, warmup, expected):
    assert ema_decay_at(decay, step, warmup) == pytest.approx(expected, abs=1e-15)


class _Tiny(nn.Module):
    def __init__(self, w: list[float], count: int = 0) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w))
        self.register_buffer("count", torch.tensor(count))


def test_ema_update_direction_and_weights():
    """ema <- decay * ema + (1 - decay) * weights: decay 0.75 moves a quarter of the way."""
    ema = ema_start(_Tiny([1.0, 2.0], count=1))
    shadow = ema.state_dict()
    assert shadow["w"].tolist() == [1.0, 2.0] and shadow["w"].dtype == torch.float32
    ema_fold(ema, _Tiny([3.0, 6.0], count=7), 0.75)
    assert shadow["w"].tolist() == [1.5, 3.0]  # 0.75 x 1 + 0.25 x 3, 0.75 x 2 + 0.25 x 6
    assert int(shadow["count"]) == 7 and shadow["count"].dtype == torch.int64  # integers are copied
    ema_fold(ema, _Tiny([3.0, 6.0]), 0.0)
    assert shadow["w"].tolist() == [3.0, 6.0]  # decay 0: the weights themselves
    ema_fold(ema, _Tiny([100.0, 100.0]), 1.0)
    assert shadow["w"].tolist() == [3.0, 6.0]  # decay 1: unchanged


def test_ema_of_a_double_module_is_float32():
    m = _Tiny([0.5]).double()
    ema = ema_start(m)
    shadow = ema.state_dict()
    assert shadow["w"].dtype == torch.float32
    ema_fold(ema, _Tiny([1.5]).double(), 0.5)
    assert shadow["w"].tolist() == [1.0]
    assert shadow["w"].data_ptr() != m.w.data_ptr()  # a copy, not the module's tensor


# ----------------------------------------------------------------------------- weight decay groups


@pytest.mark.parametrize("name,shape,skip", [
    ("blocks.0.attn.qkv.weight", (6, 2), False),
    ("class_emb.weight", (10, 4), False),
    ("blocks.0.norm1.weight", (4,), True),  # 1-D
    ("scale", (), True),  # 0-D
    ("odd.bias", (3, 3), True),  # named bias, even 2-D
    ("biased.weight", (3, 3), False),
    ("diffloss.net.input_proj.weight", (8, 4), True),  # the head
    ("token_head.proj.weight", (8, 4), True),
    ("x.diffloss.weight", (8, 4), False),  # only a prefix counts
])
def test_no_decay_rules(name, shape, skip):
    assert no_decay(name, torch.zeros(shape)) is skip


def test_param_groups_and_optimizer():
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    decay, skip = param_groups(model, 0.02)
    assert decay["names"] == ["0.weight"] and skip["names"] == ["0.bias", "1.weight", "1.bias"]
    assert (decay["weight_decay"], skip["weight_decay"]) == (0.02, 0.0)
    model[1].bias.requires_grad_(False)
    assert param_groups(model, 0.02)[1]["names"] == ["0.bias", "1.weight"]  # frozen ones are left out
    opt = build_optimizer(model, _train(betas=(0.9, 0.95), weight_decay=0.05))
    assert opt.defaults["betas"] == (0.9, 0.95) and opt.defaults["lr"] == pytest.approx(2e-4)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]


def test_train_defaults_follow_the_spec():
    t = TrainConfig()
    assert (t.blr, t.batch_size, t.betas, t.weight_decay, t.grad_clip, t.ema) == \
        (1e-4, 256, (0.9, 0.95), 0.02, 3.0, 0.9999)
    assert (t.lr_schedule, t.min_lr, t.ema_warmup) == ("constant", 0.0, False)
