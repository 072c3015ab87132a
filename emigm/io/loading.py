"""Loading a generator for sampling: one call returns everything a sampler user needs.

`load_pipeline(source)` accepts
- a shipped model name (a folder in assets/) or any export folder (config.json + model.safetensors),
  with its self-guidance smoother when the export holds one (`self-guidance/`);
- a training checkpoint (`ckpt-*.pt`, recognised by its content): its EMA weights;
- an official eMIGM / MAR checkpoint (`.pth`), with `vae=` the KL-16 VAE it needs;
and `random_pipeline(preset)` builds a preset with random weights. The size of a model is estimated
from its config before any weights are allocated, and refused when it cannot fit in memory. Every
file a model needs (its weights, its tokenizer or VAE, its self-guidance smoother) is found and
checked before the network is built, so a missing tokenizer is refused in seconds whatever the size.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from emigm.core.config import RunConfig
from emigm.core.fileio import ASSETS_DIR
from emigm.core.labels import class_names
from emigm.core.presets import get_preset
from emigm.core.statedict import CheckpointError, load_torch
from emigm.io.exports import build_generator, read_export
from emigm.io.hub import is_hub_id
from emigm.io.hub import resolve as hub_resolve
from emigm.io.official import read_official
from emigm.io.runs import is_training_state, read_training_checkpoint
from emigm.nn.budget import check_size, memory_limit
from emigm.nn.model import MaskedGenerator
from emigm.nn.oracle import OracleGenerator, is_oracle_folder, read_oracle, shipped_oracles
from emigm.nn.smoother import SMOOTHER_DIR, build_smoother, read_smoother
from emigm.sample.capabilities import suggested_guidance, suggested_settings
from emigm.tokenize.tokenizers import build_tokenizer


@dataclass
class Pipeline:
    """A loaded model, everything a sampler user needs in one object: the network, its tokenizer, its
    self-guidance smoother (or None), its config, the sampling rule it was trained for and its suggested
    guidance (`sampling_rule`, `guidance_rule`), the class names,
    a display label and metadata (the export's `meta`, with export_dir). The sampler takes it whole
    (`sample_steps(pipe, ...)` runs `pipe.model` with `pipe.smoother`)."""

    model: MaskedGenerator
    tokenizer: Any
    cfg: RunConfig
    smoother: Any = None
    label: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    source: str = "export"  # export | checkpoint | official | random | oracle

    @property
    def sampling_rule(self) -> dict[str, Any]:
        """The sampler settings the model was trained for (emigm.sample.capabilities.suggested_settings)."""
        return suggested_settings(self.model)

    @property
    def guidance_rule(self) -> dict[str, Any]:
        """The guidance it runs with unless told otherwise (emigm.sample.capabilities.suggested_guidance)."""
        return suggested_guidance(self.model)

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


def tokenizer_roots(folder: Path | None) -> list[Path]:
    roots = [folder, folder.parent] if folder is not None else []
    return [r for r in roots if r is not None] + [ASSETS_DIR]


def build_model_tokenizer(cfg: RunConfig, folder: Path | None, device: torch.device | str):
    """The tokenizer of `cfg`: a relative tokenizer path is looked up beside the export, in its parent
    folder, then in assets/. A missing one is a one-line error naming what was expected."""

    tk = cfg.tokenizer
    if tk.path and not os.path.isabs(os.path.expanduser(tk.path)):
        for root in tokenizer_roots(folder):
            if (root / tk.path).exists():
                return build_tokenizer(tk, str(root)).to(device).eval()
        where = ", ".join(str(r.name or r) for r in tokenizer_roots(folder))
        raise FileNotFoundError(f"the {tk.kind} tokenizer {tk.path!r} this model needs was not found "
                                f"(looked beside the model, in {where})")
    return build_tokenizer(tk, None).to(device).eval()


def smoother_folder(folder: Path) -> Path | None:
    """The export's self-guidance smoother folder, or None when it has none. An entry of that name that
    is not a folder (a file, a dangling or looping symlink) is an error, never silently skipped."""
    sg = folder / SMOOTHER_DIR
    if sg.is_dir():
        return sg
    if os.path.lexists(sg):
        what = "a symlink that does not lead to a folder" if sg.is_symlink() else "a file"
        raise CheckpointError(f"{folder.name}/{SMOOTHER_DIR} is {what}; a self-guidance smoother is a folder "
                              "holding config.json and model.safetensors (move it away to load the model without)")
    return None


def load_pipeline(source: str | os.PathLike, device: str | torch.device = "cpu", vae: str = "",
                  kernel: float | None = None) -> Pipeline:
    """Load a generator from an export folder or shipped name, a training checkpoint, an official
    checkpoint or an oracle (see the module docstring). `vae`: the KL-16 VAE of an official ImageNet
    checkpoint (given for any other model, it is an error). `kernel`: an oracle's eps or sigma in place
    of its own (any other model refuses it). `source` and `vae` may be Hub references,
    `hf:OWNER/NAME[@REVISION][:FILE]` (emigm.io.hub: through the local cache, HF_HUB_OFFLINE honoured).
    Errors are one line naming the file."""
    if is_hub_id(source) or is_hub_id(vae):
        local = hub_resolve(str(source)) if is_hub_id(source) else source
        pipe = load_pipeline(local, device, vae=str(hub_resolve(vae)) if is_hub_id(vae) else vae, kernel=kernel)
        if is_hub_id(source):
            pipe.label, pipe.meta = str(source), {**pipe.meta, "hub": str(source)}
        return pipe
    path = Path(os.path.expanduser(str(source)))
    oracle = oracle_folder(source)
    if oracle is not None:
        _no_vae(vae, oracle.name)
        return _from_oracle(oracle, device, kernel)
    if kernel is not None:
        raise ValueError(f"eps / sigma are the kernel widths of an oracle model ({', '.join(shipped_oracles())}); "
                         f"{path.name} is a learned model")
    device = torch.device(device)
    if path.is_file() and path.name not in ("config.json", "model.safetensors"):
        if path.suffix == ".safetensors":
            raise CheckpointError(f"{path.name}: a safetensors file alone is not a model; give the export "
                                  "folder that holds it with config.json")
        ck = load_torch(path, memory_limit("cpu"))  # one read: training checkpoints are recognised by content
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


def _from_export(source: str | os.PathLike, device) -> Pipeline:
    folder, cfg, meta, state = read_export(source, device)  # every file checked, then the networks built
    sg = smoother_folder(folder)
    smoother = read_smoother(sg, cfg, state) if sg is not None else None
    tokenizer = build_model_tokenizer(cfg, folder, device)
    model = build_generator(cfg, state, device)
    return Pipeline(model, tokenizer, cfg, build_smoother(*smoother, device) if smoother else None,
                    label=folder.name, meta=meta, source="export")


def oracle_folder(source: str | os.PathLike) -> Path | None:
    """The oracle folder `source` names (a folder holding oracle.json, or a shipped oracle's name), or None."""
    path = Path(os.path.expanduser(str(source)))
    for folder in (path, ASSETS_DIR / str(source)):
        if folder.is_dir() and is_oracle_folder(folder):
            return folder
    return None


def _from_oracle(folder: Path, device, kernel: float | None) -> Pipeline:
    refs, width, cfg, desc = read_oracle(folder, device, kernel)
    tokenizer = build_model_tokenizer(cfg, folder, device)
    model = OracleGenerator(refs, width, cfg, label=folder.name).to(device).eval()
    return Pipeline(model, tokenizer, cfg, None, label=folder.name, meta=dict(desc, export_dir=str(folder)),
                    source="oracle")


def _from_training_checkpoint(path: Path, ck: dict, device) -> Pipeline:
    cfg, ema, step = read_training_checkpoint(path, ck, device)
    tokenizer = build_model_tokenizer(cfg, path.parent, device)  # before the model is built
    model = build_generator(cfg, ema, device)
    meta = {"steps": step, "exported_from": path.name}
    return Pipeline(model, tokenizer, cfg, None, label=f"{path.name} (EMA, step {step})",
                     meta=meta, source="checkpoint")


def _from_official(path: Path, ck: Any, device, vae: str) -> Pipeline:
    state, cfg = read_official(path, device, ck=ck)
    if cfg.tokenizer.kind == "kl16":
        if not vae:
            raise ValueError(f"{path.name} makes KL-16 latents: give the VAE with --vae PATH/kl16.ckpt")
        cfg = replace(cfg, tokenizer=replace(cfg.tokenizer, path=str(Path(vae).expanduser().resolve())))
    tokenizer = build_model_tokenizer(cfg, None, device)  # the VAE is checked before the model is built
    return Pipeline(build_generator(cfg, state, device), tokenizer, cfg, None, label=path.name, meta={},
                    source="official")


def random_pipeline(preset: str, device: str | torch.device = "cpu", seed: int = 0) -> Pipeline:
    """A preset with random weights (drawn from `seed`); its tokenizer as shipped."""

    cfg = get_preset(preset)
    check_size(cfg, preset, device)
    tokenizer = build_model_tokenizer(cfg, None, device)  # a missing tokenizer is refused before the build
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MaskedGenerator(cfg)
    model = model.to(device).eval()
    return Pipeline(model, tokenizer, cfg, None, label=f"{preset} (random init)", source="random")
