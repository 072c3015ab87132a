"""Loading a generator for sampling: one call returns everything a sampler user needs.

`load_generator(source)` accepts
- a shipped model name (a folder in assets/) or any export folder (config.json + model.safetensors),
  with its self-guidance module when the export holds one (`self-guidance/`);
- a training checkpoint (`ckpt-*.pt`, recognised by its content): its EMA weights;
- an official eMIGM / MAR checkpoint (`.pth`), with `vae=` the KL-16 VAE it needs;
and `random_generator(preset)` builds a preset with random weights. The size of a model is estimated
from its config before any weights are allocated, and refused when it cannot fit in memory.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from .budget import check_size, model_spec
from .checkpoint import (ASSETS_DIR, CheckpointError, check_state_dict, load_export, load_torch,
                         resolve_export)
from .config import RunConfig
from .labels import class_names
from .model import MaskedGenerator
from .runs import CKPT_FORMAT as TRAIN_CHECKPOINT_FORMAT
from .runs import CKPT_VERSION


@dataclass
class Generator:
    """A loaded generator: the network, its tokenizer, its self-guidance module (or None), its config,
    the class names, a display label and metadata (the export's `meta`, with export_dir)."""

    model: MaskedGenerator
    tokenizer: Any
    cfg: RunConfig
    smoother: Any = None
    label: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    source: str = "export"  # export | checkpoint | official | random

    @property
    def class_names(self) -> list[str]:
        return class_names(self.cfg)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens -> images (B, C, H, W) in [-1, 1]."""
        with torch.inference_mode():
            return self.tokenizer.decode(tokens.to(self.device))


def _tokenizer_roots(folder: Path | None) -> list[Path]:
    roots = [folder, folder.parent] if folder is not None else []
    return [r for r in roots if r is not None] + [ASSETS_DIR]


def build_model_tokenizer(cfg: RunConfig, folder: Path | None, device: torch.device | str):
    """The tokenizer of `cfg`: a relative tokenizer path is looked up beside the export, in its parent
    folder, then in assets/. A missing one is a one-line error naming what was expected."""
    from .tokenizers import build_tokenizer

    tk = cfg.tokenizer
    if tk.path and not os.path.isabs(os.path.expanduser(tk.path)):
        for root in _tokenizer_roots(folder):
            if (root / tk.path).exists():
                return build_tokenizer(tk, str(root)).to(device).eval()
        where = ", ".join(str(r.name or r) for r in _tokenizer_roots(folder))
        raise FileNotFoundError(f"the {tk.kind} tokenizer {tk.path!r} this model needs was not found "
                                f"(looked beside the model, in {where})")
    return build_tokenizer(tk, None).to(device).eval()


def _load_smoother(folder: Path, model: MaskedGenerator, device):
    from .self_guidance import SG_DIR, load_smoother

    sg = folder / SG_DIR
    return load_smoother(sg, model, device) if sg.is_dir() else None


def is_training_state(ck: Any) -> bool:
    """True for the contents of our training checkpoints (a dict with format emigm-train-state)."""
    return isinstance(ck, dict) and ck.get("format") == TRAIN_CHECKPOINT_FORMAT


def read_training_checkpoint(path: Path, ck: Any, device: torch.device | str | None = None):
    """(RunConfig, EMA state dict, step) of a generator training checkpoint's contents `ck`, checked
    before anything is built: the version, the config (valid, and a size that fits), the EMA weights
    (keys, shapes, dtypes, finite values). Errors are one line naming the file."""
    from .config import from_dict

    name = path.name
    if ck.get("version") != CKPT_VERSION:
        raise CheckpointError(f"{name}: training checkpoint version {ck.get('version')!r} is not {CKPT_VERSION}")
    if not isinstance(ck.get("config"), dict):
        raise CheckpointError(f"{name}: not a usable training checkpoint (no 'config' object)")
    if "ema" not in ck:
        raise CheckpointError(f"{name}: not a usable training checkpoint (no 'ema' weights)")
    try:
        cfg = from_dict(RunConfig, ck["config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{name}: not a usable training checkpoint ({e})") from None
    check_size(cfg, name, device)
    check_state_dict(model_spec(cfg), ck["ema"], f"{name} (EMA)")
    step = ck.get("step")
    return cfg, ck["ema"], step if isinstance(step, int) else None


def load_generator(source: str | os.PathLike, device: str | torch.device = "cpu", vae: str = "") -> Generator:
    """Load a generator from an export folder or shipped name, a training checkpoint or an official
    checkpoint (see the module docstring). `vae`: the KL-16 VAE of an official ImageNet checkpoint
    (given for any other model, it is an error). Errors are one line naming the file."""
    path = Path(os.path.expanduser(str(source)))
    device = torch.device(device)
    if path.is_file() and path.name not in ("config.json", "model.safetensors"):
        if path.suffix == ".safetensors":
            raise CheckpointError(f"{path.name}: a safetensors file alone is not a model; give the export "
                                  "folder that holds it with config.json")
        ck = load_torch(path)  # one read: our training checkpoints are recognised by content
        if not is_training_state(ck):
            return _from_official(path, ck, device, vae)
        _no_vae(vae, path.name)
        return _from_training_checkpoint(path, ck, device)
    _no_vae(vae, Path(str(source)).name)
    return _from_export(source, device)


def _no_vae(vae: str, name: str) -> None:
    if vae:
        raise ValueError(f"--vae is for official ImageNet checkpoints (KL-16 latents); {name} brings its own "
                         "tokenizer: leave --vae out")


def _from_export(source: str | os.PathLike, device) -> Generator:
    folder = resolve_export(source)
    model, cfg, meta = load_export(folder, device)
    tokenizer = build_model_tokenizer(cfg, folder, device)
    return Generator(model, tokenizer, cfg, _load_smoother(folder, model, device), label=folder.name,
                     meta=meta, source="export")


def _from_training_checkpoint(path: Path, ck: dict, device) -> Generator:
    cfg, ema, step = read_training_checkpoint(path, ck, device)
    model = MaskedGenerator(cfg)
    model.load_state_dict(ema)
    model = model.to(device).eval()
    tokenizer = build_model_tokenizer(cfg, path.parent, device)
    meta = {"steps": step, "exported_from": path.name}
    return Generator(model, tokenizer, cfg, None, label=f"{path.name} (EMA, step {step})",
                     meta=meta, source="checkpoint")


def _from_official(path: Path, ck: Any, device, vae: str) -> Generator:
    from .official import load_official

    model, cfg = load_official(path, device, ck=ck)
    if cfg.tokenizer.kind == "kl16":
        if not vae:
            raise ValueError(f"{path.name} makes KL-16 latents: give the VAE with --vae PATH/kl16.ckpt")
        cfg = replace(cfg, tokenizer=replace(cfg.tokenizer, path=str(Path(vae).expanduser().resolve())))
    tokenizer = build_model_tokenizer(cfg, None, device)
    return Generator(model, tokenizer, cfg, None, label=path.name, meta={}, source="official")


def random_generator(preset: str, device: str | torch.device = "cpu", seed: int = 0) -> Generator:
    """A preset with random weights (drawn from `seed`); its tokenizer as shipped."""
    from .presets import get_preset

    cfg = get_preset(preset)
    check_size(cfg, preset, device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MaskedGenerator(cfg)
    model = model.to(device).eval()
    tokenizer = build_model_tokenizer(cfg, None, device)
    return Generator(model, tokenizer, cfg, None, label=f"{preset} (random init)", source="random")
