"""Frozen configuration dataclasses, one per concern, and their JSON / dotted-override plumbing.

A run is described by `RunConfig` (tokenizer, backbone, head, masking, data, train); it is saved as
JSON in every run folder, checkpoint and export. Every field is an `emigm.core.fields.option` and every
config is validated when it is built, so an invalid config cannot exist. Sampling options live in
`emigm.sample.sampler.SamplerConfig` and `emigm.core.guidance.GuidanceConfig` and use the same helpers.
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from emigm.core.fields import FieldError, check_fields, coerce_tuples, option, parse_float, parse_int, show
from emigm.core.names import (
    DATASETS,
    DISTRIBUTIONS,
    HEAD_KINDS,
    LR_SCHEDULES,
    NULL_MODES,
    PRECISIONS,
    PREDICTIONS,
    TIME_LABELS,
    TOKENIZER_KINDS,
    WEIGHTINGS,
)
from emigm.core.schedules import SCHEDULES

T = TypeVar("T")


# Tokens per image: a 256 x 256 grid at most (the paper's models use 256; attention over more is
# beyond any machine this code runs on, and shapes past it only come from typos or hostile files).
MAX_TOKENS = 256 * 256


@dataclass(frozen=True)
class TokenizerConfig:
    """How images become tokens. kind: patch (continuous p x p patches), vq (discrete codes from a
    trained VQ-VAE), kl (continuous latents of the small KL autoencoder), kl16 (continuous LDM KL-16
    latents), dcae (continuous DC-AE latents)."""

    kind: str = option("patch", "tokenizer kind", choices=TOKENIZER_KINDS)
    image_size: int = option(28, "image side in pixels", low=1, high=4096)
    channels: int = option(1, "image channels", low=1, high=16)
    patch_size: int = option(4, "patch: pixels per token side", low=1, high=4096)
    codebook_size: int = option(0, "vq: number of codes", low=0, high=1 << 20)
    latent_channels: int = option(0, "kl / kl16 / dcae: channels per latent token", low=0, high=4096)
    stride: int = option(0, "kl / kl16 / dcae / vq: pixels per token side", low=0, high=4096)
    path: str = ""  # vq / kl / kl16 / dcae weights

    def __post_init__(self) -> None:
        check_fields(self)
        step = self.patch_size if self.kind == "patch" else self.stride
        if step < 1 or self.image_size % step:
            raise ValueError(f"tokenizer.image_size {self.image_size} is not a positive multiple of the "
                             f"token stride {step}")
        if self.num_tokens > MAX_TOKENS:
            raise ValueError(f"tokenizer.image_size {self.image_size} at stride {step} gives {self.grid} x "
                             f"{self.grid} = {self.num_tokens} tokens; at most {MAX_TOKENS} (256 x 256)")
        if self.kind == "vq" and self.codebook_size < 2:
            raise ValueError(f"tokenizer.codebook_size must be >= 2 for vq, got {self.codebook_size}")

    @property
    def grid(self) -> int:
        step = self.patch_size if self.kind == "patch" else self.stride
        return self.image_size // step

    @property
    def num_tokens(self) -> int:
        return self.grid * self.grid

    @property
    def token_dim(self) -> int:
        """Channels per continuous token (1 for discrete tokens, whose values are code ids)."""
        if self.kind == "patch":
            return self.channels * self.patch_size**2
        if self.kind == "vq":
            return 1
        return self.latent_channels

    @property
    def discrete(self) -> bool:
        return self.kind == "vq"


@dataclass(frozen=True)
class BackboneConfig:
    """MAE-style encoder-decoder (eMIGM / MAR). Widths: encoder De, decoder Dd."""

    width: int = option(192, "encoder width De", low=1, high=16384)
    decoder_width: int = option(192, "decoder width Dd", low=1, high=16384)
    encoder_depth: int = option(4, "encoder blocks", low=1, high=512)
    decoder_depth: int = option(4, "decoder blocks", low=1, high=512)
    num_heads: int = option(6, "encoder attention heads", low=1, high=1024)
    decoder_num_heads: int = option(6, "decoder attention heads", low=1, high=1024)
    mlp_ratio: float = option(4.0, "MLP hidden width / width", low=0.0, high=64.0, open_low=True)
    buffer_size: int = option(4, "class-token slots (64 in the paper)", low=1, high=4096)
    num_classes: int = option(10, "classes", low=1, high=1 << 20)
    null_mode: str = option("mask", "mask: the null class is the mask token (CFG with mask); fake: a "
                                    "separate learned null vector", choices=NULL_MODES)
    mae: bool = True  # encoder sees only visible tokens
    attn_drop: float = option(0.0, "attention-probability dropout in training (reference: 0.1)",
                              low=0.0, high=1.0, open_high=True)
    proj_drop: float = option(0.0, "dropout after the attention projection and the MLP layers "
                                    "(reference: 0.1)", low=0.0, high=1.0, open_high=True)
    grad_checkpointing: bool = False

    def __post_init__(self) -> None:
        check_fields(self)
        for name, width, heads in (("width", self.width, self.num_heads),
                                   ("decoder_width", self.decoder_width, self.decoder_num_heads)):
            if width % heads:
                raise ValueError(f"backbone.{name} {width} is not divisible by its {heads} heads")
        if (self.null_mode == "mask" or not self.mae) and self.width != self.decoder_width:
            raise ValueError("null_mode 'mask' and mae=false use the mask token in the encoder: "
                             "backbone.width and decoder_width must be equal")


@dataclass(frozen=True)
class HeadConfig:
    """Per-token head. diffusion: MAR's AdaLN MLP + Gaussian diffusion; categorical: logits over codes."""

    kind: str = option("diffusion", "per-token head", choices=HEAD_KINDS)
    width: int = option(256, "diffusion head width", low=1, high=16384)
    depth: int = option(3, "diffusion head residual blocks", low=1, high=256)
    num_timesteps: int = option(1000, "diffusion steps of the head's training schedule", low=2, high=100000)
    batch_mul: int = option(4, "noise draws per token in training (diffusion_batch_mul)", low=1, high=64)
    time_label: str = option("interp", "DPM-Solver time label: interp, the step matching the noise level "
                                       "(ours); reference, the reference's (t - 1/N) x 1000 (official "
                                       "checkpoints); see emigm.nn.diffusion", choices=TIME_LABELS)
    prediction: str = option("eps", "what the diffusion head predicts: eps (MAR / eMIGM, official checkpoints) "
                                    "or v = alpha eps - sigma x0 (well conditioned at high noise)",
                             choices=PREDICTIONS)
    x0_clip: float = option(0.0, "clamp the head's x0 prediction to [-x0_clip, x0_clip] when sampling "
                                 "(0 = off)", low=0.0, high=1e6)
    label_smoothing: float = option(0.1, "categorical: label smoothing", low=0.0, high=1.0, open_high=True)

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class MaskingConfig:
    """Training-time masking (paper Table 1 and Sec. 3)."""

    schedule: str = option("exp", "mask schedule gamma(t)", choices=SCHEDULES)
    distribution: str = option("bernoulli", "masking distribution q(x_t | x_0)", choices=DISTRIBUTIONS)
    shared_count: bool = True  # bernoulli: one count per batch (reference behaviour)
    t_min: float = option(0.2, "time truncation: t is clamped below at t_min", low=0.0, high=1.0, open_high=True)
    weighting: str = option("one", "loss weight w(t): one, or mdm gamma'(t)/gamma(t)", choices=WEIGHTINGS)
    label_drop: float = option(0.1, "probability of training a sample with the null class", low=0.0, high=1.0)

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class DataConfig:
    name: str = option("fashion-mnist", "dataset", choices=DATASETS)
    path: str = ""  # empty: the dataset's default location
    image_size: int = option(28, "image side in pixels", low=1, high=4096)
    flip: bool = False
    cache_latents: str = ""  # folder for cached VAE latents (kl16 / dcae)
    limit: int = option(0, "use only the first N images (0: all)", low=0, high=1 << 40)
    num_workers: int = option(0, "DataLoader worker processes", low=0, high=256)

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class TrainConfig:
    steps: int = option(20000, "optimiser steps", low=1, high=1 << 40)
    batch_size: int = option(256, "global batch across all ranks and accumulation steps", low=1, high=1 << 24)
    grad_accum: int = option(1, "gradient accumulation steps", low=1, high=4096)
    blr: float = option(1e-4, "base learning rate: lr = blr * batch_size / 256", low=0.0, high=10.0, open_low=True)
    lr_schedule: str = option("constant", "after warm-up: constant or cosine", choices=LR_SCHEDULES)
    warmup_steps: int = option(1000, "linear warm-up steps", low=0, high=1 << 40)
    min_lr: float = option(0.0, "final learning rate of the cosine schedule", low=0.0, high=10.0)
    weight_decay: float = option(0.02, "AdamW weight decay", low=0.0, high=10.0)
    betas: tuple[float, float] = option((0.9, 0.95), "AdamW betas", low=0.0, high=1.0, open_high=True)
    grad_clip: float = option(3.0, "gradient norm clip (0 = off)", low=0.0, high=1e6)
    ema: float = option(0.9999, "EMA decay of the weights", low=0.0, high=1.0, open_high=True)
    ema_warmup: bool = False  # decay min(ema, (1 + step) / (10 + step)): for short runs
    precision: str = option("bf16", "bf16 / fp16 autocast on CUDA; fp32 everywhere else", choices=PRECISIONS)
    compile: bool = False
    seed: int = option(0, "seed of initial weights, data order and training draws", low=0, high=(1 << 63) - 1)
    log_every: int = option(50, "steps per metrics line", low=1, high=1 << 40)
    ckpt_every: int = option(1000, "steps per checkpoint", low=1, high=1 << 40)
    keep_last: int = option(2, "checkpoints kept", low=1, high=1 << 20)
    sample_every: int = option(0, "write a class grid PNG at fixed seeds into the run folder's samples/ every K "
                                  "steps and at the end (0: never)", low=0, high=1 << 40)
    out_dir: str = "runs"
    init_from: str = ""  # fine-tune: an export folder or shipped name whose weights start the run (step 0 only)

    def __post_init__(self) -> None:
        coerce_tuples(self)
        check_fields(self)
        if self.warmup_steps > self.steps:
            raise ValueError(f"train.warmup_steps {self.warmup_steps} exceeds train.steps {self.steps}: the run would "
                             "end before its learning rate reaches its peak; lower train.warmup_steps")


