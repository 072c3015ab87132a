"""Training the self-guidance smoother on a frozen base model: a TrainTask for emigm.train.trainer.fit.

`python -m emigm train-sg --base fmnist-maskgit` trains a `Smoother` (emigm.nn.smoother) on the base
export's training data with the auxiliary error-token task, the base frozen (its weights never change;
a test checks they are bit-identical after training). The run folder resumes exactly like every run;
its export (`<run>/export/`) is a self-guidance smoother folder: copy it to `<base export>/self-guidance/`
(or train with `--out-dir` beside the base) and `load_pipeline` picks it up.

It also owns the auxiliary task's losses (the module and the recipes are described in
emigm.nn.smoother): `auxiliary_loss` for recipe "ours", `official_loss` for the public code's recipe.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from emigm.core.config import RunConfig, TrainConfig, from_dict, to_dict
from emigm.core.fields import check_fields
from emigm.core.masking import draw_mask
from emigm.core.seeds import STREAM_INIT, mix_seed
from emigm.eval.modelcard import write_model_card
from emigm.nn.smoother import Smoother, SmootherConfig, base_fingerprint, check_base, config_for, save_smoother
from emigm.train.generator import token_source
from emigm.train.trainer import fit

Tensor = torch.Tensor

# ----------------------------------------------------------------------------- auxiliary task


def corrupt(tokens: Tensor, mask: Tensor, model, cfg: SmootherConfig,
            generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Replace a fraction cfg.error_rate of the visible tokens by error tokens: uniform codes (discrete)
    or N(0, I) draws (continuous). Returns (corrupted tokens, replaced (B, L) bool)."""
    device = tokens.device
    u = torch.rand(mask.shape, generator=generator, device=generator.device).to(device)
    replaced = (~mask) & (u < cfg.error_rate)
    if model.discrete:
        codes = torch.randint(0, model.head.codebook_size, mask.shape, generator=generator,
                              device=generator.device).to(device)
        return torch.where(replaced, codes, tokens), replaced
    noise = torch.randn(tokens.shape, generator=generator, device=generator.device).to(device, tokens.dtype)
    return torch.where(replaced.unsqueeze(-1), noise, tokens), replaced


def auxiliary_loss(smoother: Smoother, model, tokens: Tensor, mask: Tensor, labels: Tensor,
                   generator: torch.Generator) -> Tensor:
    """The error-token correction loss of one batch: tokens x_0 (B, L) codes or (B, L, C) latents,
    mask (B, L) from the base's training masking. The base model stays frozen (no gradient to it)."""
    cfg = smoother.cfg
    if cfg.official:
        return official_loss(smoother, model, tokens, mask, labels, generator)
    corrupted, replaced = corrupt(tokens, mask, model, cfg, generator)
    cond = model.condition(labels)
    with torch.no_grad():
        first = model.features(corrupted, mask, cond, record=True)
    z_bar = model.to_z(smoother.smooth_features(model, first.hidden, labels).hidden)
    where = {"masked": mask, "replaced": replaced, "both": mask | replaced}[cfg.loss_positions]
    if not bool(where.any()):  # nothing to learn from in this batch (all visible, no errors drawn)
        return smoother.var_loss(first.layer_io) * cfg.var_weight + z_bar.sum() * 0.0
    zs = z_bar[where]
    if model.discrete:
        target = tokens[where].long()
        ce = F.cross_entropy(model.head.logits(zs), target, label_smoothing=cfg.label_smoothing)
    else:
        ce = model.head.loss(zs, tokens[where], generator=generator).mean()
    return ce + cfg.var_weight * smoother.var_loss(first.layer_io)


# ----------------------------------------------------------------------------- the official recipe


@contextlib.contextmanager
def base_dropout(model, generator: torch.Generator):
    """The base in training mode inside the block (its dropout active, as the public code's train() on
    the whole model). Dropout draws from the global RNG, so it is forked and seeded from `generator`
    (one draw) and restored after: the masks are a function of the training generator's state, which a
    checkpoint keeps, so a resumed run draws the same ones."""
    seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator, device=generator.device))
    device = next(model.parameters()).device
    cuda = device.type == "cuda"
    index = (device.index if device.index is not None else torch.cuda.current_device()) if cuda else None
    was = model.training
    with torch.random.fork_rng(devices=[index] if cuda else []):
        torch.default_generator.manual_seed(seed)
        if cuda:
            torch.cuda.default_generators[index].manual_seed(seed)
        model.train()
        try:
            yield
        finally:
            model.train(was)


