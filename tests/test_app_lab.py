"""The explorer as a lab (issue 21), on tiny random-weight models: Compare along any axis, an opened step,
the uncertainty and revision maps, intervene and resume, a diffusion-head token's denoising path and the
guided tour. First the handlers and the API (gradio_client), then a real browser (Debian's chromium
through Playwright, 1440x900) used as a person uses it; scrubbing, hovering and switching maps are
checked to make no server call. Screenshots go to artifacts/screenshots/."""
from __future__ import annotations

import json
import os
import socket
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from test_app import make_export, run_values, tiny_maskgit

from app import claims, controls
from app.compare import Compare
from app.engine import Engine
from app.lab import Lab, parse_tokens
from app.unmask import Unmasking
from emigm.core.config import to_dict
from emigm.io.imaging import to_uint8
from emigm.sample.orders import ORDERS

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
SHOTS = Path(__file__).resolve().parent.parent / "artifacts" / "screenshots"
TIMEOUT = 90_000
PLAYER = "#player .emigm-root"
ANATOMY = "#anatomy .emigm-anatomy"
FD, FD_SD = 12.5, 0.4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def compare_values(engine, model="test-tiny", **over):
    from app.compare import CONTROLS
    values = {"model": model, "class_name": engine.class_names(model)[0], "seed": 0, "num_seeds": 1,
              "axis": "guidance", "panel_a": "none", "panel_b": "interval", **Compare(engine).defaults(model)}
    values.update(over)
    return {k: values[k] for k in CONTROLS}


def claims_file(folder: Path, engine, model: str, **sampler_over) -> Path:
    """A claims.json with one measured point: `model` at the Compare tab's opening setting with
    `sampler_over` (what the panel of that axis value runs)."""
    values = {**compare_values(engine, model), "cfg_mode": "", "order_temperature": 4.5, "order_anneal": "linear"}
    sampler, guidance = controls.configs({**controls.DEFAULTS, **values})
    fp = claims.weights_of(engine.load(model))  # measured on these (random) weights
    point = {"label": "test point", "group": "schedule", "model": model, "nfe": 16, "fd": FD, "fd_sd": FD_SD,
             "seed_sets": [[0, 999], [1000, 1999], [2000, 2999]], "fingerprint": fp,
             "sampler": to_dict(replace(sampler, draft=False, **sampler_over)), "guidance": to_dict(guidance)}
    path = folder / "claims.json"
    path.write_text(json.dumps({"version": 3, "fingerprints": {model: fp}, "points": [point], "claims": []}))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return make_export(tmp_path_factory.mktemp("models") / "tiny-maskgit", tiny_maskgit(), smoother=True)


@pytest.fixture(scope="module")
def engine(models):
    return Engine(["test-tiny", "test-tiny-fakecfg", str(models)], num_threads=1)


def _run(engine, model="test-tiny", **over):
    values = run_values(model=model, class_name=engine.class_names(model)[0], **engine.suggested(model))
    values.update(over)
    return list(Unmasking(engine).run(**values))[-1][4]


# ----------------------------------------------------------------------------- handlers


@pytest.mark.parametrize("model", ["test-tiny", "tiny-maskgit"])
def test_an_opened_step_is_the_runs_step(engine, model):
    """The anatomy's combined prediction, decoded, is the draft the run showed at that step, at every
    step; the per-step maps the run recorded are the opened step's."""
    traj = _run(engine, model, cfg_interval_lo=0.0, cfg_interval_hi=1.0)
    lab = Lab(engine)
    for k in range(1, traj.num_steps + 1):
        state, gen = engine.open_step(traj, k)
        image = to_uint8(gen.tokenizer.decode(state.anatomy.branches["combined"][:1]))
        assert np.array_equal(image, traj.frames[k - 1].draft[:1]), k
        assert {"conditional", "null", "combined"} <= set(state.anatomy.branches)
        assert np.allclose(state.anatomy.uncertainty.numpy(), traj.frames[k - 1].state.anatomy.uncertainty.numpy())
    status, payload, doc = list(lab.anatomy(traj, 2))[-1]
    assert status["phase"] == "done" and payload["step"] == 2
    c = payload["count"]
    assert payload["headline"] == f"{c['masked']} masked × {c['p']:.3g} → expected {c['expected']:.3g}, drew {c['drawn']}"
    masked = [i for i, m in enumerate(payload["tokens"]["masked"]) if m]
    assert sorted(payload["tokens"]["rank"][i] for i in masked) == list(range(len(masked)))
    assert sum(payload["tokens"]["revealed"]) == c["drawn"] and "sprite" not in doc


