"""The static site: the curated runs (app/lessons.py) replayed in any browser with no Python and no server.

`python -m emigm site --out DIR` (or `python -m app.site --out DIR`) samples every lesson once and writes

    DIR/index.html     the page
    DIR/explorer.js    the explorer's own player (app/static, with explorer-core.js when present), unchanged
    DIR/explorer.css
    DIR/site.js        builds the page's sections and hands each payload to the player
    DIR/runs.js        the payloads (`window.EMIGM_SITE = {...}`): a script, so the page works from any
                       static host and from a file:// URL alike, and nothing is fetched
    DIR/emigm-site.json  what was built (format, runs, sizes): written last, the mark of a complete site

The build goes to a hidden folder beside DIR and is renamed into place at the end, so an interrupted
build leaves no half-written DIR; DIR may be an earlier site (replaced) or absent, and anything else
(a non-empty folder that is not a site, a file) is refused before any work. Every file is under DIR and
every URL in the page is relative: published as it is (GitHub Pages, any bucket), it makes no request
outside its own folder.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from emigm.core.fileio import ASSETS_DIR
from emigm.core.guidance import GuidanceConfig
from emigm.core.progress import Stage
from emigm.sample.sampler import SamplerConfig

from .engine import Engine
from .lessons import Lesson, available
from .stepper import compare_payload, unmask_payload

STATIC = Path(__file__).resolve().parent / "static"
MARK = "emigm-site.json"
FORMAT = "emigm-site-1"
MAX_BYTES = 10 * 2**20
# the page's scripts in load order, as the app's head loads them (the pure functions first, when split off)
PLAYER_SCRIPTS = tuple(n for n in ("explorer-core.js", "explorer.js") if (STATIC / n).is_file())
FILES = ("index.html", *PLAYER_SCRIPTS, "explorer.css", "site.js", "runs.js", MARK)
ORACLE = "fmnist-oracle"

INDEX = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>eMIGM Explorer: curated runs</title>
<link rel="stylesheet" href="explorer.css">
<style>
body { font-family: system-ui, sans-serif; margin: 0 auto; max-width: 1400px; padding: 16px 24px; color: #222; }
header p, .lesson p { max-width: 80ch; line-height: 1.45; }
nav a { margin-right: 14px; }
.lesson { margin: 28px 0 36px; }
.lesson h2 { margin-bottom: 4px; }
.emigm-root { min-height: 120px; }
footer { color: #666; font-size: 0.9em; margin-top: 40px; }
</style>
{scripts}
</head>
<body>
<header>
<h1>eMIGM Explorer: curated runs</h1>
<p>Masked image generation, replayed step by step in your browser. Each section is one run of a model shipped
with the eMIGM Explorer, sampled once and stored here: scrub the slider, press play, or use the arrow keys;
click a token to see its history. Nothing is computed on a server.</p>
<nav id="lessons"></nav>
</header>
<main id="runs"></main>
<footer id="built"></footer>
<script src="runs.js"></script>
<script src="site.js"></script>
</body>
</html>
"""

SITE_JS = """/* The static site: one section per curated run, each drawn by the explorer's own player
   (explorer.js) from the payload in runs.js. No request leaves this folder. */
(function () {
  const site = window.EMIGM_SITE, nav = document.getElementById("lessons"), main = document.getElementById("runs");
  if (!site) { main.textContent = "runs.js is missing: rebuild the site with python -m emigm site --out DIR"; return; }
  for (const r of site.runs) {
    nav.append(Object.assign(document.createElement("a"), { href: "#" + r.key, textContent: r.title }));
    const sec = document.createElement("section");
    sec.className = "lesson"; sec.id = r.key; sec.dataset.kind = r.payload.kind;
    const h = document.createElement("h2"); h.textContent = r.title;
    const p = document.createElement("p"); p.textContent = r.lesson;
    const root = document.createElement("div"); root.className = "emigm-root";
    sec.append(h, p, root); main.append(sec);
    window.emigmPlayer(root, { value: r.payload }, function () {}, null);
  }
  document.getElementById("built").textContent = site.note;
})();
"""


class SiteError(ValueError):
    """A refused --out (one line)."""


