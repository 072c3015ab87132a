"""Training the self-guidance smoother on a frozen base model: a TrainTask for emigm.train.trainer.fit.

`python -m emigm train-sg --base fmnist-maskgit` trains a `Smoother` (emigm.nn.smoother) on the base
export's training data with the auxiliary error-token task, the base frozen (its weights never change;
a test checks they are bit-identical after training). The run folder resumes exactly like every run;
its export (`<run>/export/`) is a self-guidance smoother folder: copy it to `<base export>/self-guidance/`
(or train with `--out-dir` beside the base) and `load_pipeline` picks it up.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from emigm.core.config import RunConfig, TrainConfig, from_dict, to_dict
from emigm.core.fields import check_fields
from emigm.core.masking import draw_mask
from emigm.nn.smoother import (
    Smoother,
    SmootherConfig,
    auxiliary_loss,
    base_fingerprint,
    check_base,
    config_for,
    save_smoother,
)
from emigm.train.generator import token_source
from emigm.train.trainer import fit

Tensor = torch.Tensor

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
        return {}

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


def smoother_run(pipe, name: str = "", **smoother_overrides: Any) -> SmootherRun:
    """The default run for a base model (a loaded Pipeline): the smoother shaped for it, the CPU recipe."""
    if not pipe.model.discrete and pipe.cfg.head.kind != "diffusion":
        raise ValueError("self-guidance needs a categorical or diffusion head")
    return SmootherRun(name=name or f"{pipe.label}-sg", smoother=config_for(pipe.model, **smoother_overrides),
                       train=SMOOTHER_TRAIN)


def train_smoother(pipe, run: SmootherRun, run_dir: str | os.PathLike, *, device: torch.device,
             max_steps: int | None = None, command: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Train (or resume) the self-guidance smoother of `pipe` (an emigm.io.loading.Pipeline) in
    `run_dir`; at run.train.steps the module is exported to `run_dir/export`."""

    run = replace(run, smoother=replace(run.smoother))  # validated copy
    task = SmootherTask(pipe, run, device)
    return fit(task, run.train, Path(run_dir), device=device, max_steps=max_steps, command=command,
               progress=progress, desc=run.name)
