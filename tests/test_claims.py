"""Measured claims carry the fingerprint of the weights they were measured on: the fingerprints, the
resumable measurement, merging, and the claims that the steps and headline groups make."""
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from emigm.core.fileio import ASSETS_DIR
from emigm.io.fingerprint import differing_roles, fingerprint, same_weights, sha256_file, source_commit

ROOT = Path(__file__).resolve().parent.parent
FP = {"network": "a" * 64, "tokenizer": "b" * 64, "self_guidance": None, "classifier": "c" * 64}


def _paper_claims():
    import importlib.util

    if "paper_claims" in sys.modules:
        return sys.modules["paper_claims"]
    spec = importlib.util.spec_from_file_location("paper_claims", ROOT / "benchmarks" / "paper_claims.py")
    pc = importlib.util.module_from_spec(spec)
    sys.modules["paper_claims"] = pc  # dataclasses look their module up
    spec.loader.exec_module(pc)
    return pc


pc = _paper_claims()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- fingerprints


def test_fingerprint_is_the_sha256_of_each_file_and_changes_with_the_weights(tmp_path):
    """network, tokenizer, self-guidance module, classifier: each the sha256 of its file's bytes; a model
    copied elsewhere with other weights has another network entry, the rest unchanged."""
    src = ASSETS_DIR / "fmnist-maskgit"
    classifier = ASSETS_DIR / "classifier" / "fmnist-classifier.safetensors"
    fp = fingerprint("fmnist-maskgit", classifier)
    assert fp == {"network": _sha(src / "model.safetensors"),
                  "tokenizer": _sha(ASSETS_DIR / "fmnist-vq" / "vq.safetensors"),
                  "self_guidance": _sha(src / "self-guidance" / "model.safetensors"),
                  "classifier": _sha(classifier)}
    assert fingerprint("fmnist-maskgit", classifier, self_guidance=False)["self_guidance"] is None
    mini = fingerprint("fmnist-emigm-mini")
    assert mini["tokenizer"] is None and mini["classifier"] is None
    copy = tmp_path / "fmnist-maskgit"
    shutil.copytree(src, copy)
    assert fingerprint(copy, classifier) == fp  # the same bytes elsewhere are the same weights
    data = bytearray((copy / "model.safetensors").read_bytes())
    data[-1] ^= 1  # one bit of the last weight
    (copy / "model.safetensors").write_bytes(bytes(data))
    changed = fingerprint(copy, classifier)
    assert differing_roles(fp, changed) == ["network"]
    assert sha256_file(copy / "model.safetensors") == _sha(copy / "model.safetensors")  # not a stale cached hash


def test_same_weights_compares_the_roles_the_recording_names():
    current = {**FP, "self_guidance": "d" * 64}
    assert same_weights(FP, current)  # measured without self-guidance: the module does not matter
    assert not same_weights({**FP, "self_guidance": "e" * 64}, current)
    assert not same_weights({**FP, "network": "f" * 64}, current)
    assert not same_weights({**FP, "classifier": "f" * 64}, current)
    for bad in (None, "abc", {}, {"network": None}, {"network": 5}, {**FP, "tokenizer": 7}, []):
        assert not same_weights(bad, current), bad


def test_source_commit_names_the_checkout():
    c = source_commit(ROOT)
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert c is not None and c.removesuffix("+dirty") == head
    assert source_commit("/") is None


# ----------------------------------------------------------------------------- the resumable measurement


