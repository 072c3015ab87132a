"""Training the masked generator: the generator's task for the generic loop (emigm.train.trainer) and
`train`, the library entry point behind `python -m emigm train` (and torchrun).

The task follows the eMIGM recipe (You et al. 2025, "Effective and Efficient Masked Image Generation
Models"): images become tokens (pixels, VQ codes or VAE latents), a mask is drawn per sample from
the masking schedule, labels are dropped to the null class with probability masking.label_drop,
and the loss is the per-token head's loss on the masked tokens. The model's initial weights are
drawn under a forked global RNG seeded by (train.seed, "init"), so the global RNG is left untouched.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from emigm.core import distributed as dist
from emigm.core.config import RunConfig, from_dict, to_dict
from emigm.core.devices import resolve_device
from emigm.core.fileio import ASSETS_DIR
from emigm.core.guidance import GuidanceConfig
from emigm.core.masking import draw_mask
from emigm.core.seeds import STREAM_INIT, mix_seed
from emigm.core.statedict import check_state_dict, load_state_dict_strict, read_safetensors
from emigm.data.datasets import CachedLatents, EncodedDataset, build_dataset
from emigm.eval.modelcard import write_model_card
from emigm.io.exports import WEIGHTS_FILE, read_export_config, resolve_export, save_export
from emigm.io.hub import is_hub_id
from emigm.io.hub import resolve as hub_resolve
from emigm.io.imaging import save_grid
from emigm.io.runs import TRAINING_RUN, check_target, default_run_dir
from emigm.nn.budget import check_training_size, model_spec
from emigm.nn.model import MaskedGenerator
from emigm.sample.capabilities import suggested_guidance, suggested_settings
from emigm.sample.sampler import SamplerConfig, sample
from emigm.tokenize.tokenizers import DCAETokenizer, KL16Tokenizer, build_tokenizer, resolve_weights
from emigm.train.trainer import check_max_steps, fit, micro_batch_size

Tensor = torch.Tensor
GRID_COLUMNS, GRID_CLASSES, GRID_STEPS = 8, 10, 16  # the validation grid: seeds 0-7 for each of the first classes


def build_model(cfg: RunConfig) -> MaskedGenerator:
    """The model with initial weights drawn from a seed of (train.seed, "init"); the global RNG is
    forked, so its state is left untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(mix_seed(cfg.train.seed, STREAM_INIT))
        return MaskedGenerator(cfg)


def _encoded_cache(cfg: RunConfig) -> Path:
    """Where the encoded training set of a `kl` tokenizer is cached: {train.out_dir}/.cache/, keyed by
    the tokenizer's weights and the data settings."""
    import hashlib


    weights = resolve_weights(cfg.tokenizer, str(ASSETS_DIR))
    h = hashlib.sha256(Path(weights).read_bytes())
    d = cfg.data
    h.update(f"{d.name}|{d.path}|{d.image_size}|{d.limit}|{cfg.tokenizer.image_size}".encode())
    return Path(cfg.train.out_dir) / ".cache" / f"encoded-{cfg.tokenizer.kind}-{h.hexdigest()[:16]}.pt"