def test_erase_nothing_and_resume_reproduces_the_run(engine):
    lab = Lab(engine)
    for model in ("test-tiny", "tiny-maskgit"):
        traj = _run(engine, model)
        for k in (1, 3, traj.num_steps - 1):
            status, player, doc = list(lab.intervene(traj, k, "", "erase", None))[-1]
            assert doc["identical"] and doc["diverge_step"] is None and "identical at every step" in status["text"]
            assert player["n"] == traj.num_steps and len(player["panels"]) == 2
        committed = (~traj.frames[1].state.mask_after[0]).nonzero().flatten().tolist()[:3]
        g = traj.grid
        status, player, doc = list(lab.intervene(traj, 2, ", ".join(f"{i // g}:{i % g}" for i in committed),
                                                 "erase", None))[-1]
        assert doc["tokens"] == committed and not doc["identical"] and doc["diverge_step"] >= 3


def test_fix_a_code_and_resume(engine):
    traj = _run(engine, "tiny-maskgit")
    state = traj.frames[1].state
    masked = state.mask_after[0].nonzero().flatten().tolist()
    g = traj.grid
    status, player, doc = list(Lab(engine).intervene(traj, 2, f"{masked[0] // g}:{masked[0] % g}", "fix", 7))[-1]
    assert doc["code"] == 7 and "fixed to code 7" in status["text"]


