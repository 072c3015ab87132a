"""Small training pieces, one concept each: the seed mixer, device names, the EMA, the learning-rate
schedule (trainer, tokenizer and classifier configurations of the one function)."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from emigm.core.devices import resolve_device
from emigm.core.presets import get_preset
from emigm.core.seeds import mix_seed
from emigm.train.ema import EMA, ema_decay
from emigm.train.optim import LRSchedule, lr_at, one_cycle, training_schedule, warmup_then_decay

# ----------------------------------------------------------------------------- seeds


def test_mix_seed_values_never_change() -> None:
    """Checkpoints resume through these values (model init, data order, per-rank generators)."""
    golden = {(0,): 2576698060294495596, (0, 1): 6431972100845284338, (0, 3, 0): 602197248497684793,
              (1234, 3, 1): 343860114719371794, (7, 2, 5): 1604755640334563306,
              (-5, 3, 1, 40): 6110199477025669089, (2**70, 1): 6431972100845284338}
    for keys, value in golden.items():
        assert mix_seed(*keys) == value, keys
    assert 0 <= mix_seed(2**64 - 1, -1) < 2**63


# ----------------------------------------------------------------------------- devices


def test_device_names() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("tpu", "cuda:x", "cuda:", "gpu0"):
        with pytest.raises(ValueError, match=f"unknown device '{bad}'; valid: auto, cpu, cuda, cuda:N"):
            resolve_device(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:7"])
def test_cuda_without_cuda_is_an_error_not_the_cpu(name: str) -> None:
    with pytest.raises(ValueError) as info:
        resolve_device(name)
    msg = str(info.value)
    assert f"device '{name}'" in msg and "no CUDA device" in msg and "--device cpu" in msg and "\n" not in msg


def test_missing_cuda_index_is_named(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cuda", local_rank=1) == torch.device("cuda", 1)
    with pytest.raises(ValueError, match=r"device 'cuda:7' does not exist: 2 CUDA device\(s\) here \(cuda:0..cuda:1\)"):
        resolve_device("cuda:7")
    with pytest.raises(ValueError, match=r"local rank 3"):
        resolve_device("cuda", local_rank=3)


# ----------------------------------------------------------------------------- EMA


def test_ema_follows_the_decay_rule_and_round_trips() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ema = EMA(net, 0.9, warmup=True)
    start = {k: v.clone() for k, v in ema.state_dict().items()}
    with torch.no_grad():
        net[0].weight.add_(1.0)
    net.train()(torch.randn(5, 3))  # moves running stats and the integer batch counter
    ema.update(net, step=0)
    d = ema_decay(0.9, 0, True)
    assert d == pytest.approx(0.1)
    torch.testing.assert_close(ema.shadow["0.weight"], d * start["0.weight"] + (1 - d) * net[0].weight)
    assert torch.equal(ema.shadow["1.num_batches_tracked"], net[1].num_batches_tracked)  # copied
    assert all(v.dtype == torch.float32 for k, v in ema.shadow.items() if "num_batches" not in k)
    other = EMA(net, 0.9)
    other.load_state_dict({k: v.clone() for k, v in ema.state_dict().items()})
    assert all(torch.equal(other.shadow[k], v) for k, v in ema.shadow.items())
    fresh = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ema.copy_to(fresh)
    assert torch.equal(fresh[0].weight, ema.shadow["0.weight"])
    with pytest.raises(ValueError, match="missing"):
        other.load_state_dict({"0.weight": ema.shadow["0.weight"]})


def test_ema_warmup_decay():
    assert ema_decay(0.999, 5, False) == 0.999
    warm = [ema_decay(0.999, s, True) for s in (0, 10, 100, 10000)]
    assert warm[0] == pytest.approx(0.1) and warm == sorted(warm) and warm[-1] == 0.999


# ----------------------------------------------------------------------------- learning rate


def _old_training_lr(step: int, cfg) -> float:
    """The trainer's schedule as it was written before the one function (for bit-exact resumes)."""
    peak = cfg.blr * cfg.batch_size / 256
    if step < cfg.warmup_steps:
        return peak * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return peak
    span = max(1, cfg.steps - cfg.warmup_steps)
    frac = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr + (peak - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * frac))


@pytest.mark.parametrize("preset", ["test-tiny", "fmnist-emigm-mini", "fmnist-emigm-gpu", "in256-b"])
def test_training_schedule_is_bit_identical_to_the_old_one(preset: str) -> None:
    t = get_preset(preset).train
    for cfg in (t, dataclasses.replace(t, lr_schedule="cosine", min_lr=1e-6), dataclasses.replace(t, warmup_steps=0)):
        s = training_schedule(cfg)
        steps = sorted({0, 1, cfg.warmup_steps - 1, cfg.warmup_steps, cfg.warmup_steps + 1, cfg.steps // 2,
                        cfg.steps - 1, cfg.steps} - {-1})
        for step in steps + list(range(0, min(cfg.steps, 3000), 37)):
            assert lr_at(step, s) == _old_training_lr(step, cfg), (preset, step)


def test_tokenizer_schedule_keeps_its_numbers() -> None:
    from emigm.train.tokenizer import TokenizerTrainConfig, lr_schedule

    for steps in (12, 1700, 3600):
        cfg = TokenizerTrainConfig(steps=steps, lr=2e-3)
        warmup = max(1, min(100, steps // 10))
        s = lr_schedule(cfg)
        for step in range(steps):
            if step < warmup:
                old = cfg.lr * (step + 1) / warmup
            else:
                frac = (step - warmup) / max(1, steps - warmup)
                old = cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
            assert lr_at(step, s) == pytest.approx(old, rel=1e-14, abs=0)
        assert lr_at(steps, s) == pytest.approx(0.1 * cfg.lr)


@pytest.mark.parametrize("total", [10, 37, 1404])
def test_one_cycle_equals_torch_onecycle_exactly(total: int) -> None:
    """The classifier's schedule: torch's OneCycleLR for the learning rate and Adam's beta1."""
    opt = torch.optim.Adam([nn.Parameter(torch.zeros(1))], lr=3e-3)
    ref = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=total)
    lr_s = one_cycle(3e-3, total)
    beta_s = dataclasses.replace(lr_s, initial=0.95, peak=0.85, final=0.95)
    for step in range(total):
        group = opt.param_groups[0]
        assert lr_at(step, lr_s) == group["lr"], step
        assert lr_at(step, beta_s) == group["betas"][0], step
        opt.step()
        ref.step()


def test_schedule_validation() -> None:
    with pytest.raises(ValueError, match="unknown lr_schedule 'linear'; valid: constant, cosine"):
        warmup_then_decay(1.0, 2, 10, "linear")
    with pytest.raises(ValueError, match="warmup_start <= warmup_end"):
        LRSchedule(peak=1.0, warmup_end=5, decay_start=3, decay_end=10)
    s = warmup_then_decay(1.0, 0, 10, "cosine", final=0.1)
    assert lr_at(0, s) == 1.0 and lr_at(10, s) == pytest.approx(0.1) and lr_at(50, s) == pytest.approx(0.1)