def token_source(cfg: RunConfig, device: torch.device) -> tuple[torch.utils.data.Dataset, Callable]:
    """(dataset, to_tokens): to_tokens(x on device, generator) -> tokens (b, L, C) float / (b, L) int64."""

    tk = cfg.tokenizer
    if cfg.data.cache_latents:  # raw encoder samples; the latent scale lives on the tokenizer class
        scales = {"kl16": KL16Tokenizer.scale, "dcae": DCAETokenizer.scale}
        if tk.kind not in scales:
            raise ValueError(f"data.cache_latents needs a kl16 or dcae tokenizer, not {tk.kind!r}")
        dataset = CachedLatents(cfg.data.cache_latents, seed=cfg.train.seed)
        scale = scales[tk.kind]
        if dataset.latent_shape != (tk.latent_channels, tk.grid, tk.grid):
            raise ValueError(f"cached latents in {cfg.data.cache_latents} have shape {dataset.latent_shape}, "
                             f"the tokenizer expects {(tk.latent_channels, tk.grid, tk.grid)}")
        return dataset, lambda x, g: (x * scale).flatten(2).transpose(1, 2)  # (b, c, h, w) -> (b, hw, c)
    tokenizer = build_tokenizer(tk, root=str(ASSETS_DIR)).to(device).eval().requires_grad_(False)
    dataset = build_dataset(cfg.data, tk, "train", num_classes=cfg.backbone.num_classes, seed=cfg.train.seed)
    if tk.kind == "kl":  # encode once; sample each step's latents from the stored posterior moments

        dataset = EncodedDataset(dataset, tokenizer.model.moments, device=device, cache=_encoded_cache(cfg))

        def sample_latents(moments: Tensor, g: torch.Generator) -> Tensor:
            mean, logvar = moments.unbind(1)
            noise = torch.randn(mean.shape, generator=g, device=g.device).to(mean.device)
            z = tokenizer.model.normalize(mean + (0.5 * logvar).exp() * noise)
            return z.flatten(2).transpose(1, 2)  # (b, c, h, w) -> (b, hw, c)

        return dataset, sample_latents
    if tk.kind == "kl16":  # MAR trains on posterior samples
        return dataset, lambda x, g: tokenizer.encode(x, generator=g)
    return dataset, lambda x, g: tokenizer.encode(x)


def read_init_weights(cfg: RunConfig, source: str) -> dict[str, Tensor]:
    """Fine-tuning: the weights of the export `source` (a folder or shipped name), checked against the
    model of `cfg` before it is built. The export must have the same tokenizer and network shapes;
    head and masking settings that do not change a weight's shape (prediction, t_min, ...) may differ.
    One-line errors name the field."""

    folder = resolve_export(hub_resolve(source) if is_hub_id(source) else source)  # hf:OWNER/NAME too
    base, _ = read_export_config(folder)
    for section in ("tokenizer", "backbone"):
        a, b = to_dict(getattr(base, section)), to_dict(getattr(cfg, section))
        diff = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        if diff:
            k = diff[0]
            raise ValueError(f"train.init_from {source}: its {section}.{k} is {a.get(k)!r}, this run's "
                             f"{b.get(k)!r}; fine-tuning needs the same {section}")
    for k in ("kind", "width", "depth"):
        if getattr(base.head, k) != getattr(cfg.head, k):
            raise ValueError(f"train.init_from {source}: its head.{k} is {getattr(base.head, k)!r}, this run's "
                             f"{getattr(cfg.head, k)!r}; fine-tuning needs the same head shape")
    state = read_safetensors(folder / WEIGHTS_FILE)
    check_state_dict(model_spec(cfg), state, str(folder))
    return state


def init_weights_from(model: MaskedGenerator, cfg: RunConfig, source: str) -> None:
    """Fine-tuning: load the weights of the export `source` into `model` (`read_init_weights`)."""
    load_state_dict_strict(model, read_init_weights(cfg, source), str(source))


