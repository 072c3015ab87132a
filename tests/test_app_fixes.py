"""Issue 29, the explorer tried as a new user would: the defects whose cause is on the Python side, each
pinned by a test that failed before its fix (the ones only a browser shows: tests/test_app_walk.py; the
page's texts: tests/js/)."""
from __future__ import annotations

import json
import re

import gradio as gr
import numpy as np
import pytest
from test_app import run_values

from app import render
from app.catalogue import generator_exports
from app.engine import Engine
from app.lab import Lab
from app.unmask import Unmasking
from emigm.core.fileio import ASSETS_DIR
from emigm.nn.diffusion import dpm_orders


@pytest.fixture(scope="module")
def engine():
    return Engine(["test-tiny", "test-tiny-fakecfg"], num_threads=1)


@pytest.fixture(scope="module")
def traj(engine):
    return list(Unmasking(engine).run(**run_values()))[-1][4]


def test_defect_9_the_strips_last_frame_is_the_clean_finished_image(traj):
    """The PNG strip's last column shows the finished image without outlines (as the GIF and the player)."""
    strip = render.strip(traj)
    scale = max(1, round(96 / traj.image_size))
    last = traj.frames[-1]
    clean = render.canvas(last.draft[0], last.state.mask_after[0].numpy(), last.state.revealed[0].numpy(),
                          traj.grid, scale, outline=False)
    H, W = clean.shape[:2]
    bottom_right = strip[-H:, -W:]
    assert np.array_equal(bottom_right, clean)
    assert not (bottom_right == render.ORANGE).all(-1).any()
    earlier = render.strip(traj)[-H:, :W]  # the first column: this step's reveals outlined
    assert (earlier == render.ORANGE).all(-1).any()


def test_defect_9_no_banner_calls_an_offered_model_unshipped():
    """An export's note (shown in its banner) never says that models this app offers are not shipped."""
    shipped = generator_exports()
    for name in shipped:
        config = ASSETS_DIR / name / "config.json"
        if not config.is_file():  # an oracle: its banner is written by the app (app/text.py), not by an export
            continue
        meta = json.loads(config.read_text()).get("meta") or {}
        note = str(meta.get("note") or "")  # the banner shows it (app/text.py model_banner)
        for sentence in re.split(r"(?<=\.)\s+", note):
            if "not shipped" in sentence:
                assert "models are not shipped" not in sentence and not any(s in sentence for s in shipped), \
                    f"{name}'s note says {sentence!r}, but the app offers {shipped}"


def test_defect_4_the_halton_rank_only_for_the_halton_order(engine, traj):
    """The opened step gives each token's Halton rank only when the run reveals in Halton order."""
    assert traj.last.sampler.order == "random"
    payload = next(Lab(engine).anatomy(traj, 3))[1]
    assert payload["tokens"]["halton"] is None
    halton = list(Unmasking(engine).run(**run_values(order="halton")))[-1][4]
    payload = next(Lab(engine).anatomy(halton, 3))[1]
    assert sorted(payload["tokens"]["halton"]) == list(range(16))


def test_defect_4_a_denoising_path_counts_what_it_shows(engine):
    """A token's denoising path names its solver with the number of model calls and the points it shows
    (DPM-Solver++ with 8 calls takes 3 intervals: 4 points, noise and 3), captioned one by one."""
    t = list(Unmasking(engine).run(**run_values(head_steps=8, draft_steps=2)))[-1][4]
    step = 3
    state = t.frames[step - 1].state
    revealed = int(state.revealed[0].nonzero()[0, 0])
    still = int((state.mask_after[0]).nonzero()[0, 0])
    g = t.grid
    for pos, calls in ((revealed, 8), (still, 2)):
        path = next(Lab(engine).anatomy(t, step, pos // g, pos % g))[1]["path"]
        points = 1 + len(dpm_orders(calls))  # the noise, then one point per interval
        assert len(path["values"]) == len(path["captions"]) == points, (pos, calls)
        assert re.search(rf"\b{calls} model calls in {points - 1} intervals?\b", path["solver"]), path["solver"]
        assert path["captions"][0] == "noise"
        assert path["captions"][-1].endswith(f"{calls} calls")


def test_defect_5_erasing_tokens_that_are_still_masked_changes_nothing_and_says_so(engine, traj):
    """Erasing chosen tokens that are still masked after the step is refused next to the tokens box (it
    would change nothing); erasing a mix erases the committed ones and names the others."""
    k = 3
    state = traj.frames[k - 1].state
    g = traj.grid
    masked = [int(i) for i in state.mask_after[0].nonzero()[:3, 0]]
    committed = [int(i) for i in (~state.mask_after[0]).nonzero()[:1, 0]]
    text = lambda ids: ", ".join(f"{i // g}:{i % g}" for i in ids)  # noqa: E731
    gen = Lab(engine).intervene(traj, k, text(masked), "erase", 0)
    first = next(gen)
    assert first[0]["phase"] == "error" and "still masked" in first[0]["notes"]["tokens"]
    with pytest.raises(gr.Error, match="still masked"):
        next(gen)
    status, _, doc = list(Lab(engine).intervene(traj, k, text(masked + committed), "erase", 0))[-1]
    assert doc["tokens"] == committed and doc["ignored"] == sorted(masked)
    assert "erased: 1 token" in status["text"] and "3 chosen tokens were still masked" in status["text"]
