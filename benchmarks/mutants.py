"""Mutation check: plant one-line bugs in emigm/ and see whether the fast test suite notices.

    python benchmarks/mutants.py                                   # default files, 40 mutants, seed 0
    python benchmarks/mutants.py --files emigm/core/schedules.py emigm/core/guidance.py --limit 40 --seed 0
    python benchmarks/mutants.py --list                            # every candidate mutation, no runs
    python benchmarks/mutants.py --tests tests/test_pure_values.py tests/test_guidance.py   # quicker
    python benchmarks/mutants.py --at emigm/sample/sampler.py:208                # recheck one line's mutants
    python benchmarks/mutants.py --group seams --limit 80 --targeted --table out.md  # the seams, per file

Mutations (one token on one line, found with `tokenize`, so strings, docstrings and comments are never
touched): comparisons `<` <-> `<=`, `>` <-> `>=`, `==` <-> `!=`; arithmetic `+` <-> `-`, `*` <-> `/`
(also `+=` / `-=`); numeric constants (an int n -> n + 1 and n - 1, a float x -> 1.1 x and x - 1, or
x / 2 below 1; zero -> 1 / 0.1); the names `min` <-> `max` (also `minimum` <-> `maximum`, and the
`min=` / `max=` keywords of clamp). Mutants that do not compile, or compile to the same code, are
dropped before sampling.

Each mutant runs in a temporary copy of the tree (the working tree is never written): the copy's
mutated file is replaced, the tests run as `pytest -q -x -m "not slow"` with a timeout, and the file is
put back. Two stages: the fast value tests (--tests, the ones for the mutated file first), then, only
if they all pass, the rest of the fast suite (--then). A mutant is "caught" when a test fails or
collection fails, "timeout" when it hangs, "survived" when every test passes. Byte-code caching is off
in the copy, so a same-size mutation can never reuse a stale .pyc. By default each pytest runs in a
fork of this process, which has torch imported once (--no-fork: a fresh interpreter each time).

--files takes FILE or FILE::FUNCTION (a function or Class.method: only the lines of its body are
mutated). --group seams targets the seams between the stages: what the training task feeds the network
(emigm/train/generator.py, emigm/core/masking.py), the metrics (emigm/eval/evaluation.py), what a step's
anatomy reports (emigm/sample/anatomy.py) and the sampler's remasking (emigm/sample/plan.py's counts and
the step functions of emigm/sample/sampler.py that exist: _step, _where, _remasked). --targeted runs, for
each mutant, only the test files that cover its source file
(TARGETS; those missing in the tree are skipped), in one stage: a survivor there survived those files,
not necessarily the whole suite. The summary gives caught / survived / equivalent per file (equivalent:
a survivor that changes nothing a caller can observe, either found by `unused_default_spans` or listed
with its reason in EQUIVALENT); --table writes it, with the command, as Markdown. --new PATTERN (with
--targeted) runs the tests whose path matches PATTERN after the others: a mutant caught only by them
counts as survived without them, so one run gives the table before and after those tests were added.
"""
from __future__ import annotations

