"""The explorer in a real browser (Debian's chromium through Playwright) at 1440x900: the opening run
and a permalink, Run visible without scrolling, scrubbing with no server round trip (buttons, arrow
keys, play / pause that resumes), an error that keeps the previous image, Stop that leaves a partial
scrubbable run, disabled choices, a token's history, every tab. Screenshots go to artifacts/screenshots/."""
from __future__ import annotations

import os
import re
import socket
import time
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
PLAYER = "#player .emigm-root"
STATUS = "#run-status .emigm-status"


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
        pg = browser.new_page(viewport={"width": 1440, "height": 900})
        pg.set_default_timeout(TIMEOUT)
        pg.goto(url)
        pg.wait_for_selector(f"{PLAYER} canvas")
        pg.opening = pg.evaluate(f"() => document.querySelector('{PLAYER}').dataset.run")
        pg.goto(url + "?seed=3&num_steps=6&class_name=Bag&schedule=cosine")
        yield pg
        browser.close()


def _player(pg) -> dict:
    return pg.evaluate(f"() => ({{...document.querySelector('{PLAYER}').dataset}})")


def _status(pg) -> dict:
    return pg.evaluate(f"() => {{ const s = document.querySelector('{STATUS}'); return {{phase: s.dataset.phase, text: s.innerText}}; }}")


def _wait_ready(pg, other_than: str | None = None) -> None:
    cond = f"document.querySelector('{STATUS}')?.dataset.phase === 'ready'"
    if other_than:
        cond += f" && document.querySelector('{PLAYER}')?.dataset.run !== '{other_than}'"
    pg.wait_for_function(f"() => {cond}")


def _set_number(pg, elem_id: str, value) -> None:
    box = pg.locator(f"#{elem_id} input[type=number]").first
    box.fill(str(value))
    box.press("Enter")
    pg.wait_for_timeout(300)


def test_opening_run_and_permalink(page):
    _wait_ready(page, other_than=page.opening)  # the permalink's run replaced the opening run
    st = _status(page)
    assert "step 6 of 6" in st["text"] and "Bag" in st["text"] and "seed 3" in st["text"]
    assert _player(page)["n"] == "6"
    assert "seed=3" in page.locator("#permalink textarea").input_value()
    assert "Random weights" in page.locator("#banner").inner_text()
    page.screenshot(path=str(SHOTS / "unmasking.png"))


def test_run_and_result_visible_without_scrolling(page):
    assert page.evaluate("() => window.scrollY") == 0
    for sel in ("#run-btn", "#stop-btn", f"{PLAYER} canvas", f"{PLAYER} .emigm-range", STATUS):
        box = page.locator(sel).first.bounding_box()
        assert box and box["y"] >= 0 and box["y"] + box["height"] <= 900 and box["x"] + box["width"] <= 1440, sel


def test_scrubbing_runs_in_the_browser(page):
    calls = []
    page.on("request", lambda r: calls.append(r.url) if "/gradio_api/" in r.url else None)
    buttons = page.locator(f"{PLAYER} .emigm-btn")
    assert _player(page)["k"] == "5"
    buttons.nth(1).click()  # step back
    assert _player(page)["k"] == "4" and "step 5 of 6" in page.locator(f"{PLAYER} .emigm-label").inner_text()
    buttons.nth(0).click()  # first
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    assert _player(page)["k"] == "2"
    page.keyboard.press("ArrowLeft")
    assert _player(page)["k"] == "1"
    page.screenshot(path=str(SHOTS / "scrubbed-step2.png"))
    # play, pause, play again: it resumes where it paused
    buttons.nth(2).click()
    page.wait_for_function(f"() => +document.querySelector('{PLAYER}').dataset.k >= 3")
    buttons.nth(2).click()  # pause
    paused = int(_player(page)["k"])
    page.wait_for_timeout(600)
    assert int(_player(page)["k"]) == paused
    if paused < 5:
        buttons.nth(2).click()
        page.wait_for_function(f"() => +document.querySelector('{PLAYER}').dataset.k > {paused}")
        buttons.nth(2).click()
        assert int(_player(page)["k"]) > paused
    page.wait_for_timeout(300)
    assert not calls, f"scrubbing called the server: {calls}"


def test_disabled_choice_cannot_be_picked(page):
    page.get_by_text("Reveal order and count").click()  # a closed accordion
    conf = page.locator("#ctl-order label", has_text="confidence")
    conf.wait_for()
    page.wait_for_function("() => document.querySelector('#ctl-order label.emigm-off')?.textContent.includes('confidence')",
                           timeout=30_000)
    assert "token probabilities" in (conf.get_attribute("title") or "")
    conf.click(force=True)
    page.wait_for_timeout(300)
    checked = page.evaluate("() => [...document.querySelectorAll('#ctl-order input')].filter(i => i.checked).map(i => i.value)")
    assert checked == ["random"]
    assert "order=random" in page.locator("#permalink textarea").input_value()
    page.screenshot(path=str(SHOTS / "disabled-choice.png"))
    page.get_by_text("Reveal order and count").click()


