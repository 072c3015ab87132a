"""The explorer in a real browser (Debian's chromium through Playwright) at 1440x900, as a person uses
it: the opening run and a permalink, Run visible without scrolling, images large and crisp, scrubbing
with no server round trip (buttons, arrow keys, play / pause that resumes), the finished image clean
and the clean toggle, an error that keeps the previous image with its message next to the control,
Stop that leaves a partial scrubbable run, disabled choices, a token's history, every tab; and the
fourteen things of issue 20 that a new user noticed, each hit the way they were hit (items 1-11).
Screenshots go to artifacts/screenshots/."""
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
def url(tmp_path_factory):
    from test_app import make_export, tiny_maskgit

    from app.engine import Engine
    from app.ui import build_demo, launch_kwargs
    # a MaskGIT-style model with a self-guidance smoother beside the two without one
    maskgit = make_export(tmp_path_factory.mktemp("models") / "tiny-maskgit", tiny_maskgit(), smoother=True)
    demo = build_demo(Engine(["test-tiny", "test-tiny-fakecfg", str(maskgit)], num_threads=1))
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


def _pick(pg, elem_id: str, option: str, wait_ms: int = 600) -> None:
    """Choose `option` in the dropdown `elem_id` as a person does: open it, click the option."""
    pg.locator(f"#{elem_id} input").first.click()
    pg.locator("ul[role=listbox] li", has_text=option).first.click()
    pg.wait_for_timeout(wait_ms)


def _orange(pg, canvas_selector: str) -> int:
    """Pixels of the 'revealed at this step' outline colour on a canvas."""
    return pg.evaluate(f"""() => {{ const c = document.querySelector('{canvas_selector}'), d = c.getContext('2d')
        .getImageData(0, 0, c.width, c.height).data; let n = 0;
        for (let i = 0; i < d.length; i += 4) if (d[i] === 230 && d[i + 1] === 159 && d[i + 2] === 0) n++; return n; }}""")


def _data(pg, root: str = PLAYER) -> dict:
    """The payload and step the player shows."""
    return pg.evaluate(f"() => {{ const p = document.querySelector('{root}').emigmPlayer; return {{...p.data, sprite: null, k: p.k}}; }}")


def _notes(pg) -> dict:
    return pg.evaluate("() => Object.fromEntries([...document.querySelectorAll('.emigm-field-note')]"
                       ".map(n => [n.dataset.prefix + n.dataset.for, n.textContent]))")


def page_link(pg) -> str:
    return pg.locator("#permalink textarea").input_value()


def _checked(pg, elem_id: str) -> str:
    return pg.evaluate(f"() => [...document.querySelectorAll('#{elem_id} input')].filter(i => i.checked).map(i => i.value)[0]")


@pytest.fixture
def slow_sampler(monkeypatch):
    """A model slow enough to watch (the app runs in this process)."""
    import app.engine as eng
    real = eng.sample_steps

    def slow(*args, **kwargs):
        for state in real(*args, **kwargs):
            time.sleep(0.12)
            yield state

    monkeypatch.setattr(eng, "sample_steps", slow)


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


def test_images_are_large_and_crisp(page):
    """At least 224 px per image, a whole multiple of the image's own size, drawn 1:1 (no browser
    scaling, so no blur), at 1440x900 and 1280x720; larger when the window has room."""
    sizes = {}
    for w, h in ((1280, 720), (1440, 900)):
        page.set_viewport_size({"width": w, "height": h})
        page.wait_for_timeout(600)
        views = page.evaluate(f"() => [...document.querySelectorAll('{PLAYER} canvas.emigm-view')]"
                              ".map(c => [c.width, c.height, c.getBoundingClientRect().width])")
        assert len(views) == 3
        for width, height, shown in views:
            assert width == height >= 224 and width % 8 == 0 and shown == pytest.approx(width + 2, abs=0.5), views
        sizes[w] = views[0][0]
        page.screenshot(path=str(SHOTS / f"unmasking-{w}x{h}.png"))
    assert sizes[1440] >= sizes[1280]
    smooth = page.evaluate(f"() => getComputedStyle(document.querySelector('{PLAYER} canvas')).imageRendering")
    assert smooth in ("pixelated", "crisp-edges")


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


