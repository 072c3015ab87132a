"""The Schedules view and `python -m emigm schedule` show the sampler's real plan: tokens revealed per step
as `plan_steps` plans them (at least one, the cap, binomial draws), beside the schedule's reference."""
import pytest
import torch

from emigm.core.guidance import GuidanceConfig
from emigm.sample.options import SamplerConfig
from emigm.sample.plan import plan_steps
from emigm.sample.steps import plan_distribution, plan_statistics, step_table

SEEDS = 4000


def _empirical(cfg: SamplerConfig, L: int, seeds: int = SEEDS) -> torch.Tensor:
    return plan_steps(torch.arange(seeds, dtype=torch.long), L, cfg).revealed  # (S, seeds)


@pytest.mark.parametrize("cfg,L", [
    (SamplerConfig(num_steps=16, schedule="exp"), 49),
    (SamplerConfig(num_steps=8, schedule="exp"), 49),
    (SamplerConfig(num_steps=12, schedule="cosine"), 100),
    (SamplerConfig(num_steps=6, schedule="linear"), 30),
    (SamplerConfig(num_steps=10, schedule="cosine", count_rule="exact"), 64),
])
def test_the_table_is_the_law_of_plan_steps_over_many_seeds(cfg, L):
    """Per step: the pmf of the revealed count within 0.03 of the frequencies over 4000 seeds (about 4 sd
    at worst), the mean within 4 standard errors, and the 5-95 % range equal to the seeds' nearest-rank
    percentiles wherever the 5 % / 95 % level is not within 0.015 of a cdf step."""
    emp = _empirical(cfg, L)
    count, masked = plan_distribution(cfg, L)
    tab = step_table(cfg, GuidanceConfig(), L)
    assert tab.draws == 0 and len(tab.rows) == cfg.num_steps
    for k, r in enumerate(tab.rows):
        freq = torch.bincount(emp[k], minlength=L + 1).double() / SEEDS
        assert (freq - count[k]).abs().max() < 0.03, k
        values = torch.arange(L + 1, dtype=torch.float64)
        sd = float(((values - r.planned_mean) ** 2 @ count[k]).sqrt())
        assert abs(r.planned_mean - float(emp[k].double().mean())) <= 4 * sd / SEEDS ** 0.5 + 1e-9, k
        cdf = count[k].cumsum(0)
        if not ((cdf - 0.05).abs() < 0.015).any():
            assert r.planned_lo == int(torch.quantile(emp[k].double(), 0.05, interpolation="lower"))
        if not ((cdf - 0.95).abs() < 0.015).any():
            assert r.planned_hi == int(torch.quantile(emp[k].double(), 0.95, interpolation="higher"))
        assert 1 <= r.planned_lo <= r.planned_hi and r.planned_mean >= 1.0  # every step reveals at least one
    assert sum(r.planned_mean for r in tab.rows) == pytest.approx(L, abs=1e-9)
    assert tab.rows[-1].planned_masked_after == pytest.approx(0.0, abs=1e-9)
    assert masked.sum(1).tolist() == pytest.approx([1.0] * cfg.num_steps, abs=1e-9)


def test_the_plan_reveals_at_least_one_where_the_schedule_expects_a_fraction():
    """At 16 steps and 49 tokens the schedule's reference expects 0.12 tokens at step 1; the plan reveals
    at least one at every step, and at 49 steps exactly one at each."""
    tab = step_table(SamplerConfig(num_steps=16, schedule="exp"), GuidanceConfig(), 49)
    assert tab.rows[0].expected_revealed == pytest.approx(0.12, abs=0.005)
    assert tab.rows[0].planned_lo == 1 and tab.rows[0].planned_mean >= 1.0
    full = step_table(SamplerConfig(num_steps=49, schedule="exp"), GuidanceConfig(), 49)
    assert [(r.planned_mean, r.planned_lo, r.planned_hi) for r in full.rows] == [(1.0, 1, 1)] * 49
    emp = _empirical(SamplerConfig(num_steps=49, schedule="exp"), 49, 200)
    assert (emp == 1).all()
    ref = [r.expected_revealed for r in full.rows]
    assert min(ref) < 0.1 and max(ref) > 4.0  # the reference curve the old view drew (0.05 .. 4.8)


def test_remasking_plans_are_summarised_over_seeds():
    """With remasking the table summarises plan_steps on seeds 0..draws-1: exactly those numbers."""
    cfg = SamplerConfig(num_steps=12, schedule="cosine", remask="rescale", remask_eta=0.05)
    stats = plan_statistics(cfg, 49, 300)
    c = plan_steps(torch.arange(300), 49, cfg)
    rev = c.revealed.double()
    assert stats["mean"].tolist() == pytest.approx(rev.mean(1).tolist(), abs=1e-12)
    assert stats["lo"].tolist() == torch.quantile(rev, 0.05, dim=1, interpolation="lower").tolist()
    assert stats["remasked"].tolist() == pytest.approx(c.remasked.double().mean(1).tolist(), abs=1e-12)
    assert (stats["remasked"] > 0).any()
    tab = step_table(cfg, GuidanceConfig(), 49, draws=300)
    assert tab.draws == 300 and [r.planned_mean for r in tab.rows] == pytest.approx(rev.mean(1).tolist())
    with pytest.raises(ValueError, match="without remasking"):
        plan_distribution(cfg, 49)


def test_cli_schedule_prints_the_plan(capsys):
    import json

    from emigm.cli.main import main

    assert main(["schedule", "--steps", "49", "--tokens", "49", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["plan_draws"] == 0 and [s["planned_mean"] for s in doc["steps"]] == [1.0] * 49
    assert main(["schedule", "--steps", "16", "--tokens", "49"]) == 0
    out = capsys.readouterr().out
    assert "5-95 %" in out and "L x dgamma" in out
    first = next(line for line in out.splitlines() if line.split()[:1] == ["1"])
    assert first.split()[3:6] == ["1.01", "1", "0.12"]  # planned mean, range, reference
