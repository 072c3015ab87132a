"""The explorer's model catalogue: which models it offers and loading each once (emigm.io.loading).

Models: the shipped exports (assets/<name>/) that hold a generator, `fmnist-emigm` first when present;
any export folder, training checkpoint or official checkpoint given on the command line; with none of
those, random-init presets whose tokenizer is available. A model that fails to load fails alone: its
error names the model, never another one's.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import torch

from emigm.core.presets import PRESETS, get_preset
from emigm.core.statedict import CheckpointError
from emigm.io.exports import read_export_config, resolve_export, shipped_models
from emigm.io.hub import is_hub_id, parse_hub_id
from emigm.io.loading import Pipeline, build_model_tokenizer, check_size, load_pipeline
from emigm.nn.model import MaskedGenerator
from emigm.nn.oracle import OracleGenerator, shipped_oracles
from emigm.sample.capabilities import suggested_guidance, suggested_settings

from . import text

PREFERRED = "fmnist-emigm"
FALLBACK_PRESETS = ("fmnist-emigm", "fmnist-emigm-fakecfg", "fmnist-maskgit")
FAKECFG_SUFFIX = "-fakecfg"
WEIGHT_SEED = 0  # random-init weights: the same for every process


def generator_exports() -> list[str]:
    """Shipped exports that hold a masked generator (tokenizer exports in assets/ are skipped), then the
    shipped oracle models (emigm.nn.oracle: exact conditionals); fmnist-emigm first when shipped."""
    names = []
    for name in shipped_models():
        try:
            read_export_config(resolve_export(name))
        except CheckpointError:
            continue
        names.append(name)
    return sorted(names, key=lambda n: n != PREFERRED) + shipped_oracles()


def preset_config(name: str):
    """A preset, or `<preset>-fakecfg`: the preset trained with the fake-class null vector."""
    if name not in PRESETS and name.endswith(FAKECFG_SUFFIX) and name[: -len(FAKECFG_SUFFIX)] in PRESETS:
        base = PRESETS[name[: -len(FAKECFG_SUFFIX)]]
        return replace(base, name=name, backbone=replace(base.backbone, null_mode="fake"))
    return get_preset(name)


def _wake_zero_layers(model: torch.nn.Module, std: float = 0.02) -> None:
    """Give all-zero Linear weights small random values. Why: the heads zero-init their output and
    modulation layers, so an untrained model would predict the same thing for every class and guidance
    would change nothing; with this its images are still noise, but guidance visibly acts on them."""
    for m in model.modules():
        if isinstance(m, torch.nn.Linear) and not m.weight.any():
            torch.nn.init.normal_(m.weight, std=std)


def random_init(name: str, device: torch.device) -> Pipeline:
    """A preset (or its -fakecfg twin) with seeded random weights and its shipped tokenizer."""
    cfg = preset_config(name)
    check_size(cfg, name)
    tokenizer = build_model_tokenizer(cfg, None, device)  # a missing tokenizer is refused before the build
    with torch.random.fork_rng(devices=[]):  # seeded weights without touching the global RNG state
        torch.manual_seed(WEIGHT_SEED)
        model = MaskedGenerator(cfg)
        _wake_zero_layers(model)
    model = model.to(device).eval()
    return Pipeline(model, tokenizer, cfg, None, label=f"{name} (random init)", source="random")


@dataclass(frozen=True)
class Source:
    """Where an offered model comes from: a shipped name or export folder, a checkpoint file, or a
    preset with random weights."""

    name: str
    path: str = ""  # export folder or checkpoint file; "" for a shipped name or a preset
    vae: str = ""
    preset: bool = False

    @property
    def shipped(self) -> bool:
        return not self.preset and not self.path


def sources_from(specs: Sequence[str], vae: str = "") -> list[Source]:
    """Command-line model specs -> Sources: a shipped name, a Hub reference (hf:OWNER/NAME[@REVISION][:FILE]),
    a path (export folder, ckpt-*.pt, official .pth), or a preset name (random init). Names are unique (a
    clashing folder name gets its parent's)."""
    shipped = set(generator_exports())
    out: list[Source] = []
    for spec in specs:
        p = Path(spec).expanduser()
        if spec in shipped:
            src = Source(spec)
        elif is_hub_id(spec):  # hf:OWNER/NAME[@REVISION][:FILE]: checked now, fetched (or read from the cache) on load
            ref = parse_hub_id(spec)
            src = Source(spec, spec, vae if ref.filename else "")
        elif p.exists():
            name = p.stem if p.is_file() else p.name
            if any(s.name == name for s in out) or name in shipped:
                name = f"{p.parent.name}/{name}"
            src = Source(name, str(p.resolve()), vae if p.is_file() else "")
        else:
            try:
                preset_config(spec)
            except ValueError:
                offered = ", ".join(sorted(shipped)) or "none"
                raise ValueError(f"unknown model {spec!r}: not a shipped model ({offered}), "
                                 f"not an existing path, nor a preset ({', '.join(PRESETS)})") from None
            src = Source(spec, preset=True)
        out.append(src)
    return out


def default_sources(device: torch.device) -> list[Source]:
    """Shipped generators if any, else the fallback presets whose tokenizer is available."""
    shipped = generator_exports()
    if shipped:
        return [Source(n) for n in shipped]
    out = []
    for name in FALLBACK_PRESETS:
        try:
            build_model_tokenizer(preset_config(name), None, "cpu")
        except (OSError, ValueError):
            continue
        out.append(Source(name, preset=True))
    return out


class Catalogue:
    """The offered models, each loaded once on first use (one lock per model)."""

    def __init__(self, models: Sequence[str] | None = None, device: str | torch.device = "cpu",
                 vae: str = "") -> None:
        self.device = torch.device(device)
        sources = sources_from(models, vae) if models else default_sources(self.device)
        if not sources:
            raise ValueError("no models to offer: nothing shipped in assets/ and no preset tokenizer available")
        self.sources = {s.name: s for s in sources}
        self.names = list(self.sources)
        self._cache: dict[str, Pipeline] = {}
        # one lock per model: loading one model never makes a request for another one wait
        self._locks = {n: threading.Lock() for n in self.names}

    def check_name(self, name: str) -> str:
        if name not in self.sources:
            raise ValueError(f"unknown model {name!r}; this app offers: {', '.join(self.names)}")
        return name

    def is_shipped(self, name: str) -> bool:
        return self.sources[name].shipped

    def is_oracle(self, name: str) -> bool:
        """Whether `name` is an oracle model (loads it)."""
        return isinstance(self.load(name).model, OracleGenerator)

    def is_random(self, name: str) -> bool:
        return self.sources[name].preset

    def load(self, name: str) -> Pipeline:
        """The model's Pipeline, loaded once. A load error is a one-line ValueError naming the model."""
        self.check_name(name)
        if name in self._cache:
            return self._cache[name]
        with self._locks[name]:
            if name not in self._cache:
                self._cache[name] = self._load(self.sources[name])
            return self._cache[name]

    def is_loaded(self, name: str) -> bool:
        return name in self._cache

    def _load(self, src: Source) -> Pipeline:
        try:
            with torch.inference_mode(False):
                if src.preset:
                    return random_init(src.name, self.device)
                return load_pipeline(src.path or src.name, self.device, vae=src.vae)
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ValueError(f"model {src.name!r} cannot be loaded: {first}") from None

    def class_names(self, name: str) -> list[str]:
        return self.load(name).class_names

    def suggested(self, name: str) -> dict[str, Any]:
        """What `name` runs with unless told otherwise, as control values: the sampler rule it was
        trained for and its suggested guidance (emigm.sample.capabilities, as the CLI); {} for a model
        that cannot be loaded (its own error is shown elsewhere)."""
        try:
            model = self.load(name).model
        except ValueError:
            return {}
        out = {**suggested_settings(model), **suggested_guidance(model)}
        for f, v in list(out.items()):
            if isinstance(v, tuple):  # a tuple field is two controls
                del out[f]
                out.update({f"{f}_lo": v[0], f"{f}_hi": v[1]})
        return out

    def banner(self, name: str) -> str:
        try:
            gen = self.load(name)
        except ValueError as e:
            return f"⚠ {e}"
        return text.model_banner(name, gen, self.device.type)

    def partner(self, name: str, null_mode: str) -> str | None:
        """An offered model like `name` (same tokenizer and classes) trained with `null_mode`: `name`
        itself, or its `-fakecfg` twin (or the base of a `-fakecfg` model). Broken partners are skipped."""
        base = name[: -len(FAKECFG_SUFFIX)] if name.endswith(FAKECFG_SUFFIX) else name
        cfg = self.load(name).cfg
        for cand in (name, base + FAKECFG_SUFFIX, base):
            if cand not in self.sources:
                continue
            try:
                c = self.load(cand).cfg
            except ValueError:
                continue
            if (c.backbone.null_mode == null_mode and c.tokenizer == cfg.tokenizer
                    and c.backbone.num_classes == cfg.backbone.num_classes):
                return cand
        return None
