"""The explorer tried as a new user would (issue 29), in a real browser (Debian's chromium through
Playwright) at 1440x900: each defect hit the way it was hit. Screenshots go to artifacts/screenshots/.
The explorer's handlers and payloads have fast tests of their own (tests/test_app*.py, tests/js/)."""
from __future__ import annotations

import pytest
from test_app_browser import ARGS, CHROMIUM, PLAYER, SHOTS, TIMEOUT, _free_port, sync_api

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from test_app import make_export, tiny_maskgit

    from app.engine import Engine
    from app.ui import build_demo, launch_kwargs
    maskgit = make_export(tmp_path_factory.mktemp("models") / "tiny-maskgit", tiny_maskgit(), smoother=True)
    demo = build_demo(Engine(["test-tiny", "test-tiny-fakecfg", str(maskgit)], num_threads=1))
    _, local, _ = demo.launch(server_name="127.0.0.1", server_port=_free_port(), prevent_thread_lock=True,
                              quiet=True, **launch_kwargs())
    yield local
    demo.close()


@pytest.fixture(scope="module")
def browser():
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        except Exception as e:  # a chromium that cannot start here is an environment problem
            pytest.skip(f"chromium does not start: {str(e).splitlines()[0]}")
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    pg = browser.new_page(viewport={"width": 1440, "height": 900})
    pg.set_default_timeout(TIMEOUT)
    pg.goto(server)
    pg.wait_for_selector(f"{PLAYER} canvas")
    yield pg
    pg.close()


def test_defect_2_the_map_switch_shows_its_choice(page):
    """The map switch (when revealed / uncertainty / times revised) shows which map is on."""
    choice = "() => [...document.querySelectorAll('#player .emigm-map-choice')].map(l => " \
             "[l.dataset.map, getComputedStyle(l).backgroundColor, getComputedStyle(l).fontWeight])"
    styles = dict((k, (bg, w)) for k, bg, w in page.evaluate(choice))
    assert set(styles) >= {"when", "unc"}
    assert styles["when"] != styles["unc"]  # the one that is on looks different
    page.locator("#player .emigm-map-choice[data-map=unc]").click()
    after = dict((k, (bg, w)) for k, bg, w in page.evaluate(choice))
    assert after["unc"] == styles["when"] and after["when"] == styles["unc"]
    page.locator("#player .emigm-maps").screenshot(path=str(SHOTS / "walk-2-map-switch.png"))