def test_an_error_keeps_the_previous_image(page):
    before = _player(page)
    image = page.evaluate(f"() => document.querySelector('{PLAYER} canvas').toDataURL()")
    _set_number(page, "ctl-cfg_interval_lo", 0.6)
    _set_number(page, "ctl-cfg_interval_hi", 0.2)
    page.locator("#run-btn").click()
    page.wait_for_function(f"() => document.querySelector('{STATUS}').dataset.phase === 'error'")
    assert "t_lo < t_hi" in _status(page)["text"]
    page.wait_for_timeout(500)
    assert _player(page)["run"] == before["run"]
    assert page.evaluate(f"() => document.querySelector('{PLAYER} canvas').toDataURL()") == image
    badges = page.evaluate("() => [...document.querySelectorAll('#player .error, #run-status .error')]"
                           ".filter(e => e.offsetParent !== null && getComputedStyle(e).visibility !== 'hidden')"
                           ".map(e => e.outerHTML.slice(0, 200))")
    assert not badges  # no "Error" badge over the views
    page.screenshot(path=str(SHOTS / "error-keeps-views.png"))
    _set_number(page, "ctl-cfg_interval_hi", 0.8)
    _set_number(page, "ctl-cfg_interval_lo", 0.1)


def test_run_then_pick_a_token(page):
    seed = page.locator("#ctl-seed input")
    seed.fill("11")
    seed.press("Enter")
    page.wait_for_function("() => document.querySelector('#permalink textarea').value.includes('seed=11')")
    before = _player(page)["run"]
    page.locator("#run-btn").click()
    _wait_ready(page, other_than=before)
    assert "seed 11" in _status(page)["text"]
    canvas = page.locator(f"{PLAYER} canvas").first
    box = canvas.bounding_box()
    assert box["width"] >= 160
    canvas.click(position={"x": box["width"] * 0.6, "y": box["height"] * 0.3})
    page.wait_for_function(f"() => document.querySelectorAll('{PLAYER} .emigm-tiles figure').length > 0")
    page.screenshot(path=str(SHOTS / "token-history.png"))


def test_stop_leaves_a_partial_scrubbable_run(page, monkeypatch):
    import app.engine as eng
    real = eng.sample_steps

    def slow(*args, **kwargs):  # a model slow enough to stop by hand
        for state in real(*args, **kwargs):
            time.sleep(0.25)
            yield state

    monkeypatch.setattr(eng, "sample_steps", slow)
    _set_number(page, "ctl-num_steps", 16)
    before = _player(page)["run"]
    page.locator("#run-btn").click()
    page.wait_for_function(f"() => document.querySelector('{PLAYER}').dataset.live === '1' "
                           f"&& +document.querySelector('{PLAYER}').dataset.n >= 2")
    page.locator("#stop-btn").click()
    page.wait_for_function(f"() => document.querySelector('{STATUS}').dataset.phase === 'stopped'")
    p = _player(page)
    assert p["run"] != before and p["live"] == "0" and 2 <= int(p["n"]) < 16
    assert "Stopped at step" in _status(page)["text"]
    page.locator(f"{PLAYER} .emigm-btn").nth(0).click()  # scrubbable: to the first step
    assert _player(page)["k"] == "0"
    page.screenshot(path=str(SHOTS / "stopped.png"))
    # branch from the step shown in the player: the first two steps stay, the rest is sampled anew
    page.keyboard.press("ArrowRight")
    stopped = _player(page)["run"]
    page.get_by_text("Branch from a step").click()
    page.locator("#branch-btn").click()
    _wait_ready(page, other_than=stopped)
    page.locator(f"{PLAYER} .emigm-btn").nth(0).click()
    assert _player(page)["n"] == "16", (_status(page), _player(page))
    assert "branched after step 2" in page.evaluate(
        f"() => {{ const r = document.querySelector('{PLAYER}'); return r.querySelector('.emigm-detail').innerText; }}")


@pytest.mark.parametrize("tab, ready", [
    ("Schedules", "#gamma-plot .js-plotly-plot"),
    ("Compare guidance", None),
    ("Results", "#results-msg"),
])
def test_every_tab_opens(page, tab, ready):
    page.get_by_role("tab", name=tab).click()
    if tab == "Compare guidance":
        page.locator("#compare-btn").click()
        page.wait_for_function("() => document.querySelector('#compare-status .emigm-status').dataset.phase === 'ready'")
        page.wait_for_selector("#diff-plot .js-plotly-plot")
        widths = page.evaluate("() => [...document.querySelectorAll('#compare-player canvas')].map(c => c.getBoundingClientRect().width)")
        assert len(widths) == 4 and min(widths) >= 160
        assert "NFE" in page.locator("#compare-player .emigm-ptitle").first.inner_text()
    else:
        page.wait_for_selector(ready)
        page.wait_for_timeout(500)
    if tab == "Results":
        assert re.search(r"No measured results|Read ", page.locator("#results-msg").inner_text())
    page.screenshot(path=str(SHOTS / f"{tab.split()[0].lower()}.png"))