def test_finished_image_is_clean_and_the_clean_toggle(page):
    """Item 9: the last step of a finished run is the finished image with no outlines; the step before
    outlines what it revealed, and the clean toggle hides the outlines on any step."""
    canvas = f"{PLAYER} canvas.canvas"
    page.keyboard.press("End")
    assert _data(page)["k"] == 5 and _orange(page, canvas) == 0
    assert "finished" in page.locator(f"{PLAYER} .emigm-label").inner_text()
    page.screenshot(path=str(SHOTS / "finished-clean.png"))
    steps = _data(page)["steps"]
    k = max(i for i, st in enumerate(steps[:-1]) if st["revealed"] > 0)
    for _ in range(5 - k):
        page.keyboard.press("ArrowLeft")
    assert _orange(page, canvas) > 0
    page.locator(f"{PLAYER} .emigm-clean input").check()
    assert _orange(page, canvas) == 0
    page.screenshot(path=str(SHOTS / "clean-toggle.png"))
    page.locator(f"{PLAYER} .emigm-clean input").uncheck()
    assert _orange(page, canvas) > 0
    page.keyboard.press("End")


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
    # the message is also next to the control that holds the refused value
    assert "t_lo < t_hi" in _notes(page).get("ctl-cfg_interval_hi", "")
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
    page.wait_for_function("() => !document.querySelector('.emigm-field-note')")


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
    assert box["width"] >= 224
    canvas.click(position={"x": box["width"] * 0.6, "y": box["height"] * 0.3})
    page.wait_for_function(f"() => document.querySelectorAll('{PLAYER} .emigm-tiles figure').length > 0")
    page.screenshot(path=str(SHOTS / "token-history.png"))


@pytest.mark.xfail(strict=False, reason="known defect: branching from a stopped run in the browser shows a "
                                        "6-step run, not the 16-step branch (open)")
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
    page.get_by_text("Branch from a step", exact=True).click()  # the re-score help also names it
    page.locator("#branch-btn").click()
    _wait_ready(page, other_than=stopped)
    page.locator(f"{PLAYER} .emigm-btn").nth(0).click()
    assert _player(page)["n"] == "16", (_status(page), _player(page))
    assert "branched after step 2" in page.evaluate(
        f"() => {{ const r = document.querySelector('{PLAYER}'); return r.querySelector('.emigm-detail').innerText; }}")


def _run(pg) -> dict:
    before = _player(pg)["run"]
    pg.locator("#run-btn").click()
    pg.wait_for_function(f"() => {{ const s = document.querySelector('{STATUS}').dataset.phase; return s === 'error' || "
                         f"(s === 'ready' && document.querySelector('{PLAYER}').dataset.run !== '{before}'); }}")
    return _status(pg)


def test_run_button_is_never_covered(page):
    """Item 7: however far the sidebar scrolls, the Run button is what a click on it reaches."""
    sidebar = page.locator(".sidebar").first
    page.get_by_text("Token sampling").first.click()  # a longer sidebar
    height = sidebar.evaluate("e => e.scrollHeight - e.clientHeight")
    assert height > 0
    for top in range(0, int(height) + 40, 37):
        sidebar.evaluate(f"e => e.scrollTop = {top}")
        box = page.locator("#run-btn").bounding_box()
        for fx, fy in ((0.5, 0.5), (0.1, 0.2), (0.9, 0.8), (0.5, 0.95)):
            hit = page.evaluate(f"() => document.elementFromPoint({box['x'] + fx * box['width']}, "
                                f"{box['y'] + fy * box['height']})?.closest('#run-btn') !== null")
            assert hit, f"something covers the Run button at scrollTop {top}"
    page.screenshot(path=str(SHOTS / "sidebar-scrolled.png"))
    sidebar.evaluate("e => e.scrollTop = 0")
    page.get_by_text("Token sampling").first.click()


