import math

import pytest
import torch

from emigm.core.schedules import SCHEDULES, get_schedule, time_grid

T = torch.linspace(0.01, 0.99, 99, dtype=torch.float64)


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_endpoints_and_monotone(name):
    s = get_schedule(name)
    g = s.gamma(torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert g[0] == pytest.approx(0.0, abs=1e-12)
    assert 0.99 <= float(g[1]) <= 1.0
    vals = s.gamma(T)
    assert torch.all(vals[1:] > vals[:-1])
    assert torch.all(s.dgamma(T) > 0)


def test_exp_gamma_one_value():
    assert float(get_schedule("exp").gamma(torch.tensor(1.0, dtype=torch.float64))) == pytest.approx(1 - math.exp(-5))


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_derivative_matches_finite_difference(name):
    s = get_schedule(name)
    h = 1e-6
    fd = (s.gamma(T + h) - s.gamma(T - h)) / (2 * h)
    torch.testing.assert_close(s.dgamma(T), fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_mdm_weight_and_transfer_prob(name):
    s = get_schedule(name)
    torch.testing.assert_close(s.mdm_weight(T), s.dgamma(T) / s.gamma(T))
    grid = time_grid(16)
    p = s.transfer_prob(grid[:-1], grid[1:])
    assert torch.all((p >= 0) & (p <= 1))
    assert s.mask_ratio(T).equal(s.gamma(T))


def test_mdm_weight_closed_forms():
    t = torch.tensor([0.3], dtype=torch.float64)
    assert float(get_schedule("linear").mdm_weight(t)) == pytest.approx(1 / 0.3)
    assert float(get_schedule("cosine").mdm_weight(t)) == pytest.approx(math.pi / 2 * math.tan(math.pi / 2 * 0.7))
    assert float(get_schedule("exp").mdm_weight(t)) == pytest.approx(5 * math.exp(-1.5) / (1 - math.exp(-1.5)))


def test_unknown_schedule_lists_valid():
    with pytest.raises(ValueError, match="linear, cosine, exp"):
        get_schedule("sigmoid")


def test_time_grid():
    g = time_grid(16)
    assert g[0] == 1.0 and g[-1] == pytest.approx(1e-5) and len(g) == 17
    with pytest.raises(ValueError, match="num_steps"):
        time_grid(0)
