"""Model cards: the README.md of an export or a shipped asset, as the Hugging Face Hub reads it.

A card is YAML front matter (license, library_name, pipeline_tag, datasets, base_model where the weights
were fine-tuned from a Hub model, tags) and Markdown: what the model is, how to load it, the sampling
settings it was trained for, how it was trained (from the export's meta), the sha256 of its weight files
(its fingerprint, emigm.io.fingerprint) and the figures measured on exactly those files, read from
claims.json through emigm.eval.claims (a figure measured on other weights is never shown: the card says
NOT_MEASURED). Generator exports, tokenizers (kl / vq) and the classifier each get one.

`python -m emigm model-card SOURCE` prints the card of an export folder or shipped name; the trainer and
`python -m emigm export` write it beside the weights.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from safetensors import safe_open

from emigm.core.config import to_dict
from emigm.core.fileio import ASSETS_DIR, write_text
from emigm.core.presets import PRESETS
from emigm.eval.claims import CLASSIFIER_FILE, NOT_MEASURED, ClaimsFile
from emigm.eval.evaluation import CLASSIFIER_NAME
from emigm.io.exports import CONFIG_FILE, WEIGHTS_FILE, read_export_config, resolve_export
from emigm.io.fingerprint import ROLES, fingerprint, sha256_file, weight_files
from emigm.io.hub import is_hub_id, parse_hub_id
from emigm.nn.smoother import SMOOTHER_DIR
from emigm.sample.capabilities import SUGGESTED_GUIDANCE

CARD_FILE = "README.md"
ORACLE_FILE = "oracle.json"
LIBRARY = "emigm"
FASHION_MNIST = "zalando-datasets/fashion_mnist"
LICENCE_NOTE = ("The repository states no licence for its code or weights yet (`license: other`); ask before "
                "redistributing. Fashion-MNIST, the training data, is MIT-licensed (Zalando Research).")
_FAMILY = {("categorical", "exact"): "maskgit", ("diffusion", "mar"): "mar", ("categorical", "bernoulli"): "mdm",
           ("diffusion", "bernoulli"): "emigm"}


def _front_matter(meta: dict[str, Any]) -> str:
    """YAML front matter from a flat dict of strings and lists of strings (quoted where YAML needs it)."""

    def scalar(v: str) -> str:
        return json.dumps(v) if any(c in v for c in ":#{}[],&*!|>'\"%@`") or v != v.strip() else v

    lines = ["---"]
    for k, v in meta.items():
        if v is None or v == []:
            continue
        if isinstance(v, list):
            lines += [f"{k}:"] + [f"- {scalar(str(x))}" for x in v]
        else:
            lines.append(f"{k}: {scalar(str(v))}")
    return "\n".join(lines + ["---", ""])


def _short(sha: str | None) -> str:
    return f"`{sha}`" if sha else "none"


def _figures(claims: ClaimsFile, current: dict[str, Any]) -> list[str]:
    """The Markdown of the figures measured on these files: a table, or the NOT_MEASURED line."""
    pts = [] if claims.doc is None else [p for p in claims.doc["points"] if _same(p.get("fingerprint"), current)
                                         and isinstance(p.get("fd"), (int, float))]
    if not pts:
        why = f" ({claims.problem})" if claims.problem else ""
        return [f"FD, class accuracy, precision and recall: {NOT_MEASURED}{why}."]
    rows: dict[str, dict[str, Any]] = {}  # one row per setting (claims share measurements under other labels)
    for p in pts:
        rows.setdefault(setting_text(p), p)
    n = claims.doc.get("num_samples")
    out = [f"Measured on these files (same fingerprint) by `benchmarks/paper_claims.py`: N = {n} class-balanced "
           "samples per seed set against the Fashion-MNIST test set, scored with the shipped classifier; "
           "mean over the seed sets (sd where there are several).", "",
           "| setting | seed sets | NFE | FD | class accuracy | precision | recall |", "|---|---|---|---|---|---|---|"]
    for text, p in rows.items():
        sets = ", ".join(f"{a}-{b}" for a, b in p.get("seed_sets") or [])
        sd = f" ± {p['fd_sd']:.2f}" if isinstance(p.get("fd_sd"), (int, float)) else ""
        out.append(f"| {text} | {sets} | {p.get('nfe', '')} | {p['fd']:.2f}{sd} | "
                   f"{p.get('class_accuracy', float('nan')):.3f} | {p.get('precision', float('nan')):.3f} | "
                   f"{p.get('recall', float('nan')):.3f} |")
    return out


def setting_text(point: dict[str, Any]) -> str:
    """A measured point's sampling setting in words: steps, schedule, reveal rule, head solver, guidance."""
    s, g = point.get("sampler") or {}, point.get("guidance") or {}
    parts = [f"S={s.get('num_steps')}", str(s.get("schedule")), f"{s.get('count_rule')} counts",
             f"{s.get('order')} order" + (f" (tau {s.get('order_temperature'):g})" if s.get("order") not in
                                          (None, "random") and isinstance(s.get("order_temperature"), (int, float))
                                          else "")]
    if s.get("head_solver") and point.get("nfe") is not None and (point.get("head_evals") or 0) != point.get("nfe"):
        parts.append(f"{s['head_solver']} {s.get('head_steps')}")
    if s.get("remask", "off") != "off":
        parts.append(f"remask {s['remask']} eta {s.get('remask_eta'):g}")
    w, lo_hi = g.get("cfg_scale", 1.0), g.get("cfg_interval") or [0.0, 1.0]
    if w != 1.0:
        where = "at every step" if list(lo_hi) == [0.0, 1.0] else f"in ({lo_hi[0]:g}, {lo_hi[1]:g}]"
        parts.append(f"CFG {w:g} {where}" + (f" ({g['cfg_mode']} null)" if g.get("cfg_mode") else ""))
    if g.get("sg_scale"):
        parts.append(f"self-guidance {g['sg_scale']:g}")
    return ", ".join(parts)


