"""Measured results as facts about weights: reading claims.json and showing a number only where it is true.

claims.json (assets/results, written by benchmarks/paper_claims.py) holds measured points (a setting's FD,
class accuracy, precision, recall over seed sets) and the claims judged from them. Each point records the
fingerprint of the files it was measured with (emigm.io.fingerprint), and the file lists them per model.
Everything that shows a measured number (the explorer's captions, warnings and Results tab, README's
claims block, `python -m emigm claims`) goes through `ClaimsFile`, which gives a point or a claim only
when the recorded fingerprint equals the sha256 of the files in use; otherwise the caller says
NOT_MEASURED. A file that is missing, damaged or of an older format (no fingerprints) is one line
(`problem`) and shows no numbers.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import fields
from pathlib import Path
from typing import Any

from emigm.core.fileio import ASSETS_DIR
from emigm.eval.evaluation import CLASSIFIER_NAME
from emigm.io.exports import CONFIG_FILE
from emigm.io.fingerprint import fingerprint, same_weights
from emigm.nn.oracle import is_oracle_folder

CLAIMS_FILE = ASSETS_DIR / "results" / "claims.json"
CLASSIFIER_FILE = ASSETS_DIR / "classifier" / f"{CLASSIFIER_NAME}.safetensors"
NOT_MEASURED = "not measured on these weights"
VERSION = 3  # the first format with fingerprints
_IGNORED = ("draft", "draft_steps")  # views only: the committed image does not depend on them


def shipped_fingerprint(name: str, classifier: str | os.PathLike | None = CLASSIFIER_FILE) -> dict[str, Any] | None:
    """The fingerprint of the shipped model `name` (assets/NAME) with the shipped classifier; None when
    it is not shipped or a file is unreadable."""
    if not ((ASSETS_DIR / name / CONFIG_FILE).is_file() or is_oracle_folder(ASSETS_DIR / name)):
        return None
    try:
        return fingerprint(ASSETS_DIR / name, classifier if classifier and Path(classifier).is_file() else None)
    except (OSError, ValueError):
        return None


def same_setting(config: Any, recorded: Any) -> bool:
    """True when a recorded sampler / guidance dict equals the dataclass `config` field by field (floats
    within 1e-9 relative; fields missing from the record at their defaults; draft views ignored)."""
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


class ClaimsFile:
    """A read claims.json: `doc` (None when unusable) and `problem` (one line, or None); `raw`, the parsed
    object even when it is of an older format (for naming what it holds, never for its numbers)."""

    def __init__(self, doc: dict[str, Any] | None, problem: str | None, path: Path,
                 raw: dict[str, Any] | None = None) -> None:
        self.doc, self.problem, self.path = doc, problem, Path(path)
        self.raw = raw if raw is not None else doc

    @classmethod
    def read(cls, path: str | os.PathLike = CLAIMS_FILE) -> ClaimsFile:
        path = Path(path)
        name = path.name if path.parent.name != "results" else f"results/{path.name}"
        if not path.is_file():
            return cls(None, f"no measured results: {name} not found (benchmarks/paper_claims.py writes it)", path)
        try:
            doc = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
            return cls(None, f"{name} is damaged ({why[:120]}): no measured numbers are shown", path)
        if not isinstance(doc, dict) or not isinstance(doc.get("points"), list) \
                or not isinstance(doc.get("claims"), list):
            return cls(None, f"{name} is damaged (expected an object with 'points' and 'claims'): no measured "
                             "numbers are shown", path)
        version = doc.get("version", 1)
        if not isinstance(version, int) or version < VERSION or not isinstance(doc.get("fingerprints"), dict):
            return cls(None, f"{name} is of an older format (version {version}, no fingerprints of the weights "
                             "measured): its numbers are not shown; measure again with benchmarks/paper_claims.py",
                       path, raw=doc)
        doc["points"] = [p for p in doc["points"] if isinstance(p, dict)]
        doc["claims"] = [c for c in doc["claims"] if isinstance(c, dict)]
        return cls(doc, None, path)

    # ------------------------------------------------------------------------- points

    def points(self, model: str, current: dict[str, Any] | None) -> list[dict[str, Any]]:
        """The points measured on `model` with the files of fingerprint `current` (none when None)."""
        if self.doc is None or current is None:
            return []
        return [p for p in self.doc["points"] if p.get("model") == model and same_weights(p.get("fingerprint"), current)
                and isinstance(p.get("fd"), (int, float))]

    def measured(self, model: str, current: dict[str, Any] | None, sampler, guidance) -> dict[str, Any] | None:
        """The first point measured on these weights of `model` with this sampler and guidance, or None."""
        for p in self.points(model, current):
            if same_setting(sampler, p.get("sampler")) and same_setting(guidance, p.get("guidance")):
                return p
        return None

    def recorded(self, model: str, sampler, guidance) -> bool:
        """True when the file (of any format) holds a point of `model` with this setting, on whatever
        weights: where a caller shows NOT_MEASURED instead of nothing."""
        pts = (self.raw or {}).get("points") if isinstance(self.raw, dict) else None
        return any(isinstance(p, dict) and p.get("model") == model and same_setting(sampler, p.get("sampler"))
                   and same_setting(guidance, p.get("guidance")) for p in (pts if isinstance(pts, list) else []))

    def claim_names(self) -> list[str]:
        """The claims the file states (of any format), by their text."""
        claims = (self.raw or {}).get("claims") if isinstance(self.raw, dict) else None
        return [str(c.get("claim") or c.get("id") or "?") for c in (claims if isinstance(claims, list) else [])
                if isinstance(c, dict)]

    def recorded_on_other_weights(self, model: str, current: dict[str, Any] | None) -> bool:
        """True when the file has points of `model`, none of them measured on these weights."""
        if self.doc is None:
            return False
        return any(p.get("model") == model for p in self.doc["points"]) and not self.points(model, current)

    def solver_warnings(self, model: str, current: dict[str, Any] | None, factor: float = 3.0
                        ) -> dict[str, dict[str, str]]:
        """{"head_solver": {solver: why}} for head solvers whose best FD measured on these weights is more
        than `factor` times the best FD measured on them (they run, but give noise); {} otherwise."""
        pts = [p for p in self.points(model, current) if isinstance(p.get("sampler"), dict)]
        if not pts:
            return {}
        best = min(p["fd"] for p in pts)
        by_solver: dict[str, dict[str, Any]] = {}
        for p in pts:
            name = p["sampler"].get("head_solver")
            if name and (name not in by_solver or p["fd"] < by_solver[name]["fd"]):
                by_solver[name] = p
        out = {name: (f"measured FD {p['fd']:.0f} on these weights ({p.get('label', name)}) against {best:.1f} "
                      "at best: it runs, but gives noise here (see Results)")
               for name, p in by_solver.items() if p["fd"] > factor * best}
        return {"head_solver": out} if out else {}

    # ------------------------------------------------------------------------- claims

    def claim_models(self, claim: dict[str, Any]) -> list[str]:
        """The models whose points a claim rests on."""
        models = claim.get("models")
        if isinstance(models, list) and models:
            return [str(m) for m in models]
        labels = set((claim.get("numbers") or {}).keys())
        found = [p["model"] for p in (self.doc or {}).get("points", []) if p.get("label") in labels and "model" in p]
        return list(dict.fromkeys(found)) or ([claim["model"]] if claim.get("model") else [])

    def claims(self, current: dict[str, dict[str, Any] | None]) -> list[tuple[dict[str, Any], bool]]:
        """Every claim with whether it was measured on the weights of `current` ({model: fingerprint or
        None}): True when each model it rests on has the file's fingerprint for it."""
        if self.doc is None:
            return []
        fps = self.doc["fingerprints"]
        out = []
        for c in self.doc["claims"]:
            models = self.claim_models(c)
            ok = bool(models) and all(same_weights(fps.get(m), current.get(m) or {}) for m in models)
            out.append((c, ok))
        return out

    def current_fingerprints(self) -> dict[str, dict[str, Any] | None]:
        """{model: the fingerprint of its shipped files} for every model the file names."""
        if self.doc is None:
            return {}
        names = list(dict.fromkeys([*self.doc["fingerprints"], *(p.get("model") for p in self.doc["points"])]))
        return {n: shipped_fingerprint(n) for n in names if isinstance(n, str)}