class _Eval:
    """A stand-in for evaluate_generator: FD from the seed and the setting; counts its calls; raises
    after `fail_after` calls (a measurement cut off mid-way)."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.calls, self.fail_after = [], fail_after

    def __call__(self, gen, tok, n, sampler, guidance, batch_size, seed, floor):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise KeyboardInterrupt
        self.calls.append((sampler.num_steps, sampler.schedule, sampler.head_steps, guidance.cfg_scale, seed))
        fd = 10.0 + sampler.num_steps / 100 + seed / 1000
        return {"fd": fd, "class_accuracy": 0.9, "precision": 0.8, "recall": 0.4, "passes": sampler.num_steps,
                "head_evals": 8, "images_per_s": 5.0}


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setattr(pc, "load", lambda *a, **k: type("G", (), {"tokenizer": None})())
    monkeypatch.setattr(pc, "pipeline_fingerprint", lambda *a, **k: dict(FP))

    def use(ev):
        monkeypatch.setattr(pc, "evaluate_generator", ev)
        return ev
    return use


def _rows():
    return [r for r in pc.suite({"m"}, "m", (8, 16)) if r.group in ("headline", "steps", "schedule")]


def test_a_rerun_skips_every_finished_setting_and_a_cut_off_run_resumes(fake, tmp_path):
    rows = _rows()
    settings = {pc.setting_key(r.model, pc.to_dict(r.sampler), pc.to_dict(r.guidance)) for r in rows}
    ev = fake(_Eval(fail_after=7))
    seen = []
    with pytest.raises(KeyboardInterrupt):  # cut off in the middle of the third setting
        pc.measure(rows, 10, 3, 10, True, "cpu", log=lambda _: None, store=pc.Store(tmp_path / "r"),
                   on_point=lambda pts, rest: seen.append((len(pts), len(rest))))
    assert len(list((tmp_path / "r").glob("*.json"))) == 7 and not list((tmp_path / "r").glob("*.lock"))
    assert seen[:2] == [(1, len(rows) - 1), (2, len(rows) - 2)]  # saved after every setting, with what is left
    ev = fake(_Eval())
    points = pc.measure(rows, 10, 3, 10, True, "cpu", log=lambda _: None, store=pc.Store(tmp_path / "r"))
    assert len(ev.calls) == 3 * len(settings) - 7  # only what was not finished
    ev = fake(_Eval())
    again = pc.measure(rows, 10, 3, 10, True, "cpu", log=lambda _: None, store=pc.Store(tmp_path / "r"))
    assert ev.calls == [] and again == points  # the same command again: nothing measured
    assert [p["label"] for p in points] == [r.label for r in rows]
    p = next(q for q in points if q["group"] == "steps" and q["sampler"]["num_steps"] == 16)
    assert p["fd_runs"] == pytest.approx([10.16, 10.17, 10.18]) and p["fingerprint"] == FP
    assert p["commit"] == source_commit(ROOT)


def test_results_of_other_weights_are_not_picked_up(fake, monkeypatch, tmp_path):
    rows = _rows()[:2]
    fake(_Eval())
    pc.measure(rows, 10, 2, 10, True, "cpu", log=lambda _: None, store=pc.Store(tmp_path))
    monkeypatch.setattr(pc, "pipeline_fingerprint", lambda *a, **k: {**FP, "network": "9" * 64})
    ev = fake(_Eval())
    pts = pc.measure(rows, 10, 2, 10, True, "cpu", log=lambda _: None, store=pc.Store(tmp_path))
    assert len(ev.calls) == 2 * len(rows) and all(p["fingerprint"]["network"] == "9" * 64 for p in pts)


def test_a_seed_set_another_live_process_measures_is_left_to_it(tmp_path):
    store = pc.Store(tmp_path)
    row = _rows()[0]
    path = store.name(row, FP, 10, 0)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        path.with_suffix(".lock").write_text(str(live.pid))
        assert not store.lock(path)
    finally:
        live.kill()
        live.wait()
    assert store.lock(path)  # its process is gone: taken over
    assert path.with_suffix(".lock").read_text() == str(os.getpid())
    store.unlock(path)
    assert not path.with_suffix(".lock").exists()


def test_groups_run_in_the_order_given_and_the_document_lists_what_is_pending(fake, tmp_path):
    fake(_Eval(fail_after=3))
    with pytest.raises(KeyboardInterrupt):
        pc.main(["--random-init", "--emigm", "m", "--num-samples", "10", "--seed-sets", "1", "--steps", "8", "16",
                 "--only", "steps,headline", "--out-dir", str(tmp_path)])
    doc = json.loads((tmp_path / "claims.json").read_text())
    assert [p["label"] for p in doc["points"]] == ["exp S=2", "exp S=4", "exp S=8"]
    assert not doc["complete"] and doc["pending"][0] == "steps: exp S=16" and doc["pending"][-1].startswith("headline:")
    assert doc["fingerprints"] == {"m": FP} and "Partial: 3 settings not measured yet (steps 2, headline 1;" in (tmp_path / "claims.md").read_text()


# ----------------------------------------------------------------------------- merging


def _doc(tmp_path, name, fp=FP, n=10, k=3, model="m"):
    pts = [_point("schedule", f"{s} S=4", [fd, fd + 0.1, fd - 0.1][:k], model, {"schedule": s, "num_steps": 4}, fp=fp)
           for s, fd in (("linear", 3.0), ("cosine", 2.0), ("exp", 1.0))]
    floor = {"fd": 1.0, "class_accuracy": 1.0}
    pc.write(tmp_path / name, pc.build_doc(pts, model, n, pc.seed_sets(n, k), "cpu", False, floor=floor))
    return str(tmp_path / name)


def _point(group, label, fd_runs, model="m", sampler=None, guidance=None, passes=16, fp=FP, acc=None, pr=None):
    mean, sd = pc.summarise(fd_runs)
    p = {"group": group, "label": label, "model": model, "emigm": model.removesuffix("-fakecfg"),
         "sampler": {**pc.to_dict(pc.BASE), **(sampler or {})},
         "guidance": {**pc.to_dict(pc.GuidanceConfig()), **(guidance or {})}, "nfe": passes, "passes": passes,
         "head_evals": 0, "images_per_s": 1.0, "seed_sets": pc.seed_sets(10, len(fd_runs)),
         "fd": mean, "fd_sd": sd, "fd_runs": list(fd_runs), "num_tokens": 49}
    if fp is not None:
        p["fingerprint"] = fp
    for m in ("class_accuracy", "precision", "recall"):
        runs = acc if m == "class_accuracy" and acc else pr if m != "class_accuracy" and pr else [0.5] * len(fd_runs)
        p[m], p[f"{m}_sd"] = pc.summarise(runs)
        p[f"{m}_runs"] = list(runs)
    return p


def test_merge_refuses_other_weights_other_n_and_unfingerprinted_runs(tmp_path):
    a = _doc(tmp_path, "a")
    b = _doc(tmp_path, "b")
    pc.main(["--merge", a, b, "--out-dir", str(tmp_path / "ok")])
    assert json.loads((tmp_path / "ok" / "claims.json").read_text())["fingerprints"] == {"m": FP}
    other = _doc(tmp_path, "other", fp={**FP, "network": "9" * 64})
    with pytest.raises(SystemExit, match=f"--merge {a} and {other}: m was measured on different weights "
                                         r"\(network sha256 differ\)"):
        pc.main(["--merge", a, other, "--out-dir", str(tmp_path / "x")])
    n20 = _doc(tmp_path, "n20", n=20)
    with pytest.raises(SystemExit, match=f"--merge {n20}: num_samples 20 differs"):
        pc.main(["--merge", a, n20, "--out-dir", str(tmp_path / "x")])
    k2 = _doc(tmp_path, "k2", k=2)
    with pytest.raises(SystemExit, match=f"--merge {k2}: seed_sets"):
        pc.main(["--merge", a, k2, "--out-dir", str(tmp_path / "x")])
    old = tmp_path / "old"
    old.mkdir()
    doc = json.loads((tmp_path / "a" / "claims.json").read_text())
    doc.pop("fingerprints")
    (old / "claims.json").write_text(json.dumps(doc))
    with pytest.raises(SystemExit, match=f"--merge {old}: no fingerprints"):
        pc.main(["--merge", a, str(old), "--out-dir", str(tmp_path / "x")])
    (old / "claims.json").write_text('{"points": ')
    with pytest.raises(SystemExit, match=f"--merge {old}: claims.json is damaged"):
        pc.main(["--merge", a, str(old), "--out-dir", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()  # nothing written on a refusal


def test_a_doc_with_points_of_two_weights_of_one_model_is_refused():
    with pytest.raises(ValueError, match="m: points measured on different weights"):
        pc.model_fingerprints([_point("x", "a", [1.0]), _point("x", "b", [1.0], fp={**FP, "tokenizer": "0" * 64})])
    sg = {**FP, "self_guidance": "5" * 64}  # a guided point names the module, a plain one does not: one model
    assert pc.model_fingerprints([_point("x", "a", [1.0]), _point("x", "b", [1.0], fp=sg)]) == {"m": sg}


# ----------------------------------------------------------------------------- the new claims


def _steps(fds: dict[int, float], sd=0.05):
    return [_point("steps", f"exp S={s}", [fd - sd, fd, fd + sd], sampler={"num_steps": s}, passes=s,
                   pr=[0.8 + s / 1000] * 3) for s, fd in fds.items()]


def test_steps_plateau_claim():
    """Falls up to S = 8 (each step count below the one before), then within 5 % of S = 8 both ways;
    precision and recall ride along."""
    c = pc.verdicts(_steps({2: 14.0, 4: 12.0, 8: 11.0, 16: 11.2, 32: 10.9}))[0]
    assert c["id"] == "steps-plateau" and c["verdict"] == "holds"
    assert c["claim"].startswith("at 49 tokens FD falls with more steps up to S = 8 and is flat after (S = 16, 32")
    assert [t["test"] for t in c["tests"]] == ["exp S=4 below exp S=2", "exp S=8 below exp S=4",
                                               "exp S=16 below 1.05 x exp S=8", "exp S=16 above 0.95 x exp S=8",
                                               "exp S=32 below 1.05 x exp S=8", "exp S=32 above 0.95 x exp S=8"]
    assert c["other_metrics"]["recall"]["exp S=32"]["mean"] == pytest.approx(0.832)
    assert "; precision: exp S=2 0.802" in c["evidence"] and c["plot"]["series"][0]["x"] == [2, 4, 8, 16, 32]
    rising = pc.verdicts(_steps({2: 14.0, 4: 12.0, 8: 11.0, 16: 12.5, 32: 13.0}))[0]
    assert rising["verdict"] == "does not hold"
    assert [t["verdict"] for t in rising["tests"]][2:4] == ["does not hold", "holds"]
    noisy = pc.verdicts(_steps({2: 14.0, 4: 12.0, 8: 11.0, 16: 11.2, 32: 10.9}, sd=2.0))[0]
    assert noisy["verdict"] == "undecided"


def test_headline_accuracy_target():
    met = _point("headline", "default", [10.0, 10.3, 10.6], acc=[0.93, 0.94, 0.95])
    c = pc.verdicts([met])[0]
    assert c["id"] == "target-accuracy" and c["verdict"] == "holds"
    assert c["tests"][0]["margin"] == pytest.approx(0.04) and c["tests"][0]["sd"] == pytest.approx(0.01)
    split = pc.verdicts([_point("headline", "default", [10.0, 10.3, 10.6], acc=[0.903, 0.888, 0.90])])[0]
    assert split["verdict"] == "undecided"  # one seed set meets it, one does not
    assert "default class accuracy 0.897 ± 0.0079" in split["evidence"]


# ----------------------------------------------------------------------------- shown only where true


def swapped_copy(tmp_path: Path, name: str = "fmnist-emigm") -> Path:
    """assets/NAME copied with other weights (every tensor scaled by 1.01): it loads, but it is not what
    was measured."""
    from safetensors.torch import load_file, save_file

    copy = tmp_path / "swapped" / name
    shutil.copytree(ASSETS_DIR / name, copy)
    state = load_file(str(copy / "model.safetensors"))
    state = {k: (v * 1.01 if v.is_floating_point() else v) for k, v in state.items()}
    save_file(state, str(copy / "model.safetensors"))
    return copy


def _claims_doc(model="fmnist-emigm", fp=None):
    """A claims.json document with a headline point, a solver pair (DDPM far off) and their claims,
    measured on `fp` (default: the shipped files of `model`)."""
    from emigm.eval.claims import shipped_fingerprint

    fp = fp or shipped_fingerprint(model)
    pts = [_point("headline", "default", [10.5, 10.6, 10.7], model, guidance={"cfg_scale": 3.0,
                  "cfg_interval": [0.1, 0.3]}, passes=19, fp=fp, acc=[0.93, 0.94, 0.95]),
           _point("solver", "dpm head=14", [11.6, 11.7, 11.8], model, {"head_steps": 14}, fp=fp),
           _point("solver", "ddpm head=100", [130.0, 137.0, 144.0], model, {"head_solver": "ddpm", "head_steps": 100},
                  fp=fp)]
    return pc.build_doc(pts, model, 10, pc.seed_sets(10, 3), "cpu", False, floor={"fd": 1.0, "class_accuracy": 1.0})


def test_a_number_is_given_only_for_the_weights_it_was_measured_on(tmp_path):
    from emigm.core.guidance import GuidanceConfig
    from emigm.eval.claims import ClaimsFile, shipped_fingerprint
    from emigm.sample.sampler import SamplerConfig

    path = tmp_path / "claims.json"
    path.write_text(json.dumps(_claims_doc()))
    cf = ClaimsFile.read(path)
    assert cf.problem is None
    shipped = shipped_fingerprint("fmnist-emigm")
    swapped = fingerprint(swapped_copy(tmp_path), ASSETS_DIR / "classifier" / "fmnist-classifier.safetensors")
    assert differing_roles(shipped, swapped) == ["network"]
    default = (pc.BASE, GuidanceConfig(cfg_scale=3.0, cfg_interval=(0.1, 0.3)))
    p = cf.measured("fmnist-emigm", shipped, *default)
    assert p["label"] == "default" and p["fd"] == pytest.approx(10.6)
    assert cf.measured("fmnist-emigm", swapped, *default) is None
    assert cf.measured("fmnist-emigm", shipped, pc.BASE, GuidanceConfig()) is None  # not a measured setting
    assert cf.measured("fmnist-emigm", shipped, SamplerConfig(num_steps=16, draft=True), default[1]) is not None
    assert cf.recorded_on_other_weights("fmnist-emigm", swapped) and not cf.recorded_on_other_weights("fmnist-emigm",
                                                                                                      shipped)
    # the DDPM warning comes from the file, for these weights only
    warn = cf.solver_warnings("fmnist-emigm", shipped)
    assert list(warn["head_solver"]) == ["ddpm"] and warn["head_solver"]["ddpm"].startswith("measured FD 137 on these")
    assert cf.solver_warnings("fmnist-emigm", swapped) == {}
    fine = _claims_doc()
    fine["points"][2].update(fd=11.8, fd_runs=[11.7, 11.8, 11.9])
    path.write_text(json.dumps(fine))
    assert ClaimsFile.read(path).solver_warnings("fmnist-emigm", shipped) == {}  # DDPM works: no warning
    # claims: shown only when every model they rest on has the measured files
    path.write_text(json.dumps(_claims_doc()))
    assert [c["id"] for c in cf.doc["claims"]] == ["target-accuracy", "ddpm"]
    assert [ok for _, ok in cf.claims({"fmnist-emigm": shipped})] == [True, True]
    assert [ok for _, ok in cf.claims({"fmnist-emigm": swapped})] == [False, False]
    assert [ok for _, ok in cf.claims({})] == [False, False]


def test_damaged_and_older_claims_files_are_one_line(tmp_path):
    from emigm.eval.claims import ClaimsFile

    path = tmp_path / "claims.json"
    cases = {"": "is damaged", "{": "is damaged", "[1, 2]": "is damaged (expected an object",
             '{"points": [], "claims": 3}': "is damaged", "\xff\xfe": "is damaged",
             json.dumps({**_claims_doc(), "version": 2}): "is of an older format (version 2",
             json.dumps({k: v for k, v in _claims_doc().items() if k != "fingerprints"}): "is of an older format"}
    for text, want in cases.items():
        path.write_text(text)
        cf = ClaimsFile.read(path)
        assert cf.doc is None and want in cf.problem and "\n" not in cf.problem, text
        assert cf.points("fmnist-emigm", {}) == [] and cf.claims({}) == [] and cf.solver_warnings("x", {}) == {}
    old = {**_claims_doc(), "version": 2}
    old.pop("fingerprints")
    path.write_text(json.dumps(old))
    cf = ClaimsFile.read(path)  # an older file: what it holds can be named, never its numbers
    assert cf.claim_names() == [c["claim"] for c in old["claims"]]
    from emigm.core.guidance import GuidanceConfig
    assert cf.recorded("fmnist-emigm", pc.BASE, GuidanceConfig(cfg_scale=3.0, cfg_interval=(0.1, 0.3)))
    assert not cf.recorded("fmnist-emigm", pc.BASE, GuidanceConfig())
    assert cf.measured("fmnist-emigm", {"network": "x"}, pc.BASE, GuidanceConfig(cfg_scale=3.0,
                                                                                cfg_interval=(0.1, 0.3))) is None
    missing = ClaimsFile.read(tmp_path / "none.json")
    assert missing.doc is None and "not found" in missing.problem
    shipped = ClaimsFile.read()  # whatever ships reads without an exception
    assert (shipped.doc is None) == (shipped.problem is not None)


def _cli(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "emigm", "claims", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=env)


def test_cli_claims_shows_numbers_only_for_the_measured_files(tmp_path):
    path = tmp_path / "claims.json"
    path.write_text(json.dumps(_claims_doc()))
    r = _cli("--file", str(path))
    assert r.returncode == 0, r.stderr
    assert "default class accuracy 0.940 ± 0.01" in r.stdout and "not measured on these weights" not in r.stdout
    r = _cli("--file", str(path), "--checkpoint", str(swapped_copy(tmp_path)), "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [x["verdict"] for x in rows] == ["not measured on these weights"] * 2
    assert all(x["evidence"] is None and not x["measured_on_these_weights"] for x in rows)
    path.write_text("{")
    r = _cli("--file", str(path))
    assert r.returncode == 2 and r.stdout == "" and len(r.stderr.strip().splitlines()) == 1
    assert "is damaged" in r.stderr
    path.write_text(json.dumps(_claims_doc()))
    r = _cli("--file", str(path), "--model", "nope")
    assert r.returncode == 2 and "--model nope: no claim" in r.stderr


def test_readme_block_shows_numbers_only_for_the_shipped_files():
    from emigm.eval.claims import shipped_fingerprint

    doc = _claims_doc()
    block = pc.readme_block(doc)
    assert "not measured on these weights" not in block and "| **holds** |" in block
    other = _claims_doc(fp={**shipped_fingerprint("fmnist-emigm"), "network": "0" * 64})
    block = pc.readme_block(other)
    assert block.count("| not measured on these weights | - | - |") == len(other["claims"])
    assert "137" not in block and "10.60" not in block  # no number of other weights
    assert "2 not measured on these weights." in block


def test_an_undecided_test_says_how_many_samples_would_decide_it():
    """N (2 sd / |margin|)^2 at the measured spread, rounded up to a hundred; none for decided tests."""
    c = pc.verdicts(_steps({2: 14.0, 4: 12.0, 8: 11.0, 16: 11.2, 32: 10.9}, sd=2.0))[0]
    t = c["tests"][1]  # exp S=8 below exp S=4: margin 1, sd sqrt(2) x 2
    assert t["verdict"] == "undecided" and t["margin"] == pytest.approx(1.0) and t["sd"] == pytest.approx(2 * 2 ** 0.5)
    assert t["n_to_decide"] == 400  # 10 samples per set x (2 x 2.83 / 1)^2 = 320, rounded up to a hundred
    held = pc.verdicts(_steps({2: 14.0, 4: 12.0, 8: 11.0, 16: 11.2, 32: 10.9}))[0]
    assert all("n_to_decide" not in t for t in held["tests"])
    assert "[decided at N ≈ 400 per seed set]" in "\n".join(pc.claims_table(pc.build_doc(
        _steps({2: 14.0, 4: 12.0, 8: 11.0, 16: 11.2, 32: 10.9}, sd=2.0), "m", 10, pc.seed_sets(10, 3), "cpu", False)))


def test_collect_reads_what_any_process_measured_and_finds_results_by_content(fake, tmp_path):
    """--collect measures nothing: the points of the rows whose results are all stored, the rest pending.
    A result is found by what decided it even when written under another name by code whose sampler
    had fewer fields (a field added later at its default)."""
    rows = _rows()
    fake(_Eval(fail_after=6))  # two settings of three seed sets, then cut off
    with pytest.raises(KeyboardInterrupt):
        pc.measure(rows, 10, 3, 10, True, "cpu", log=lambda _: None, store=pc.Store(tmp_path))
    for i, f in enumerate(sorted(tmp_path.glob("*.json"))):  # renamed, and "draft_steps" left out of the record
        doc = json.loads(f.read_text())
        doc["sampler"].pop("draft_steps")
        (tmp_path / f"other-{i}.json").write_text(json.dumps(doc))
        f.unlink()
    ev = fake(_Eval())
    pts = pc.measure(rows, 10, 3, 10, True, "cpu", log=lambda _: None, store=pc.Store(tmp_path), collect=True)
    assert ev.calls == [] and [p["label"] for p in pts] == [r.label for r in rows[:2]]
    assert pts[1]["fd_runs"] == pytest.approx([10.02, 10.03, 10.04])
    seen = []
    pc.measure(rows, 10, 3, 10, True, "cpu", log=lambda _: None, store=pc.Store(tmp_path),
               on_point=lambda p, rest: seen.append(([q["label"] for q in p], len(rest))))
    assert len(ev.calls) == 3 * (len({pc.setting_key(r.model, pc.to_dict(r.sampler), pc.to_dict(r.guidance))
                                       for r in rows}) - 2)
    assert seen[0] == ([r.label for r in rows[:2]], len(rows) - 2)  # the stored two at once
    assert seen[2] == ([r.label for r in rows[:3]], len(rows) - 3)  # then the first it measured