def _same(recorded: Any, current: dict[str, Any]) -> bool:
    """The recorded fingerprint names these files: every role it names has the same sha256 here."""
    if not isinstance(recorded, dict) or not isinstance(recorded.get("network"), str):
        return False
    return all(recorded.get(r) is None or recorded.get(r) == current.get(r) for r in ROLES)


def generator_card(source: str | os.PathLike, claims: ClaimsFile | None = None) -> str:
    """The card of a generator export folder or shipped name."""
    folder = resolve_export(source)
    cfg, meta = read_export_config(folder)
    claims = claims if claims is not None else ClaimsFile.read()
    classifier = CLASSIFIER_FILE if CLASSIFIER_FILE.is_file() else None
    current = fingerprint(folder, classifier)
    files = weight_files(folder, classifier)
    name = cfg.name or folder.name
    head, masking = cfg.head.kind, cfg.masking.distribution
    family = _FAMILY.get((head, masking), "masked-generation")
    discrete = head == "categorical"
    rule = {"schedule": cfg.masking.schedule, "count_rule": "exact" if discrete else "binomial",
            "order": "confidence" if discrete else "random"}
    sg = (folder / SMOOTHER_DIR).is_dir()
    init = str(to_dict(cfg.train).get("init_from") or "")
    base = str(parse_hub_id(init).repo_id) if is_hub_id(init) else None
    shipped = (ASSETS_DIR / folder.name).resolve() == folder.resolve()
    ref = folder.name if shipped else str(folder)
    tags = ["masked-image-generation", "emigm", family, "class-conditional", cfg.tokenizer.kind + "-tokens",
            *(["self-guidance"] if sg else []), *(["fashion-mnist"] if cfg.data.name == "fashion-mnist" else [])]
    with safe_open(str(folder / WEIGHTS_FILE), "pt") as f:
        params = f"{sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys()) / 1e6:.2f}M"
    lines = [_front_matter({
        "license": "other", "license_name": "unspecified", "library_name": LIBRARY,
        "pipeline_tag": "unconditional-image-generation",
        "datasets": [FASHION_MNIST] if cfg.data.name == "fashion-mnist" else [], "base_model": base,
        "tags": list(dict.fromkeys(tags))}),
        f"# {name}", "",
        f"A class-conditional masked image generator of the `{family}` family in the eMIGM framework (You et al., "
        f"2025): `{cfg.masking.distribution}` masking with the `{cfg.masking.schedule}` schedule, weighting "
        f"`{cfg.masking.weighting}`, a `{head}` per-token head, on `{cfg.tokenizer.kind}` tokens "
        f"({cfg.tokenizer.num_tokens} per image), {cfg.backbone.num_classes} classes"
        + (f", {params} parameters" if params else "") + "."
        + (" It carries a self-guidance module (`self-guidance/`)." if sg else ""), "",
        "## How to load", "",
        "```bash",
        "pip install .   # in the eMIGM Explorer repository; the commands `emigm` and `emigm-explorer` come with it",
        f"emigm sample --checkpoint {ref} --class all --num-images 4 --out grid.png",
        f"emigm-explorer --model {ref}",
        "```", "",
        "```python",
        "from emigm.io.loading import load_pipeline",
        "from emigm.sample.sampler import GuidanceConfig, SamplerConfig, sample",
        "",
        f"pipe = load_pipeline({ref!r})  # or hf:OWNER/NAME once this folder is on the Hub",
        "state = sample(pipe, labels=[0, 1], seeds=[0, 1], sampler=SamplerConfig(num_steps=16, **pipe.sampling_rule),",
        "               guidance=GuidanceConfig(**pipe.guidance_rule))",
        "images = pipe.decode(state.tokens)  # (B, C, H, W) in [-1, 1]",
        "```", "",
        "## Sampling settings", "",
        f"- the rule it was trained for: schedule `{rule['schedule']}`, count rule `{rule['count_rule']}`, order "
        f"`{rule['order']}` (`pipe.sampling_rule`);",
        f"- suggested guidance: CFG {SUGGESTED_GUIDANCE['cfg_scale']:g} in "
        f"({SUGGESTED_GUIDANCE['cfg_interval'][0]:g}, {SUGGESTED_GUIDANCE['cfg_interval'][1]:g}] "
        "(`pipe.guidance_rule`);",
        "- the sampler's defaults otherwise: 16 steps"
        + (", DPM-Solver++ with 8 head steps" if not discrete else "") + ", temperature 1.", "",
        "## Training", ""]
    if meta.get("command"):
        lines.append(f"- command: `{meta['command']}`")
    facts = [(k, meta.get(k)) for k in ("steps", "batch_size", "seconds", "final_loss", "device", "images_per_s")]
    lines += [f"- {k.replace('_', ' ')}: {v}" for k, v in facts if v is not None]
    lines += [f"- data: {cfg.data.name} (train split)" + (f", tokenizer `{cfg.tokenizer.path}`" if cfg.tokenizer.path
                                                          else ""),
              f"- fine-tuned from: `{init}`" if init else "- trained from scratch", "",
              "## Fingerprint", "",
              "The sha256 of the files this model is made of (emigm.io.fingerprint); measured figures are shown "
              "only for exactly these files.", ""]
    lines += [f"- {role.replace('_', '-')}: {_short(current.get(role))}"
              + (f" ({_rel(files[role], folder)})" if files.get(role) else "") for role in ROLES if current.get(role)]
    lines += ["", "## Measured figures", "", *_figures(claims, current), "", "## Licence", "", LICENCE_NOTE, ""]
    return "\n".join(lines)