@dataclass(frozen=True)
class RunConfig:
    name: str = "run"
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        tk, hd = self.tokenizer, self.head
        if tk.discrete != (hd.kind == "categorical"):
            raise ValueError(
                f"head {hd.kind!r} does not fit tokenizer {tk.kind!r}: discrete tokens need the "
                "categorical head, continuous tokens the diffusion head"
            )
        if tk.kind in ("kl", "kl16", "dcae") and tk.latent_channels < 1:
            raise ValueError(f"tokenizer.latent_channels must be >= 1 for {tk.kind}, got {tk.latent_channels}")
        if self.data.image_size != tk.image_size:
            raise ValueError(f"data.image_size {self.data.image_size} does not match tokenizer.image_size "
                             f"{tk.image_size}: the tokenizer encodes images of its own size; set both the same")


# ----------------------------------------------------------------------------- JSON plumbing


def to_dict(cfg: Any) -> dict[str, Any]:
    """Dataclass -> plain dict (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def to_json(cfg: Any) -> str:
    return json.dumps(to_dict(cfg), indent=2, sort_keys=True)


def _coerce(tp: Any, value: Any, where: str, strict: bool = True) -> Any:
    """`value` as the type `tp`, or a one-line ValueError naming `where`. strict (JSON read from a file):
    the JSON type must be the field's: an integer for an int (not "32", not 32.5, not true), a number
    for a float, true/false for a bool, a string for a str. Not strict (a value typed on the command
    line): strings are parsed, in ASCII only (emigm.core.fields.parse_int / parse_float)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected an object, got {value!r}")
        return from_dict(tp, value, where)
    if origin is Literal:
        if value not in typing.get_args(tp):
            valid = ", ".join(map(str, typing.get_args(tp)))
            raise ValueError(f"{where}: {value!r} is not allowed; valid: {valid}")
        return value
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ValueError(f"{where}: expected {len(args)} values, got {value!r}")
        return tuple(_coerce(a, v, where, strict) for a, v in zip(args, value))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(args[0], value, where, strict)
    quoted = " (a string; write the value without quotes)" if strict and isinstance(value, str) else ""
    if tp is bool:
        if isinstance(value, bool):
            return value
        if not strict and isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ValueError(f"{where}: expected true/false, got {value!r}{quoted}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if not strict and isinstance(value, str):
            try:
                return parse_int(value, allow_exponent=True)
            except ValueError:
                pass
        raise ValueError(f"{where}: expected an integer, got {show(value)}{quoted}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if not strict and isinstance(value, str):
            try:
                return parse_float(value)
            except ValueError:
                pass
        raise ValueError(f"{where}: expected a number, got {value!r}{quoted}")
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Plain dict (JSON read from a file) -> dataclass, checking names and exact types (`_coerce`,
    strict). Unknown keys raise ValueError."""
    where = f"{where}." if where and not where.endswith(".") else where
    if not isinstance(data, dict):
        raise ValueError(f"{where.rstrip('.') or 'config'}: expected an object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(
            f"unknown config key(s) {', '.join(sorted(where + str(k) for k in unknown))}; "
            f"valid: {', '.join(sorted(names))}"
        )
    kwargs = {k: _coerce(hints[k], v, f"{where}{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except FieldError as e:  # "num_heads must be ..." -> "backbone.num_heads must be ..."
        if not where or e.field not in names:
            raise
        raise e.renamed(where + e.field) from None
    except ValueError as e:
        msg = str(e)
        if not where:
            raise
        first = msg.split(" ", 1)[0]
        if first in names:  # "num_heads must be ..." -> "backbone.num_heads must be ..."
            raise ValueError(f"{where}{msg}") from None
        if first == "unknown" and msg.split(" ", 2)[1] in names:
            raise ValueError(msg.replace(" ", f" {where}", 1)) from None
        if msg.startswith(where):
            raise
        raise ValueError(f"{where.rstrip('.')}: {msg}") from None


def from_json(cls: type[T], text: str) -> T:
    return from_dict(cls, json.loads(text))


def override(cfg: T, key: str, value: Any) -> T:
    """Return cfg with the dotted `key` (e.g. "train.blr") set to `value` (strings are parsed by the
    field's type)."""
    return apply_overrides(cfg, [(key, value)])


def apply_overrides(cfg: T, pairs: list[tuple[str, Any]]) -> T:
    """Return cfg with every dotted (key, value) pair set, validated once at the end (so fields that
    must agree, such as width and decoder_width, can be changed together). String values are parsed
    by the field's type (command-line overrides: ASCII numbers, true/false)."""
    doc = to_dict(cfg)
    for key, value in pairs:
        cls, node, parts = type(cfg), doc, key.split(".")
        for i, part in enumerate(parts):
            names = {f.name for f in dataclasses.fields(cls)}
            if part not in names:
                where = ".".join(parts[:i]) or "the top level"
                raise ValueError(f"unknown config key {key!r}; valid at {where}: {', '.join(sorted(names))}")
            tp = typing.get_type_hints(cls)[part]
            if i < len(parts) - 1:
                if not dataclasses.is_dataclass(tp):
                    raise ValueError(f"config key {key!r}: {part!r} has no sub-keys")
                cls, node = tp, node[part]
            else:
                if dataclasses.is_dataclass(tp):
                    raise ValueError(f"config key {key!r} names a section; set one of its keys")
                if isinstance(value, str) and typing.get_origin(tp) is tuple:
                    value = value.replace(",", " ").split()
                node[part] = _coerce(tp, value, key, strict=False)
    return from_dict(type(cfg), doc)