class GeneratorTask:
    """The masked generator as a TrainTask: the whole MaskedGenerator is trainable; a micro-batch of
    (images or latents, labels) becomes (tokens, mask, labels, label drops, loss weights)."""

    def __init__(self, cfg: RunConfig, device: torch.device) -> None:
        self.cfg, self.device = cfg, device
        init = read_init_weights(cfg, cfg.train.init_from) if cfg.train.init_from else None  # checked first
        self.model = build_model(cfg).to(device)
        if init is not None:  # a checkpoint to resume from, if any, replaces these weights later
            self.model.load_state_dict(init)
        self.trainable: nn.Module = self.model
        self._to_tokens: Callable | None = None
        self._decoder = None  # the tokenizer that decodes validation grids (train.sample_every), built once
        if cfg.train.sample_every:  # its weights are found and checked before the run starts
            self._decoder = build_tokenizer(cfg.tokenizer, root=str(ASSETS_DIR)).to(device).eval()
        if cfg.train.compile:  # in place: state-dict keys stay; the head runs outside forward
            self.model.compile()
            if hasattr(self.model.head, "net"):
                self.model.head.net.compile()

    def config_dict(self) -> dict[str, Any]:
        return to_dict(self.cfg)

    def config_defaults(self) -> dict[str, Any]:
        return to_dict(RunConfig())

    def check_config(self, doc: dict[str, Any]) -> None:
        from_dict(RunConfig, doc)

    def dataset(self) -> torch.utils.data.Dataset:
        dataset, self._to_tokens = token_source(self.cfg, self.device)
        return dataset

    def to_inputs(self, batch: tuple[Tensor, ...], generator: torch.Generator) -> dict[str, Tensor]:
        x, labels = batch
        tokens = self._to_tokens(x, generator)
        draw = draw_mask(self.cfg.masking, x.shape[0], self.cfg.tokenizer.num_tokens, generator=generator,
                         device=self.device)
        drop = torch.rand(x.shape[0], generator=generator, device=self.device) < self.cfg.masking.label_drop
        return {"tokens": tokens, "mask": draw.mask, "labels": labels, "drop": drop, "weight": draw.weight}

    def loss(self, inputs: dict[str, Tensor], generator: torch.Generator) -> Tensor:
        return self.model.loss(inputs["tokens"], inputs["mask"], inputs["labels"], inputs["drop"], inputs["weight"],
                               generator=generator)

    def export(self, ema_state: dict[str, Tensor], out_dir: Path, meta: dict[str, Any]) -> None:
        save_export(self.model, self.cfg, out_dir, meta=meta, state=ema_state)
        write_model_card(out_dir)  # README.md with Hub front matter, beside the weights

    def sample_grid(self, path: Path) -> None:
        """The validation grid (train.sample_every): a row per class (the first GRID_CLASSES), seeds 0 to
        GRID_COLUMNS - 1 in every row, GRID_STEPS steps with the model's own rule and suggested guidance,
        from the weights being trained (the EMA, which the export takes, lags them early in a run). The
        sampler draws from its per-seed counter-based streams; the trainer forks the global RNG around
        this call, so training draws the same numbers with or without grids."""
        model, was_training = self.model, self.model.training
        classes = min(model.num_classes, GRID_CLASSES)
        labels = [c for c in range(classes) for _ in range(GRID_COLUMNS)]
        seeds = [i for _ in range(classes) for i in range(GRID_COLUMNS)]
        rule = SamplerConfig(num_steps=min(GRID_STEPS, self.cfg.tokenizer.num_tokens), draft=False,
                             **suggested_settings(model))
        model.eval()
        try:
            with torch.no_grad():
                state = sample(model, labels, seeds, rule, GuidanceConfig(**suggested_guidance(model)))
                images = self._decoder.decode(state.tokens).float().cpu()
        finally:
            model.train(was_training)
        save_grid(images, path, scale=2, cols=GRID_COLUMNS)


def train(cfg: RunConfig, out_dir: str | os.PathLike | None = None, max_steps: int | None = None, *,
          device: str = "auto", command: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Train (or resume) the generator run described by `cfg` in `out_dir` (default
    `{train.out_dir}/{name}`) on `device` (auto, cpu, cuda, cuda:N; under torchrun "cuda" is the
    process's local GPU). max_steps >= 1 stops there with a checkpoint and no export. A config whose
    weights, optimizer state and activations cannot fit on the device is refused before anything is
    built (emigm.nn.budget). See
    emigm.train.trainer.fit for the run folder, resume rules and the returned summary."""

    check_max_steps(max_steps)
    micro = micro_batch_size(cfg.train, dist.info_from_env().world_size)  # fail fast, before building the model
    dev = resolve_device(device, dist.info_from_env().local_rank)
    run_dir = Path(out_dir) if out_dir else default_run_dir(cfg)
    check_target(run_dir, "run folder", own=TRAINING_RUN)  # not an export, a tokenizer or a shipped asset
    check_training_size(cfg, cfg.name, dev, micro)  # from the config: nothing is allocated yet
    if not cfg.data.cache_latents:  # the tokenizer's files are found and checked before the model is built
        build_tokenizer(cfg.tokenizer, root=str(ASSETS_DIR))
    task = GeneratorTask(cfg, dev)
    return fit(task, cfg.train, run_dir, device=dev,
               max_steps=max_steps, num_workers=cfg.data.num_workers, command=command, progress=progress,
               desc=cfg.name)
