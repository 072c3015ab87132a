"""The first screen's lessons (app/lessons.py through app/ui.py): gr.Examples, cached lazily, one per
lesson whose models are offered; a click's run is the lesson's Unmasking run or Compare set."""
from __future__ import annotations

import gradio as gr
import pytest

from app.engine import Engine
from app.lessons import available
from app.ui import _lessons
from emigm.core.fileio import ASSETS_DIR

pytestmark = pytest.mark.skipif(not (ASSETS_DIR / "fmnist-emigm" / "model.safetensors").is_file(),
                                reason="needs the shipped fmnist-emigm")


def test_the_first_screen_offers_the_lessons_of_its_models(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_EXAMPLES_CACHE", str(tmp_path / "examples"))  # as the launcher sets it
    engine = Engine(["fmnist-emigm"], num_threads=1)
    with gr.Blocks():
        examples = _lessons(engine)
    assert examples.cache_examples == "lazy"  # sampled on a lesson's first click, then served from the cache
    offered = available(["fmnist-emigm"])
    assert [lesson.key for lesson in offered] == ["unmasking", "schedule-4-steps", "cfg-interval", "remasking"]
    assert [row[0] for row in examples.examples] == [lesson.title for lesson in offered]
    text, payload = examples.fn("exp against linear at 4 steps")
    assert text.startswith("**exp against linear at 4 steps.**")
    assert payload["kind"] == "compare" and [p["title"] for p in payload["panels"]] == ["exp, 4 steps",
                                                                                       "linear, 4 steps"]
    assert payload["n"] == 4 and all(len(p["cols"]) == 2 for p in payload["panels"])  # seeds 0 and 1
    _, single = examples.fn("An image, token by token")
    assert single["kind"] == "unmask" and single["n"] == 16
    with pytest.raises(gr.Error, match="unknown lesson"):
        examples.fn("nothing")


def test_no_lessons_without_their_models():
    with gr.Blocks():
        assert _lessons(Engine(["test-tiny"], num_threads=1)) is None
