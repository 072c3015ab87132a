"""The explorer's Inpaint section and re-score controls through their handlers (the /inpaint, /rescore
events): an inpainting run keeps the image's tokens and shows them from the start, its steps open (step 1
from the run's start) and re-score, a painted reveal order drives order fixed and travels in the
permalink, and every bad input is a note next to its control. Browser check: tests/test_app_inpaint_browser.py."""
from __future__ import annotations

import pytest
import torch

from app import controls, permalink
from app.engine import Engine
from app.lab import Lab
from app.unmask import INPAINT_FIELDS, Unmasking

pytestmark = pytest.mark.needs_fashion_mnist
MODEL = "fmnist-maskgit"


@pytest.fixture(scope="module")
def engine():
    return Engine([MODEL])


def values(engine, **over):
    v = {"model": MODEL, "class_name": "Sneaker", **controls.DEFAULTS, **engine.suggested(MODEL), "num_steps": 8,
         "ip_source": "test image", "ip_class": "Sneaker", "ip_index": 2, "ip_upload": None, "ip_mask": "left",
         "ip_ring": 0, "ip_seeds": 2}
    v.update(over)
    return v


def inpaint(h, v):
    return list(h.inpaint(**{k: v[k] for k in controls.RUN_FIELDS + INPAINT_FIELDS}))


def test_an_inpainting_run_keeps_the_image_and_opens_and_rescores(engine) -> None:
    h, lab = Unmasking(engine), Lab(engine)
    out = inpaint(h, values(engine))
    status, player, _, _, traj, views = out[-1]
    assert status["phase"] == "done" and traj.complete and traj.batch == 2
    keep = ~traj.start.mask_before
    for f in traj.frames:
        assert torch.equal(f.state.tokens[keep], traj.start.tokens[keep])
    assert [t["title"] for t in views["tiles"]][:3] == ["original", "tokenizer reconstruction",
                                                         "masked (28 of 49 tokens)"]
    assert len(views["tiles"]) == 5 and all(t["src"].startswith("data:image/png") for t in views["tiles"])
    # the player shows the kept tokens from step 1 (the mask strings say what is masked after each step)
    assert player["masked"][0] == "".join("1" if m else "0" for m in traj.frames[0].state.mask_after[0].tolist())
    assert player["masked"][-1] == "0" * 49
    opened = list(lab.anatomy(traj, 1, None, None))[-1]
    assert opened[0]["phase"] == "done" and "Step 1 of 8 opened" in opened[0]["text"]
    own = tuple(lab.rescore_controls(traj))
    status, payload = list(lab.rescore(traj, *own))[-1]
    assert status["phase"] == "" and not payload["later_changed"]
    assert payload["revealed"] == traj.frames[0].state.revealed[0].nonzero().flatten().tolist()
    status, payload = list(lab.rescore(traj, 0.0, 4.0, *own[2:]))[-1]
    assert "re-scored" in status["text"]


@pytest.mark.parametrize("over, control", [
    (dict(ip_index=5000), "ip_index"), (dict(ip_mask=""), "ip_mask"), (dict(ip_mask="sideways"), "ip_mask"),
    (dict(ip_mask="random:1"), "ip_mask"), (dict(ip_ring=9), "ip_ring"), (dict(ip_seeds=9), "ip_seeds"),
    (dict(ip_source="upload"), "ip_upload"), (dict(reveal_order="3,4", order="random"), "reveal_order"),
    (dict(reveal_order="3,3", order="fixed"), "reveal_order"),
])
def test_bad_inpainting_input_is_a_note_next_to_its_control(engine, over, control) -> None:
    h = Unmasking(engine)
    with pytest.raises(Exception) as e:
        for out in h.inpaint(**{k: values(engine, **over)[k] for k in controls.RUN_FIELDS + INPAINT_FIELDS}):
            last = out
    assert last[0]["phase"] == "error" and control in last[0]["notes"], last[0]
    assert type(e.value).__name__ == "Error"


def test_a_painted_reveal_order_drives_order_fixed_and_the_permalink(engine) -> None:
    h = Unmasking(engine)
    v = values(engine, order="fixed", count_rule="exact", num_steps=49, reveal_order="24,17,31,23")
    out = list(h.run(**{k: v[k] for k in controls.RUN_FIELDS}))
    traj = out[-1][-1]
    first = [f.state.revealed[0].nonzero().flatten().tolist() for f in traj.frames[:5]]
    assert first == [[24], [17], [31], [23], [0]]
    query = permalink.encode(v)
    assert "reveal_order=24%2C17%2C31%2C23" in query
    back, problems = permalink.decode(dict(x.split("=", 1) for x in query.replace("%2C", ",").split("&")),
                                      [MODEL], engine.class_names)
    assert back["reveal_order"] == "24,17,31,23" and not [p for p in problems if "reveal" in p]
    _, problems = permalink.decode({"reveal_order": "x,1"}, [MODEL], engine.class_names)
    assert any(p.startswith("reveal_order") for p in problems)
