"""What Python sends the page is described once (app/payload.py): the builders' payloads and the fixtures
the page's unit tests read (tests/js/fixtures) have exactly the fields described there, and the lists
the page needs (score and fixed orders, guidance branches) are the library's."""
from __future__ import annotations

import json
from dataclasses import MISSING, fields
from pathlib import Path
from typing import get_type_hints

import pytest

from app import payload
from emigm.sample.anatomy import BRANCHES, COMBINED
from emigm.sample.orders import ORDERS

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "js" / "fixtures"
KINDS = {"unmask": payload.PlayerPayload, "compare": payload.PlayerPayload, "anatomy": payload.AnatomyPayload}
NESTED = {("PlayerPayload", "panels"): payload.PlayerPanel, ("PlayerPayload", "steps"): payload.StepRecord,
          ("PlayerPanel", "steps"): payload.StepRecord, ("AnatomyPayload", "branches"): payload.Branch,
          ("AnatomyPayload", "count"): payload.Count, ("AnatomyPayload", "tokens"): payload.TokenMaps,
          ("AnatomyPayload", "path"): payload.TokenPath, ("PlayerPayload", "cost"): payload.StepCost}


def check_shape(doc: dict, cls) -> None:
    """Every key of `doc` is a field of `cls`, every field without a default is there; nested alike."""
    names = {f.name for f in fields(cls)}
    required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
    assert set(doc) <= names, f"{cls.__name__}: fields not described in app/payload.py: {sorted(set(doc) - names)}"
    assert required <= set(doc), f"{cls.__name__}: missing {sorted(required - set(doc))}"
    for name, value in doc.items():
        inner = NESTED.get((cls.__name__, name))
        if inner is None or value is None:
            continue
        for item in value if isinstance(value, list) else [value]:
            check_shape(item, inner)


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("*.json")), ids=lambda p: p.stem)
def test_fixtures_have_the_described_fields(path):
    doc = json.loads(path.read_text())
    check_shape(doc, KINDS[doc["kind"]])


def test_every_nested_payload_field_is_checked():
    """A payload field typed with a payload structure is listed in NESTED (so check_shape descends)."""
    structures = {c for c in vars(payload).values() if isinstance(c, type) and hasattr(c, "__dataclass_fields__")}
    for cls in (payload.PlayerPayload, payload.PlayerPanel, payload.AnatomyPayload):
        for name, hint in get_type_hints(cls).items():
            if any(s.__name__ in str(hint) for s in structures):
                assert (cls.__name__, name) in NESTED, (cls.__name__, name)


def test_the_page_reads_the_library_lists():
    doc = json.loads((FIXTURES / "anatomy.json").read_text())
    order = ORDERS[doc["order"]]
    assert (doc["order_kind"], doc["order_fixed"]) == (order.kind, order.fixed)
    assert doc["draft_branch"] == COMBINED and {b["name"] for b in doc["branches"]} <= set(BRANCHES)


def test_the_page_keeps_no_copy_of_library_names():
    """explorer.js and explorer-core.js name no order and no guidance branch: they read them from payloads."""
    static = ROOT / "app" / "static"
    for name in ("explorer.js", "explorer-core.js"):
        code = (static / name).read_text()
        for word in set(ORDERS) | set(BRANCHES):
            assert f'"{word}"' not in code, f"{name} names {word!r}: read it from the payload"


def test_to_json_leaves_out_only_optional_nones():
    s = payload.Status(phase="done", text="x", run="r1", seq=1)
    assert payload.to_json(s) == {"phase": "done", "text": "x", "run": "r1", "seq": 1}
    p = payload.TokenPath(token=[0, 1], note="n")
    assert payload.to_json(p) == {"token": [0, 1], "note": "n"}