def _rel(path: Path | None, folder: Path) -> str:
    if path is None:
        return ""
    p = Path(path).resolve()
    for root in (folder.resolve(), ASSETS_DIR.resolve()):
        if p.is_relative_to(root):
            return str(p.relative_to(root)) if root == folder.resolve() else f"assets/{p.relative_to(root)}"
    return p.name


def _preset_using(path: str, kind: str) -> str:
    """A preset whose tokenizer is the one at `path` (of `kind`)."""
    found = [n for n, p in PRESETS.items() if p.tokenizer.kind == kind and p.tokenizer.path == path]
    return found[0] if found else ("fmnist-emigm" if kind == "kl" else "fmnist-maskgit")


def tokenizer_card(folder: str | os.PathLike) -> str:
    """The card of a tokenizer folder (kl.json / vq.json with its .safetensors)."""
    folder = Path(folder)
    kind = "kl" if (folder / "kl.json").is_file() else "vq"
    record = json.loads((folder / f"{kind}.json").read_text())
    metrics, conf = record.get("metrics") or {}, record.get("config") or {}
    weights = folder / f"{kind}.safetensors"
    what = ("a KL autoencoder: continuous latents" if kind == "kl" else "a VQ-VAE: discrete codes")
    lines = [_front_matter({"license": "other", "license_name": "unspecified", "library_name": LIBRARY,
                            "pipeline_tag": "image-feature-extraction", "datasets": [FASHION_MNIST],
                            "tags": ["image-tokenizer", "autoencoder", f"{kind}-tokens", "emigm", "fashion-mnist"]}),
             f"# {folder.name}", "",
             f"The image tokenizer of the eMIGM Explorer's Fashion-MNIST models, {what} "
             f"(stride {conf.get('stride', '?')}, 28 x 28 images)"
             + (f", {metrics['parameters']} parameters" if metrics.get("parameters") else "") + ".", "",
             "## How to load", "",
             "```python",
             "from emigm.core.fileio import ASSETS_DIR",
             "from emigm.core.presets import get_preset",
             "from emigm.tokenize.tokenizers import build_tokenizer",
             "",
             f"tok = build_tokenizer(get_preset({_preset_using(folder.name, kind)!r}).tokenizer, "
             "root=str(ASSETS_DIR))  # a preset on these tokens",
             "```", "",
             "## Training", ""]
    if record.get("command"):
        lines.append(f"- command: `{record['command']}`")
    lines += [f"- {k.replace('_', ' ')}: {metrics[k]:.4g}" if isinstance(metrics[k], float) else
              f"- {k.replace('_', ' ')}: {metrics[k]}" for k in sorted(metrics)]
    lines += ["", "## Fingerprint", "", f"- {weights.name}: `{sha256_file(weights)}`", "",
              "## Measured figures", "",
              "Test PSNR and seam ratio above are from the training record (the test split of Fashion-MNIST).", "",
              "## Licence", "", LICENCE_NOTE, ""]
    return "\n".join(lines)