def test_a_typed_head_steps_is_kept(page):
    """Item 11: the slider goes as far as the library accepts; a typed value stays as typed, in the
    box, the link and the run; one past the library's range is refused in one line next to the box."""
    page.get_by_text("Token sampling").first.click()
    assert page.locator("#ctl-head_steps input[type=range]").get_attribute("max") == "250"
    _set_number(page, "ctl-head_steps", 100)
    page.wait_for_function("() => document.querySelector('#permalink textarea').value.includes('head_steps=100')")
    assert _run(page)["phase"] == "ready"
    box = page.locator("#ctl-head_steps input[type=number]")
    assert box.input_value() == "100" and "head_steps=100" in page_link(page)
    _set_number(page, "ctl-head_steps", 300)
    page.wait_for_function("() => !!document.querySelector('.emigm-field-note[data-for=head_steps]')")
    assert "head_steps must be in [1, 250], got 300" in _notes(page)["ctl-head_steps"]
    page.screenshot(path=str(SHOTS / "refused-next-to-box.png"))
    st = _run(page)
    assert st["phase"] == "error" and "head_steps must be in [1, 250]" in st["text"] and box.input_value() == "300"
    _set_number(page, "ctl-head_steps", 8)
    page.wait_for_function("() => !document.querySelector('.emigm-field-note')")
    page.get_by_text("Token sampling").first.click()


def test_a_hidden_control_never_blocks_a_run(page, url):
    """Item 2: self-guidance 1 on the model with a smoother, then a model without one: its hidden
    self-guidance control holds 0, and Run runs; a link asking for it opens with a note, and runs."""
    _pick(page, "ctl-model", "tiny-maskgit", 1500)
    _set_number(page, "ctl-sg_scale", 1)
    st = _run(page)
    assert st["phase"] == "ready" and "tiny-maskgit" in st["text"], st
    _pick(page, "ctl-model", "test-tiny-fakecfg", 1500)
    assert not page.locator("#ctl-sg_scale").is_visible()
    st = _run(page)
    assert st["phase"] == "ready" and "test-tiny-fakecfg" in st["text"], st
    page.wait_for_function("() => document.querySelector('#permalink textarea').value.includes('sg_scale=0&')")
    page.goto(url + "?model=test-tiny&sg_scale=1&num_steps=6")
    page.wait_for_function(f"() => document.querySelector('{STATUS}')?.dataset.phase === 'ready' "
                           "&& document.querySelector('#permalink textarea').value.includes('num_steps=6')")
    assert "sg_scale" in page.locator("#link-note").inner_text() and "sg_scale=0&" in page_link(page)


def test_the_link_follows_quick_model_switches(page):
    """Item 6: after quick switches the link names the model and the rule the controls show."""
    for name in ("tiny-maskgit", "test-tiny", "tiny-maskgit", "test-tiny"):
        _pick(page, "ctl-model", name, 150)
    page.wait_for_timeout(2500)
    page.get_by_text("Reveal order and count").click()
    page.wait_for_selector("#ctl-order input")
    link = page_link(page)
    shown = {f: _checked(page, f"ctl-{f}") for f in ("schedule", "count_rule", "order")}
    page.get_by_text("Reveal order and count").click()
    assert "model=test-tiny&" in link and shown["order"] == "random", shown
    for f, v in shown.items():
        assert f"{f}={v}&" in link, (f, v, link)
    st = _run(page)
    assert st["phase"] == "ready" and "test-tiny" in st["text"]