import argparse
import ast
import fnmatch
import io
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tokenize
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Files made of pure functions (schedules, guidance, counts, annealing, masking, optimiser, diffusion math,
# option validation, step arithmetic): the default targets.
DEFAULT_FILES = ["emigm/core/schedules.py", "emigm/core/guidance.py", "emigm/sample/sampler.py",
                 "emigm/core/masking.py", "emigm/train/optim.py", "emigm/nn/diffusion.py",
                 "emigm/nn/categorical_head.py", "emigm/core/fields.py", "emigm/sample/steps.py", "emigm/train/ema.py",
                 "emigm/tokenize/klvae.py", "emigm/sample/passes.py"]
# Stage 1: the fast value tests, so that most mutants are caught within seconds (-x stops at the first
# failure); stage 2, only when stage 1 passes: the rest of the fast suite.
DEFAULT_TESTS = ["tests/test_pure_values.py", "tests/test_guidance.py", "tests/test_fields.py", "tests/test_klvae.py",
                 "tests/test_optim_values.py", "tests/test_schedules.py", "tests/test_masking.py",
                 "tests/test_sampler.py", "tests/test_diffusion.py"]
DEFAULT_THEN = "tests"

# The seams (--group seams): the training task's inputs, evaluation, the anatomy, the sampler's remasking.
SEAM_FILES = ["emigm/train/generator.py", "emigm/core/masking.py", "emigm/eval/evaluation.py",
              "emigm/sample/anatomy.py", "emigm/sample/plan.py::remask_sigma", "emigm/sample/plan.py::plan_steps",
              "emigm/sample/sampler.py::_step", "emigm/sample/sampler.py::_where", "emigm/sample/sampler.py::_remasked"]
GROUPS = {"default": DEFAULT_FILES, "seams": SEAM_FILES}
# --targeted: the tests that cover a source file, run in this order (-x stops at the first failure), cheap
# and specific first: a test file, or FILE::PATTERN for its test functions whose names match the
# shell-style PATTERN. Missing files are skipped, so one command serves a tree before and after the seam
# tests exist; the fast suite's other tests are not run.
TARGETS = {
    "emigm/train/generator.py": ["tests/test_seams_training.py", "tests/test_prediction.py::test_init_from*",
                                 "tests/test_train.py", "tests/test_trainer.py"],
    "emigm/core/masking.py": ["tests/test_seams_training.py::*mask*", "tests/test_seams_training.py::*shared*",
                              "tests/test_seams_training.py::*mar_*", "tests/test_masking.py",
                              "tests/test_pure_values.py::*mask*", "tests/test_pure_values.py::*mar_*",
                              "tests/test_pure_values.py::*shared_count*", "tests/test_pure_values.py::*exact_count*"],
    "emigm/eval/evaluation.py": ["tests/test_seams_metrics.py", "tests/test_evaluation.py",
                                 "tests/test_pure_values.py::*seam_ratio*"],
    "emigm/sample/anatomy.py": ["tests/test_seams_anatomy.py", "tests/test_sampler_lab.py::*anatomy*",
                                "tests/test_sampler_lab.py::*uncertainty*",
                                "tests/test_sampler_lab.py::*score_orders*"],
    "emigm/sample/plan.py": ["tests/test_seams_anatomy.py::*remask*", "tests/test_sampler_lab.py::*remask*",
                             "tests/test_pure_values.py::*plan_counts*", "tests/test_pure_values.py::*every_step*",
                             "tests/test_sampler.py"],
    "emigm/sample/sampler.py": ["tests/test_seams_anatomy.py", "tests/test_seams_guidance.py::*ramp*",
                                "tests/test_sampler_lab.py", "tests/test_sampler.py",
                                "tests/test_fast_path.py::test_fast_equals_generator_*",
                                "tests/test_fast_path.py::test_graph_replay*",
                                "tests/test_fast_path.py::test_head_runs_only*"],
    "emigm/core/guidance.py": ["tests/test_seams_guidance.py", "tests/test_guidance.py", "tests/test_sampler.py"],
}
# Survivors that change nothing a caller can observe, found by reading them: (file, the stripped source
# line, mutation) -> why. Listed, not hidden: they still count as survived, and the table says equivalent.
EQUIVALENT: dict[tuple[str, str, str], str] = {
    ("emigm/sample/plan.py", "if sigma > 0.0:", "> -> >="):
        "at sigma = 0 the draw u < sigma re-masks nothing, so r = 0 either way",
    ("emigm/eval/evaluation.py", "k: int = 3, batch_size: int = 1000) -> dict[str, float]:", "1000 -> 999"):
        "the chunk size of the classifier's passes: an image's features do not depend on it",
    ("emigm/eval/evaluation.py", "batch_size: int = 1000) -> dict[str, float]:", "1000 -> 999"):
        "the chunk size of the classifier's passes: an image's features do not depend on it",
    ("emigm/sample/anatomy.py", "raw[n] = _scatter(lg, rows, cols, lg, (B, L, lg.shape[-1]))", "- -> +"):
        "lg is (rows, K): shape[1] is shape[-1]",
}
# Stage-1 files that go first for a mutant of a given source file (the rest of stage 1 follows): with
# -x a caught mutant then costs one small file, not the whole stage.
FIRST = {"emigm/core/guidance.py": ["tests/test_guidance.py"], "emigm/core/fields.py": ["tests/test_fields.py"],
         "emigm/train/optim.py": ["tests/test_optim_values.py"], "emigm/train/ema.py": ["tests/test_optim_values.py"],
         "emigm/tokenize/klvae.py": ["tests/test_klvae.py"], "emigm/nn/categorical_head.py": ["tests/test_guidance.py"],
         "emigm/core/masking.py": ["tests/test_pure_values.py", "tests/test_masking.py"],
         "emigm/core/schedules.py": ["tests/test_pure_values.py", "tests/test_schedules.py"],
         "emigm/nn/diffusion.py": ["tests/test_pure_values.py", "tests/test_diffusion.py"]}

SWAPS = {"<": "<=", "<=": "<", ">": ">=", ">=": ">", "==": "!=", "!=": "==", "+": "-", "-": "+",
         "*": "/", "/": "*", "+=": "-=", "-=": "+=", "min": "max", "max": "min",
         "minimum": "maximum", "maximum": "minimum"}


@dataclass(frozen=True)
class Mutant:
    path: str  # relative to the repository root
    line: int  # 1-based
    col: int
    old: str
    new: str

    def apply(self, source: str) -> str:
        lines = source.splitlines(keepends=True)
        text = lines[self.line - 1]
        assert text[self.col:self.col + len(self.old)] == self.old, (self, text)
        lines[self.line - 1] = text[:self.col] + self.new + text[self.col + len(self.old):]
        return "".join(lines)

    @property
    def label(self) -> str:
        return f"{self.old} -> {self.new}"


def _number_variants(text: str) -> list[str]:
    clean = text.replace("_", "")
    if clean.lower().startswith(("0x", "0o", "0b")) or clean.lower().endswith("j"):
        return []
    try:
        value = int(clean)
    except ValueError:
        value = float(clean)
        if value == 0.0:
            return ["0.1"]
        out = [repr(round(value * 1.1, 12))]
        out.append(repr(value - 1.0) if abs(value) >= 1.0 else repr(value / 2))
        return out
    return ["1"] if value == 0 else [str(value + 1), str(value - 1)]


def function_lines(source: str, name: str) -> tuple[int, int]:
    """(first, last) line of the body of function `name` (a function or Class.method) in `source`."""
    def walk(nodes, prefix: str):
        for node in nodes:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                qual = prefix + node.name
                if qual == name and not isinstance(node, ast.ClassDef):
                    return node.body[0].lineno, node.end_lineno
                found = walk(node.body, qual + ".")
                if found:
                    return found
        return None
    found = walk(ast.parse(source).body, "")
    if found is None:
        raise ValueError(f"no function {name!r}")
    return found


def candidates(path: str, function: str = "") -> list[Mutant]:
    """Every compilable one-token mutation of a file, or of one function's body (see the module docstring)."""
    source = (ROOT / path).read_text()
    first, last = function_lines(source, function) if function else (1, source.count("\n") + 1)
    original = compile(source, path, "exec", dont_inherit=True)
    out: list[Mutant] = []
    prev = ""
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        (row, col), text = tok.start, tok.string
        after, prev = prev, (text if tok.type not in (tokenize.NL, tokenize.COMMENT) else prev)
        if not first <= row <= last:
            continue
        if tok.type == tokenize.OP and text == "*" and after in ("(", ",", "["):
            continue  # a star in an argument list (unpacking, keyword-only marker), not a product
        if tok.type == tokenize.OP and text in SWAPS:
            news = [SWAPS[text]]
        elif tok.type == tokenize.NAME and text in SWAPS:
            news = [SWAPS[text]]
        elif tok.type == tokenize.NUMBER:
            news = _number_variants(text)
        else:
            continue
        for new in news:
            m = Mutant(path, row, col, text, new)
            try:
                code = compile(m.apply(source), path, "exec", dont_inherit=True)
            except SyntaxError:
                continue
            if _same_code(code, original):
                continue
            out.append(m)
    return out


def unused_default_spans(source: str) -> list[tuple[int, int, int, int]]:
    """(line, col, end_line, end_col) of default values of parameters that their function never reads:
    mutating those changes nothing a test can see (an equivalent mutant), so survivors there are
    labelled as such."""
    spans = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        body = node.body if isinstance(node.body, list) else [node.body]
        used = {n.id for stmt in body for n in ast.walk(stmt) if isinstance(n, ast.Name)}
        a = node.args
        positional = a.posonlyargs + a.args
        pairs = list(zip(positional[len(positional) - len(a.defaults):], a.defaults))
        pairs += [(arg, d) for arg, d in zip(a.kwonlyargs, a.kw_defaults) if d is not None]
        for arg, default in pairs:
            if arg.arg not in used:
                spans.append((default.lineno, default.col_offset, default.end_lineno, default.end_col_offset))
    return spans


def is_unused_default(m: Mutant) -> bool:
    spans = unused_default_spans((ROOT / m.path).read_text())
    return any((l0, c0) <= (m.line, m.col) < (l1, c1) for l0, c0, l1, c1 in spans)


def equivalence(m: Mutant) -> str:
    """Why a surviving mutant is equivalent ('' when it is not known to be)."""
    if is_unused_default(m):
        return "default of a parameter the function never reads"
    src = (ROOT / m.path).read_text().splitlines()[m.line - 1].strip()
    return EQUIVALENT.get((m.path, src, m.label), "")


def per_file_table(results: list[tuple["Mutant", str, str, float]]) -> list[tuple[str, int, int, int, int]]:
    """(file, mutants, caught, survived, of which equivalent) per file, in first-seen order, and a total."""
    rows: dict[str, list[int]] = {}
    for m, status, _, _ in results:
        r = rows.setdefault(m.path, [0, 0, 0, 0])
        r[0] += 1
        if status in ("caught", "caught-new", "timeout"):
            r[1] += 1
        elif status == "survived":
            r[2] += 1
            r[3] += bool(equivalence(m))
    out = [(f, *r) for f, r in rows.items()]
    out.append(("total", *(sum(r[i] for r in rows.values()) for i in range(4))))
    return out


def _same_code(a, b) -> bool:
    if a.co_code != b.co_code or len(a.co_consts) != len(b.co_consts) or a.co_names != b.co_names:
        return False
    for x, y in zip(a.co_consts, b.co_consts):
        if hasattr(x, "co_code") and hasattr(y, "co_code"):
            if not _same_code(x, y):
                return False
        elif type(x) is not type(y) or x != y:
            return False
    return True


def sample_mutants(per_file: dict[str, list[Mutant]], limit: int, seed: int) -> list[Mutant]:
    """`limit` mutants (0: all), spread over the files round-robin so a large file does not crowd out
    the small ones; the order within each file is a seeded shuffle."""
    rnd = random.Random(seed)
    queues = {f: rnd.sample(ms, len(ms)) for f, ms in per_file.items() if ms}
    total = sum(len(q) for q in queues.values())
    limit = total if limit <= 0 else min(limit, total)
    out: list[Mutant] = []
    while len(out) < limit:
        for q in queues.values():
            if q and len(out) < limit:
                out.append(q.pop())
    return out


# ----------------------------------------------------------------------------- running


def make_copy(dest: Path) -> Path:
    """A copy of the tree without .git, caches and run outputs; assets/ is linked (read only)."""
    skip = {".git", "runs", "artifacts", ".venv", ".data", "logs", "assets"}
    for entry in ROOT.iterdir():
        if entry.name in skip:
            continue
        target = dest / entry.name
        if entry.is_dir():
            shutil.copytree(entry, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache"))
        else:
            shutil.copy2(entry, target)
    if (ROOT / "assets").exists():
        (dest / "assets").symlink_to(ROOT / "assets", target_is_directory=True)
    return dest


FAILED = re.compile(r"^(?:FAILED|ERROR) (\S+)", re.M)


def run_stages(tree: Path, stages: list[list[str]], timeout: float, fork: bool) -> tuple[str, str, float]:
    """Run the stages in order, stopping at the first that fails; the timeout covers them all."""
    total, status, note = 0.0, "survived", ""
    for args in stages:
        status, note, secs = run_tests(tree, args, timeout - total, fork)
        total += secs
        if status != "survived":
            break
    return status, note, total


ENV = {"OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0"}
PYTEST_ARGS = ["-q", "-x", "-m", "not slow", "-p", "no:cacheprovider", "-p", "no:benchmark", "--no-header", "-rfE"]


def run_tests(tree: Path, tests: list[str], timeout: float, fork: bool) -> tuple[str, str, float]:
    """(status, first failing test or note, seconds) for the tests in `tree`."""
    if timeout <= 0:
        return "timeout", "no time left", 0.0
    start = time.perf_counter()
    run = _pytest_forked if fork else _pytest_subprocess
    code, out = run(tree, [*PYTEST_ARGS, *tests], timeout)
    secs = time.perf_counter() - start
    if code is None:
        return "timeout", f"no result after {timeout:.0f} s", secs
    if code == 0:
        return "survived", "", secs
    if code not in (1, 2):  # 1: a test failed; 2: collection failed (e.g. an import error)
        return "error", f"pytest exit code {code}", secs
    found = FAILED.search(out)
    note = found.group(1) if found else (out.strip().splitlines() or ["?"])[-1][:80]
    return "caught", note, secs


def _pytest_subprocess(tree: Path, args: list[str], timeout: float) -> tuple[int | None, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | ENV
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", *args], cwd=tree, env=env, capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, ""
    return proc.returncode, proc.stdout


def _pytest_forked(tree: Path, args: list[str], timeout: float) -> tuple[int | None, str]:
    """pytest.main in a forked child of this process, which has torch imported already: saves the
    interpreter start and the torch import (seconds per mutant on a busy machine). emigm itself is
    never imported here, so the child imports the mutated copy."""
    with tempfile.NamedTemporaryFile("w+", suffix=".log") as log:
        pid = os.fork()
        if pid == 0:  # the child: never returns
            code = 3
            try:
                os.setpgrp()  # its own process group, so a timeout also ends what it spawned
                os.dup2(log.fileno(), 1)
                os.dup2(log.fileno(), 2)
                os.chdir(tree)
                os.environ.update(ENV)
                os.environ.pop("PYTHONPATH", None)
                sys.dont_write_bytecode = True
                sys.path.insert(0, str(tree))
                import pytest
                code = int(pytest.main(args))
            except BaseException:  # noqa: BLE001 - report anything as an internal error
                import traceback
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        deadline = time.monotonic() + timeout
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                code = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() > deadline:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                os.waitpid(pid, 0)
                code = None
                break
            time.sleep(0.05)
        log.seek(0)
        return code, log.read()


def targeted_tests(path: str) -> list[str]:
    """The tests of TARGETS[path] that exist in this tree, FILE::PATTERN expanded to node ids."""
    out: list[str] = []
    for entry in TARGETS.get(path, []):
        file, _, pattern = entry.partition("::")
        if not (ROOT / file).is_file():
            continue
        if not pattern:
            out.append(file)
            continue
        names = [n.name for n in ast.parse((ROOT / file).read_text()).body
                 if isinstance(n, ast.FunctionDef) and n.name.startswith("test")]
        out += [f"{file}::{n}" for n in names if fnmatch.fnmatchcase(n, pattern) and f"{file}::{n}" not in out]
    return out


def is_new(test: str, new: str) -> bool:
    """Whether a test path (or node id) is one of the --new tests (a shell-style pattern)."""
    return bool(new) and fnmatch.fnmatchcase(test.split("::")[0], new)


def _run_stages_at(tree: Path, m: Mutant, stages: list[list[str]], timeout: float,
                   fork: bool) -> tuple[str, str, float, int]:
    """run_stages on the mutated file, and the index of the stage that decided."""
    target = tree / m.path
    original = target.read_text()
    total, status, note, i = 0.0, "survived", "", -1
    try:
        target.write_text(m.apply(original))
        for i, args in enumerate(stages):
            status, note, secs = run_tests(tree, args, timeout - total, fork)
            total += secs
            if status != "survived":
                break
    finally:
        target.write_text(original)
    return status, note, total, i


def run_mutant(tree: Path, m: Mutant, stages: list[list[str]], timeout: float,
               fork: bool, targeted: bool = False, new: str = "") -> tuple[str, str, float]:
    target = tree / m.path
    original = target.read_text()
    first = [t for t in FIRST.get(m.path, []) if t in stages[0]]
    if targeted:
        tests = targeted_tests(m.path)
        old = [t for t in tests if not is_new(t, new)]
        stages = [x for x in (old, [t for t in tests if is_new(t, new)]) if x]
        status, note, secs, stage = _run_stages_at(tree, m, stages, timeout, fork)
        if status == "caught" and new and stages[stage] != old:
            status = "caught-new"  # only by the new tests: a survivor without them
        return status, note, secs
    elif first:
        stages = [first + [t for t in stages[0] if t not in first], *stages[1:]]
    try:
        target.write_text(m.apply(original))
        return run_stages(tree, stages, timeout, fork)
    finally:
        target.write_text(original)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", nargs="+", default=None,
                    help="source files to mutate, FILE or FILE::FUNCTION (default: the --group's)")
    ap.add_argument("--group", choices=GROUPS, default="default",
                    help="default: the pure-function files; seams: training inputs, evaluation, anatomy, remasking")
    ap.add_argument("--targeted", action="store_true",
                    help="each mutant runs only the test files of its source file (TARGETS), in one stage")
    ap.add_argument("--new", default="", metavar="PATTERN",
                    help="with --targeted: tests matching this path pattern (e.g. 'tests/test_seams_*') run after the "
                         "others, so one run gives the table without them (before) and with them (after)")
    ap.add_argument("--budget", type=float, default=0.0, metavar="SECONDS",
                    help="start no new mutant after this many seconds (0: no limit); the mutants run in the sampled "
                         "round-robin order over the files, and the summary covers those that ran")
    ap.add_argument("--summarize", default="", metavar="LOG",
                    help="print (and with --table write) the summary of a run's saved output again, with the "
                         "current EQUIVALENT list, and stop")
    ap.add_argument("--table", default="", metavar="FILE.md",
                    help="also write the per-file table, the survivors and the command as Markdown")
    ap.add_argument("--tests", nargs="+", default=DEFAULT_TESTS,
                    help="stage 1: test files / folders run first (default: the fast value tests)")
    ap.add_argument("--then", default=DEFAULT_THEN,
                    help="stage 2, run when stage 1 passes: a folder, minus the stage-1 files ('' to skip)")
    ap.add_argument("--limit", type=int, default=40, help="mutants to run, sampled (0: all)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the sample")
    ap.add_argument("--timeout", type=float, default=900.0,
                    help="seconds per mutant; a mutant still running then is reported as 'timeout' (a hang)")
    ap.add_argument("--jobs", type=int, default=1, help="mutants run at once (one tree copy each; no forking)")
    ap.add_argument("--no-fork", action="store_true",
                    help="run each pytest as a new interpreter instead of a fork of this one (slower)")
    ap.add_argument("--at", nargs="+", default=[], metavar="FILE:LINE",
                    help="only the mutations on these lines (e.g. emigm/sample/sampler.py:208), to recheck survivors")
    ap.add_argument("--list", action="store_true", help="print the candidate mutations and stop")
    ap.add_argument("--baseline", action="store_true", help="also run the unmutated tests first (must pass)")
    args = ap.parse_args(argv)

    def repo_path(f: str) -> str:
        """f relative to the repository (only the tree copies are ever written), or an error."""
        path = (Path.cwd() / f).resolve() if not (ROOT / f).is_file() else (ROOT / f).resolve()
        if not path.is_file() or ROOT not in path.parents or path.suffix != ".py":
            ap.error(f"not a Python file of this repository: {f}")
        return path.relative_to(ROOT).as_posix()

    if args.summarize:
        return summarize(parse_log(Path(args.summarize).read_text()), args, argv)
    specs = args.files or [f for f in GROUPS[args.group] if (ROOT / f.split("::")[0]).is_file()]
    targets = []  # (file, function or "")
    for spec in specs:
        f, _, func = spec.partition("::")
        if func:
            try:
                function_lines((ROOT / repo_path(f)).read_text(), func)
            except ValueError as e:
                if args.files:
                    ap.error(f"{f}: {e}")
                print(f"note: {f}: {e}, skipped", file=sys.stderr)  # a group names functions that may move
                continue
        targets.append((repo_path(f), func))
    files = list(dict.fromkeys(f for f, _ in targets))
    # test paths relative to the repository, so that pytest runs the copy's tests against the copy
    rel = lambda t: os.path.relpath(t, ROOT) if os.path.isabs(t) else t  # noqa: E731
    args.tests = [rel(t) for t in args.tests]
    args.then = rel(args.then) if args.then else args.then
    tests = [t for t in args.tests if (ROOT / t.split("::")[0]).exists()]
    if len(tests) < len(args.tests):
        print(f"note: skipping missing test paths {sorted(set(args.tests) - set(tests))}", file=sys.stderr)
    args.tests = tests
    stages = [tests] if tests else []
    if args.then:
        stages.append([args.then, *(f"--ignore={t}" for t in tests if t.endswith(".py"))])
    if not stages:
        ap.error("no tests to run")
    at = {(repo_path(x.rsplit(":", 1)[0]), x.rsplit(":", 1)[-1]) for x in args.at}
    if at:
        files = sorted({f for f, _ in at})
        targets = [(f, "") for f in files]
    per_file: dict[str, list[Mutant]] = {}
    for f, func in targets:
        seen = set(per_file.get(f, []))
        per_file.setdefault(f, []).extend(m for m in candidates(f, func)
                                          if m not in seen and (not at or (m.path, str(m.line)) in at))
    pool = [m for f in files for m in per_file[f]]
    chosen = sample_mutants(per_file, args.limit, args.seed)
    if not args.budget:  # with a time budget: the sampled (round-robin) order, so a run cut short stays balanced
        chosen.sort(key=lambda m: (m.path, m.line, m.col, m.new))
    if args.list:
        for m in chosen:
            line = (ROOT / m.path).read_text().splitlines()[m.line - 1].strip()
            print(f"{m.path}:{m.line}:{m.col}  {m.label:<14}  {line[:90]}")
        print(f"{len(chosen)} of {len(pool)} candidates in {len(files)} files")
        return 0

    fork = not args.no_fork and args.jobs <= 1 and hasattr(os, "fork")
    if fork:  # import the heavy dependencies once; every forked pytest inherits them
        os.environ.update(ENV)
        import numpy  # noqa: F401
        import torch  # noqa: F401
    with tempfile.TemporaryDirectory(prefix="emigm-mutants-") as tmp:
        trees = []
        for i in range(max(1, args.jobs)):
            (Path(tmp) / f"tree{i}").mkdir()
            trees.append(make_copy(Path(tmp) / f"tree{i}"))
        if args.baseline:
            status, note, secs = run_stages(trees[0], stages, args.timeout, fork)
            print(f"baseline: {'pass' if status == 'survived' else 'FAIL ' + note} ({secs:.0f} s)", flush=True)
            if status != "survived":
                return 1
        what = "per file: " + "; ".join(f"{f}: {len(targeted_tests(f))} test files / functions" for f in files) \
            if args.targeted else ' | then '.join(' '.join(a) for a in stages)
        print(f"{len(chosen)} mutants of {len(pool)} candidates in {len(files)} files (seed {args.seed}); "
              f"tests: {what}", flush=True)
        header = f"{'file':<28} {'line':>5}  {'mutation':<16} {'result':<9} {'s':>5}  first failure / source"
        print(header + "\n" + "-" * len(header), flush=True)
        free = list(trees)
        results: list[tuple[Mutant, str, str, float]] = []

        def work(m: Mutant):
            tree = free.pop()
            try:
                return m, *run_mutant(tree, m, stages, args.timeout, fork, args.targeted, args.new)
            finally:
                free.append(tree)

        start = time.monotonic()

        def within_budget():
            for m in chosen:
                if args.budget and time.monotonic() - start > args.budget:
                    print(f"time budget of {args.budget:.0f} s spent: {len(results)} of {len(chosen)} mutants ran",
                          flush=True)
                    return
                yield m

        def report(m: Mutant, status: str, note: str, secs: float) -> None:
            results.append((m, status, note, secs))
            src = (ROOT / m.path).read_text().splitlines()[m.line - 1].strip()
            detail = src[:70] if status == "survived" else note
            print(f"{m.path:<28} {m.line:>5}  {m.label:<16} {status:<9} {secs:>5.0f}  {detail}", flush=True)

        with ThreadPoolExecutor(max_workers=len(trees)) as ex:  # submitted lazily, so the budget is checked
            pending: deque = deque()
            for m in within_budget():
                pending.append(ex.submit(work, m))
                if len(pending) >= len(trees):
                    report(*pending.popleft().result())
            while pending:
                report(*pending.popleft().result())

    return summarize(results, args, argv)

RESULT_LINE = re.compile(r"^(\S+\.py)\s+(\d+)\s+(\S+) -> (\S+)\s+(caught-new|caught|survived|timeout|error)\s+(\d+)"
                         r"\s+(.*)$", re.M)


def parse_log(text: str) -> list[tuple[Mutant, str, str, float]]:
    """The per-mutant lines of a run's saved output -> results (the column is not printed: 0)."""
    return [(Mutant(path, int(line), 0, old, new), status, note.strip(), float(secs))
            for path, line, old, new, status, secs, note in RESULT_LINE.findall(text)]


def summarize(results: list[tuple[Mutant, str, str, float]], args, argv) -> int:
    """Print the totals, the survivors (with any known equivalence) and the per-file table; write it
    with --table."""
    caught = sum(r[1] in ("caught", "caught-new") for r in results)
    hung = sum(r[1] == "timeout" for r in results)
    survived = [r for r in results if r[1] == "survived"]
    errors = sum(r[1] == "error" for r in results)
    print(f"\ntried {len(results)}, caught {caught + hung}" + (f" ({hung} by timeout)" if hung else "")
          + f", survived {len(survived)}" + (f", errors {errors}" if errors else ""))
    for m, _, _, _ in survived:
        src = (ROOT / m.path).read_text().splitlines()[m.line - 1].strip()
        why = equivalence(m)
        tag = f"  [equivalent: {why}]" if why else ""
        print(f"  survived: {m.path}:{m.line}  {m.label}  | {src}{tag}")
    table = per_file_table(results)
    if args.new:
        before = per_file_table([(m, "survived" if st == "caught-new" else st, n, t) for m, st, n, t in results])
        lines = [f"| file | mutants | before: caught | survived | equivalent | after (+ {args.new}): caught | "
                 "survived | equivalent |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {f} | {n} | {c0} | {s0} | {e0} | {c} | {s} | {e} |"
                  for (f, n, c0, s0, e0), (_, _, c, s, e) in zip(before, table)]
        late = [r for r in results if r[1] == "caught-new"]
        if late:
            print(f"caught only by {args.new}:")
            for m, _, note, _ in late:
                src = (ROOT / m.path).read_text().splitlines()[m.line - 1].strip()
                print(f"  {m.path}:{m.line}  {m.label}  | {src}  <- {note}")
    else:
        lines = ["| file | mutants | caught | survived | equivalent |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {f} | {n} | {c} | {s} | {e} |" for f, n, c, s, e in table]
    print("\n" + "\n".join(lines))
    if args.table:
        command = "python3 benchmarks/mutants.py " + shlex.join(argv if argv is not None else sys.argv[1:])
        doc = [f"`{command}`", "", *lines, ""]
        late = [r for r in results if r[1] == "caught-new"]
        if late:
            doc += [f"Caught only by {args.new}:", ""]
            for m, _, note, _ in late:
                src = (ROOT / m.path).read_text().splitlines()[m.line - 1].strip()
                doc.append(f"- `{m.path}:{m.line}` `{m.label}`: `{src}` (by {note})")
            doc.append("")
        if survived:
            doc += ["Survivors:", ""]
            for m, _, _, _ in survived:
                src = (ROOT / m.path).read_text().splitlines()[m.line - 1].strip()
                why = equivalence(m)
                doc.append(f"- `{m.path}:{m.line}` `{m.label}`: `{src}`" + (f" (equivalent: {why})" if why else ""))
            doc.append("")
        Path(args.table).write_text("\n".join(doc))
    return 0



if __name__ == "__main__":
    sys.exit(main())
