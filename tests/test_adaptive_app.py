"""The adaptive samplers in the explorer: an Unmasking run that ends when its image is done (the player's
N and NFE ledger are the steps it took), and Compare panels whose seeds take different step counts (each
seed's steps and NFE in the title and the panel's payload). On the shipped fmnist-maskgit (categorical)."""
from __future__ import annotations

import pytest
from test_app import run_values
from test_app_lab import compare_values

from app.compare import Compare
from app.engine import Engine
from app.unmask import Unmasking

MODEL = "fmnist-maskgit"
pytestmark = pytest.mark.slow  # real shipped-model runs of 49 steps


@pytest.fixture(scope="module")
def engine():
    return Engine([MODEL], num_threads=1)


def test_an_adaptive_run_ends_when_its_image_is_done(engine):
    values = run_values(model=MODEL, class_name="Trouser", seed=3, num_steps=49, order="threshold",
                        threshold_tau=0.5, count_rule="exact")
    status, player, timing, doc, traj = list(Unmasking(engine).run(**values))[-1][:5]
    steps = len(traj.frames)
    assert status["phase"] == "done" and traj.complete and steps < 49
    assert player["n"] == player["N"] == steps and len(player["steps"]) == steps
    assert player["steps"][-1]["nfe"] == traj.last.passes
    assert doc["steps_per_image"] == [steps] and doc["passes_per_image"] == [traj.last.passes]
    assert f"({steps} x " in timing


def test_compare_shows_each_seeds_steps_and_nfe(engine):
    values = compare_values(engine, MODEL, axis="order", num_steps=49, num_seeds=2, seed=3)
    status, player, doc = list(Compare(engine).compare(**values))[-1][:3]
    panel = next(p for p in player["panels"] if p["title"].startswith("threshold order"))
    steps, nfe = panel["image_steps"], panel["image_nfe"]
    assert len(steps) == 2 and all(1 <= s <= 49 for s in steps) and max(nfe) <= panel["nfe"]
    if len(set(steps)) > 1:
        assert f"(per seed: {steps[0]}, {steps[1]} steps, NFE {nfe[0]}, {nfe[1]})" in panel["title"]
    fixed = next(p for p in player["panels"] if p["title"].startswith("random order"))
    assert fixed["image_steps"] == [49, 49] and "per seed" not in fixed["title"]