@torch.no_grad()
def official_error_codes(model, labels: Tensor, generator: torch.Generator) -> Tensor:
    """(B, L) error codes as the public code draws them: p = softmax of the base's prediction on the
    all-mask input of class `labels`, then a code per position from softmax(p) (a double softmax)."""
    B, L, device = labels.shape[0], model.num_tokens, labels.device
    tokens = torch.zeros(B, L, dtype=torch.long, device=device)
    p = model.head.logits(model(tokens, torch.ones(B, L, dtype=torch.bool, device=device),
                                model.condition(labels))).softmax(-1)
    q = p.softmax(-1).reshape(B * L, -1).to(generator.device)
    return torch.multinomial(q, 1, generator=generator).view(B, L).to(device)


def official_corrupt(tokens: Tensor, mask: Tensor, codes: Tensor, cfg: SmootherConfig,
                     generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Replace exactly round(error_rate x visible) tokens of each image (half to even, at least 1) at
    positions uniform among the visible ones by `codes` (B, L); an image with fewer visible tokens than
    that takes the rest from its masked positions, which then count as visible (the public code's ranking).
    Returns (corrupted tokens, replaced (B, L) bool, the mask after)."""
    visible = (~mask).sum(1)
    count = (visible * cfg.error_rate).round().clamp(min=1).long()  # float32 product, as the public code
    keys = torch.rand(mask.shape, generator=generator, device=generator.device).to(mask.device)
    rank = (keys + mask.float()).argsort(1).argsort(1)  # every visible position ranks before the masked
    replaced = rank < count.unsqueeze(1)
    return torch.where(replaced, codes, tokens), replaced, mask & ~replaced


def official_loss(smoother: Smoother, model, tokens: Tensor, mask: Tensor, labels: Tensor,
                  generator: torch.Generator) -> Tensor:
    """The public code's error-token loss of one batch (categorical tokens (B, L)): see the module
    docstring, recipe "official". Cross-entropy on the replaced positions only, plus var_weight x the
    regulariser on pass 2's layers."""
    cfg = smoother.cfg
    with base_dropout(model, generator):
        codes = official_error_codes(model, labels, generator)
        corrupted, replaced, mask = official_corrupt(tokens, mask, codes, cfg, generator)
        with torch.no_grad():
            first = model.features(corrupted, mask, model.condition(labels))
        second = smoother.smooth_features(model, first.hidden, labels, record=True)
    logits = model.head.logits(model.to_z(second.hidden)[replaced])
    ce = F.cross_entropy(logits, tokens[replaced].long(), label_smoothing=cfg.label_smoothing)
    return ce + cfg.var_weight * smoother.var_loss(second.layer_io)


# The CPU recipe (a small module, Adam without weight decay, betas (0.9, 0.96) as the paper, warm-up
# then cosine, EMA with warm-up), sized for about 45 minutes on a 2-core CPU.
SMOOTHER_TRAIN = TrainConfig(steps=3000, batch_size=64, blr=2e-3, lr_schedule="cosine", warmup_steps=100, min_lr=1e-5,
                       weight_decay=0.0, betas=(0.9, 0.96), grad_clip=1.0, ema=0.999, ema_warmup=True,
                       precision="fp32", log_every=50, ckpt_every=250, keep_last=2, out_dir="runs")


@dataclass(frozen=True)
class SmootherRun:
    """A self-guidance training run: the module's task settings and the loop settings. The module's
    shape (width, layers, classes) is read from the base model."""

    name: str = "sg"
    smoother: SmootherConfig = field(default_factory=SmootherConfig)
    train: TrainConfig = field(default_factory=lambda: SMOOTHER_TRAIN)

    def __post_init__(self) -> None:
        check_fields(self)


class SmootherTask:
    """The Smoother as a TrainTask: the base model (a loaded Pipeline) is frozen and in eval mode; only the
    smoother trains."""

    def __init__(self, pipe, run: SmootherRun, device: torch.device) -> None:
        self.pipe, self.run, self.device = pipe, run, device
        self.base: RunConfig = pipe.cfg
        self.model = pipe.model.to(device).eval().requires_grad_(False)
        # initial weights from a seed of (train.seed, "init"), as the generator's (build_model): with the
        # global RNG they differed between two runs of the same command, so no two runs were alike
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(mix_seed(run.train.seed, STREAM_INIT))
            self.smoother = Smoother(run.smoother).to(device)
        check_base(self.model, run.smoother, "the self-guidance smoother")
        self.trainable: nn.Module = self.smoother
        self._token_source = token_source
        self._to_tokens = None
        self.fingerprint = base_fingerprint(self.model.state_dict())  # what the module's loader recomputes

    def config_dict(self) -> dict[str, Any]:
        return {"name": self.run.name, "smoother": to_dict(self.run.smoother),
                "base": {"label": self.pipe.label, "fingerprint": self.fingerprint, "config": to_dict(self.base)}}

    def config_defaults(self) -> dict[str, Any]:
        # runs begun before the recipe existed, or before a field of the base's config (its run config is
        # recorded under base.config) was added: such a field resumes at its default value
        return {"smoother": {"recipe": "ours"}, "base": {"config": to_dict(RunConfig())}}

    def check_config(self, doc: dict[str, Any]) -> None:
        if not isinstance(doc.get("smoother"), dict):
            raise ValueError("expected a \"smoother\" object")
        from_dict(SmootherConfig, doc["smoother"], "smoother")

    def dataset(self) -> torch.utils.data.Dataset:
        dataset, self._to_tokens = self._token_source(self.base, self.device)
        return dataset

    def to_inputs(self, batch: tuple[Tensor, ...], generator: torch.Generator) -> dict[str, Tensor]:
        x, labels = batch
        tokens = self._to_tokens(x, generator)
        draw = draw_mask(self.base.masking, x.shape[0], self.base.tokenizer.num_tokens, generator=generator,
                         device=self.device)
        return {"tokens": tokens, "mask": draw.mask, "labels": labels}

    def loss(self, inputs: dict[str, Tensor], generator: torch.Generator) -> Tensor:
        return auxiliary_loss(self.smoother, self.model, inputs["tokens"], inputs["mask"], inputs["labels"], generator)

    def export(self, ema_state: dict[str, Tensor], out_dir: Path, meta: dict[str, Any]) -> None:
        base = {**to_dict(self.base), "label": self.pipe.label, "fingerprint": self.fingerprint}  # base_record
        save_smoother(self.smoother, out_dir, base, meta=meta, state=ema_state)
        write_model_card(out_dir)  # README.md with Hub front matter, beside the weights


def smoother_run(pipe, name: str = "", recipe: str = "ours", **smoother_overrides: Any) -> SmootherRun:
    """The default run for a base model (a loaded Pipeline): the smoother shaped for it with the fields
    of `recipe` (emigm.nn.smoother.RECIPE_FIELDS), the CPU training recipe."""
    if not pipe.model.discrete and pipe.cfg.head.kind != "diffusion":
        raise ValueError("self-guidance needs a categorical or diffusion head")
    smoother = config_for(pipe.model, recipe, **smoother_overrides)
    return SmootherRun(name=name or f"{pipe.label}-sg", smoother=smoother, train=SMOOTHER_TRAIN)


def train_smoother(pipe, run: SmootherRun, run_dir: str | os.PathLike, *, device: torch.device,
             max_steps: int | None = None, command: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Train (or resume) the self-guidance smoother of `pipe` (an emigm.io.loading.Pipeline) in
    `run_dir`; at run.train.steps the module is exported to `run_dir/export`."""

    run = replace(run, smoother=replace(run.smoother))  # validated copy
    task = SmootherTask(pipe, run, device)
    return fit(task, run.train, Path(run_dir), device=device, max_steps=max_steps, command=command,
               progress=progress, desc=run.name)
