"""The paper's claims measured on our models, every setting on disjoint seed sets, with error bars.

    python benchmarks/paper_claims.py --num-samples 1000                    # every group, one process
    python benchmarks/paper_claims.py --num-samples 1000 --only schedule,solver --out-dir runs/claims/a
    python benchmarks/paper_claims.py --merge runs/claims/a runs/claims/b --out-dir assets/results --readme
    python benchmarks/paper_claims.py --readme          # README's claims block from assets/results/claims.json
    python benchmarks/paper_claims.py --random-init --num-samples 50 --out-dir /tmp/claims   # pipeline smoke run

Every setting is measured on K (--seed-sets, default 3) disjoint seed sets of N (--num-samples) class-
balanced samples: set k holds seeds kN .. (k+1)N - 1 (image i of a set has class i % 10 and its own
seed, so it depends on nothing else, emigm.eval.scoring) and is scored against the same N test images.
A point keeps, per metric (FD, class accuracy, precision, recall), the K values, their mean and their
sd (the spread between seed sets, ddof 1).

Groups (--only, comma-separated, measured in the order given): headline (the default settings: 16 steps, CFG 3
in (0.1, 0.3]; the class-accuracy target), steps (FD, precision and recall against S = 2, 4, 8, 16, 32, exp, no
CFG: falls up to S = 8, flat after), schedule (linear / cosine / exp at --steps, no CFG), solver (DPM-Solver++
at --head-steps, DDPM-100), cfg (no CFG, CFG 3 at every step, in intervals), null (CFG with mask on
--emigm vs fake class on its -fakecfg twin, over --null-scales), discrete (eMIGM vs --maskgit at equal
NFE), sg (self-guidance s = 0 / 1 on MaskGIT at 8 and 16 steps), sg-scale (s = 0.5, 2, 3), sg-tau (the
Gumbel temperature of the confidence order, with and without self-guidance), orders (every reveal order
the model can run, at 8 / 16 / 32 steps: MaskGIT's confidence, margin and entropy noise-free, halton,
raster, random on --maskgit; random, halton, raster on --emigm), remask (ReMDM rescale, eta 0.05, against
no remasking at 8 / 16 / 32 steps on both models).

Verdicts: each claim is one or more tests "a below b" (FD; lower is better), each with a margin in the
claim's favour, margin = b - a, and sd_margin = sqrt(sd_a^2 + sd_b^2); "a within p % of b" is
margin = (1 + p) b - a with sd_margin = sqrt(sd_a^2 + (1 + p)^2 sd_b^2). A test holds when margin >
2 sd_margin, does not hold when margin < -2 sd_margin, and is undecided otherwise (always with one seed
set: no sd). A claim holds when all its tests hold, does not hold when any test does not hold, and is
undecided otherwise. Where a claim picks a best setting (best head steps, best CFG scale) it picks by
mean FD. Nothing is tuned to make a claim hold.

Fingerprints and resuming: every point records the sha256 of the files it was measured with (network,
tokenizer, self-guidance module when it guides, classifier; emigm.io.fingerprint) and the code's commit;
claims.json lists them per model. Each (setting, seed set) result is written to --cache-dir (default
OUT_DIR/results) the moment it is measured, under a name made of everything that decides it (model,
fingerprint, sampler, guidance, N, first seed), and claims.json / claims.md are rewritten after every
setting with the settings still pending: re-running the same command skips what is done, and results of
other weights are never reused. Processes may share a cache folder (a result being measured is locked by
its process), so two processes running the same command split the work in its order.

claims.json is the one source of the README's claims table (--readme rewrites the block between
README_BEGIN and README_END) and of the explorer's Results tab.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from emigm.core.config import to_dict  # noqa: E402
from emigm.core.fileio import ASSETS_DIR, write_text  # noqa: E402
from emigm.core.guidance import GuidanceConfig  # noqa: E402
from emigm.eval.claims import NOT_MEASURED, ClaimsFile  # noqa: E402
from emigm.eval.evaluation import CLASSIFIER_NAME, load_classifier, real_data_floor  # noqa: E402
from emigm.eval.scoring import evaluate_generator  # noqa: E402
from emigm.io.fingerprint import differing_roles, fingerprint, pipeline_fingerprint, source_commit  # noqa: E402
from emigm.io.loading import load_pipeline, random_pipeline  # noqa: E402
from emigm.nn.smoother import Smoother, config_for  # noqa: E402
from emigm.sample.capabilities import SUGGESTED_GUIDANCE  # noqa: E402
from emigm.sample.sampler import SamplerConfig  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BASE = SamplerConfig(num_steps=16, schedule="exp", draft=False)
CFG = 3.0
INTERVAL = (0.1, 0.3)  # the interval of the "interval CFG" claim
# MaskGIT's sampler: cosine schedule, exact counts, most confident first with linearly annealed Gumbel noise
MASKGIT = SamplerConfig(num_steps=16, schedule="cosine", count_rule="exact", order="confidence", draft=False)
MASKGIT_NAME = "fmnist-maskgit"
GROUPS = ("headline", "steps", "schedule", "solver", "cfg", "null", "discrete", "sg", "sg-scale", "sg-tau", "orders",
          "remask")
HEADLINE = GuidanceConfig(**SUGGESTED_GUIDANCE)  # the models' default guidance (16 x 1.2 NFE)
ACCURACY_TARGET = 0.90  # the project's target for class accuracy at the default settings
PLATEAU_STEPS = (2, 4, 8, 16, 32)  # the steps group: FD, precision and recall against S
PLATEAU_KNEE, PLATEAU_FLAT = 8, 0.05  # "falls up to S = 8, flat (within 5 %) after"
CLASSIFIER_FILE = ASSETS_DIR / "classifier" / f"{CLASSIFIER_NAME}.safetensors"
LAB_STEPS = (8, 16, 32)  # sampling steps of the order and remasking groups
# the orders as the literature runs them: MaskGIT's confidence with its annealed Gumbel noise, the margin and
# entropy orders noise-free (Dream's default), the fixed orders (Halton-MaskGIT) and random
ORDER_SETTINGS = {"confidence": {}, "margin": {"order_temperature": 0.0}, "entropy": {"order_temperature": 0.0},
                  "halton": {}, "raster": {}, "random": {}}
REMASK = {"remask": "rescale", "remask_eta": 0.05}
METRICS = ("fd", "class_accuracy", "precision", "recall")
VERDICTS = ("holds", "does not hold", "undecided")
VERSION = 3  # 3: fingerprints of the weights per point and per model, commits, pending settings
README_BEGIN = "<!-- claims:begin (generated by benchmarks/paper_claims.py --readme from assets/results/claims.json) -->"
README_END = "<!-- claims:end -->"
SETTINGS = (f"Sampling: {BASE.num_steps} steps, {BASE.schedule} schedule, {BASE.order} order, DPM-Solver++ "
            f"{BASE.head_steps} head steps, no CFG unless the setting says otherwise; CFG scale {CFG:g}. MaskGIT "
            f"settings: {MASKGIT.schedule} schedule, {MASKGIT.count_rule} counts, {MASKGIT.order} order (Gumbel "
            f"tau {MASKGIT.order_temperature:g}, {MASKGIT.order_anneal} anneal).")
VERDICT_RULE = ("A test 'a below b' has margin b - a and sd sqrt(sd_a^2 + sd_b^2) (sd: spread of the per-seed-set "
                "values); 'a within p % of b' has margin (1 + p) b - a and sd sqrt(sd_a^2 + (1 + p)^2 sd_b^2). It holds "
                "when margin > 2 sd, does not hold when margin < -2 sd, else undecided. A claim holds when all its "
                "tests hold, does not hold when any does not, else undecided.")


@dataclass(frozen=True)
class Row:
    """One setting to measure: its group, label, model, sampler and guidance; `emigm` is the continuous
    model the group was run for (--emigm), which keys the claims when several models are merged."""

    group: str
    label: str
    model: str
    sampler: SamplerConfig
    guidance: GuidanceConfig
    emigm: str


def load(name: str, random_init: bool, device, smoother: bool = False):
    """A shipped model (with its self-guidance module when it has one), or with `random_init` the preset
    of that name with random weights (and, with `smoother`, an untrained module: for the pipeline test)."""
    if random_init:
        gen = random_pipeline(name, device)
        if smoother:
            gen.smoother = Smoother(config_for(gen.model)).to(device).eval()
        return gen
    return load_pipeline(name, device)


def suite(available: set[str], emigm: str = "fmnist-emigm", steps_list: tuple[int, ...] = (4, 8, 16, 32),
          head_steps: tuple[int, ...] = (4, 8, 14), null_scales: tuple[float, ...] = (1.5, 2.0, 3.0, 4.0),
          maskgit: str = MASKGIT_NAME) -> list[Row]:
    """The settings of every group; `emigm` names the continuous model, `maskgit` the discrete one
    (its self-guidance groups need `maskgit + "+sg"` in `available`)."""
    rows = []

    def add(group, label, model, sampler, guidance=GuidanceConfig()):
        rows.append(Row(group, label, model, sampler, guidance, emigm))

    lo, hi = HEADLINE.cfg_interval
    add("headline", f"default: S={BASE.num_steps}, CFG {HEADLINE.cfg_scale:g} in ({lo:g}, {hi:g}]", emigm, BASE,
        HEADLINE)
    for steps in PLATEAU_STEPS:
        add("steps", f"exp S={steps}", emigm, replace(BASE, num_steps=steps))

    for sched in ("linear", "cosine", "exp"):
        for steps in steps_list:
            add("schedule", f"{sched} S={steps}", emigm, replace(BASE, schedule=sched, num_steps=steps))
    fine = max(head_steps)  # the same scan with the finest head solver (eMIGM's setting at many steps)
    for steps in steps_list[1:]:
        add("schedule", f"exp S={steps} head={fine}", emigm, replace(BASE, num_steps=steps, head_steps=fine))
    for hs in head_steps:
        add("solver", f"dpm head={hs}", emigm, replace(BASE, head_steps=hs))
    add("solver", "ddpm head=100", emigm, replace(BASE, head_solver="ddpm", head_steps=100))
    add("cfg", "no CFG", emigm, BASE)
    add("cfg", "CFG every step", emigm, BASE, GuidanceConfig(cfg_scale=CFG))
    for lo, hi in (INTERVAL, (0.0, 0.3), (0.1, 0.5), (0.2, 0.6)):
        add("cfg", f"CFG in ({lo}, {hi}]", emigm, BASE, GuidanceConfig(cfg_scale=CFG, cfg_interval=(lo, hi)))
    if emigm + "-fakecfg" in available:
        for scale in null_scales:
            for model in (emigm, emigm + "-fakecfg"):
                add("null", f"{model} w={scale}", model, BASE, GuidanceConfig(cfg_scale=scale))
    if maskgit in available:
        for steps in (8, 16):
            add("discrete", f"maskgit S={steps}", maskgit, replace(MASKGIT, num_steps=steps))
            add("discrete", f"emigm S={steps}", emigm, replace(BASE, num_steps=steps))
    if maskgit + "+sg" in available:
        for steps in (8, 16):
            for s in (0.0, 1.0):
                add("sg", f"maskgit S={steps} s={s:g}", maskgit, replace(MASKGIT, num_steps=steps),
                    GuidanceConfig(sg_scale=s))
        for s in (0.5, 2.0, 3.0):
            add("sg-scale", f"maskgit S=16 s={s:g}", maskgit, MASKGIT, GuidanceConfig(sg_scale=s))
        for tau in (1.0, 4.5, 10.0, 25.0):
            for s in (0.0, 1.0):
                add("sg-tau", f"maskgit S=16 tau={tau:g} s={s:g}", maskgit, replace(MASKGIT, order_temperature=tau),
                    GuidanceConfig(sg_scale=s))
    if maskgit in available:
        for order, extra in ORDER_SETTINGS.items():
            for steps in LAB_STEPS:
                add("orders", f"maskgit {order} S={steps}", maskgit, replace(MASKGIT, order=order, num_steps=steps,
                                                                            **extra))
    for order in ("random", "halton", "raster"):
        for steps in LAB_STEPS:
            add("orders", f"emigm {order} S={steps}", emigm, replace(BASE, order=order, num_steps=steps))
    for steps in LAB_STEPS:
        for on in (False, True):
            tag = "remask" if on else "plain"
            add("remask", f"emigm {tag} S={steps}", emigm, replace(BASE, num_steps=steps, **(REMASK if on else {})))
            if maskgit in available:
                add("remask", f"maskgit {tag} S={steps}", maskgit,
                    replace(MASKGIT, num_steps=steps, **(REMASK if on else {})))
    return rows


# ----------------------------------------------------------------------------- measuring


def seed_sets(num_samples: int, k: int) -> list[list[int]]:
    """[first, last] seed of each of k disjoint sets of num_samples seeds: [0, N-1], [N, 2N-1], ..."""
    return [[i * num_samples, (i + 1) * num_samples - 1] for i in range(k)]


def summarise(values: list[float]) -> tuple[float, float | None]:
    """(mean, sd over the values, ddof 1; None for a single value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def make_point(row: Row, runs: list[dict[str, Any]], sets: list[list[int]], fp: dict[str, Any] | None = None,
               commits: list[str] | None = None) -> dict[str, Any]:
    """A claims.json point from the K evaluate_generator results of one setting; `fp`: the fingerprint of
    the weights it was measured on, `commits`: the code's commit(s) of the runs."""
    p = {"group": row.group, "label": row.label, "model": row.model, "emigm": row.emigm,
         "sampler": to_dict(row.sampler), "guidance": to_dict(row.guidance), "nfe": runs[0]["passes"],
         "passes": runs[0]["passes"], "head_evals": runs[0]["head_evals"],
         "images_per_s": statistics.fmean(r["images_per_s"] for r in runs), "seed_sets": sets}
    if runs[0].get("num_tokens") is not None:
        p["num_tokens"] = runs[0]["num_tokens"]
    if fp is not None:
        p["fingerprint"] = fp
    if commits is not None:
        p["commit"] = ", ".join(dict.fromkeys(c or "unknown" for c in commits))
    for m in METRICS:
        vals = [float(r[m]) for r in runs]
        p[m], p[f"{m}_sd"] = summarise(vals)
        p[f"{m}_runs"] = vals
    return p


def setting_key(model: str, sampler: dict, guidance: dict) -> str:
    return json.dumps([model, sampler, guidance], sort_keys=True)


def uses_self_guidance(row: Row) -> bool:
    return row.guidance.sg_scale != 0.0


def row_fingerprint(model_fp: dict[str, Any], row: Row) -> dict[str, Any]:
    """The files a row's measurement used: the model's, without the self-guidance module unless it guides."""
    return {**model_fp, "self_guidance": model_fp.get("self_guidance") if uses_self_guidance(row) else None}


_SAMPLER_DEFAULTS = json.loads(json.dumps(to_dict(SamplerConfig())))
_GUIDANCE_DEFAULTS = json.loads(json.dumps(to_dict(GuidanceConfig())))


class Store:
    """Each (setting, seed set) result as its own small JSON file in `folder`, written atomically the
    moment it is measured and named by everything that decides it (model, fingerprint, sampler,
    guidance, N, first seed), so a re-run of the same command skips what is done and a result of other
    weights is never picked up. Several processes may share a folder: a result being measured is
    claimed by a lock file holding the pid (a lock whose process is gone is taken over)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._index: dict[str, Path] = {}
        self._seen: set[str] = set()

    def name(self, row: Row, fp: dict[str, Any], n: int, lo: int) -> Path:
        key = json.dumps([row.model, fp, to_dict(row.sampler), to_dict(row.guidance), n, lo], sort_keys=True)
        return self.folder / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"

    @staticmethod
    def content_key(model: str, fp: dict[str, Any], sampler: dict[str, Any], guidance: dict[str, Any], n: int,
                    lo: int) -> str:
        """What decides a result, with sampler and guidance fields at their defaults left out: a result
        stays found when the code later adds a field whose default keeps the old behaviour."""
        def canon(d: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
            return {k: v for k, v in json.loads(json.dumps(d)).items() if defaults.get(k, object()) != v}
        return json.dumps([model, fp, canon(sampler, _SAMPLER_DEFAULTS), canon(guidance, _GUIDANCE_DEFAULTS), n, lo],
                          sort_keys=True)

    def find(self, row: Row, fp: dict[str, Any], n: int, lo: int) -> dict[str, Any] | None:
        """The stored result of (row, seed set from lo), under its name or, written by other code, by content."""
        rec = self.get(self.name(row, fp, n, lo))
        if rec is not None:
            return rec
        try:
            names = {f for f in os.listdir(self.folder) if f.endswith(".json")}
        except OSError:
            return None
        for f in sorted(names - self._seen):
            doc = self.get(self.folder / f)
            if doc is not None and doc.get("format") == "emigm-claims-result":
                try:
                    key = self.content_key(doc["model"], doc["fingerprint"], doc["sampler"], doc["guidance"],
                                           doc["num_samples"], doc["seeds"][0])
                except (KeyError, TypeError, IndexError):
                    continue
                self._index[key] = self.folder / f
            self._seen.add(f)
        path = self._index.get(self.content_key(row.model, fp, to_dict(row.sampler), to_dict(row.guidance), n, lo))
        return self.get(path) if path is not None else None

    def get(self, path: Path) -> dict[str, Any] | None:
        try:
            doc = json.loads(path.read_text())
            return doc if isinstance(doc, dict) and isinstance(doc.get("result"), dict) else None
        except (OSError, ValueError):
            return None

    def newest(self) -> str:
        """The date (YYYY-MM-DD) of the newest result in the folder, or ''."""
        dates = [str(d.get("date", ""))[:10] for f in self.folder.glob("*.json") if (d := self.get(f))]
        return max(dates, default="")

    def put(self, path: Path, row: Row, fp: dict[str, Any], n: int, lo: int, result: dict[str, Any],
            commit: str | None, device: str) -> dict[str, Any]:
        doc = {"format": "emigm-claims-result", "model": row.model, "label": row.label, "fingerprint": fp,
               "sampler": to_dict(row.sampler), "guidance": to_dict(row.guidance), "num_samples": n,
               "seeds": [lo, lo + n - 1], "commit": commit, "device": device,
               "date": time.strftime("%Y-%m-%d %H:%M:%S"), "result": result}
        write_text(path, json.dumps(doc, indent=1) + "\n")
        return doc

    def lock(self, path: Path) -> bool:
        """Claim `path` for this process; False when a live process holds it."""
        lock = path.with_suffix(".lock")
        self.folder.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                os.write(fd, str(os.getpid()).encode())
                os.close(fd)
                return True
            except FileExistsError:
                try:
                    pid = int(lock.read_text() or "0")
                    if pid == os.getpid():
                        return True
                    os.kill(pid, 0)
                    return False  # alive
                except ProcessLookupError:
                    lock.unlink(missing_ok=True)  # its process is gone: take it over
                except (OSError, ValueError):
                    return False  # being written just now: try again later
        return False

    def unlock(self, path: Path) -> None:
        path.with_suffix(".lock").unlink(missing_ok=True)


def measure(rows: list[Row], num_samples: int, k: int, batch_size: int, random_init: bool, device,
            log: Callable[[str], None] = print, smoothers: tuple[str, ...] = (), store: Store | None = None,
            on_point: Callable[[list[dict[str, Any]], list[Row]], None] | None = None,
            wait_s: float = 30.0, collect: bool = False) -> list[dict[str, Any]]:
    """Every row on k seed sets, in order; a setting that appears in several groups is measured once.
    With `store`, each seed set's result is read from it when there and written to it when measured
    (see Store); a result another process is measuring is taken up again after the rest. `on_point`
    gets, after each point, the points of every row complete so far (in row order, whichever process
    measured them) and the rows still to come. With `collect`, nothing is measured: the points of the
    rows whose results are all in the store."""
    sets = seed_sets(num_samples, k)
    commit = source_commit(ROOT)
    classifier = CLASSIFIER_FILE if CLASSIFIER_FILE.is_file() else None
    models: dict[str, Any] = {}
    fps: dict[str, dict[str, Any]] = {}

    def model(name: str):
        if name not in models:
            models[name] = load(name, random_init, device, name in smoothers)
        return models[name]

    def model_fp(name: str) -> dict[str, Any]:
        if name not in fps:
            fps[name] = (pipeline_fingerprint(model(name), classifier) if random_init
                         else fingerprint(ASSETS_DIR / name, classifier))
        return fps[name]

    def key_of(row: Row) -> str:
        return setting_key(row.model, to_dict(row.sampler), to_dict(row.guidance))

    def stored(row: Row) -> tuple[list[dict[str, Any]], list[str]] | None:
        """The row's results if the store holds every seed set."""
        if store is None:
            return None
        fp = row_fingerprint(model_fp(row.model), row)
        recs = [store.find(row, fp, num_samples, lo) for lo, _ in sets]
        if any(r is None for r in recs):
            return None
        return [r["result"] for r in recs], [r.get("commit") for r in recs]

    done: dict[str, tuple[list[dict[str, Any]], list[str]]] = {}

    def snapshot() -> tuple[list[dict[str, Any]], list[Row]]:
        points, rest = [], []
        for row in rows:
            key = key_of(row)
            if key not in done:
                got = stored(row)
                if got is None:
                    rest.append(row)
                    continue
                done[key] = got
            points.append(make_point(row, done[key][0], sets, row_fingerprint(model_fp(row.model), row), done[key][1]))
        return points, rest

    if collect:
        return snapshot()[0]
    queue = list(range(len(rows)))
    log(table_header())
    while queue:
        progressed = False
        for i in list(queue):
            row = rows[i]
            key = key_of(row)
            fp = row_fingerprint(model_fp(row.model), row)
            if key not in done:
                runs, commits, blocked = [], [], False
                for lo, _ in sets:
                    rec = store.find(row, fp, num_samples, lo) if store else None
                    path = store.name(row, fp, num_samples, lo) if store else None
                    if rec is None and store is not None and not store.lock(path):
                        blocked = True  # another process measures this seed set: do the others meanwhile
                        continue
                    if rec is None:
                        try:
                            gen = model(row.model)
                            res = evaluate_generator(gen, gen.tokenizer, num_samples, row.sampler, row.guidance,
                                                     batch_size=batch_size, seed=lo, floor=False)
                            res = {**{m: float(res[m]) for m in METRICS},
                                   **{x: res[x] for x in ("passes", "head_evals", "images_per_s")},
                                   "num_tokens": getattr(getattr(gen, "model", None), "num_tokens", None)}
                            if store:
                                rec = store.put(path, row, fp, num_samples, lo, res, commit, str(device))
                            else:
                                rec = {"result": res, "commit": commit}
                        finally:
                            if store:
                                store.unlock(path)
                    runs.append(rec["result"])
                    commits.append(rec.get("commit"))
                if blocked:
                    continue  # another process measures it: come back to it
                done[key] = (runs, commits)
            log(table_row(make_point(row, done[key][0], sets, fp, done[key][1])))
            queue.remove(i)
            progressed = True
            if on_point is not None:
                on_point(*snapshot())
        if queue and not progressed:
            time.sleep(wait_s)
    return snapshot()[0]


def table_header() -> str:
    return (f"{'group':<9} {'setting':<32} {'model':<26} {'NFE':>4} {'FD':>16} {'class acc':>14} "
            f"{'precision':>14} {'recall':>14}")


def pm(mean: float | None, sd: float | None, digits: int = 2) -> str:
    """'13.68 ± 0.061' (mean to `digits` decimals, sd to 2 significant figures); the mean alone without sd."""
    if mean is None:
        return "-"
    return f"{mean:.{digits}f}" + ("" if sd is None else f" ± {sd:.2g}")


def table_row(p: dict[str, Any]) -> str:
    cells = [pm(p.get(m), p.get(f"{m}_sd"), 2 if m == "fd" else 3) for m in METRICS]
    return (f"{p['group']:<9} {p['label']:<32} {p['model']:<26} {p['nfe']:>4} {cells[0]:>16} {cells[1]:>14} "
            f"{cells[2]:>14} {cells[3]:>14}")


# ----------------------------------------------------------------------------- verdicts


def judge(margin: float, sd: float | None) -> str:
    if sd is None or not math.isfinite(margin):
        return "undecided"
    if margin > 2 * sd:
        return "holds"
    if margin < -2 * sd:
        return "does not hold"
    return "undecided"


def all_of(verdicts: list[str]) -> str:
    if verdicts and all(v == "holds" for v in verdicts):
        return "holds"
    return "does not hold" if "does not hold" in verdicts else "undecided"


def _sd(p: dict[str, Any], metric: str = "fd") -> float | None:
    return p.get(f"{metric}_sd")


def _test(text: str, margin: float, sd_a: float | None, sd_b: float | None, factor: float) -> dict[str, Any]:
    sd = None if sd_a is None or sd_b is None else math.sqrt(sd_a ** 2 + (factor * sd_b) ** 2)
    return {"test": text, "margin": margin, "sd": sd, "verdict": judge(margin, sd)}


def below(a: dict[str, Any], b: dict[str, Any], factor: float = 1.0, text: str = "") -> dict[str, Any]:
    """The test 'FD of a below factor x FD of b' (factor 1.1: a within 10 % above b):
    margin factor b - a, sd sqrt(sd_a^2 + factor^2 sd_b^2)."""
    what = text or (f"{a['label']} below {b['label']}" if factor == 1.0
                    else f"{a['label']} below {factor:g} x {b['label']}")
    return _test(what, factor * b["fd"] - a["fd"], _sd(a), _sd(b), factor)


def above(a: dict[str, Any], b: dict[str, Any], factor: float, text: str = "") -> dict[str, Any]:
    """The test 'FD of a above factor x FD of b' (factor 0.9: a at most 10 % below b):
    margin a - factor b, sd sqrt(sd_a^2 + factor^2 sd_b^2)."""
    return _test(text or f"{a['label']} above {factor:g} x {b['label']}", a["fd"] - factor * b["fd"], _sd(a), _sd(b),
                 factor)


def exact(margin: float, text: str) -> dict[str, Any]:
    """A test on a count without noise (transformer passes): sd 0."""
    return {"test": text, "margin": float(margin), "sd": 0.0, "verdict": judge(float(margin), 0.0)}


def series(name: str, pts: list[dict[str, Any]], x: Callable[[dict[str, Any]], float], line: bool = True
           ) -> dict[str, Any]:
    pts = sorted(pts, key=x)
    return {"name": name, "x": [x(p) for p in pts], "y": [p["fd"] for p in pts], "sd": [_sd(p) for p in pts],
            "labels": [p["label"] for p in pts], "line": line}


def claim(cid: str, text: str, short: str, tests: list[dict[str, Any]], shown: list[dict[str, Any]],
          plot: dict[str, Any]) -> dict[str, Any]:
    return {"id": cid, "claim": text, "short": short, "verdict": all_of([t["verdict"] for t in tests]),
            "tests": tests, "numbers": {p["label"]: {"mean": p["fd"], "sd": _sd(p)} for p in shown},
            "models": list(dict.fromkeys(p["model"] for p in shown)), "plot": {"y": "FD", **plot}}


def _unique(pts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One point per setting (the first): groups that share a setting measure it once."""
    seen, out = set(), []
    for p in pts:
        key = setting_key(p["model"], p["sampler"], p["guidance"])
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def _no_guidance(p: dict[str, Any]) -> bool:
    g = p["guidance"]
    return g.get("cfg_scale", 1.0) == 1.0 and g.get("sg_scale", 0.0) == 0.0


def at_least(a: dict[str, Any], metric: str, value: float, text: str) -> dict[str, Any]:
    """The test 'metric of a at least value' (higher is better): margin a - value, sd the setting's."""
    return _test(text, a[metric] - value, _sd(a, metric), 0.0, 0.0)


def claims_headline(pts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The project's target at the default settings: class accuracy at least ACCURACY_TARGET."""
    if not pts:
        return []
    p = pts[0]
    c = claim("target-accuracy", f"class accuracy at the default settings ({p['label']}) is at least "
                                 f"{ACCURACY_TARGET:g} (the project's target)", "class accuracy target",
              [at_least(p, "class_accuracy", ACCURACY_TARGET, f"{p['label']} class accuracy at least {ACCURACY_TARGET:g}")],
              [p], {})
    c["numbers"] = {f"{p['label']} {m.replace('_', ' ')}": {"mean": p[m], "sd": _sd(p, m), "digits": d}
                    for m, d in (("class_accuracy", 3), ("fd", 2))}
    c["plot"] = {"y": "class accuracy", "x": "seed set", "series": [
        {"name": "class accuracy", "x": list(range(1, len(p["class_accuracy_runs"]) + 1)),
         "y": p["class_accuracy_runs"], "sd": [None] * len(p["class_accuracy_runs"]),
         "labels": [f"seeds {a}-{b}" for a, b in p["seed_sets"]], "line": False},
        {"name": f"target {ACCURACY_TARGET:g}", "x": [1, len(p["class_accuracy_runs"])],
         "y": [ACCURACY_TARGET] * 2, "sd": [None, None], "labels": ["target", "target"], "line": True}]}
    return [c]


def claims_steps(pts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """At few tokens FD falls with more steps up to PLATEAU_KNEE and is flat (within PLATEAU_FLAT) after;
    precision and recall against S ride along (the claim's plot and numbers)."""
    steps = lambda p: p["sampler"]["num_steps"]  # noqa: E731
    by = {steps(p): p for p in pts if _no_guidance(p)}
    if PLATEAU_KNEE not in by or len(by) < 3:
        return []
    before = sorted(s for s in by if s <= PLATEAU_KNEE)
    after = sorted(s for s in by if s > PLATEAU_KNEE)
    tests = [below(by[b], by[a]) for a, b in zip(before, before[1:])]
    for s in after:
        k = by[PLATEAU_KNEE]
        tests += [below(by[s], k, 1 + PLATEAU_FLAT), above(by[s], k, 1 - PLATEAU_FLAT)]
    tokens = next((p["num_tokens"] for p in pts if p.get("num_tokens")), None)
    where = f"at {tokens} tokens " if tokens else ""
    ordered = [by[s] for s in sorted(by)]
    c = claim("steps-plateau", f"{where}FD falls with more steps up to S = {PLATEAU_KNEE} and is flat after (S = "
              + ", ".join(str(s) for s in after) + f" within {PLATEAU_FLAT:.0%} of S = {PLATEAU_KNEE}; exp, no CFG)",
              "FD against steps: falls, then flat", tests, ordered,
              {"x": "sampling steps S", "x_log": True, "series": [series("FD", ordered, steps)]})
    c["other_metrics"] = {m: {p["label"]: {"mean": p[m], "sd": _sd(p, m)} for p in ordered}
                          for m in ("precision", "recall")}
    return [c]


def claims_schedule(pts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    head = lambda p: p["sampler"].get("head_steps", BASE.head_steps)  # noqa: E731
    fine = [p for p in pts if _no_guidance(p) and head(p) != BASE.head_steps]
    pts = [p for p in pts if head(p) == BASE.head_steps]
    by = {(p["sampler"]["schedule"], p["sampler"]["num_steps"]): p for p in pts if _no_guidance(p)}
    steps = sorted({s for _, s in by})
    out = []
    if steps and all((s, steps[0]) in by for s in ("linear", "cosine", "exp")):
        s0 = steps[0]
        exp = by[("exp", s0)]
        tests = [below(exp, by[(s, s0)]) for s in ("linear", "cosine")]
        out.append(claim("schedule", f"the exp schedule is the best at few steps (S = {s0})", f"exp best at S={s0}",
                         tests, [by[(s, s0)] for s in ("linear", "cosine", "exp")],
                         {"x": "sampling steps S", "series": [series(s, [p for (k, _), p in by.items() if k == s],
                                                                    lambda p: p["sampler"]["num_steps"])
                                                             for s in ("linear", "cosine", "exp")]}))
    exp = {s: p for (k, s), p in by.items() if k == "exp"}
    ref = 8 if 8 in exp and max(exp) > 8 else min(exp, default=None)  # the S = 8 reference
    more = sorted(s for s in exp if ref is not None and s > ref)
    if more:
        tests = [below(exp[s], exp[ref]) for s in more]
        out.append(claim("steps", f"FD falls with more sampling steps (exp schedule, no CFG): "
                                  f"{' and '.join(f'S = {s}' for s in more)} below S = {ref}",
                         "more steps lower FD (exp)", tests, [exp[s] for s in sorted(exp)],
                         {"x": "sampling steps S", "series": [series("exp", list(exp.values()),
                                                                     lambda p: p["sampler"]["num_steps"])]}))
    fine_by = {p["sampler"]["num_steps"]: p for p in fine}
    more = sorted(s for s in fine_by if s > min(fine_by, default=0))
    if more:
        ref_s = min(fine_by)
        hs = fine_by[ref_s]["sampler"]["head_steps"]
        out.append(claim("steps-fine-head", f"FD falls with more sampling steps with {hs} head steps (exp, no CFG): "
                                            f"{' and '.join(f'S = {s}' for s in more)} below S = {ref_s}",
                         f"more steps lower FD ({hs} head steps)", [below(fine_by[s], fine_by[ref_s]) for s in more],
                         [fine_by[s] for s in sorted(fine_by)],
                         {"x": "sampling steps S", "series": [series(f"exp, head {hs}", list(fine_by.values()),
                                                                     lambda p: p["sampler"]["num_steps"])]}))
    return out


def claims_solver(pts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    dpm = {p["sampler"]["head_steps"]: p for p in pts if p["sampler"]["head_solver"] == "dpm" and _no_guidance(p)}
    ddpm = [p for p in pts if p["sampler"]["head_solver"] == "ddpm" and _no_guidance(p)]
    hs = lambda p: p["sampler"]["head_steps"]  # noqa: E731
    out = []
    if dpm and ddpm:
        best = min(dpm.values(), key=lambda p: p["fd"])
        d = max(ddpm, key=hs)
        tests = [below(d, best, 1.1), above(d, best, 0.9)]
        out.append(claim("ddpm", f"DDPM-{hs(d)} and DPM-Solver++ at its best head steps ({hs(best)}) agree within 10 % "
                                 "(FD)", "DDPM vs DPM-Solver++", tests, [*sorted(dpm.values(), key=hs), d],
                         {"x": "head steps", "x_log": True,
                          "series": [series("DPM-Solver++", list(dpm.values()), hs),
                                     series("DDPM", ddpm, hs, line=False)]}))
    if len(dpm) > 1:
        lo, hi = dpm[min(dpm)], dpm[max(dpm)]
        out.append(claim("head-steps", f"DPM-Solver++ with {min(dpm)} head steps is within 25 % of {max(dpm)} (FD)",
                         f"{min(dpm)} vs {max(dpm)} head steps",
                         [below(lo, hi, 1.25, f"{lo['label']} below 1.25 x {hi['label']}")],
                         sorted(dpm.values(), key=hs),
                         {"x": "head steps (DPM-Solver++)", "series": [series("DPM-Solver++", list(dpm.values()), hs)]}))
    return out


def claims_cfg(pts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    cfg = [p for p in pts if p["guidance"].get("sg_scale", 0.0) == 0.0]
    every = next((p for p in cfg if p["guidance"]["cfg_scale"] != 1.0
                  and list(p["guidance"]["cfg_interval"]) == [0.0, 1.0]), None)
    inter = next((p for p in cfg if p["guidance"]["cfg_scale"] != 1.0
                  and list(p["guidance"]["cfg_interval"]) == list(INTERVAL)), None)
    if every is None or inter is None:
        return []
    tests = [below(inter, every, 1.1, f"{inter['label']} below 1.1 x {every['label']}"),
             exact(every["passes"] - inter["passes"], f"{inter['label']} takes fewer passes than {every['label']} "
                                                      f"({inter['passes']} vs {every['passes']})")]
    return [claim("interval-cfg", f"CFG in ({INTERVAL[0]:g}, {INTERVAL[1]:g}] keeps the FD of CFG at every step "
                                  "(within 10 %) with fewer passes", "interval CFG vs every step", tests,
                  sorted(cfg, key=lambda p: p["passes"]),
                  {"x": "NFE (transformer passes)", "series": [series(f"CFG {CFG:g}", cfg, lambda p: p["passes"],
                                                                      line=False)]})]


def claims_null(pts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    pairs: dict[str, list[list[dict[str, Any]]]] = {}
    for p in pts:
        base = p["model"].removesuffix("-fakecfg")
        pairs.setdefault(base, [[], []])[int(p["model"].endswith("-fakecfg"))].append(p)
    pairs = {k: v for k, v in pairs.items() if v[0] and v[1]}
    if not pairs:
        return []
    tests, shown, lines = [], [], []
    scale = lambda p: p["guidance"]["cfg_scale"]  # noqa: E731
    for base, (mask, fake) in pairs.items():
        bm, bf = (min(v, key=lambda p: p["fd"]) for v in (mask, fake))
        tests.append(below(bm, bf, text=f"{base}: best with mask ({bm['label']}) below best with fake class "
                                        f"({bf['label']})"))
        shown += sorted(mask, key=scale) + sorted(fake, key=scale)
        lines += [series(f"{base} (mask)", mask, scale), series(f"{base}-fakecfg (fake class)", fake, scale)]
    return [claim("null", "CFG with the mask token beats a separate fake class (best FD over scales"
                          + (", each model pair)" if len(pairs) > 1 else ")"), "CFG: mask vs fake class", tests, shown,
                  {"x": "CFG scale w", "series": lines})]


def claims_discrete(pts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    steps = lambda p: p["sampler"]["num_steps"]  # noqa: E731
    cont = {steps(p): p for p in pts if p["model"] == p.get("emigm") and _no_guidance(p)}
    disc = {steps(p): p for p in pts if p["model"] != p.get("emigm") and _no_guidance(p)}
    both = sorted(set(cont) & set(disc))
    if not both:
        return []
    tests = [below(cont[s], disc[s], text=f"{cont[s]['label']} below {disc[s]['label']} ({cont[s]['passes']} passes)")
             for s in both]
    name = lambda d: next(iter(d.values()))["model"]  # noqa: E731
    return [claim("discrete", "continuous eMIGM beats discrete MaskGIT at equal NFE "
                              f"({' and '.join(f'S = {s}' for s in both)})", "eMIGM vs MaskGIT", tests,
                  [p for s in both for p in (cont[s], disc[s])],
                  {"x": "NFE (transformer passes)",
                   "series": [series(name(cont), [cont[s] for s in both], lambda p: p["passes"]),
                              series(name(disc), [disc[s] for s in both], lambda p: p["passes"])]})]


def claims_sg(pts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    default_tau = MASKGIT.order_temperature
    plain_order = [p for p in pts if p["sampler"]["order_temperature"] == default_tau
                   and p["guidance"].get("cfg_scale", 1.0) == 1.0]
    steps = lambda p: p["sampler"]["num_steps"]  # noqa: E731
    sg = lambda p: p["guidance"].get("sg_scale", 0.0)  # noqa: E731
    by = {(steps(p), sg(p)): p for p in plain_order}
    out = []
    same = sorted(s for s in {k[0] for k in by} if (s, 0.0) in by and (s, 1.0) in by)
    if same:
        out.append(claim("sg-same-steps", "self-guidance (s = 1) lowers MaskGIT's FD at the same steps "
                                          f"({' and '.join(f'S = {s}' for s in same)})", "self-guidance, same steps",
                         [below(by[(s, 1.0)], by[(s, 0.0)]) for s in same],
                         [by[(s, g)] for s in same for g in (0.0, 1.0)],
                         {"x": "sampling steps S", "series": [series("plain", [by[(s, 0.0)] for s in same], steps),
                                                              series("self-guidance s=1", [by[(s, 1.0)] for s in same],
                                                                     steps)]}))
        pairs = [(by[(g, 1.0)], by[(p, 0.0)]) for g in same for p in same
                 if by[(g, 1.0)]["passes"] == by[(p, 0.0)]["passes"]]
        if pairs:
            nfe = lambda p: p["passes"]  # noqa: E731
            out.append(claim("sg-equal-nfe", "self-guidance lowers FD at equal NFE ("
                             + "; ".join(f"guided S = {steps(g)} vs plain S = {steps(p)}, {p['passes']} passes"
                                         for g, p in pairs) + ")", "self-guidance, equal NFE",
                             [below(g, p, text=f"{g['label']} below {p['label']} ({p['passes']} passes)") for g, p in pairs],
                             [q for pair in pairs for q in pair],
                             {"x": "NFE (transformer passes)",
                              "series": [series("plain", [by[(s, 0.0)] for s in same], nfe),
                                         series("self-guidance s=1", [by[(s, 1.0)] for s in same], nfe)]}))
    top = max((s for s, _ in by), default=None)
    scales = {g: p for (s, g), p in by.items() if s == top}
    if 1.0 in scales and len(scales) > 2:
        others = [g for g in sorted(scales) if g != 1.0]
        out.append(claim("sg-scale", "s = 1 is the best self-guidance scale of {"
                                     + ", ".join(f"{g:g}" for g in sorted(scales)) + f"}} (S = {top})",
                         "self-guidance scale", [below(scales[1.0], scales[g]) for g in others],
                         [scales[g] for g in sorted(scales)],
                         {"x": "self-guidance scale s", "series": [series(f"MaskGIT S={top}", list(scales.values()), sg)]}))
    return out


def claims_sg_tau(pts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    tau = lambda p: p["sampler"]["order_temperature"]  # noqa: E731
    sg = lambda p: p["guidance"].get("sg_scale", 0.0)  # noqa: E731
    by = {(tau(p), sg(p)): p for p in pts}
    taus = sorted(t for t in {k[0] for k in by} if (t, 0.0) in by and (t, 1.0) in by)
    if not taus:
        return []
    return [claim("sg-tau", "self-guidance lowers FD at every Gumbel temperature of the confidence order (tau "
                  + ", ".join(f"{t:g}" for t in taus) + ")", "self-guidance over tau",
                  [below(by[(t, 1.0)], by[(t, 0.0)]) for t in taus], [by[(t, g)] for t in taus for g in (0.0, 1.0)],
                  {"x": "Gumbel temperature tau", "x_log": True,
                   "series": [series("plain", [by[(t, 0.0)] for t in taus], tau),
                              series("self-guidance s=1", [by[(t, 1.0)] for t in taus], tau)]})]


def claims_orders(pts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Halton-MaskGIT: the Halton order beats MaskGIT's confidence order (by about 2 FID on ImageNet);
    Kim et al.: the margin order beats confidence; and the same for entropy (Dream). One test per step count."""
    by = {(p["sampler"]["order"], p["sampler"]["num_steps"]): p for p in pts if _no_guidance(p)}
    steps = lambda p: p["sampler"]["num_steps"]  # noqa: E731
    orders = sorted({o for o, _ in by})
    shown = [p for o in orders for p in sorted((q for (oo, _), q in by.items() if oo == o), key=steps)]
    plot = {"x": "sampling steps S", "series": [series(o, [q for (oo, _), q in by.items() if oo == o], steps)
                                                for o in orders]}
    base = "confidence" if "confidence" in orders else "random"
    out = []
    for o in ("halton", "margin", "entropy"):
        common = sorted(s for (oo, s) in by if oo == o and (base, s) in by)
        if o != base and common:
            out.append(claim(f"order-{o}", f"the {o} order lowers FD against the {base} order at "
                                           f"{' / '.join(str(s) for s in common)} steps",
                             f"{o} vs {base} order", [below(by[(o, s)], by[(base, s)]) for s in common], shown, plot))
    return out


def claims_remask(pts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """ReMDM: with remasking, quality keeps improving with more steps (FD at the most steps below the fewest),
    and remasking lowers FD at the most steps."""
    steps = lambda p: p["sampler"]["num_steps"]  # noqa: E731
    on = {steps(p): p for p in pts if p["sampler"].get("remask", "off") != "off"}
    off = {steps(p): p for p in pts if p["sampler"].get("remask", "off") == "off"}
    if len(on) < 2:
        return []
    lo, hi = min(on), max(on)
    plot = {"x": "sampling steps S", "series": [series("no remasking", list(off.values()), steps),
                                                series("remasking (ReMDM rescale)", list(on.values()), steps)]}
    shown = [p for s in sorted(on) for p in ((off[s],) if s in off else ()) + (on[s],)]
    tests = [below(on[hi], on[lo], text=f"{on[hi]['label']} below {on[lo]['label']}")]
    if hi in off:
        tests.append(below(on[hi], off[hi]))
    return [claim("remask", f"with remasking FD falls from {lo} to {hi} steps, and is below no remasking at {hi}",
                  "remasking and more steps", tests, shown, plot)]


# (groups whose points a builder reads, how the points are split by model, the builder)
BUILDERS: list[tuple[tuple[str, ...], Callable[[dict[str, Any]], str], Callable]] = [
    (("headline",), lambda p: p["model"], claims_headline),
    (("steps",), lambda p: p["model"], claims_steps),
    (("schedule",), lambda p: p.get("emigm") or p["model"], claims_schedule),
    (("solver",), lambda p: p.get("emigm") or p["model"], claims_solver),
    (("cfg",), lambda p: p.get("emigm") or p["model"], claims_cfg),
    (("null",), lambda p: "", claims_null),
    (("discrete",), lambda p: p.get("emigm") or "", claims_discrete),
    (("sg", "sg-scale"), lambda p: p["model"], claims_sg),
    (("sg-tau",), lambda p: p["model"], claims_sg_tau),
    (("orders",), lambda p: p["model"], claims_orders),
    (("remask",), lambda p: p["model"], claims_remask),
]


def verdicts(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every claim the points make measurable, in BUILDERS order; a claim measured on several models
    (groups run with different --emigm / --maskgit and merged) is stated once per model."""
    out = []
    for groups, key, build in BUILDERS:
        pts = [p for p in points if p["group"] in groups]
        parts: dict[str, list[dict[str, Any]]] = {}
        for p in pts:
            parts.setdefault(key(p), []).append(p)
        made = [(k, c) for k, part in parts.items() for c in build(_unique(part))]
        for k, c in made:
            if sum(c["id"] == other["id"] for _, other in made) > 1:
                c = dict(c, id=f"{c['id']}@{k}", claim=f"{c['claim']} on {k}", short=f"{c['short']} ({k})")
            c["model"] = k or None  # None: the claim spans models (the CFG-mode pairs)
            out.append(c)
    n = next((p["seed_sets"][0][1] - p["seed_sets"][0][0] + 1 for p in points if p.get("seed_sets")), None)
    for c in out:
        c["evidence"] = evidence(c)
        for t in c["tests"]:
            t["text"] = check_text(t)
            need = n_to_decide(t, n) if n else None
            if need is not None:
                t["n_to_decide"] = need
    return out


def n_to_decide(t: dict[str, Any], n: int) -> int | None:
    """For an undecided test with a spread: the samples per seed set that would decide it if the margin
    stayed and the sd shrank as 1/sqrt(N): N (2 sd / |margin|)^2, rounded up to a hundred. None otherwise."""
    if t["verdict"] != "undecided" or not t.get("sd") or not t["margin"] or not math.isfinite(t["margin"]):
        return None
    return int(math.ceil(n * (2 * t["sd"] / abs(t["margin"])) ** 2 / 100.0) * 100)


def evidence(c: dict[str, Any]) -> str:
    """The claim's numbers as one line: 'exp S=4 13.54 ± 0.061 · linear S=4 14.87 ± 0.05' (then its other
    metrics, if it has any: '; precision: exp S=2 0.812 ± 0.01 · ...')."""
    line = " · ".join(f"{label} {pm(v['mean'], v['sd'], v.get('digits', 2))}"
                      for label, v in c["numbers"].items())
    for m, nums in c.get("other_metrics", {}).items():
        line += f"; {m}: " + " · ".join(f"{label} {pm(v['mean'], v['sd'], 3)}" for label, v in nums.items())
    return line


def check_text(t: dict[str, Any]) -> str:
    """'exp S=4 below linear S=4: margin 1.33 vs 2 sd 0.14 (holds)' ('margin 1.33, no sd' with one seed set)."""
    two = ", no sd" if t["sd"] is None else f" vs 2 sd {2 * t['sd']:.2g}"
    return f"{t['test']}: margin {t['margin']:.3g}{two} ({t['verdict']})"


# ----------------------------------------------------------------------------- files


def upgrade(doc: dict[str, Any]) -> dict[str, Any]:
    """A claims.json written before seed sets (one run per setting, "claim" naming the group) in the
    current form: each metric one run, no sd (so every verdict is undecided until re-measured)."""
    if doc.get("version", 1) >= 2:
        return doc
    n = doc["num_samples"]
    points = []
    for p in doc["points"]:
        group = p.get("group") or p["claim"]
        if group == "null":
            base = p["model"].removesuffix("-fakecfg")
        elif group == "discrete":
            base = doc["model"]
        else:
            base = p["model"]
        q = {k: v for k, v in p.items() if k not in ("claim", "setting")}
        q.update(group=group, emigm=base, seed_sets=[[0, n - 1]], nfe=p.get("nfe", p.get("passes")))
        for m in METRICS:
            q[m], q[f"{m}_sd"], q[f"{m}_runs"] = float(p[m]), None, [float(p[m])]
        points.append(q)
    return {**doc, "version": 2, "seed_sets": [[0, n - 1]], "points": points}


def model_fingerprints(points: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """{model: the fingerprint of its files} over the points (a point that did not use the self-guidance
    module records none; any other point's module fills it in). ValueError naming the model when its
    points were measured on different weights."""
    out: dict[str, dict[str, Any]] = {}
    for p in points:
        fp = p.get("fingerprint")
        if not isinstance(fp, dict):
            continue
        have = out.setdefault(p["model"], dict(fp))
        if have.get("self_guidance") is None:
            have["self_guidance"] = fp.get("self_guidance")
        other = {**fp, "self_guidance": fp.get("self_guidance") or have.get("self_guidance")}
        bad = differing_roles(have, other)
        if bad:
            raise ValueError(f"{p['model']}: points measured on different weights ({', '.join(bad)} differ)")
    return out


def build_doc(points: list[dict[str, Any]], model: str, num_samples: int, sets: list[list[int]], device: str,
              random_init: bool, note: str = "", floor: dict[str, float] | None = None, date: str = "",
              pending: list[str] | None = None) -> dict[str, Any]:
    """The claims.json document; `pending`: labels of settings not measured yet (a partial run)."""
    models = list(dict.fromkeys(p["model"] for p in points))
    commits = list(dict.fromkeys(c.strip() for p in points for c in str(p.get("commit") or "").split(",") if c.strip()))
    return {"format": "emigm-claims", "version": VERSION, "model": model, "models": models,
            "num_samples": num_samples, "seed_sets": sets, "device": device, "random_init": random_init,
            "date": date or time.strftime("%Y-%m-%d"), "note": note, "settings": SETTINGS,
            "verdict_rule": VERDICT_RULE, "floor": floor, "fingerprints": model_fingerprints(points),
            "commits": commits, "complete": not pending, "pending": list(pending or []), "points": points,
            "claims": verdicts(points)}


def describe_sets(doc: dict[str, Any]) -> str:
    sets = doc["seed_sets"]
    if len(sets) == 1:
        return f"{doc['num_samples']} class-balanced samples per setting, one seed set (seeds {sets[0][0]}-{sets[0][1]})"
    return (f"{doc['num_samples']} class-balanced samples per seed set, {len(sets)} disjoint seed sets (seeds "
            + ", ".join(f"{a}-{b}" for a, b in sets) + ")")


def claims_table(doc: dict[str, Any], shown: list[bool] | None = None) -> list[str]:
    """What the README shows of a claims.json document: where and how it was measured, then a row per claim;
    with `shown` (a flag per claim), a claim not measured on the weights in use is a row without numbers."""
    floor = doc.get("floor")
    lines = [f"Measured {doc['date']} on {', '.join(f'`{m}`' for m in doc['models'])}: {describe_sets(doc)}; "
             f"FD against the first {doc['num_samples']} test images"
             + (f" (real-data floor FD {floor['fd']:.3f}, class accuracy {floor['class_accuracy']:.3f})" if floor else "")
             + f"; device {doc['device']}." + (" RANDOM WEIGHTS (pipeline test)." if doc["random_init"] else ""),
             "", doc.get("settings") or SETTINGS, *(["", doc["note"]] if doc.get("note") else []), "",
             *([weights_line(doc), ""] if doc.get("fingerprints") is not None else []),
             *([partial_line(doc["pending"]), ""] if doc.get("pending") else []),
             "| claim | verdict | FD, mean ± sd over seed sets | tests: margin in the claim's favour vs 2 sd |",
             "|---|---|---|---|"]
    shown = [True] * len(doc["claims"]) if shown is None else shown
    if not all(shown):
        lines[-2:-2] = [f"{NOT_MEASURED[0].upper()}{NOT_MEASURED[1:]}: {shown.count(False)} of {len(shown)} claims (the "
                        "files in assets/ differ from those measured, or the file records no fingerprints); their "
                        "numbers are not shown.", ""]
    for c, ok in zip(doc["claims"], shown):
        cell = lambda s: s.replace("|", "\\|")  # noqa: E731
        if not ok:
            lines.append(f"| {cell(c['claim'])} | {NOT_MEASURED} | - | - |")
            continue
        lines.append(f"| {cell(c['claim'])} | **{c['verdict']}** | {cell(c['evidence'])} | "
                     f"{cell('; '.join(t['text'] + need_text(t) for t in c['tests']))} |")
    kept = [c for c, ok in zip(doc["claims"], shown) if ok]
    return lines + ["", f"{len(doc['claims'])} claims: " + ", ".join(
        f"{sum(c['verdict'] == v for c in kept)} {v}" for v in VERDICTS)
        + (f", {shown.count(False)} {NOT_MEASURED}" if not all(shown) else "") + "."]


def need_text(t: dict[str, Any]) -> str:
    """' [decided at N ≈ 4100 per seed set]' for an undecided test with a spread, else ''."""
    return f" [decided at N ≈ {t['n_to_decide']} per seed set]" if t.get("n_to_decide") else ""


def shown_on_shipped(doc: dict[str, Any]) -> list[bool]:
    """Per claim: True when it was measured on the files shipped in assets/ now (emigm.eval.claims)."""
    if not isinstance(doc.get("fingerprints"), dict) or doc.get("version", 1) < VERSION:
        return [False] * len(doc["claims"])
    cf = ClaimsFile(doc, None, ASSETS_DIR / "results" / "claims.json")
    return [ok for _, ok in cf.claims(cf.current_fingerprints())]


def partial_line(pending: list[str]) -> str:
    """'Partial: 80 settings not measured yet (steps 1, schedule 11, ...; claims.json lists them).'"""
    groups: dict[str, int] = {}
    for x in pending:
        g = x.split(":")[0]
        groups[g] = groups.get(g, 0) + 1
    return (f"Partial: {len(pending)} settings not measured yet ("
            + ", ".join(f"{g} {n}" for g, n in groups.items()) + "; `pending` in claims.json lists them).")


def weights_line(doc: dict[str, Any]) -> str:
    """Which files were measured: the first 12 hex digits of each sha256, and the code's commit(s)."""
    parts = []
    for name, fp in doc["fingerprints"].items():
        roles = ", ".join(f"{r.replace('_', '-')} {v.removeprefix('state:')[:12]}" for r, v in fp.items() if v)
        parts.append(f"`{name}` ({roles})")
    commits = ", ".join(c[:12] + ("+dirty" if c.endswith("+dirty") else "") for c in doc.get("commits", []))
    return ("Measured on these files (sha256): " + "; ".join(parts) + "." + (f" Code at {commits}." if commits else "")
            + " The explorer and `python -m emigm claims` show a number only for weights with these fingerprints.")


def readme_block(doc: dict[str, Any]) -> str:
    """The README's claims block, markers included: numbers only for claims measured on the shipped files."""
    return "\n".join([README_BEGIN, "", *claims_table(doc, shown_on_shipped(doc)), "", README_END])


def write_readme(doc: dict[str, Any], path: Path = ROOT / "README.md") -> None:
    """Replace README's block between README_BEGIN and README_END with `readme_block(doc)`."""
    text = path.read_text()
    pattern = re.compile(re.escape(README_BEGIN) + ".*?" + re.escape(README_END), re.DOTALL)
    if len(pattern.findall(text)) != 1:
        sys.exit(f"error: {path.name} needs exactly one block between '{README_BEGIN}' and '{README_END}'")
    path.write_text(pattern.sub(lambda _: readme_block(doc), text))
    print(f"rewrote the claims block of {path.name}")


def claims_md(doc: dict[str, Any]) -> str:
    lines = ["# The paper's claims on our models", "", *claims_table(doc), "",
             "How a verdict is decided: " + doc.get("verdict_rule", VERDICT_RULE), "",
             "| group | setting | model | NFE | FD | class acc | precision | recall | FD per seed set |",
             "|---|---|---|---|---|---|---|---|---|"]
    for p in doc["points"]:
        cells = [pm(p[m], p.get(f"{m}_sd"), 2 if m == "fd" else 3) for m in METRICS]
        runs = ", ".join(f"{v:.2f}" for v in p.get("fd_runs", []))
        lines.append(f"| {p['group']} | {p['label']} | {p['model']} | {p['nfe']} | " + " | ".join(cells) + f" | {runs} |")
    return "\n".join(lines) + "\n"


def print_claims(doc: dict[str, Any]) -> None:
    print(f"\n{'verdict':<14} claim")
    for c in doc["claims"]:
        print(f"{c['verdict']:<14} {c['claim']}")
        for t in c["tests"]:
            print(f"{'':<16}{t['text']}{need_text(t)}")


def write(out: Path, doc: dict[str, Any], quiet: bool = False) -> None:
    """claims.json (the format the README block and the explorer's Results tab read) and claims.md,
    each written atomically."""
    write_text(out / "claims.json", json.dumps(doc, indent=2) + "\n")
    write_text(out / "claims.md", claims_md(doc))
    if not quiet:
        print(f"wrote {out / 'claims.json'} and {out / 'claims.md'}")


def pending_name(p: Row | dict[str, Any]) -> str:
    """'group: label' of a row or point (what a partial run lists as pending)."""
    return f"{p.group}: {p.label}" if isinstance(p, Row) else f"{p['group']}: {p['label']}"


def merge(dirs: list[str], note: str) -> dict[str, Any]:
    """One document from the claims.json of runs made with --only (a run written before seed sets is
    upgraded first). They must share N, the seed sets and random_init, and a model measured in several
    runs must have the same fingerprint in each (a run without fingerprints merges only with others
    without); anything else is refused with one line naming the runs. The verdicts are recomputed."""
    docs = []
    for d in dirs:
        f = Path(d) / "claims.json"
        if not f.is_file():
            sys.exit(f"error: --merge {d}: no claims.json there")
        try:
            doc = upgrade(json.loads(f.read_text()))
            if not isinstance(doc.get("points"), list):
                raise ValueError("no points")
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
            sys.exit(f"error: --merge {d}: claims.json is damaged ({why})")
        docs.append(doc)
    first = docs[0]
    for d, doc in zip(dirs, docs):
        for k in ("num_samples", "seed_sets", "random_init"):
            if doc.get(k) != first.get(k):
                sys.exit(f"error: --merge {d}: {k} {doc.get(k)} differs from {dirs[0]}'s {first.get(k)}; "
                         "merge only runs with the same --num-samples and --seed-sets")
    has_fp = ["fingerprints" in doc for doc in docs]
    if any(has_fp) and not all(has_fp):
        without = [d for d, h in zip(dirs, has_fp) if not h]
        sys.exit(f"error: --merge {', '.join(without)}: no fingerprints of the weights measured (an older run); it "
                 f"cannot be merged with fingerprinted runs ({', '.join(d for d, h in zip(dirs, has_fp) if h)})")
    seen_fp: dict[str, tuple[str, dict[str, Any]]] = {}
    for d, doc in zip(dirs, docs):
        for name, fp in (doc.get("fingerprints") or {}).items():
            if name in seen_fp:
                other_dir, other = seen_fp[name]
                bad = [r for r in differing_roles(other, fp)
                       if not (r == "self_guidance" and None in (other.get(r), fp.get(r)))]
                if bad:
                    sys.exit(f"error: --merge {other_dir} and {d}: {name} was measured on different weights "
                             f"({', '.join(bad)} sha256 differ); merge only runs of the same files")
            else:
                seen_fp[name] = (d, fp)
    seen, points = set(), []
    for doc in docs:
        for p in doc["points"]:
            key = (p["group"], setting_key(p["model"], p["sampler"], p["guidance"]))
            if key not in seen:
                seen.add(key)
                points.append(p)
    measured = {pending_name(p) for p in points}
    pending = list(dict.fromkeys(x for doc in docs for x in doc.get("pending", []) if x not in measured))
    floor = next((d["floor"] for d in docs if d.get("floor")), None)
    if floor is None and (ASSETS_DIR / "classifier").is_dir():  # files written before floors were stored
        fl = real_data_floor(load_classifier(ASSETS_DIR / "classifier"), None, min(first["num_samples"], 10000))
        floor = {k: fl[k] for k in METRICS}
    return build_doc(points, first["model"], first["num_samples"], first["seed_sets"], first["device"],
                     first["random_init"], note or first.get("note", ""), floor,
                     max(d.get("date", "") for d in docs), pending)  # dated when the newest of the runs was measured


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-samples", type=int, default=1000, help="samples per seed set (N)")
    p.add_argument("--seed-sets", type=int, default=3, help="disjoint seed sets per setting (K): seeds 0..N-1, N..2N-1, ...")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--random-init", action="store_true", help="random-weight presets: tests the pipeline only")
    p.add_argument("--out-dir", default=str(ASSETS_DIR / "results"))
    p.add_argument("--emigm", default="fmnist-emigm", help="the continuous eMIGM model the groups run on "
                                                           "(null: it and its -fakecfg twin)")
    p.add_argument("--maskgit", default=MASKGIT_NAME, help="the discrete MaskGIT model (with its self-guidance module)")
    p.add_argument("--steps", type=int, nargs="+", default=[4, 8, 16, 32], help="sampling steps for the schedule scan")
    p.add_argument("--head-steps", type=int, nargs="+", default=[4, 8, 14], help="DPM-Solver++ head steps")
    p.add_argument("--null-scales", type=float, nargs="+", default=[1.5, 2.0, 3.0, 4.0],
                   help="CFG scales of the mask vs fake-class comparison")
    p.add_argument("--merge", nargs="+", default=None, metavar="DIR",
                   help="instead of measuring, merge the claims.json of runs made with --only into --out-dir")
    p.add_argument("--readme", action="store_true",
                   help="instead of measuring, rewrite README's claims block from OUT_DIR/claims.json (with --merge: "
                        "after merging)")
    p.add_argument("--readme-file", default=str(ROOT / "README.md"), help=argparse.SUPPRESS)  # for the tests
    p.add_argument("--note", default="", help="a paragraph stored with the results (context for readers)")
    p.add_argument("--only", default="", help="comma-separated claim groups, measured in this order: "
                   + ",".join(GROUPS))
    p.add_argument("--collect", action="store_true", help="measure nothing: write claims.json from the results "
                   "the cache holds for this command (a partial run's document, the rest listed as pending)")
    p.add_argument("--cache-dir", default="", help="where each (setting, seed set) result is kept as it completes "
                   "(default OUT_DIR/results); a re-run skips what is there, and processes may share it")
    a = p.parse_args(argv)
    out = Path(a.out_dir)
    only = [g for g in a.only.split(",") if g]
    bad = [g for g in only if g not in GROUPS]
    if bad:
        sys.exit(f"error: --only {','.join(bad)}: unknown group; valid: {','.join(GROUPS)}")
    if a.num_samples < 10 or a.seed_sets < 1:
        sys.exit("error: --num-samples must be >= 10 and --seed-sets >= 1")
    if a.merge:
        doc = merge(a.merge, a.note)
        write(out, doc)
    elif a.readme and not a.collect:
        f = out / "claims.json"
        if not f.is_file():
            sys.exit(f"error: {f} not found; measure first")
        doc = upgrade(json.loads(f.read_text()))
    else:
        device = torch.device(a.device)
        names = (a.emigm, a.emigm + "-fakecfg", a.maskgit)
        available = set(names) if a.random_init else {n for n in names if (ASSETS_DIR / n / "config.json").is_file()}
        if a.random_init or (ASSETS_DIR / a.maskgit / "self-guidance" / "config.json").is_file():
            available.add(a.maskgit + "+sg")
        if a.emigm not in available:
            sys.exit(f"error: {a.emigm} is not shipped in assets/; train it first (see README) or pass --random-init")
        rows = suite(available, a.emigm, tuple(a.steps), tuple(a.head_steps), tuple(a.null_scales), a.maskgit)
        if only:  # in the order given: the most wanted first
            rows = sorted((r for r in rows if r.group in only), key=lambda r: only.index(r.group))
        if not rows:
            sys.exit(f"error: nothing to measure for --only {a.only} with the models here")
        fl = real_data_floor(load_classifier(ASSETS_DIR / "classifier"), None, min(a.num_samples, 10000))
        floor = {k: fl[k] for k in METRICS}
        sets = seed_sets(a.num_samples, a.seed_sets)

        def save(points, rest):  # after every setting: the document so far, with what is still to come
            if points:
                write(out, build_doc(points, a.emigm, a.num_samples, sets, str(device), a.random_init, a.note, floor,
                                     pending=list(dict.fromkeys(pending_name(r) for r in rest))), quiet=True)

        store = Store(Path(a.cache_dir) if a.cache_dir else out / "results")
        for folder in (out, store.folder):  # checked before hours of work, not after
            try:
                folder.mkdir(parents=True, exist_ok=True)
                if not os.access(folder, os.W_OK):
                    raise PermissionError("not writable")
            except OSError as e:
                sys.exit(f"error: {folder}: cannot write results there ({e.strerror or e})")
        points = measure(rows, a.num_samples, a.seed_sets, a.batch_size, a.random_init, device,
                         smoothers=(a.maskgit,), store=store, on_point=save, collect=a.collect)
        have = {pending_name(p) for p in points}
        pending = list(dict.fromkeys(pending_name(r) for r in rows if pending_name(r) not in have))
        doc = build_doc(points, a.emigm, a.num_samples, sets, str(device), a.random_init, a.note, floor,
                        date=max((d for d in (store.newest(),) if d), default=""), pending=pending)
        write(out, doc)
    print("\n" + table_header())
    for pt in doc["points"]:
        print(table_row(pt))
    print_claims(doc)
    if a.readme:
        write_readme(doc, Path(a.readme_file))


if __name__ == "__main__":
    main()
