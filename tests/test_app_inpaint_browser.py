"""The Inpaint section in a real browser (Debian's chromium through Playwright) at 1440x900: pick a test
image, drag across the token grid to paint the mask (the mask control follows), inpaint with two seeds
(the views and the player fill), paint a reveal order (its control follows), open a step and re-score
it. Screenshots go to artifacts/screenshots/."""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.needs_fashion_mnist]
sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = "/usr/bin/chromium"
if not os.path.exists(CHROMIUM):
    pytest.skip(f"no chromium at {CHROMIUM}", allow_module_level=True)

ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
SHOTS = Path(__file__).resolve().parent.parent / "artifacts" / "screenshots"
TIMEOUT = 180_000  # ms; the CPU is small and shared
STATUS = "#run-status .emigm-status"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def page():
    from app.engine import Engine
    from app.ui import build_demo, launch_kwargs

    demo = build_demo(Engine(["fmnist-maskgit"], num_threads=1))
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=_free_port(), prevent_thread_lock=True, quiet=True,
                            **launch_kwargs())
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        except Exception as e:
            pytest.skip(f"chromium does not start: {str(e).splitlines()[0]}")
        pg = browser.new_page(viewport={"width": 1440, "height": 900})
        pg.set_default_timeout(TIMEOUT)
        pg.goto(url)
        pg.wait_for_selector("#player .emigm-root canvas")
        yield pg
        browser.close()
    demo.close()


def _ready(pg) -> None:
    pg.wait_for_function(f"() => document.querySelector('{STATUS}')?.dataset.phase === 'ready'")


def test_paint_inpaint_open_and_rescore(page) -> None:
    pg = page
    _ready(pg)
    pg.click("text=Inpaint a real image · paint a reveal order")
    pg.fill("#ctl-ip_index input", "3")
    pg.press("#ctl-ip_index input", "Enter")
    pg.wait_for_selector("#paint .emigm-paint-cell")
    pg.wait_for_function("() => (document.querySelector('#inpaint-status')?.textContent || '').includes('test image')")
    cells = pg.locator("#paint .emigm-paint-cell")
    pg.click("#paint .emigm-paint-clear")
    a, b = cells.nth(0).bounding_box(), cells.nth(6).bounding_box()
    pg.mouse.move(a["x"] + 4, a["y"] + 4)
    pg.mouse.down()
    pg.mouse.move(b["x"] + 4, b["y"] + 4, steps=12)
    pg.mouse.up()
    pg.wait_for_function("() => document.querySelector('#ctl-ip_mask textarea, #ctl-ip_mask input').value"
                         " === 'tokens:0,1,2,3,4,5,6'")
    pg.fill("#ctl-ip_seeds input", "2")
    pg.press("#ctl-ip_seeds input", "Enter")
    pg.evaluate(f"() => {{ document.querySelector('{STATUS}').dataset.phase = 'clicked'; }}")
    t0 = time.time()
    pg.click("#inpaint-btn")
    _ready(pg)
    took = time.time() - t0
    titles = pg.locator("#inpaint-views figcaption").all_inner_texts()
    assert titles == ["original", "tokenizer reconstruction", "masked (7 of 49 tokens)", "result, seed 0",
                      "result, seed 1"], titles
    pg.locator("#inpaint-views").screenshot(path=str(SHOTS / "inpaint-views.png"))
    # a reveal order painted by clicking tokens in turn
    pg.click("#paint .emigm-paint-mode[data-mode=order]")
    for i in (24, 17, 31):
        cells.nth(i).click()
    pg.wait_for_function("() => document.querySelector('#ctl-reveal_order textarea, #ctl-reveal_order input')"
                         ".value === '24,17,31'")
    pg.locator("#paint").screenshot(path=str(SHOTS / "inpaint-paint-order.png"))
    # open the first step (the player scrubbed back) and re-score it at temperature 0
    pg.locator("#player button", has_text="|◀").first.click()
    pg.click("#open-step-btn")
    pg.wait_for_function("() => (document.querySelector('#lab-status')?.textContent || '').includes('Step 1 of')")
    pg.wait_for_function("() => (document.querySelector('#rs-status')?.textContent || '').includes('Step 1 re-scored')")
    own = pg.locator("#rs-status").inner_text()
    box = pg.locator("#rs-rs_temperature input[type=number]")
    box.fill("0")
    box.press("Enter")
    pg.wait_for_function("(own) => { const t = document.querySelector('#rs-status')?.textContent || ''; "
                         "return t.includes('re-scored') && t !== own; }", arg=own)
    assert "the same positions as the run" in own and "would not change" in own
    assert pg.locator("#rescored figcaption").count() >= 3
    pg.locator("#lab-rescore").screenshot(path=str(SHOTS / "inpaint-rescore.png"))
    print(f"inpaint click to ready: {took:.1f} s")
