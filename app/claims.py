"""What was measured: assets/results/claims.json (written by benchmarks/paper_claims.py; the README's
claims table is generated from the same file), read for the Results tab, the measured warnings of the
controls and the measured FD under a Compare panel.

claims.json, as read here:
    {"num_samples": 1000, "seed_sets": [[0, 999], [1000, 1999], [2000, 2999]], "note": "...",
     "points": [{"group": "cfg", "label": "CFG in (0.1, 0.3]", "model": "fmnist-emigm", "nfe": 19,
                 "fd": 11.8, "fd_sd": 0.06, "class_accuracy": 0.89, "class_accuracy_sd": 0.01, ...}, ...],
     "claims": [{"claim": "...", "short": "...", "verdict": "holds" | "does not hold" | "undecided",
                 "evidence": "...", "tests": [{"test": "...", "margin": 0.6, "sd": 0.08, "verdict": ...}],
                 "plot": {"x": "head steps", "x_log": false, "y": "FD",
                          "series": [{"name": ..., "x": [...], "y": [...], "sd": [...], "labels": [...],
                                      "line": true}]}}, ...]}
A file from before seed sets (claims with "holds": true / false, no sd) still reads.
"""
from __future__ import annotations

import json
import math
from dataclasses import fields
from pathlib import Path
from typing import Any

from emigm.core.fileio import ASSETS_DIR
from emigm.core.guidance import GuidanceConfig
from emigm.sample.options import SamplerConfig

CLAIMS_PATH = ASSETS_DIR / "results" / "claims.json"
VERDICTS = ("holds", "does not hold", "undecided")
METRICS = ("fd", "class_accuracy", "precision", "recall")


def _first(d: dict[str, Any], *keys: str) -> Any:
    for k in keys:
        if k in d:
            return d[k]
    return None



def _number(x: Any) -> str:
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return f"{x:.4g}" if isinstance(x, float) else str(x)
    if isinstance(x, dict) and "mean" in x:
        return _number(x["mean"]) + ("" if x.get("sd") is None else f" ± {x['sd']:.2g}")
    if isinstance(x, (list, tuple)) and len(x) == 2 and all(isinstance(v, (int, float)) for v in x):
        return f"FD {_number(x[0])} at NFE {_number(x[1])}"  # older files' [fd, nfe] pairs
    return str(x)


def evidence_text(c: dict[str, Any]) -> str:
    """A claim's numbers as one line: the file's "evidence" text, else its "numbers" joined
    ("linear 29.48 · cosine 25.93 · exp 26.39")."""
    raw = _first(c, "evidence", "detail", "value")
    if isinstance(raw, str) and raw and not raw.lstrip().startswith("{"):
        return raw
    numbers = c.get("numbers")
    if isinstance(numbers, dict) and numbers:
        return " · ".join(f"{k} {_number(v)}" for k, v in numbers.items())
    if isinstance(raw, str):
        try:
            parsed = json.loads(raw)
        except json.JSONDecodeError:
            return raw
        if isinstance(parsed, dict):
            return " · ".join(f"{k} {_number(v)}" for k, v in parsed.items())
    return "" if raw is None else str(raw)


def verdict_of(c: dict[str, Any]) -> str:
    v = c.get("verdict")
    if v in VERDICTS:
        return v
    holds = c.get("holds")
    return "holds" if holds is True else "does not hold" if holds is False else "not measured"


def check_text(t: dict[str, Any]) -> str:
    """A claim's test as the file words it ("text"), else from its fields."""
    if isinstance(t.get("text"), str):
        return t["text"]
    sd = t.get("sd")
    two = ", no sd" if sd is None else f" vs 2 sd {2 * sd:.2g}"
    return f"{t.get('test', '?')}: margin {t.get('margin', float('nan')):.3g}{two} ({t.get('verdict', '?')})"