def test_every_step_reveals_a_token(page):
    """Item 4: with as many steps as tokens every step reveals exactly one token (the count rule leaves a
    token for every later step), the labels say so, and no step is an empty pass."""
    box = page.locator("#ctl-num_steps input[type=number]").first
    for _ in range(10):  # the opening permalink (6 steps) may still be applied after the first ready
        _set_number(page, "ctl-num_steps", 16)
        if box.input_value() == "16":
            break
    for seed in range(4):
        _set_number(page, "ctl-seed", seed)
        assert _run(page)["phase"] == "ready"
        steps = _data(page)["steps"]
        assert [st["revealed"] for st in steps] == [1] * 16, (seed, [st["revealed"] for st in steps])
    page.keyboard.press("Home")
    page.keyboard.press("ArrowRight")
    detail = page.locator(f"{PLAYER} .emigm-detail").inner_text()
    assert "revealed 0" not in detail and "revealed 1" in detail, detail


def test_schedules_offer_only_what_they_accept(page):
    """Item 5: the steps slider follows the token count; a refused value is named next to its box and
    the summary says the plots were not redrawn; quick edits end on the plots of the last values."""
    page.get_by_role("tab", name="Schedules").click()
    page.wait_for_selector("#gamma-plot .js-plotly-plot")
    _set_number(page, "sch-num_tokens", 10)
    page.wait_for_function("() => document.querySelector('#sch-num_steps input[type=range]').max === '10'")
    page.wait_for_function("() => !!document.querySelector('.emigm-field-note[data-for=num_steps]')")
    # the 16 steps it had stay in the box, refused in one line next to it; the plots say they are stale
    assert page.locator("#sch-num_steps input[type=number]").input_value() == "16"
    assert "num_steps 16 is not available: at most 10 steps for 10 tokens" in _notes(page)["sch-num_steps"]
    assert "Not redrawn" in page.locator("#schedule-summary").inner_text()
    page.screenshot(path=str(SHOTS / "schedules-refused.png"))
    _set_number(page, "sch-num_steps", 12)  # typed past the cap: kept as typed, refused
    page.wait_for_timeout(1000)
    assert page.locator("#sch-num_steps input[type=number]").input_value() == "12"
    assert "num_steps 12 is not available" in _notes(page)["sch-num_steps"]
    _set_number(page, "sch-num_steps", 8)
    page.wait_for_function("() => !document.querySelector('.emigm-field-note')")
    assert "8 x" in page.locator("#schedule-summary").inner_text()
    _set_number(page, "sch-num_tokens", 49)
    _set_number(page, "sch-num_steps", 16)
    page.wait_for_function("() => !document.querySelector('.emigm-field-note') "
                           "&& document.querySelector('#schedule-summary').innerText.includes('16 x')")
    for v in (0.82, 0.5, 0.7, 0.3):  # quick edits: the answers arrive in order
        box = page.locator("#sch-cfg_interval_hi input[type=number]")
        box.fill(str(v))
        box.press("Enter")
    page.wait_for_function("() => document.querySelector('#schedule-summary').innerText.includes('(0.1, 0.3]')")
    page.wait_for_timeout(1500)
    assert "(0.1, 0.3]" in page.locator("#schedule-summary").inner_text()
    shapes = page.evaluate("() => document.querySelector('#gamma-plot .js-plotly-plot').layout.shapes.map(s => [s.x0, s.x1])")
    assert shapes and all(x == [0.1, 0.3] for x in shapes), shapes


def test_compare_opens_with_its_panels(page):
    """Item 1: the tab opens with the first model's panels and their difference, before any click."""
    page.get_by_role("tab", name="Compare").click()
    page.wait_for_selector("#compare-player canvas")
    page.wait_for_selector("#diff-plot .js-plotly-plot")
    assert _data(page, "#compare-player .emigm-root")["complete"]
    page.screenshot(path=str(SHOTS / "compare-opening.png"))


