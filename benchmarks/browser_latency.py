"""The explorer's latency as a person sees it: Chromium (Playwright) against a launched app.

    python benchmarks/browser_latency.py [--model NAME_OR_PATH ...] [--repeats 3] [--port 7870]

Reports, as medians over --repeats:
- page load to first frame: navigation start (and the DOMContentLoaded event) to the opening run's
  first frame drawn by the step player;
- click Run to first frame, and to the scrubber ready (status "ready": every frame drawn and
  scrubbable), for 16, 32 and 64 steps (a model with fewer tokens caps the steps at its token count;
  the row says so);
- a Compare click (16 steps) to the first frame of every panel (the comparison streams: the panels
  advance together, so the first live frame holds all of them) and to all panels scrubbable (status
  "ready": every step of every panel drawn); targets 1.0 s and 3 s;
- one scrub step (the step-forward button): the time to redraw, and whether any request reached the
  server while scrubbing.
The load average of the machine is printed before and after, beside the table.
Timestamps come from the page itself (performance.now() when the player's data-run / data-live and the
status' data-phase attributes change), so they include the server, the transfer and the drawing.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from urllib.request import urlopen

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
# record when the player draws a run (live or complete) and when a status line changes phase
PROBE = """
window.__ev = [];
new MutationObserver(muts => { for (const m of muts) { const t = m.target;
  if (!(t instanceof Element)) continue;
  if (t.classList.contains('emigm-root') && (m.attributeName === 'data-run' || m.attributeName === 'data-live' || m.attributeName === 'data-n'))
    window.__ev.push({t: performance.now(), what: 'player', id: t.closest('#player, #compare-player')?.id, run: t.dataset.run, live: t.dataset.live, n: +t.dataset.n});
  if (t.classList.contains('emigm-status') && m.attributeName === 'data-phase')
    window.__ev.push({t: performance.now(), what: 'status', id: t.closest('#run-status, #compare-status')?.id, phase: t.dataset.phase});
}}).observe(document, {subtree: true, attributes: true, attributeFilter: ['data-run', 'data-live', 'data-n', 'data-phase']});
"""


def wait_http(url: str, timeout: float = 120) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            urlopen(url, timeout=2).read(1)
            return
        except OSError:
            time.sleep(0.3)
    raise SystemExit(f"the app did not answer at {url}")


def events(page, since: float) -> list[dict]:
    return [e for e in page.evaluate("() => window.__ev") if e["t"] >= since]


def wait_for(page, pred, since: float, timeout: float = 120) -> dict:
    t0 = time.time()
    while time.time() - t0 < timeout:
        for e in events(page, since):
            if pred(e):
                return e
        page.wait_for_timeout(10)
    raise TimeoutError("timed out waiting in the page")


def click(page, selector: str) -> float:
    return page.evaluate(f"() => {{ document.querySelector('{selector}').click(); return performance.now(); }}")


def run_once(page, player="player", status="run-status", button="#run-btn"):
    t0 = click(page, button)
    first = wait_for(page, lambda e: e["what"] == "player" and e["id"] == player and e.get("n", 0) >= 1, t0)
    ready = wait_for(page, lambda e: e["what"] == "status" and e["id"] == status and e["phase"] == "ready", t0)
    return (first["t"] - t0) / 1000, (ready["t"] - t0) / 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", default=None)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--port", type=int, default=7870)
    p.add_argument("--steps", type=int, nargs="+", default=[16, 32, 64])
    p.add_argument("--screenshots", default="", help="folder for a screenshot of each measured view")
    a = p.parse_args()
    from playwright.sync_api import sync_playwright

    cmd = [sys.executable, str(ROOT / "app.py"), "--port", str(a.port)]
    for m in a.model or []:
        cmd += ["--model", m]
    load_before = f"{os.getloadavg()[0]:.2f}"
    server = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{a.port}/"
    med = statistics.median
    rows = []
    try:
        wait_http(url)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            ctx = browser.new_context(viewport={"width": 1440, "height": 900})
            ctx.add_init_script(PROBE)
            page = ctx.new_page()
            loads, dcl = [], []
            for _ in range(a.repeats):
                page.goto(url)
                page.wait_for_selector("#player canvas")
                e = wait_for(page, lambda e: e["what"] == "player" and e["id"] == "player", 0)
                nav = page.evaluate("() => performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd")
                loads.append(e["t"] / 1000)
                dcl.append((e["t"] - nav) / 1000)
            rows.append(("page load to first frame (navigation start)", f"{med(loads):.2f} s"))
            rows.append(("page load to first frame (after DOMContentLoaded)", f"{med(dcl):.2f} s"))
            opening = page.evaluate("() => document.querySelector('#player .emigm-root').dataset.run")
            for steps in a.steps:
                page.goto(url + f"?num_steps={steps}")  # the permalink's run replaces the opening run
                page.wait_for_function(f"() => document.querySelector('#player .emigm-root')?.dataset.run !== '{opening}'"
                                       " && document.querySelector('#run-status .emigm-status')?.dataset.phase === 'ready'",
                                       timeout=120_000)
                times = [run_once(page) for _ in range(a.repeats)]
                n = int(page.evaluate("() => document.querySelector('#player .emigm-root').dataset.n"))
                label = f"{steps} steps" if n == steps else f"{steps} steps asked, capped at {n} (the model's token count)"
                rows.append((f"click Run to first frame, {label}", f"{med(t[0] for t in times):.2f} s"))
                rows.append((f"click Run to scrubber ready, {label}", f"{med(t[1] for t in times):.2f} s"))
                if a.screenshots and steps == a.steps[0]:
                    page.screenshot(path=str(Path(a.screenshots) / "latency-unmasking.png"))
            # scrubbing: one step back and forth, no server call (once the last run's exports are done)
            page.wait_for_timeout(2000)
            calls = []
            page.on("request", lambda r: calls.append(r.url) if "/gradio_api/" in r.url else None)
            scrub = page.evaluate("""async () => {
                const root = document.querySelector('#player .emigm-root');
                const [back, fwd] = [...root.querySelectorAll('.emigm-btn')].slice(1, 4).filter((_, i) => i !== 1);
                const out = [];
                for (let i = 0; i < 10; i++) {
                  for (const b of [back, fwd]) {
                    const t = performance.now(); b.click();
                    await new Promise(r => requestAnimationFrame(() => r()));
                    out.push(performance.now() - t);
                  }
                }
                return out; }""")
            page.wait_for_timeout(300)
            rows.append(("one scrub step (click to next frame painted)", f"{med(scrub):.1f} ms (max {max(scrub):.1f} ms), "
                                                                        f"{len(calls)} server calls"
                         + (f" ({', '.join(sorted({u.split('/gradio_api/')[1].split('?')[0] for u in calls}))})"
                            if calls else "")))
            # Compare, 16 steps: the first frame of every panel, then every panel scrubbable
            page.get_by_role("tab", name="Compare").click()
            steps_box = page.locator("#cmp-num_steps input[type=number]")
            steps_box.fill("16")
            steps_box.press("Enter")
            page.wait_for_timeout(500)
            firsts, readies = [], []
            for _ in range(a.repeats):
                before = page.evaluate("() => document.querySelector('#compare-player .emigm-root').dataset.run")
                t0 = click(page, "#compare-btn")
                e = wait_for(page, lambda e: e["what"] == "player" and e["id"] == "compare-player" and e["run"] != before
                             and e.get("n", 0) >= 1, t0)
                firsts.append((e["t"] - t0) / 1000)
                e = wait_for(page, lambda e: e["what"] == "status" and e["id"] == "compare-status" and e["phase"] == "ready", t0)
                readies.append((e["t"] - t0) / 1000)
            panels = page.evaluate("() => document.querySelectorAll('#compare-player .emigm-panel').length")
            off = page.evaluate("() => document.querySelectorAll('#compare-player .emigm-unavailable .emigm-note').length")
            n = page.evaluate("() => document.querySelector('#compare-player .emigm-root').dataset.n")
            what = f"{panels} panels with a run" + (f", {off} unavailable" if off else "") + f", {n} steps"
            rows.append((f"Compare click to the first frame of every panel ({what})", f"{med(firsts):.2f} s"))
            rows.append((f"Compare click to every panel scrubbable ({what})", f"{med(readies):.2f} s"))
            if a.screenshots:
                page.screenshot(path=str(Path(a.screenshots) / "latency-compare.png"))
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"load average before: {load_before}, after: {os.getloadavg()[0]:.2f} (1 min)")
    width = max(len(r[0]) for r in rows)
    print(f"| {'measure'.ljust(width)} | median of {a.repeats} |\n|{'-' * (width + 2)}|---|")
    for name, value in rows:
        print(f"| {name.ljust(width)} | {value} |")


if __name__ == "__main__":
    main()
