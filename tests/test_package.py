"""The package: pyproject.toml lists every package and the runtime pins of requirements.txt; a wheel
carries the shipped models and both console scripts work from a fresh virtual environment in another
folder (the slow test: builds the wheel offline, no download)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest
import tomllib

from emigm.core.fileio import ASSETS_DIR

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _requirements() -> list[str]:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    return [ln.split("#")[0].strip() for ln in lines if ln.split("#")[0].strip()]


def test_dependencies_are_the_requirements():
    assert PYPROJECT["project"]["dependencies"] == _requirements()
    assert "torch==2.13.0" in PYPROJECT["project"]["dependencies"]


def test_every_package_is_listed():
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for top in ("emigm", "app")
               for p in (ROOT / top).rglob("__init__.py") if "__pycache__" not in p.parts}
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    assert listed == on_disk | {"emigm.assets"}
    assert PYPROJECT["tool"]["setuptools"]["package-dir"] == {"emigm.assets": "assets"}


def test_console_scripts_resolve():
    scripts = PYPROJECT["project"]["scripts"]
    assert set(scripts) == {"emigm", "emigm-explorer"}
    import importlib

    for target in scripts.values():
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func))


def test_assets_found_in_a_checkout():
    assert ASSETS_DIR == ROOT / "assets"
    assert (ASSETS_DIR / "fmnist-emigm" / "model.safetensors").is_file()


def _run(cmd: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{cmd} failed ({r.returncode}): {r.stderr[-2000:]}"
    return r


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv_and_runs_from_another_folder(tmp_path):
    """Build the wheel (no build isolation: nothing is downloaded), install it into a new venv that sees
    the installed dependencies (--system-site-packages, --no-index), then from an unrelated folder:
    `emigm sample --checkpoint fmnist-emigm` writes a grid from the shipped model the wheel carries, and
    `emigm-explorer --help` prints its usage."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1", OMP_NUM_THREADS="1")
    wheels, env_dir, elsewhere = tmp_path / "wheels", tmp_path / "venv", tmp_path / "elsewhere"
    elsewhere.mkdir()
    _run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q",
          "-w", str(wheels)], cwd=tmp_path, env=env)
    (wheel,) = wheels.glob("emigm_explorer-*.whl")
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    py, bin_dir = env_dir / "bin" / "python", env_dir / "bin"
    # pip >= 22.3 installs into another interpreter with --python (the new venv has no pip of its own)
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-index", "-q", str(wheel)],
         cwd=tmp_path, env=env)

    where = _run([str(py), "-c", "import emigm, app; from emigm.core.fileio import ASSETS_DIR; "
                  "print(emigm.__file__); print(app.__file__); print(ASSETS_DIR)"], cwd=elsewhere, env=env)
    emigm_file, app_file, assets = where.stdout.split()
    assert Path(emigm_file).is_relative_to(env_dir) and Path(app_file).is_relative_to(env_dir)
    assert Path(assets) == Path(emigm_file).parent / "assets"

    _run([str(bin_dir / "emigm"), "sample", "--checkpoint", "fmnist-emigm", "--class", "Trouser",
          "--num-images", "2", "--steps", "4", "--device", "cpu", "--out", "grid.png", "--trace", "trace.json"],
         cwd=elsewhere, env=env)
    from PIL import Image

    with Image.open(elsewhere / "grid.png") as im:
        assert im.size[0] >= 2 * 28 and im.size[1] >= 28
    trace = json.loads((elsewhere / "trace.json").read_text())
    assert (trace["model"], trace["num_tokens"], len(trace["steps"]), trace["labels"]) == \
        ("fmnist-emigm", 49, 4, [1, 1])
    usage = _run([str(bin_dir / "emigm-explorer"), "--help"], cwd=elsewhere, env=env).stdout
    assert usage.startswith("usage: emigm-explorer") and "--model" in usage
    assert _run([str(bin_dir / "emigm"), "--help"], cwd=elsewhere, env=env).stdout.startswith("usage: emigm ")
    assert sorted(p.name for p in elsewhere.iterdir()) == ["grid.png", "trace.json"]

