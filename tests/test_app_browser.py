"""The explorer in a real browser (Debian's chromium through Playwright): load with a preset run from a
permalink, scrub without a server round trip, run, pick a token, open every tab. Screenshots go to
artifacts/screenshots/."""
from __future__ import annotations

import os
import re
import socket
from pathlib import Path

import pytest

# A real chromium: seconds to start and to drive; the default run keeps these, `-m "not slow"` skips them
# (the explorer's handlers and its API stay in the fast subset through tests/test_app.py).
pytestmark = pytest.mark.slow
sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = "/usr/bin/chromium"
if not os.path.exists(CHROMIUM):
    pytest.skip(f"no chromium at {CHROMIUM}", allow_module_level=True)

ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
SHOTS = Path(__file__).resolve().parent.parent / "artifacts" / "screenshots"
TIMEOUT = 90_000  # ms; the CPU is small and shared

SCRUBBER_STATE = """() => {
  const gd = document.querySelector('#scrubber .js-plotly-plot');
  const vis = gd.data.map((t, i) => [i, t.visible, t.type]).filter(x => x[1] === true && x[2] === 'image');
  return {active: gd.layout.sliders[0].active, title: gd.layout.title.text,
          visible: vis.map(x => x[0]), n: gd.layout.sliders[0].steps.length};
}"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def url():
    from app.engine import Engine
    from app.ui import build_demo, launch_kwargs
    demo = build_demo(Engine(["test-tiny", "test-tiny-fakecfg"], num_threads=1))
    _, local, _ = demo.launch(server_name="127.0.0.1", server_port=_free_port(), prevent_thread_lock=True,
                              quiet=True, **launch_kwargs())
    yield local
    demo.close()


@pytest.fixture(scope="module")
def page(url):
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        except Exception as e:  # a chromium that cannot start here is an environment problem
            pytest.skip(f"chromium does not start: {str(e).splitlines()[0]}")
        pg = browser.new_page(viewport={"width": 1400, "height": 1000})
        pg.set_default_timeout(TIMEOUT)
        pg.goto(url + "?seed=3&num_steps=6&class_name=Bag&schedule=cosine")
        yield pg
        browser.close()


def _status(pg, selector: str = "#run-status") -> str:
    return pg.locator(selector).inner_text()


def _wait_done(page) -> None:
    page.wait_for_selector("#scrubber .js-plotly-plot")
    page.wait_for_function("() => document.querySelector('#run-status')?.innerText?.includes('Done')")


def test_preset_run_on_load_from_permalink(page):
    _wait_done(page)
    assert "step 6 of 6" in _status(page) and "Bag" in _status(page) and "seed 3" in _status(page)
    assert "seed=3" in page.locator("#permalink textarea").input_value()
    assert "Random weights" in page.locator("#banner").inner_text()
    page.screenshot(path=str(SHOTS / "unmasking.png"), full_page=True)


def test_scrubber_runs_in_the_browser(page):
    calls = []
    _wait_done(page)
    page.on("request", lambda r: calls.append(r.url) if "/gradio_api/" in r.url else None)
    before = page.evaluate(SCRUBBER_STATE)
    assert before["active"] == 5 and before["n"] == 6 and "step 6 of 6" in before["title"]
    rail_el = page.locator("#scrubber .slider-rail-touch-rect")
    rail_el.scroll_into_view_if_needed()
    rail = rail_el.bounding_box()
    page.mouse.click(rail["x"] + 3, rail["y"] + rail["height"] / 2)
    # the slider's `active` and the restyle/relayout it triggers land in separate updates: wait for both
    page.wait_for_function("() => { const gd = document.querySelector('#scrubber .js-plotly-plot');"
                           " return gd.layout.sliders[0].active === 0 && gd.layout.title.text.includes('step 1 of'); }")
    after = page.evaluate(SCRUBBER_STATE)
    assert "step 1 of 6" in after["title"] and after["visible"] != before["visible"]
    page.screenshot(path=str(SHOTS / "scrubbed-step1.png"), full_page=True)
    page.locator("#scrubber .updatemenu-button").first.click()  # play
    page.wait_for_function("() => document.querySelector('#scrubber .js-plotly-plot').layout.sliders[0].active >= 2")
    assert re.search(r"step [3-6] of 6", page.evaluate(SCRUBBER_STATE)["title"])
    assert not calls, f"scrubbing called the server: {calls}"


def test_run_then_pick_a_token(page):
    seed = page.locator("#ctl-seed input")
    seed.fill("11")
    page.locator("#run-btn").click()
    page.wait_for_function("() => document.querySelector('#run-status')?.innerText?.includes('seed 11')")
    page.wait_for_function("() => document.querySelector('#run-status')?.innerText?.includes('Done')")
    img = page.locator("#pick img")
    box = img.bounding_box()
    img.click(position={"x": box["width"] * 0.6, "y": box["height"] * 0.3})
    page.wait_for_function("() => document.querySelectorAll('#token-history img').length > 0")
    page.screenshot(path=str(SHOTS / "token-history.png"), full_page=True)


@pytest.mark.parametrize("tab, ready", [
    ("Schedules", "#gamma-plot .js-plotly-plot"),
    ("Compare guidance", None),
    ("Results", "#results-msg"),
])
def test_every_tab_opens(page, tab, ready):
    page.get_by_role("tab", name=tab).click()
    if tab == "Compare guidance":
        page.locator("#compare-btn").click()
        page.wait_for_function("() => document.querySelector('#compare-status').innerText.includes('Done')")
        page.wait_for_selector("#compare-plot .js-plotly-plot")
        page.wait_for_selector("#diff-plot .js-plotly-plot")
        n = page.evaluate("() => document.querySelector('#compare-plot .js-plotly-plot').layout.sliders[0].steps.length")
        assert n >= 1
    else:
        page.wait_for_selector(ready)
        page.wait_for_timeout(500)
    if tab == "Results":
        assert re.search(r"not shipped yet|Read ", page.locator("#results-msg").inner_text())
    page.screenshot(path=str(SHOTS / f"{tab.split()[0].lower()}.png"), full_page=True)