def classifier_card(folder: str | os.PathLike) -> str:
    """The card of the Fashion-MNIST classifier folder."""
    folder = Path(folder)
    record = json.loads((folder / f"{CLASSIFIER_NAME}.json").read_text())
    weights = folder / f"{CLASSIFIER_NAME}.safetensors"
    lines = [_front_matter({"license": "other", "license_name": "unspecified", "library_name": LIBRARY,
                            "pipeline_tag": "image-classification", "datasets": [FASHION_MNIST],
                            "tags": ["fashion-mnist", "classifier", "evaluation", "emigm"]}),
             f"# {folder.name}", "",
             "The Fashion-MNIST CNN behind the project's FD (on its penultimate features), class accuracy and "
             "precision / recall.", "",
             "## How to load", "",
             "```python",
             "from emigm.core.fileio import ASSETS_DIR",
             "from emigm.eval.evaluation import load_classifier",
             "",
             f"clf = load_classifier(ASSETS_DIR / {folder.name!r})",
             "```", "",
             "## Training", ""]
    if record.get("command"):
        lines.append(f"- command: `{record['command']}`")
    lines += [f"- {k.replace('_', ' ')}: {record[k]}" for k in ("epochs", "batch_size", "lr", "seed", "seconds")
              if k in record]
    lines += ["", "## Fingerprint", "", f"- {weights.name}: `{sha256_file(weights)}`", "",
              "## Measured figures", "", f"- test accuracy: {record.get('test_accuracy')} (the 10,000 test images)", "",
              "## Licence", "", LICENCE_NOTE, ""]
    return "\n".join(lines)


def oracle_card(folder: str | os.PathLike) -> str:
    """The card of an oracle folder (oracle.json + references.safetensors)."""
    folder = Path(folder)
    record = json.loads((folder / ORACLE_FILE).read_text())
    weights = sorted(folder.glob("*.safetensors"))
    lines = [_front_matter({"license": "other", "license_name": "unspecified", "library_name": LIBRARY,
                            "pipeline_tag": "unconditional-image-generation", "datasets": [FASHION_MNIST],
                            "tags": ["masked-image-generation", "emigm", "oracle", "nonparametric",
                                     f"{record.get('tokenizer', '')}-tokens", "fashion-mnist"]}),
             f"# {folder.name}", "",
             f"An oracle: the exact posterior of a masked generator over {record.get('references')} Fashion-MNIST "
             f"training references ({record.get('kind')} of `{record.get('tokenizer')}`), kernel width "
             f"{'eps ' + str(record.get('eps')) if 'eps' in record else 'sigma ' + str(record.get('sigma'))}. No network is learned: each step's prediction is the references' posterior "
             "given the tokens revealed so far, so it shows what an ideal model of these tokens would do.", "",
             "## How to load", "",
             "```bash",
             f"emigm sample --checkpoint {folder.name} --class all --num-images 4 --out grid.png",
             "```", "",
             "```python",
             "from emigm.io.loading import load_pipeline",
             "",
             f"pipe = load_pipeline({folder.name!r})",
             "```", "",
             "## Training", ""]
    if record.get("built_by"):
        lines.append(f"- built by: `{record['built_by'].split(' --why ')[0]}`")
    if record.get("why"):
        lines.append(f"- why these settings: {record['why']}")
    lines += ["", "## Fingerprint", ""] + [f"- {w.name}: `{sha256_file(w)}`" for w in weights]
    lines += ["", "## Measured figures", "", f"FD, class accuracy, precision and recall: {NOT_MEASURED} "
              "(claims.json measures learned models; the figures above are from the build record).", "",
              "## Licence", "", LICENCE_NOTE + " The references are Fashion-MNIST training images, as tokens.", ""]
    return "\n".join(lines)


