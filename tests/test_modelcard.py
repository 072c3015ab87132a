"""Model cards: every shipped asset has a README.md with Hub front matter; a card shows a measured figure
only for the files it was measured on (NOT_MEASURED otherwise); its Python snippet runs; training and
`export` write the card beside the weights, with base_model for a fine-tune of a Hub model."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from emigm.cli import main as cli
from emigm.core.config import apply_overrides
from emigm.core.fileio import ASSETS_DIR
from emigm.core.presets import get_preset
from emigm.eval.claims import CLASSIFIER_FILE, NOT_MEASURED, ClaimsFile
from emigm.eval.modelcard import model_card, setting_text
from emigm.io.exports import shipped_models
from emigm.io.fingerprint import fingerprint, sha256_file
from emigm.train.generator import train
from tests.test_hub import hub_cache

SHIPPED = [*shipped_models(), "fmnist-kl", "fmnist-vq", "classifier", "fmnist-oracle", "fmnist-oracle-kl",
           "fmnist-maskgit/self-guidance"]
REQUIRED = {"license", "library_name", "pipeline_tag", "datasets", "tags"}


def front_matter(card: str) -> dict:
    """The YAML front matter of a card (flat keys, scalars and lists of scalars, as cards write it)."""
    assert card.startswith("---\n"), card[:80]
    head = card[4:card.index("\n---\n", 4)]
    out: dict = {}
    key = None
    for line in head.splitlines():
        if line.startswith("- "):
            out[key].append(json.loads(line[2:]) if line[2:].startswith('"') else line[2:])
        else:
            key, _, value = line.partition(": ")
            key = key.rstrip(":")
            out[key] = (json.loads(value) if value.startswith('"') else value) if value else []
    return out


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_asset_has_a_card(name):
    card = (ASSETS_DIR / name / "README.md").read_text()
    meta = front_matter(card)
    assert REQUIRED <= set(meta), meta
    assert meta["library_name"] == "emigm" and meta["license"] == "other" and meta["datasets"] == [
        "zalando-datasets/fashion_mnist"]
    assert meta["pipeline_tag"] in ("unconditional-image-generation", "image-feature-extraction",
                                    "image-classification")
    for section in ("## How to load", "## Fingerprint", "## Measured figures", "## Licence"):
        assert section in card, (name, section)
    # what the card says about the files is true of the files shipped now
    for sha in re.findall(r"`([0-9a-f]{64})`", card):
        assert any(sha == sha256_file(p) for p in ASSETS_DIR.rglob("*.safetensors")), (name, sha)


@pytest.mark.parametrize("name", shipped_models())
def test_a_shipped_card_is_the_generated_one_but_for_its_figures(name):
    """The card is `python -m emigm model-card NAME`; only the measured figures may lag claims.json (they
    are re-read when the cards are written again), and every figure a card shows is in claims.json for
    these exact files."""
    shipped = (ASSETS_DIR / name / "README.md").read_text()
    now = model_card(name)
    cut = "## Measured figures"
    assert shipped.split(cut)[0] == now.split(cut)[0]
    rows = [r for r in shipped.split(cut)[1].splitlines() if r.startswith("| ") and not r.startswith("| setting")]
    claims = ClaimsFile.read()
    current = fingerprint(ASSETS_DIR / name, CLASSIFIER_FILE)
    for row in rows:
        setting, fd = row.split(" | ")[0][2:], float(row.split(" | ")[3].split(" ")[0])
        assert any(setting_text(p) == setting and round(p["fd"], 2) == fd for p in claims.points(name, current)), row
    if not rows:
        assert NOT_MEASURED in shipped.split(cut)[1]


def _claims_doc(tmp_path: Path, network: str) -> ClaimsFile:
    fp = fingerprint(ASSETS_DIR / "fmnist-emigm", CLASSIFIER_FILE)
    point = {"label": "exp S=16 w=3", "model": "fmnist-emigm", "nfe": 19, "head_evals": 152, "fd": 10.6711,
             "fd_sd": 0.21,
             "sampler": {"num_steps": 16, "schedule": "exp", "count_rule": "binomial", "order": "random",
                         "head_solver": "dpm", "head_steps": 8},
             "guidance": {"cfg_scale": 3.0, "cfg_interval": [0.1, 0.3]},
             "class_accuracy": 0.9031, "precision": 0.9022, "recall": 0.3911, "seed_sets": [[0, 999], [1000, 1999]],
             "fingerprint": {**fp, "network": network}}
    doc = {"format": "emigm-claims", "version": 3, "num_samples": 1000, "points": [point], "claims": [],
           "fingerprints": {"fmnist-emigm": point["fingerprint"]}}
    path = tmp_path / "claims.json"
    path.write_text(json.dumps(doc))
    return ClaimsFile.read(path)


def test_figures_only_for_the_files_they_were_measured_on(tmp_path):
    fp = fingerprint(ASSETS_DIR / "fmnist-emigm", CLASSIFIER_FILE)
    card = model_card("fmnist-emigm", _claims_doc(tmp_path, fp["network"]))
    assert "| S=16, exp, binomial counts, random order, dpm 8, CFG 3 in (0.1, 0.3] | 0-999, 1000-1999 | 19 | " \
           "10.67 ± 0.21 | 0.903 | 0.902 | 0.391 |" in card
    assert NOT_MEASURED not in card and fp["network"] in card
    other = model_card("fmnist-emigm", _claims_doc(tmp_path, "0" * 64))
    assert "10.67" not in other and f"FD, class accuracy, precision and recall: {NOT_MEASURED}." in other


def test_the_cards_python_runs():
    card = model_card("fmnist-emigm")
    (block,) = re.findall(r"```python\n(.*?)```", card, re.S)
    scope: dict = {}
    exec(block, scope)
    assert tuple(scope["images"].shape) == (2, 1, 28, 28)
    for name in ("fmnist-kl", "classifier"):
        (block,) = re.findall(r"```python\n(.*?)```", model_card(name), re.S)
        exec(block, {})


def test_training_and_export_write_the_card_with_the_hub_base_model(tmp_path, monkeypatch, capsys):
    pairs = [("data.limit", 16), ("train.steps", 2), ("train.log_every", 1)]
    first = train(apply_overrides(get_preset("test-tiny"), pairs), tmp_path / "base", device="cpu", progress=False)
    export = Path(first["export_dir"])
    meta = front_matter((export / "README.md").read_text())
    assert meta["library_name"] == "emigm" and "base_model" not in meta
    files = {n: (export / n).read_bytes() for n in ("config.json", "model.safetensors")}
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache(tmp_path / "hub", "someone/tiny", files)))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tuned = train(apply_overrides(get_preset("test-tiny"), pairs + [("train.init_from", "hf:someone/tiny")]),
                  tmp_path / "tuned", device="cpu", progress=False)
    card = (Path(tuned["export_dir"]) / "README.md").read_text()
    assert front_matter(card)["base_model"] == "someone/tiny" and "fine-tuned from: `hf:someone/tiny`" in card
    assert cli.main(["export", str(tmp_path / "base"), "--out", str(tmp_path / "again")]) == 0
    assert "with its model card" in capsys.readouterr().out
    assert front_matter((tmp_path / "again" / "README.md").read_text())["tags"][:2] == ["masked-image-generation",
                                                                                         "emigm"]


def test_a_self_guidance_run_writes_its_card(tmp_path, capsys):
    pairs = [("data.limit", 16), ("train.steps", 2), ("train.log_every", 1)]
    base = Path(train(apply_overrides(get_preset("test-tiny"), pairs), tmp_path / "base", device="cpu",
                      progress=False)["export_dir"])
    code = cli.main(["train-sg", "--base", str(base), "--device", "cpu", "--no-progress", "--out-dir",
                     str(tmp_path / "sg"), "--train.steps", "2", "--train.batch_size", "8",
                     "--train.warmup_steps", "1"])
    assert code == 0, capsys.readouterr().err
    (card_file,) = (tmp_path / "sg").rglob("README.md")
    card = card_file.read_text()
    meta = front_matter(card)
    assert meta["tags"][0] == "self-guidance" and meta["library_name"] == "emigm"
    assert "self-guidance module" in card and sha256_file(card_file.parent / "model.safetensors") in card