def test_compare_streams_its_panels(page, slow_sampler):
    """Item 1: after Compare every panel appears with its first frame at once and fills in step by step,
    the difference view updating with them; the headline agrees with the chart (item 3)."""
    page.get_by_role("tab", name="Compare").click()
    root = "#compare-player .emigm-root"
    page.wait_for_selector("#diff-plot .js-plotly-plot")  # the opening comparison's difference, drawn on arrival
    before = page.evaluate(f"() => document.querySelector('{root}').dataset.run")
    title0 = page.evaluate("() => document.querySelector('#diff-plot .js-plotly-plot').layout.title.text")
    t0 = time.time()
    page.locator("#compare-btn").click()
    page.wait_for_function(f"() => {{ const r = document.querySelector('{root}'); return r.dataset.run !== '{before}' "
                           f"&& r.dataset.live === '1'; }}")
    first = time.time() - t0
    live = _data(page, root)
    assert live["live"] and live["n"] <= 3 and len([p for p in live["panels"] if p["cols"]]) == 4
    assert page.evaluate("() => document.querySelector('#compare-status .emigm-status').dataset.phase") == "running"
    assert page.evaluate(f"() => document.querySelectorAll('{root} canvas').length") == 4
    page.screenshot(path=str(SHOTS / "compare-streaming.png"))
    page.wait_for_function(f"() => +document.querySelector('{root}').dataset.n > {live['n'] + 2} "
                           f"&& document.querySelector('{root}').dataset.live === '1'")
    # the difference view follows the panels while they run
    page.wait_for_function(f"() => {{ const t = document.querySelector('#diff-plot .js-plotly-plot').layout.title.text; "
                           f"return t !== {title0!r} && document.querySelector('{root}').dataset.live === '1'; }}")
    page.wait_for_function("() => document.querySelector('#compare-status .emigm-status').dataset.phase === 'ready'",
                           timeout=TIMEOUT)
    final = _data(page, root)
    assert not final["live"] and final["n"] == final["N"] and first < 5, first
    fig = page.evaluate("() => { const p = document.querySelector('#diff-plot .js-plotly-plot'); "
                        "return {title: p.layout.title.text, tokens: p.data[2].y}; }")
    m = re.search(r"identical through step (\d+), differ from step (\d+)", fig["title"])
    if m:  # no difference in the chart before the step the headline names, one at it
        k = int(m.group(2))
        assert all(y == 0 for y in fig["tokens"][:k - 1]) and fig["tokens"][k - 1] > 0, fig
    else:
        assert "identical at every step" in fig["title"] and not any(fig["tokens"]), fig


def test_compare_has_its_own_banner_and_aligned_panels(page):
    """Item 8: the banner of the Compare tab describes its model; item 10: panels whose titles wrap
    keep their images on one line."""
    page.get_by_role("tab", name="Compare").click()
    _pick(page, "cmp-model", "tiny-maskgit", 1500)
    assert "tiny-maskgit" in page.locator("#cmp-banner").inner_text()
    page.locator("#compare-btn").click()
    page.wait_for_function("() => document.querySelector('#compare-status .emigm-status').dataset.phase === 'ready' "
                           "&& document.querySelectorAll('#compare-player canvas').length === 5")
    for w, h in ((1440, 900), (1280, 720)):
        page.set_viewport_size({"width": w, "height": h})
        page.wait_for_timeout(600)
        boxes = page.evaluate("() => [...document.querySelectorAll('#compare-player .emigm-panel')].map(p => ({"
                              "title: p.querySelector('.emigm-ptitle').getBoundingClientRect().height, "
                              "img: p.querySelector('canvas').getBoundingClientRect().top, "
                              "row: p.getBoundingClientRect().top, w: p.querySelector('canvas').width}))")
        rows = {}
        for b in boxes:
            rows.setdefault(round(b["row"]), []).append(b)
        assert all(b["w"] >= 224 for b in boxes)
        for same_row in rows.values():
            assert max(b["img"] for b in same_row) - min(b["img"] for b in same_row) < 1, boxes
        page.screenshot(path=str(SHOTS / f"compare-maskgit-{w}x{h}.png"), full_page=True)
    page.set_viewport_size({"width": 1440, "height": 900})
    page.get_by_role("tab", name="Unmasking").click()
    assert "tiny-maskgit" not in page.locator("#banner").inner_text()
