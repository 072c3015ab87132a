"""The oracle models in the explorer (issue 26, item 5): listed with a banner that says what an oracle is,
and an Unmasking run on one shows each step's cost in nats, the library's own numbers for that run."""
from __future__ import annotations

import pytest
import torch

from app import controls, ui
from app.engine import Engine
from app.unmask import Unmasking
from emigm.eval.sampler_error import run_errors
from emigm.nn.oracle import shipped_oracles

ORACLES = ["fmnist-oracle", "fmnist-oracle-kl"]
pytestmark = pytest.mark.skipif(shipped_oracles() != ORACLES, reason="the oracle models are not shipped")


@pytest.fixture(scope="module")
def engine():
    return Engine(["fmnist-oracle", "fmnist-oracle-kl", "test-tiny"], num_threads=1)


def run_values(**over):
    values = {"model": "fmnist-oracle", "class_name": "Dress", **controls.DEFAULTS, "num_steps": 6,
              "seed": 5, "order": "random", "schedule": "linear", "count_rule": "exact", "cfg_scale": 1.0}
    values.update(over)
    return values


def test_the_shipped_oracles_are_offered_by_default():
    assert Engine(num_threads=1).names[-2:] == ORACLES


@pytest.mark.parametrize("name, kernel", [("fmnist-oracle", "eps 0.05"), ("fmnist-oracle-kl", "sigma")])
def test_an_oracle_gets_a_banner_saying_what_it_is(engine, name, kernel):
    h = Unmasking(engine)
    v = run_values(model=name)
    cls, banner, *_ = ui._model_info(engine, h)(**{k: v[k] for k in ("model", "class_name") + controls.STEP_CONTROLS})
    assert "Oracle model" in banner and "exact conditionals" in banner and kernel in banner
    assert "kernel mixture" in banner and "sampler's own" in banner
    assert cls["value"] == "Dress"
    assert "Oracle" not in engine.banner("test-tiny")  # a learned model keeps its own banner


def _final(engine, **over):
    out = list(Unmasking(engine).run(**run_values(**over)))[-1]
    return out[1], out[4]  # player payload, trajectory


@pytest.mark.parametrize("over, measure", [({}, "KL"), ({"order": "confidence"}, "dependence cost")])
def test_cost_bars_are_the_librarys_numbers_for_the_run(engine, over, measure):
    player, traj = _final(engine, **over)
    cost = player["cost"]
    s = traj.last
    lib = run_errors(engine.load("fmnist-oracle"), s.labels[:1], s.seeds[:1], s.sampler, s.guidance)
    assert torch.equal(lib["tokens"][0], s.tokens[0])  # the library re-ran exactly this run's draws
    want = lib["per_step"][0].tolist()
    assert cost["measure"] == measure and not cost["guided"]
    assert len(cost["per_step"]) == len(player["steps"]) == 6
    assert cost["per_step"] == pytest.approx(want, abs=1e-5)
    assert cost["total"] == pytest.approx(sum(want), abs=1e-5)
    assert sum(cost["per_step"]) > 0.1  # six steps of 49 tokens: the sampler pays something
    if measure == "KL":
        assert "KL" in cost["note"]
    else:
        assert "not a KL" in cost["note"]


def test_guided_run_says_it_is_not_the_unguided_target(engine):
    player, _ = _final(engine, cfg_scale=3.0, cfg_interval_lo=0.0, cfg_interval_hi=1.0)
    assert player["cost"]["guided"] and "not the unguided" in player["cost"]["note"]
    assert len(player["cost"]["per_step"]) == 6


def test_one_token_per_step_costs_nothing(engine):
    player, _ = _final(engine, num_steps=49)
    assert max(abs(v) for v in player["cost"]["per_step"]) < 1e-6


def test_a_learned_model_has_no_cost_bars(engine):
    player, _ = _final(engine, model="test-tiny", class_name="Sneaker", num_steps=3, head_steps=2)
    assert "cost" not in player


def test_results_tab_lists_the_oracle_claims_after_the_others():
    """Every claim of oracle-claims.json, in its order and with the verdict ClaimsFile gives it, after
    claims.json's own rows, marked "oracle:"."""
    import json

    from app import analysis, claims
    if not claims.ORACLE_CLAIMS_PATH.is_file() or not claims.CLAIMS_PATH.is_file():
        pytest.skip("no oracle-claims.json or claims.json")
    raw = json.loads(claims.ORACLE_CLAIMS_PATH.read_text())
    msg, _, table, _, doc = analysis.results()
    own = len(json.loads(claims.CLAIMS_PATH.read_text())["claims"])
    rows = table["value"][own:]
    want = claims.read_claims(claims.ORACLE_CLAIMS_PATH)["claims"]
    assert [r[0] for r in rows] == [f"oracle: {c['claim']}" for c in raw["claims"]]
    assert [r[1] for r in rows] == [v for _, v, _ in want]
    assert f"{len(raw['claims'])} claims" in msg and "oracle-claims.json" in msg
    assert doc["oracle"]["claims_file"].endswith("oracle-claims.json")


def test_compare_axis_model_runs_the_oracle_beside_the_learned_model():
    """Same seed and settings on fmnist-oracle and fmnist-maskgit: two panels, each its own model's run
    (the same reveal path: random order, exact counts, the same seed)."""
    from app.compare import CONTROLS, Compare
    eng = Engine(["fmnist-oracle", "fmnist-maskgit"], num_threads=1)
    values = {**controls.DEFAULTS, "model": "fmnist-oracle", "class_name": "Dress", "seed": 2, "num_seeds": 1,
              "axis": "model", "num_steps": 4, "order": "random", "count_rule": "exact", "cfg_scale": 1.0,
              "panel_a": "none", "panel_b": "interval"}
    out = list(Compare(eng).compare(**{k: values[k] for k in CONTROLS}))[-1]
    player = out[1]
    assert [p["title"].split(" · ")[0] for p in player["panels"]] == ["fmnist-oracle", "fmnist-maskgit"]
    assert all(p.get("when") for p in player["panels"])
    assert player["panels"][0]["when"] == player["panels"][1]["when"]  # one path, two models
    with pytest.raises(Exception, match="partner"):
        list(Compare(Engine(["fmnist-oracle"], num_threads=1)).compare(**{k: values[k] for k in CONTROLS}))
