"""What was measured, shown only where it is true: assets/results/claims.json (written by
benchmarks/paper_claims.py; the README's claims table is generated from the same file), read for the
Results tab, the measured warnings of the controls and the measured FD under a Compare panel.

Every number comes through emigm.eval.claims.ClaimsFile: a point or a claim is shown only when the
fingerprint it was measured on (the sha256 of the network, tokenizer, self-guidance module and
classifier files) equals that of the files in use: the loaded model's for a caption or a warning, the
shipped ones for the Results tab. Otherwise the place says "not measured on these weights". A damaged
file, or one of an older format without fingerprints, is one line and the app still starts.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from emigm.core.fileio import ASSETS_DIR
from emigm.core.guidance import GuidanceConfig
from emigm.eval.claims import CLAIMS_FILE, CLASSIFIER_FILE, NOT_MEASURED, ClaimsFile
from emigm.io.fingerprint import pipeline_fingerprint
from emigm.sample.options import SamplerConfig

CLAIMS_PATH = CLAIMS_FILE
ORACLE_CLAIMS_PATH = CLAIMS_FILE.parent / "oracle-claims.json"  # the sampler's exact error (benchmarks/oracle_claims.py)
VERDICTS = ("holds", "does not hold", "undecided")
METRICS = ("fd", "class_accuracy", "precision", "recall")
_files: dict[str, Any] = {}
_weights: dict[int, tuple[Any, dict[str, Any] | None]] = {}  # random-weight models: their tensors' sha256


def claims_file(path: Path | None = None) -> ClaimsFile:
    """claims.json as read (again whenever the file changes)."""
    path = CLAIMS_PATH if path is None else Path(path)
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        stamp = None
    if _files.get("key") != (str(path), stamp):
        _files.update(key=(str(path), stamp), file=ClaimsFile.read(path))
    return _files["file"]


def weights_of(gen: Any) -> dict[str, Any] | None:
    """The fingerprint of a loaded model: its files' sha256 (random weights: of its tensors, computed once
    per model object), or None when they cannot be read (nothing measured then applies to it)."""
    if gen is None:
        return None
    key = id(gen)
    if _weights.get(key, (None,))[0] is not gen:
        try:
            fp = pipeline_fingerprint(gen, CLASSIFIER_FILE if CLASSIFIER_FILE.is_file() else None)
        except (OSError, ValueError):
            fp = None
        if gen.meta.get("export_dir"):  # files: hashed again only when they change (sha256_file caches)
            return fp
        _weights[key] = (gen, fp)
    return _weights[key][1]


def check_text(t: dict[str, Any]) -> str:
    """A claim's test as the file words it ("text"), else from its fields."""
    if isinstance(t.get("text"), str):
        return t["text"]
    sd = t.get("sd")
    two = ", no sd" if sd is None else f" vs 2 sd {2 * sd:.2g}"
    return f"{t.get('test', '?')}: margin {t.get('margin', float('nan')):.3g}{two} ({t.get('verdict', '?')})"


def _shown_name(path: Path) -> str:
    try:
        return str(path.relative_to(ASSETS_DIR.parent))
    except ValueError:
        return path.name


def read_claims(path: Path | None = None) -> dict[str, Any] | None:
    """The claims file for the Results tab: {"points": the points measured on the shipped files, "claims":
    [[claim, verdict or NOT_MEASURED, numbers · tests or ""], ...], "claim_docs": the claims shown (with
    their plots), "claims_file", "note", "samples", "verdict_rule", "problem": one line or ""}; None when
    there is no file."""
    cf = claims_file(path)
    if not cf.path.is_file():
        return None
    base = {"claims_file": _shown_name(cf.path), "problem": cf.problem or "", "note": "", "samples": "",
            "verdict_rule": "", "points": [], "claims": [], "claim_docs": []}
    if cf.doc is None:  # damaged or older: its claims named, none of its numbers
        return {**base, "claims": [[name, NOT_MEASURED, ""] for name in cf.claim_names()]}
    current = cf.current_fingerprints()
    claims, docs = [], []
    for c, ok in cf.claims(current):
        if not ok:
            claims.append([str(c.get("claim") or c.get("id") or "?"), NOT_MEASURED, ""])
            continue
        tests = [check_text(t) for t in c.get("tests") or [] if isinstance(t, dict)]
        verdict = c.get("verdict") if c.get("verdict") in VERDICTS else "undecided"
        claims.append([str(c.get("claim") or c.get("id") or "?"), verdict,
                       str(c.get("evidence") or "") + "".join(f" · {t}" for t in tests)])
        docs.append({**c, "verdict": verdict})
    points = []
    for name, fp in current.items():
        for p in cf.points(name, fp):
            points.append({"group": str(p.get("group") or ""), "label": str(p.get("label") or ""), "model": name,
                           "nfe": float(p.get("nfe") or p.get("passes") or 0), "fd": float(p["fd"]),
                           **{k: p[k] for m in METRICS for k in (m, f"{m}_sd") if k in p and k != "fd"}})
    sets = cf.doc.get("seed_sets") or []
    n = cf.doc.get("num_samples")
    samples = (f"{n} samples per seed set, {len(sets)} disjoint seed sets" if n and len(sets) > 1
               else f"{n} samples per setting, one seed set" if n else "")
    pending = cf.doc.get("pending") or []
    note = str(cf.doc.get("note") or "") + (f" Partial: {len(pending)} settings not measured yet." if pending else "")
    return {**base, "points": points, "claims": claims, "claim_docs": docs, "note": note.strip(), "samples": samples,
            "verdict_rule": str(cf.doc.get("verdict_rule") or "")}


def measured_warnings(model: str, weights: dict[str, Any] | None, path: Path | None = None, factor: float = 3.0
                      ) -> dict[str, dict[str, str]]:
    """{"head_solver": {solver: why}} for solvers whose best FD measured on the files of fingerprint
    `weights` (`weights_of` the loaded model) is more than `factor` times the best FD measured on them
    (they run, but give noise); {} when nothing was measured on these weights."""
    return claims_file(path).solver_warnings(model, weights, factor)


def measured_fd(model: str | None, sampler: SamplerConfig | None, guidance: GuidanceConfig | None,
                weights: dict[str, Any] | None, path: Path | None = None) -> dict[str, Any] | None:
    """The point measured on the files of fingerprint `weights` (`weights_of` the loaded model) of `model`
    with this sampler and guidance setting, as {"label", "fd", "fd_sd", "text"}; {"fd": None, "text":
    "measured FD: not measured on these weights"} when the file holds the setting for other weights;
    None when it does not hold it."""
    if model is None or sampler is None or guidance is None:
        return None
    cf = claims_file(path)
    p = cf.measured(model, weights, sampler, guidance)
    if p is None:
        if cf.recorded(model, sampler, guidance):
            return {"label": "", "fd": None, "fd_sd": None, "text": f"measured FD: {NOT_MEASURED}"}
        return None
    fd, sd = float(p["fd"]), p.get("fd_sd")
    sets = len(p.get("seed_sets") or []) or 1
    spread = f" ± {sd:.2g} (sd over {sets} seed sets)" if isinstance(sd, (int, float)) else \
        " (one seed set: no error bar yet)"
    return {"label": p.get("label", ""), "fd": round(fd, 3), "fd_sd": sd,
            "text": f"measured FD {fd:.3g}{spread} on these weights · claims.json: {p.get('label', '')}"}
