"""The static site (`python -m emigm site --out DIR`): curated runs replayed by the explorer's own player
from files only. Refusals of --out, an interrupted build leaving no site, an earlier site replaced; in
Chromium against `python -m http.server`: the page loads, the player scrubs, a Compare set shows its
panels and no request leaves the page's folder. Tiny random-init presets keep the build fast."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app import site
from app.engine import Engine
from app.lessons import LESSONS, Lesson, Panel, available
from emigm.cli import main as cli

TINY = (Lesson("unmasking", "An image, token by token", "one run", (Panel("tiny", "test-tiny", {"num_steps": 6}),),
               seeds=(0,)),
        Lesson("schedules", "exp against linear", "two panels",
               (Panel("exp", "test-tiny", {"num_steps": 4, "schedule": "exp"}),
                Panel("linear", "test-tiny", {"num_steps": 4, "schedule": "linear"}))))


@pytest.fixture(scope="module")
def engine():
    return Engine(["test-tiny"], num_threads=1)


def build(out, engine, lessons=TINY):
    return site.build(out, lessons=lessons, engine=engine, progress=False)


def test_the_lessons_name_shipped_models_and_one_setting_each():
    assert [lesson.key for lesson in available(["fmnist-emigm", "fmnist-maskgit"])] == [
        "unmasking", "schedule-4-steps", "cfg-interval", "self-guidance", "remasking"]
    assert "oracle" in [lesson.key for lesson in available(["fmnist-emigm", "fmnist-maskgit", "fmnist-oracle"])]
    for lesson in LESSONS:
        if lesson.kind == "compare":  # the panels differ, and in their settings only
            a, b = lesson.panels
            assert (a.sampler, a.guidance, a.model) != (b.sampler, b.guidance, b.model), lesson.key


def test_a_site_is_its_files_and_nothing_else(tmp_path, engine):
    out = tmp_path / "site"
    record = build(out, engine)
    assert sorted(p.name for p in out.iterdir()) == sorted(site.FILES)
    assert record["bytes"] <= site.MAX_BYTES and [r["kind"] for r in record["runs"]] == ["unmask", "compare"]
    doc = json.loads((out / "runs.js").read_text().removeprefix("window.EMIGM_SITE = ").rstrip().rstrip(";"))
    assert [r["key"] for r in doc["runs"]] == ["unmasking", "schedules"]
    assert doc["runs"][1]["payload"]["kind"] == "compare" and len(doc["runs"][1]["payload"]["panels"]) == 2
    html = (out / "index.html").read_text()
    for url in ("explorer.css", *site.PLAYER_SCRIPTS, "runs.js", "site.js"):  # relative URLs only
        assert f'"{url}"' in html
    assert "http" not in html and "//" not in html.replace("<!doctype html>", "")
    assert not list(tmp_path.glob(".site.*"))  # no build folder left


def test_refused_outs_write_nothing(tmp_path, engine, capsys):
    other = tmp_path / "docs"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(site.SiteError, match="is a non-empty folder that is not an earlier site"):
        build(other, engine)
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]
    afile = tmp_path / "file.html"
    afile.write_text("x")
    assert cli.main(["site", "--out", str(afile)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a file, not a folder" in err
    assert cli.main(["site", "--out", str(other)]) == 2  # refused before any model is loaded
    assert "not an earlier site" in capsys.readouterr().err
    assert afile.read_text() == "x" and not list(tmp_path.glob(".*"))


def test_an_interrupted_build_leaves_no_site_and_an_earlier_one_is_replaced(tmp_path, engine, monkeypatch):
    out = tmp_path / "site"
    real = site.run_lesson
    calls = []

    def dies_on_the_second(engine, lesson, index):
        calls.append(index)
        if index == 1:
            raise KeyboardInterrupt
        return real(engine, lesson, index)

    monkeypatch.setattr(site, "run_lesson", dies_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        build(out, engine)
    assert calls == [0, 1] and not out.exists() and not list(tmp_path.iterdir())
    monkeypatch.setattr(site, "run_lesson", real)
    build(out, engine, TINY[:1])
    first = json.loads((out / site.MARK).read_text())
    assert [r["key"] for r in first["runs"]] == ["unmasking"]
    build(out, engine)  # an earlier site: replaced whole
    assert [r["key"] for r in json.loads((out / site.MARK).read_text())["runs"]] == ["unmasking", "schedules"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]


@pytest.mark.slow
def test_the_site_replays_in_chromium_from_a_static_server(tmp_path, engine):
    sync_api = pytest.importorskip("playwright.sync_api")
    chromium = "/usr/bin/chromium"
    if not Path(chromium).exists():
        pytest.skip(f"no chromium at {chromium}")
    out = tmp_path / "site"
    build(out, engine)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory",
                               str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 30
        while time.time() < deadline:  # the server is up when it accepts a connection
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        with sync_api.sync_playwright() as p:
            try:
                browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--headless",
                                                                            "--disable-gpu"])
            except Exception as e:  # a chromium that cannot start here is an environment problem
                pytest.skip(f"chromium does not start: {str(e).splitlines()[0]}")
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.set_default_timeout(90_000)
            requests, errors = [], []
            page.on("request", lambda r: requests.append(r.url))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(base + "index.html")
            page.wait_for_function("() => [...document.querySelectorAll('.lesson .emigm-root')]"
                                   ".every(r => r.dataset.run) && document.querySelectorAll('.lesson').length === 2")
            player = "#unmasking .emigm-root"
            n = int(page.eval_on_selector(player, "r => r.dataset.n"))
            assert page.eval_on_selector(player, "r => r.emigmPlayer.k") == n - 1  # a finished run opens at its end
            page.click(f"{player} .emigm-range")
            page.keyboard.press("Home")
            assert page.eval_on_selector(player, "r => r.emigmPlayer.k") == 0
            page.keyboard.press("ArrowRight")
            assert page.eval_on_selector(player, "r => r.emigmPlayer.k") == 1
            compare = "#schedules"
            assert page.eval_on_selector(compare, "s => s.dataset.kind") == "compare"
            assert page.eval_on_selector_all(f"{compare} .emigm-panel", "ps => ps.length") == 2
            assert page.eval_on_selector_all(f"{compare} .emigm-ptitle", "ts => ts.map(t => t.textContent)") == \
                ["exp", "linear"]
            assert not errors, errors
            assert requests and all(u.startswith(base) for u in requests), requests
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