def smoother_card(folder: str | os.PathLike) -> str:
    """The card of a self-guidance module folder (config.json with its base model's record)."""
    folder = Path(folder)
    doc = json.loads((folder / CONFIG_FILE).read_text())
    base, conf, meta = doc.get("base") or {}, doc.get("config") or {}, doc.get("meta") or {}
    base_name = base.get("label") or base.get("name") or "its base model"
    lines = [_front_matter({"license": "other", "license_name": "unspecified", "library_name": LIBRARY,
                            "pipeline_tag": "unconditional-image-generation",
                            "datasets": [FASHION_MNIST] if (base.get("data") or {}).get("name") == "fashion-mnist"
                            else [], "tags": ["self-guidance", "masked-image-generation", "emigm"]}),
             f"# {base_name}: self-guidance module", "",
             f"The self-guidance smoother of `{base_name}` ({conf.get('num_layers')} layers of width "
             f"{conf.get('width')}): at sampling time each step is pushed away from this module's smoothed "
             "version of the model's own prediction (`--sg SCALE`). It is used from its base model's folder, "
             f"as `{SMOOTHER_DIR}/`, and only with the base whose fingerprint it records.", "",
             "## How to load", "",
             "```bash",
             f"emigm sample --checkpoint {base_name} --sg 1 --class all --num-images 4 --out grid.png",
             "```", "",
             "## Training", ""]
    if meta.get("command"):
        lines.append(f"- command: `{meta['command']}`")
    lines += [f"- {k.replace('_', ' ')}: {meta[k]}" for k in ("steps", "batch_size", "seconds", "final_loss", "device")
              if k in meta]
    fp = base.get("fingerprint")
    fp = fp if isinstance(fp, dict) else {"fingerprint": fp} if isinstance(fp, str) else {}
    lines += ["", "## Fingerprint", "", f"- {WEIGHTS_FILE}: `{sha256_file(folder / WEIGHTS_FILE)}`"]
    lines += [f"- base {role}: `{sha}`" for role, sha in fp.items() if isinstance(sha, str)]
    lines += ["", "## Measured figures", "", "FD, class accuracy, precision and recall: see the base model's card "
              "(figures with self-guidance are measured on the base and this module together).", "",
              "## Licence", "", LICENCE_NOTE, ""]
    return "\n".join(lines)


def _is_smoother(path: Path) -> bool:
    try:
        return "base" in json.loads((path / CONFIG_FILE).read_text())
    except (OSError, ValueError, TypeError):
        return False


def model_card(source: str | os.PathLike, claims: ClaimsFile | None = None) -> str:
    """The card of an export folder, a shipped name, a tokenizer folder or the classifier folder."""
    path = Path(source)
    if not path.exists() and (ASSETS_DIR / str(source)).exists():
        path = ASSETS_DIR / str(source)
    if (path / f"{CLASSIFIER_NAME}.json").is_file():
        return classifier_card(path)
    if (path / ORACLE_FILE).is_file():
        return oracle_card(path)
    if (path / CONFIG_FILE).is_file() and _is_smoother(path):
        return smoother_card(path)
    if (path / "kl.json").is_file() or (path / "vq.json").is_file():
        return tokenizer_card(path)
    if not ((path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()):
        raise ValueError(f"{source}: not an export folder, shipped name, tokenizer or classifier folder")
    return generator_card(path, claims)


def write_model_card(folder: str | os.PathLike, claims: ClaimsFile | None = None) -> Path:
    """Write the card of `folder` as its README.md (atomically)."""
    out = Path(folder) / CARD_FILE
    write_text(out, model_card(folder, claims))
    return out