def read_claims(path: Path | None = None) -> dict[str, Any] | None:
    """The parsed claims file: {"points": [...], "claims": [[claim, verdict, numbers · tests], ...],
    "claim_docs": the claims as written (with their plots), "claims_file", "note", "samples"};
    None when absent."""
    path = CLAIMS_PATH if path is None else path
    if not path.is_file():
        return None
    try:
        shown = str(path.relative_to(ASSETS_DIR.parent))
    except ValueError:
        shown = path.name
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {shown}: {e}") from None
    if isinstance(raw, list):
        raw = {"claims": raw}
    if not isinstance(raw, dict):
        raise ValueError(f"{shown}: expected an object with 'points' and 'claims'")
    points = []
    for p in _first(raw, "points", "measurements", "results") or []:
        label, nfe, fd = _first(p, "label", "name", "setting"), _first(p, "nfe", "NFE"), _first(p, "fd", "FD", "fid")
        if label is not None and nfe is not None and fd is not None:
            points.append({"group": str(p.get("group") or p.get("claim") or ""), "label": str(label),
                           "model": str(p.get("model") or ""), "nfe": float(nfe), "fd": float(fd),
                           **{k: p[k] for m in METRICS for k in (m, f"{m}_sd") if k in p and k != "fd"}})
    claims, docs = [], []
    for c in raw.get("claims") or []:
        tests = [check_text(t) for t in c.get("tests") or [] if isinstance(t, dict)]
        text = evidence_text(c) + ("".join(f" · {t}" for t in tests) if tests else "")
        claims.append([str(_first(c, "claim", "name", "id") or "?"), verdict_of(c), text])
        docs.append({**c, "verdict": verdict_of(c)})
    sets = raw.get("seed_sets") or []
    n = raw.get("num_samples")
    samples = (f"{n} samples per seed set, {len(sets)} disjoint seed sets" if n and len(sets) > 1
               else f"{n} samples per setting, one seed set" if n else "")
    return {"points": points, "claims": claims, "claim_docs": docs, "claims_file": shown,
            "note": str(raw.get("note") or ""), "samples": samples, "verdict_rule": str(raw.get("verdict_rule") or "")}


def measured_warnings(model: str, path: Path | None = None, factor: float = 3.0) -> dict[str, dict[str, str]]:
    """{"head_solver": {solver: why}} for solvers whose best measured FD on `model` is more than `factor`
    times the model's best FD (e.g. DDPM diverging on a briefly trained head): they run, but give noise."""
    path = CLAIMS_PATH if path is None else path
    try:
        raw = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return {}
    pts = [p for p in (raw.get("points") or []) if isinstance(p, dict) and p.get("model") == model
           and isinstance(p.get("fd"), (int, float)) and isinstance(p.get("sampler"), dict)]
    if not pts:
        return {}
    best = min(p["fd"] for p in pts)
    by_solver: dict[str, dict[str, Any]] = {}
    for p in pts:
        name = p["sampler"].get("head_solver")
        if name and (name not in by_solver or p["fd"] < by_solver[name]["fd"]):
            by_solver[name] = p
    out = {name: (f"measured FD {p['fd']:.0f} on this model ({p.get('label', name)}) against {best:.1f} at best: "
                  "it runs, but gives noise here (see Results)")
           for name, p in by_solver.items() if p["fd"] > factor * best}
    return {"head_solver": out} if out else {}



# ----------------------------------------------------------------------------- the measured FD of a setting

_IGNORED = ("draft", "draft_steps")  # views only: the committed image does not depend on them
_cache: dict[str, Any] = {}


def claims_points(path: Path) -> list[dict[str, Any]]:
    """The measured points of a claims.json (read again when the file changes); [] without one."""
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        return []
    if _cache.get("key") != (str(path), stamp):
        try:
            points = json.loads(path.read_text()).get("points", [])
        except (OSError, ValueError):
            points = []
        _cache.update(key=(str(path), stamp), points=[p for p in points if isinstance(p, dict)])
    return _cache["points"]


def _same(config, recorded: Any) -> bool:
    if not isinstance(recorded, dict):
        return False
    for f in fields(config):
        if f.name in _IGNORED:
            continue
        want = recorded.get(f.name, f.default)
        have = getattr(config, f.name)
        if isinstance(want, list):
            want = tuple(want)
        if isinstance(have, float) or isinstance(want, float):
            try:
                if not math.isclose(float(have), float(want), rel_tol=1e-9, abs_tol=1e-12):
                    return False
            except (TypeError, ValueError):
                return False
        elif have != want:
            return False
    return True


def measured_fd(model: str | None, sampler: SamplerConfig | None, guidance: GuidanceConfig | None,
                path: Path | None = None) -> dict[str, Any] | None:
    """The first point of claims.json measured on `model` with this sampler and guidance setting, as
    {"label", "fd", "fd_sd", "num_samples", "text"}; None when none matches."""
    if model is None or sampler is None or guidance is None:
        return None
    for p in claims_points(CLAIMS_PATH if path is None else path):
        fd = p.get("fd")
        if p.get("model") != model or not isinstance(fd, (int, float)):
            continue
        if _same(sampler, p.get("sampler")) and _same(guidance, p.get("guidance")):
            sd = p.get("fd_sd")
            sets = len(p.get("seed_sets") or []) or 1
            spread = f" ± {sd:.2g} (sd over {sets} seed sets)" if isinstance(sd, (int, float)) else \
                " (one seed set: no error bar yet)"
            return {"label": p.get("label", ""), "fd": round(float(fd), 3), "fd_sd": sd,
                    "text": f"measured FD {fd:.3g}{spread} · claims.json: {p.get('label', '')}"}
    return None