def is_site(folder: Path) -> bool:
    """An earlier site: a folder holding this builder's mark."""
    try:
        return json.loads((folder / MARK).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def check_out(out: str | os.PathLike) -> Path:
    """The site folder, refused (SiteError, one line) when it is a file or a non-empty folder that is not
    an earlier site; checked before any work."""
    if not str(out).strip():
        raise SiteError("--out is empty: give the site's folder")
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise SiteError(f"--out {out} is a file, not a folder")
    if path.is_dir() and any(path.iterdir()) and not is_site(path):
        raise SiteError(f"--out {out} is a non-empty folder that is not an earlier site (no {MARK}); give an "
                        "empty or new folder")
    parent = path.resolve().parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise SiteError(f"--out {out}: its parent folder {parent} does not exist or is not writable")
    return path


def models_offered() -> list[str]:
    """The models the lessons use: the shipped generators, and the oracle folder when shipped."""
    names = [m for lesson in available([*_shipped(), ORACLE]) for m in lesson.models]
    specs = []
    for m in dict.fromkeys(names):
        specs.append(str(ASSETS_DIR / m) if m == ORACLE else m)
    return specs


def _shipped() -> list[str]:
    out = []
    for p in sorted(ASSETS_DIR.iterdir()) if ASSETS_DIR.is_dir() else []:
        if (p / "model.safetensors").is_file() or (p / "oracle.json").is_file():
            out.append(p.name)
    return out


def run_lesson(engine: Engine, lesson: Lesson, index: int) -> dict[str, Any]:
    """One lesson sampled: {key, title, lesson, payload} (the player's payload)."""
    trajs = []
    for panel in lesson.panels:
        pipe = engine.load(panel.model)
        sampler = SamplerConfig(**{**pipe.sampling_rule, **panel.sampler})
        guidance = GuidanceConfig(**panel.guidance)
        seeds = list(lesson.seeds)
        trajs.append(engine.run(panel.model, [lesson.label] * len(seeds), seeds, sampler, guidance))
    run = f"site-{index}-{lesson.key}"
    if lesson.kind == "unmask":
        payload = unmask_payload(trajs[0], run, title=lesson.panels[0].title)
    else:
        payload = compare_payload([(p.title, t, "") for p, t in zip(lesson.panels, trajs)], run)
    return {"key": lesson.key, "title": lesson.title, "lesson": lesson.lesson, "payload": payload}


def build(out: str | os.PathLike, lessons: Sequence[Lesson] | None = None, engine: Engine | None = None,
          progress: bool = True) -> dict[str, Any]:
    """Write the site into `out` (module docstring); returns what emigm-site.json records."""
    path = check_out(out)
    engine = engine or Engine(models_offered(), num_threads=None)
    lessons = list(lessons) if lessons is not None else available(engine.names)
    if not lessons:
        raise SiteError("no curated run can be built: none of the lessons' models is offered")
    start = time.perf_counter()
    parent = path.resolve().parent
    for stale in parent.glob(f".{path.name}.building-*"):  # an interrupted earlier build
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.building-", dir=parent))
    try:
        runs = []
        with Stage("building the static site", total=len(lessons), unit="run", enabled=progress,
                   detail=f"{len(lessons)} curated runs into {out}") as stage:
            for i, lesson in enumerate(lessons):
                runs.append(run_lesson(engine, lesson, i))
                stage.update(1)
        note = (f"Built by python -m emigm site from the shipped models ({', '.join(engine.names)}); "
                f"{len(runs)} runs.")
        doc = {"format": FORMAT, "runs": runs, "note": note}
        tags = "\n".join(f'<script src="{n}"></script>' for n in PLAYER_SCRIPTS)
        (tmp / "index.html").write_text(INDEX.replace("{scripts}", tags))
        (tmp / "site.js").write_text(SITE_JS)
        for name in (*PLAYER_SCRIPTS, "explorer.css"):
            shutil.copyfile(STATIC / name, tmp / name)
        (tmp / "runs.js").write_text("window.EMIGM_SITE = " + json.dumps(doc, separators=(",", ":")) + ";\n")
        size = sum((tmp / n).stat().st_size for n in FILES if n != MARK)
        if size > MAX_BYTES:
            raise SiteError(f"the site would be {size / 2**20:.1f} MB, over the {MAX_BYTES / 2**20:.0f} MB limit")
        record = {"format": FORMAT, "runs": [{"key": r["key"], "kind": r["payload"]["kind"]} for r in runs],
                  "files": sorted(FILES), "bytes": size, "seconds": round(time.perf_counter() - start, 1)}
        (tmp / MARK).write_text(json.dumps(record, indent=1) + "\n")  # last: the mark of a complete site
        os.chmod(tmp, 0o755)
        if path.exists():  # an earlier site (check_out) or an empty folder: swapped out, then removed
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=parent))
            os.replace(path, old / "site")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return record


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m emigm site", description="write the static site of curated runs")
    p.add_argument("--out", required=True, help="the site's folder (new, empty, or an earlier site)")
    a = p.parse_args(argv)
    try:
        record = build(a.out)
    except (SiteError, ValueError, OSError) as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    print(f"wrote {a.out}: {len(record['runs'])} runs, {record['bytes'] / 2**20:.2f} MB "
          f"({', '.join(r['key'] for r in record['runs'])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