def test_a_diffusion_tokens_denoising_path(engine):
    traj = _run(engine, "test-tiny")
    state = traj.frames[2].state
    pos = int(state.mask_before[0].nonzero()[0])
    g = traj.grid
    status, payload, doc = list(Lab(engine).anatomy(traj, 3, pos // g, pos % g))[-1]
    path = doc["path"]
    assert path["note"] == "" and len(path["values"][0]) == 4  # a 2x2 patch of one channel
    from emigm.nn.diffusion import dpm_orders
    steps = traj.last.sampler.head_steps if path["revealed"] else traj.last.sampler.draft_steps
    assert len(path["values"]) == 1 + len(dpm_orders(steps))  # the starting noise, then each solver interval
    committed = int((~state.mask_before[0]).nonzero()[0]) if (~state.mask_before[0]).any() else None
    if committed is not None:
        _, payload, _ = list(Lab(engine).anatomy(traj, 3, committed // g, committed % g))[-1]
        assert "committed before step 3" in payload["path"]["note"]


@pytest.mark.parametrize("call, field, match", [
    (lambda lab, t: lab.anatomy(t, 99), "step", "step 99 is outside this run's 8 steps"),
    (lambda lab, t: lab.anatomy(t, 2, 9, 0), "row", "row 9 is outside the 4x4 token grid"),
    (lambda lab, t: lab.intervene(t, 8, "", "erase", None), "step", "step 8 is outside the steps after which"),
    (lambda lab, t: lab.intervene(t, 2, "4:0", "erase", None), "tokens", "outside the 4x4 token grid"),
    (lambda lab, t: lab.intervene(t, 2, "banana", "erase", None), "tokens", "is not a token"),
    (lambda lab, t: lab.intervene(t, 2, "1", "fix", 3), "action", "needs a categorical head"),
    (lambda lab, t: lab.intervene(t, 2, "1", "paint", 3), "action", "unknown action"),
])
def test_bad_lab_input_is_one_line_next_to_its_control(engine, call, field, match):
    """A step or token outside the run, an unknown action: the status says it in one line, the note
    goes next to the control, every other view is kept (gr.skip)."""
    import gradio as gr
    traj = _run(engine, "test-tiny")
    gen = call(Lab(engine), traj)
    first = next(gen)
    assert first[0]["phase"] == "error" and match in first[0]["text"] and "\n" not in first[0]["text"]
    assert match in first[0]["notes"][field]
    assert list(first[1:]) == [gr.skip()] * (len(first) - 1)
    with pytest.raises(gr.Error, match=match):
        next(gen)


@pytest.mark.parametrize("code, match", [(512, "outside the codebook of 512 codes"), (float("nan"), "finite whole"),
                                         (float("inf"), "finite whole"), (2.5, "whole number")])
def test_a_code_outside_the_codebook_is_refused(engine, code, match):
    import gradio as gr
    traj = _run(engine, "tiny-maskgit")
    gen = Lab(engine).intervene(traj, 2, "1:1", "fix", code)
    assert match in next(gen)[0]["notes"]["code"]
    with pytest.raises(gr.Error, match=match):
        next(gen)


def test_parse_tokens():
    assert parse_tokens("", 4) == [] and parse_tokens(None, 4) == []
    assert parse_tokens("0:1, 3 2:2;15", 4) == [1, 3, 10, 15]


def test_compare_along_each_axis(engine, tmp_path, monkeypatch):
    """Each axis: its panels with the same seed, NFE and time in every title, values the model cannot run
    as notes, the measured FD under the panel whose setting matches claims.json; the steps axis plays
    runs of 4, 8 and 16 steps on one slider."""
    monkeypatch.setattr(claims, "CLAIMS_PATH", claims_file(tmp_path, engine, "test-tiny", schedule="linear"))
    h = Compare(engine)
    probability_orders = {f"{n} order" for n, o in ORDERS.items() if o.needs is not None}
    expected = {"schedule": 3, "steps": 3, "order": len(ORDERS) - 1 - len(probability_orders), "head": 5, "remask": 3,
                "temperature": 3}
    for axis, live in expected.items():
        status, player, doc = list(h.compare(**compare_values(engine, axis=axis)))[-1][:3]
        ran = [p for p in player["panels"] if p["cols"]]
        assert status["phase"] == "done" and len(ran) == live and doc["axis"] == axis, (axis, status)
        assert all(" · NFE " in p["title"] and p["title"].endswith(" ms") for p in ran)
        if axis == "steps":
            assert [p["N"] for p in ran] == [4, 8, 16] and player["n"] == 16
            assert [p["frame_of"][7] for p in ran] == [1, 3, 7] and [p["frame_of"][-1] for p in ran] == [3, 7, 15]
            assert "unavailable: num_steps 32 is not available" in player["panels"][3]["note"]
        if axis == "order":
            notes = {p["title"]: p["note"] for p in player["panels"] if not p["cols"]}
            assert set(notes) == probability_orders
        if axis in ("temperature", "head"):  # the counts and positions do not depend on these
            assert doc["same_reveal_order"]
        measured = {p["title"].split(" · ")[0]: p["measured"] for p in player["panels"]}
        if axis == "schedule":
            assert measured["linear schedule"]["fd"] == FD and measured["linear schedule"]["fd_sd"] == FD_SD
            assert "measured FD 12.5 ± 0.4" in measured["linear schedule"]["text"]
            assert measured["exp schedule"] is None and measured["cosine schedule"] is None


def test_an_axis_the_model_cannot_vary(engine):
    import gradio as gr
    gen = Compare(engine).compare(**compare_values(engine, "tiny-maskgit", axis="head"))
    first = next(gen)
    assert "axis 'head' is not available" in first[0]["notes"]["axis"]
    with pytest.raises(gr.Error, match="no diffusion solver"):
        next(gen)
    notes = Compare(engine).check(**compare_values(engine, "tiny-maskgit", axis="head"))
    assert "no diffusion solver" in notes["axis"]


def test_remasking_runs_carry_the_revision_maps(engine):
    from app.stepper import unmask_payload
    traj = _run(engine, "test-tiny", remask="rescale", remask_eta=1.0)
    p = unmask_payload(traj, "r")
    assert len(p["masked"]) == len(p["revisions"]) == len(p["unc"]) == traj.num_steps
    assert max(max(r) for r in p["revisions"]) > 0  # eta 1 revises some committed token
    plain = unmask_payload(_run(engine, "test-tiny"), "r")
    assert "masked" not in plain and "revisions" not in plain and "unc" in plain


def test_the_lab_through_the_client(engine):
    from gradio_client import Client

    from app.ui import build_demo, launch_kwargs
    demo = build_demo(engine)
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=_free_port(), prevent_thread_lock=True,
                            quiet=True, **launch_kwargs())
    try:
        client = Client(url, verbose=False)
        api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
        assert [p["parameter_name"] for p in api["/anatomy"]["parameters"]] == ["step", "row", "col"]
        assert [p["parameter_name"] for p in api["/intervene"]["parameters"]] == ["step", "tokens", "action", "code"]
        v = run_values(num_steps=6)
        client.predict(**{k: v[k] for k in controls.RUN_FIELDS}, api_name="/run")
        status, payload, doc = client.predict(step=2, row=None, col=None, api_name="/anatomy")
        assert doc["step"] == 2 and "masked ×" in doc["headline"]
        status, player, doc = client.predict(step=3, tokens="", action="erase", code=0, api_name="/intervene")
        assert doc["identical"]
        for kwargs, match in (({"step": 7, "row": None, "col": None}, "outside this run's 6 steps"),):
            with pytest.raises(Exception, match=match):
                client.predict(**kwargs, api_name="/anatomy")
        with pytest.raises(Exception, match="needs a categorical head"):
            client.predict(step=3, tokens="1", action="fix", code=2, api_name="/intervene")
        out = client.predict(**compare_values(engine, axis="steps"), api_name="/compare")
        assert out[2]["axis"] == "steps"
    finally:
        demo.close()


# ----------------------------------------------------------------------------- in a browser


@pytest.fixture(scope="module")
def page(engine, tmp_path_factory):
    sync_api = pytest.importorskip("playwright.sync_api")
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no chromium at {CHROMIUM}")
    from app.ui import build_demo, launch_kwargs
    folder = tmp_path_factory.mktemp("claims")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(claims, "CLAIMS_PATH", claims_file(folder, engine, "test-tiny", schedule="linear"))
        demo = build_demo(engine)
        _, url, _ = demo.launch(server_name="127.0.0.1", server_port=_free_port(), prevent_thread_lock=True,
                                quiet=True, **launch_kwargs())
        SHOTS.mkdir(parents=True, exist_ok=True)
        with sync_api.sync_playwright() as p:
            try:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            except Exception as e:
                pytest.skip(f"chromium does not start: {str(e).splitlines()[0]}")
            pg = browser.new_page(viewport={"width": 1440, "height": 900})
            pg.set_default_timeout(TIMEOUT)
            pg.calls = []
            pg.on("request", lambda r: pg.calls.append(r.url) if "/gradio_api/" in r.url else None)
            # CFG at every step, so every step has a null branch to open
            pg.goto(url + "?model=test-tiny&num_steps=8&seed=4&cfg_interval_lo=0&cfg_interval_hi=1")
            pg.wait_for_function(f"() => document.querySelector('{PLAYER}')?.dataset.n === '8' && "
                                 "document.querySelector('#run-status .emigm-status')?.dataset.phase === 'ready' && "
                                 "document.querySelector('#permalink textarea').value.includes('seed=4')")
            pg.url0 = url
            yield pg
            browser.close()
        demo.close()


def _quiet(pg, action) -> list[str]:
    """The server requests `action` made (it should make none)."""
    pg.wait_for_timeout(200)
    before = len(pg.calls)
    action()
    pg.wait_for_timeout(300)
    return pg.calls[before:]


def _wait_status(pg, status_id: str, phase: str = "ready") -> dict:
    pg.wait_for_function(f"() => ['{phase}', 'error'].includes(document.querySelector('#{status_id} .emigm-status')"
                         "?.dataset.phase)")
    return pg.evaluate(f"() => {{ const s = document.querySelector('#{status_id} .emigm-status'); "
                       "return {phase: s.dataset.phase, text: s.innerText}; }")


def _hover_token(pg, selector: str, r: int, c: int, grid: int) -> str:
    box = pg.locator(selector).first.bounding_box()
    pg.mouse.move(box["x"] + (c + 0.5) * box["width"] / grid, box["y"] + (r + 0.5) * box["height"] / grid)
    return pg.locator(selector).first.evaluate("e => e.closest('.emigm-root, .emigm-anatomy').dataset.hover || ''")


def _open_step(pg, k: int) -> dict:
    pg.locator(f"{PLAYER} .emigm-btn").nth(0).click()
    for _ in range(k - 1):
        pg.locator(f"{PLAYER} .emigm-btn").nth(3).click()
    assert pg.evaluate(f"() => document.querySelector('{PLAYER}').dataset.k") == str(k - 1)
    pg.locator("#open-step-btn").click()
    pg.wait_for_function(f"() => document.querySelector('{ANATOMY}')?.dataset.step === '{k}'")
    assert _wait_status(pg, "lab-status")["phase"] == "ready"
    return pg.evaluate(f"() => {{ const a = document.querySelector('{ANATOMY}').emigmAnatomy; "
                       "return {...a.data, sprite: null}; }")


@pytest.mark.slow
def test_browser_open_a_step(page):
    """Scrub to step 3 and open it: the conditional, null and combined predictions appear, the combined
    one pixel for pixel the draft the player showed at step 3; hovering a token shows its numbers."""
    d = _open_step(page, 3)
    assert [b["name"] for b in d["branches"]] == ["conditional", "null", "combined"]
    differ = page.evaluate(f"""() => {{
        const p = document.querySelector('{PLAYER}').emigmPlayer, a = document.querySelector('{ANATOMY}').emigmAnatomy;
        const px = p.data.px, pix = (img, x, y) => {{ const c = document.createElement('canvas'); c.width = c.height = px;
          const g = c.getContext('2d'); g.drawImage(img, x, y, px, px, 0, 0, px, px); return g.getImageData(0, 0, px, px).data; }};
        const j = a.data.branches.findIndex(b => b.name === 'combined');
        const d1 = pix(p.img, 0, (a.data.step - 1 - p.data.first) * px), d2 = pix(a.img, j * px, 0);
        let n = 0; for (let i = 0; i < d1.length; i++) if (d1[i] !== d2[i]) n++; return n; }}""")
    assert differ == 0
    page.locator("#lab-open").scroll_into_view_if_needed()
    page.screenshot(path=str(SHOTS / "lab-open-step.png"))
    g, t = d["grid"], d["tokens"]
    masked = [i for i, m in enumerate(t["masked"]) if m]
    for i in (masked[0], masked[-1]):
        r, c = divmod(i, g)
        calls = []
        text = ""

        def hover(r=r, c=c):
            nonlocal text
            text = _hover_token(page, f"{ANATOMY} canvas[data-view=why]", r, c, g)
        calls = _quiet(page, hover)
        assert f"token ({r}, {c})" in text and f"rank {t['rank'][i] + 1} of {d['count']['masked']}" in text, text
        assert d["headline"] in text and "masked ×" in text
        assert ("Halton rank" in text) == (d["order"] == "halton"), text  # the Halton order's own rank only
        assert not calls, calls
    committed = [i for i, m in enumerate(t["masked"]) if not m]
    if committed:
        r, c = divmod(committed[0], g)
        assert "committed before step 3" in _hover_token(page, f"{ANATOMY} canvas[data-view=delta]", r, c, g)
    page.screenshot(path=str(SHOTS / "lab-hover.png"))


@pytest.mark.slow
def test_browser_maps_switch_in_the_page(page):
    """The player's third view switches between when / uncertainty with no server call; hover shows the
    numbers of the token under the cursor, scrubbing with every map redraws it."""
    page.locator(f"{PLAYER} .emigm-btn").nth(0).click()
    data = page.evaluate(f"() => {{ const p = document.querySelector('{PLAYER}').emigmPlayer; return {{...p.data, sprite: null}}; }}")
    g = data["grid"]

    def switch_and_scrub():
        page.locator(f"{PLAYER} .emigm-map-choice[data-map=unc]").click()
        assert page.evaluate(f"() => document.querySelector('{PLAYER} canvas.when').dataset.map") == "unc"
        for _ in range(3):
            page.locator(f"{PLAYER} .emigm-btn").nth(3).click()
        masked = [i for i, u in enumerate(data["unc"][3]) if u > 0]
        r, c = divmod(masked[0], g)
        text = _hover_token(page, f"{PLAYER} canvas.when", r, c, g)
        assert f"token ({r}, {c})" in text and f"uncertainty {data['unc'][3][masked[0]]:.3g}"[:16] in text, text
        page.screenshot(path=str(SHOTS / "lab-uncertainty-map.png"))
        page.locator(f"{PLAYER} .emigm-map-choice[data-map=when]").click()
        assert page.evaluate(f"() => document.querySelector('{PLAYER} canvas.when').dataset.map") == "when"
    assert not _quiet(page, switch_and_scrub)


@pytest.mark.slow
def test_browser_diffusion_path(page):
    """Click a masked token of the opened step: its denoising path (a line per channel over the solver
    steps) and the image decoded at each solver step."""
    d = _open_step(page, 2)
    g = d["grid"]
    i = next(i for i, m in enumerate(d["tokens"]["masked"]) if m)
    box = page.locator(f"{ANATOMY} canvas[data-view=unc]").bounding_box()
    page.mouse.click(box["x"] + (i % g + 0.5) * box["width"] / g, box["y"] + (i // g + 0.5) * box["height"] / g)
    page.wait_for_selector(f"{ANATOMY} .emigm-pathplot")
    path = page.evaluate(f"() => document.querySelector('{ANATOMY}').emigmAnatomy.data.path")
    assert path["token"] == [i // g, i % g]
    lines = page.evaluate(f"() => document.querySelectorAll('{ANATOMY} .emigm-pathplot polyline').length")
    tiles = page.evaluate(f"() => document.querySelectorAll('{ANATOMY} .emigm-path .emigm-tile').length")
    assert lines == len(path["values"][0]) and tiles == len(path["values"])
    page.locator(f"{ANATOMY} .emigm-path").scroll_into_view_if_needed()
    page.screenshot(path=str(SHOTS / "lab-denoising-path.png"))


@pytest.mark.slow
def test_browser_intervene_and_resume(page):
    """Open step 3, intervene with nothing chosen: the resumed run is the original, image for image; choose
    two tokens by clicking, erase them: the two runs part; a token outside the grid is refused next to its
    box and the views stay."""
    d = _open_step(page, 3)
    page.locator("#intervene-btn").click()
    st = _wait_status(page, "int-status")
    assert st["phase"] == "ready" and "identical at every step" in st["text"], st
    same = page.evaluate("""() => { const p = document.querySelector('#lab-player .emigm-root').emigmPlayer, px = p.data.px;
        const c = document.createElement('canvas'); c.width = p.img.width; c.height = p.img.height;
        const g = c.getContext('2d'); g.drawImage(p.img, 0, 0); let n = 0;
        for (let k = 0; k < p.data.n; k++) { const a = g.getImageData(0, k * px, px, px).data, b = g.getImageData(px, k * px, px, px).data;
          for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) n++; } return {n, panels: p.data.panels.length, steps: p.data.n}; }""")
    assert same == {"n": 0, "panels": 2, "steps": 8}
    # choose two committed tokens on the canvas after the step
    g = d["grid"]
    committed = [i for i, m in enumerate(d["tokens"]["after"]) if not m][:2]
    page.locator(f"{ANATOMY} canvas[data-view=after]").scroll_into_view_if_needed()
    box = page.locator(f"{ANATOMY} canvas[data-view=after]").bounding_box()
    for i in committed:
        page.mouse.click(box["x"] + (i % g + 0.5) * box["width"] / g, box["y"] + (i // g + 0.5) * box["height"] / g)
    chosen = ", ".join(f"{i // g}:{i % g}" for i in sorted(committed))
    page.wait_for_function(f"() => document.querySelector('#int-tokens textarea, #int-tokens input').value === '{chosen}'")
    run = page.evaluate("() => document.querySelector('#lab-player .emigm-root').dataset.run")
    page.locator("#intervene-btn").click()
    page.wait_for_function(f"() => document.querySelector('#lab-player .emigm-root').dataset.run !== '{run}'")
    st = _wait_status(page, "int-status")
    assert f"erased: {len(committed)} token(s)" in st["text"] and "Resumed after step 3" in st["text"], st
    page.locator("#lab-intervene").scroll_into_view_if_needed()
    page.screenshot(path=str(SHOTS / "lab-intervened.png"))
    # a token outside the run: one line next to the box, the two runs stay
    run = page.evaluate("() => document.querySelector('#lab-player .emigm-root').dataset.run")
    box = page.locator("#int-tokens textarea, #int-tokens input").first
    box.fill("9:9")
    page.locator("#intervene-btn").click()
    st = _wait_status(page, "int-status", "error")
    assert st["phase"] == "error" and "outside the 4x4 token grid" in st["text"]
    note = page.locator(".emigm-field-note[data-for=tokens]")
    note.wait_for()
    assert "outside the 4x4 token grid" in note.inner_text()
    assert page.evaluate("() => document.querySelector('#lab-player .emigm-root').dataset.run") == run
    page.screenshot(path=str(SHOTS / "lab-refused-token.png"))
    box.fill("")
    page.locator("#intervene-btn").click()
    page.wait_for_function("() => !document.querySelector('.emigm-field-note[data-for=tokens]')")


@pytest.mark.slow
def test_browser_compare_along_an_axis(page):
    """Compare along the schedule axis: three panels on one seed, NFE and time in every title, the measured
    FD under the panel whose setting claims.json has; they scrub together with no server call. The steps
    axis plays 4, 8 and 16 steps on one slider."""
    page.get_by_role("tab", name="Compare").click()
    page.locator("#cmp-axis label", has_text="schedule").click()
    root = "#compare-player .emigm-root"
    before = page.evaluate(f"() => document.querySelector('{root}').dataset.run")
    page.locator("#compare-btn").click()
    page.wait_for_function(f"() => document.querySelector('{root}').dataset.run !== '{before}' && "
                           "document.querySelector('#compare-status .emigm-status').dataset.phase === 'ready'")
    titles = page.locator(f"{root} .emigm-ptitle").all_inner_texts()
    assert [t.split(" · ")[0] for t in titles] == ["linear schedule", "cosine schedule", "exp schedule"]
    assert all(" · NFE " in t and t.endswith(" ms") for t in titles), titles
    fd = page.locator(f"{root} .emigm-panel").first.locator(".emigm-fd").inner_text()
    assert f"measured FD {FD}" in fd and f"± {FD_SD}" in fd
    page.screenshot(path=str(SHOTS / "lab-compare-schedule.png"))

    def images() -> list[str]:
        return page.evaluate(f"() => [...document.querySelectorAll('{root} canvas')].map(c => c.toDataURL())")

    def scrub():
        page.locator(f"{root} .emigm-btn").nth(0).click()
        first = images()
        page.locator(f"{root} .emigm-btn").nth(3).click()
        page.locator(f"{root} .emigm-btn").nth(3).click()
        moved = images()
        assert len(first) == 3 and all(a != b for a, b in zip(first, moved))  # every panel moved
        assert page.evaluate(f"() => document.querySelector('{root}').dataset.k") == "2"
    assert not _quiet(page, scrub)
    page.locator("#cmp-axis label", has_text="steps").click()
    before = page.evaluate(f"() => document.querySelector('{root}').dataset.run")
    page.locator("#compare-btn").click()
    page.wait_for_function(f"() => document.querySelector('{root}').dataset.run !== '{before}' && "
                           "document.querySelector('#compare-status .emigm-status').dataset.phase === 'ready'")
    d = page.evaluate(f"() => {{ const p = document.querySelector('{root}').emigmPlayer; return {{...p.data, sprite: null}}; }}")
    assert d["n"] == 16 and [p["N"] for p in d["panels"] if p["cols"]] == [4, 8, 16]
    page.locator(f"{root} .emigm-btn").nth(0).click()
    for _ in range(7):
        page.locator(f"{root} .emigm-btn").nth(3).click()
    subs = page.locator(f"{root} .emigm-psub").all_inner_texts()
    assert [s.split(" · ")[0] for s in subs] == ["step 2 of 4", "step 4 of 8", "step 8 of 16"], subs
    page.screenshot(path=str(SHOTS / "lab-compare-steps.png"))
    page.locator("#cmp-axis label", has_text="guidance").click()
    page.get_by_role("tab", name="Unmasking").click()


@pytest.mark.slow
def test_browser_the_tour(page):
    """The tour opens from the header, walks six steps pointing at each view, and can be skipped; it
    asks nothing of the server."""
    def tour():
        page.locator("#tour-btn").click()
        tour = page.locator(".emigm-tour")
        tour.wait_for()
        for k in range(1, 7):
            assert tour.get_attribute("data-step") == str(k)
            assert page.evaluate("() => document.querySelectorAll('.emigm-tour-lit').length") == 1
            if k == 4:
                page.screenshot(path=str(SHOTS / "lab-tour.png"))
            if k < 6:
                tour.locator("[data-act=next]").click()
        tour.locator("[data-act=done]").click()
        assert not page.locator(".emigm-tour").count()
        page.locator("#tour-btn").click()
        page.locator(".emigm-tour [data-act=skip]").click()
        assert not page.locator(".emigm-tour").count() and not page.locator(".emigm-tour-lit").count()
    calls = _quiet(page, tour)
    assert all("/queue/" not in c and "/call/" not in c for c in calls), calls
    page.get_by_role("tab", name="Unmasking").click()


@pytest.mark.slow
def test_browser_revised_after_commit(page):
    """A remasking run: the canvas marks tokens revised after their commit (a fifth state, vermillion),
    and the map offers 'times revised'."""
    page.goto(page.url0 + "?model=test-tiny&num_steps=8&seed=4&remask=rescale&remask_eta=1")
    page.wait_for_function(f"() => {{ const p = document.querySelector('{PLAYER}')?.emigmPlayer; "
                           "return p && p.data && p.data.revisions && document.querySelector('#run-status .emigm-status')"
                           ".dataset.phase === 'ready'; }")
    d = page.evaluate(f"() => {{ const p = document.querySelector('{PLAYER}').emigmPlayer; return {{...p.data, sprite: null}}; }}")
    k = next(j for j, (m, r) in enumerate(zip(d["masked"], d["revisions"]))
             if any(m[i] == "1" and r[i] > 0 for i in range(d["L"])))

    def look():
        page.locator(f"{PLAYER} .emigm-btn").nth(0).click()
        for _ in range(k):
            page.locator(f"{PLAYER} .emigm-btn").nth(3).click()
        red = page.evaluate(f"""() => {{ const c = document.querySelector('{PLAYER} canvas.canvas'), d = c.getContext('2d')
            .getImageData(0, 0, c.width, c.height).data; let n = 0;
            for (let i = 0; i < d.length; i += 4) if (d[i] === 213 && d[i + 1] === 94 && d[i + 2] === 0) n++; return n; }}""")
        assert red > 0
        assert "revised after commit" in page.locator(f"{PLAYER} figcaption").first.inner_text()
        page.locator(f"{PLAYER} .emigm-map-choice[data-map=rev]").click()
        assert page.evaluate(f"() => document.querySelector('{PLAYER} canvas.when').dataset.map") == "rev"
        page.screenshot(path=str(SHOTS / "lab-revised.png"))
    assert not _quiet(page, look)
