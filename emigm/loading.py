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

from .checkpoint import ASSETS_DIR, CheckpointError, load_export, load_torch, resolve_export
from .config import RunConfig
from .labels import class_names
from .model import MaskedGenerator

TRAIN_CHECKPOINT_FORMAT = "emigm-train-state"


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


def estimate_bytes(cfg: RunConfig) -> int:
    """fp32 bytes of the model's parameters, counted without allocating them (meta device)."""
    with torch.device("meta"):
        model = MaskedGenerator(cfg)
    return 4 * sum(p.numel() for p in model.parameters())


def memory_limit() -> int:
    """Bytes a model may take here: half of the machine's physical memory."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def check_size(cfg: RunConfig, source: str) -> None:
    """Refuse a config whose weights alone would not fit, before building it."""
    need, limit = estimate_bytes(cfg), memory_limit()
    if need > limit:
        raise ValueError(f"{source}: the model needs about {need / 2**30:.1f} GiB for its weights; this "
                         f"machine allows {limit / 2**30:.1f} GiB")


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


def is_training_checkpoint(path: Path) -> bool:
    """True for our training state files (by content: a dict with format emigm-train-state)."""
    try:
        ck = load_torch(path)
    except CheckpointError:
        return False
    return isinstance(ck, dict) and ck.get("format") == TRAIN_CHECKPOINT_FORMAT


def load_generator(source: str | os.PathLike, device: str | torch.device = "cpu", vae: str = "") -> Generator:
    """Load a generator from an export folder or shipped name, a training checkpoint or an official
    checkpoint (see the module docstring). Errors are one line naming the file."""
    path = Path(os.path.expanduser(str(source)))
    device = torch.device(device)
    if path.is_file() and path.name not in ("config.json", "model.safetensors"):
        if is_training_checkpoint(path):
            return _from_training_checkpoint(path, device)
        return _from_official(path, device, vae)
    folder = resolve_export(source)
    from .checkpoint import read_export_config

    cfg, _ = read_export_config(folder)
    check_size(cfg, str(folder.name))
    model, cfg, meta = load_export(folder, device)
    tokenizer = build_model_tokenizer(cfg, folder, device)
    return Generator(model, tokenizer, cfg, _load_smoother(folder, model, device), label=folder.name,
                     meta=meta, source="export")


def _from_training_checkpoint(path: Path, device) -> Generator:
    from .checkpoint import load_state_dict_strict
    from .config import from_dict

    ck = load_torch(path)
    try:
        cfg = from_dict(RunConfig, ck["config"])
        ema = ck["ema"]
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path.name}: not a usable training checkpoint ({e})") from None
    check_size(cfg, path.name)
    model = MaskedGenerator(cfg)
    load_state_dict_strict(model, ema, f"{path.name} (EMA)")
    model = model.to(device).eval()
    tokenizer = build_model_tokenizer(cfg, path.parent, device)
    meta = {"steps": ck.get("step"), "exported_from": path.name}
    return Generator(model, tokenizer, cfg, None, label=f"{path.name} (EMA, step {ck.get('step')})",
                     meta=meta, source="checkpoint")


def _from_official(path: Path, device, vae: str) -> Generator:
    from .official import load_official

    model, cfg = load_official(path, device)
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
    check_size(cfg, preset)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MaskedGenerator(cfg)
    model = model.to(device).eval()
    tokenizer = build_model_tokenizer(cfg, None, device)
    return Generator(model, tokenizer, cfg, None, label=f"{preset} (random init)", source="random")
