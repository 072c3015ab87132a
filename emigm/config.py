"""Frozen configuration dataclasses, one per concern, and their JSON / dotted-override plumbing.

A run is described by `RunConfig` (tokenizer, backbone, head, masking, data, train); it is saved as
JSON in every run folder, checkpoint and export. Sampling options live in `emigm.sampler`
(`SamplerConfig`, `GuidanceConfig`) and use the same helpers.
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class TokenizerConfig:
    """How images become tokens. kind: patch (continuous p x p patches), vq (discrete codes from a
    trained VQ-VAE), kl (continuous latents of the small KL autoencoder), kl16 (continuous LDM KL-16
    latents), dcae (continuous DC-AE latents)."""

    kind: Literal["patch", "vq", "kl", "kl16", "dcae"] = "patch"
    image_size: int = 28
    channels: int = 1
    patch_size: int = 4
    codebook_size: int = 0  # vq only
    latent_channels: int = 0  # kl / kl16 / dcae only
    stride: int = 0  # kl / kl16 / dcae / vq: pixels per token side
    path: str = ""  # vq / kl16 / dcae weights

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

    width: int = 192
    decoder_width: int = 192
    encoder_depth: int = 4
    decoder_depth: int = 4
    num_heads: int = 6
    decoder_num_heads: int = 6
    mlp_ratio: float = 4.0
    buffer_size: int = 4  # class-token slots (64 in the paper)
    num_classes: int = 10
    null_mode: Literal["mask", "fake"] = "mask"  # "mask": null class == mask token (CFG with mask)
    mae: bool = True  # encoder sees only visible tokens
    attn_drop: float = 0.0  # attention-probability dropout in training (reference: 0.1)
    proj_drop: float = 0.0  # dropout after the attention projection and the MLP (reference: 0.1)
    grad_checkpointing: bool = False


@dataclass(frozen=True)
class HeadConfig:
    """Per-token head. diffusion: MAR's AdaLN MLP + Gaussian diffusion; categorical: logits over codes."""

    kind: Literal["diffusion", "categorical"] = "diffusion"
    width: int = 256
    depth: int = 3
    num_timesteps: int = 1000
    batch_mul: int = 4  # diffusion_batch_mul: noise draws per token in training
    # DPM-Solver time label: "interp" the step matching the noise level (ours), "reference" the
    # reference's (t - 1/N) x 1000 (official checkpoints); see emigm.diffusion
    time_label: Literal["interp", "reference"] = "interp"
    label_smoothing: float = 0.1  # categorical only


@dataclass(frozen=True)
class MaskingConfig:
    """Training-time masking (paper Table 1 and Sec. 3)."""

    schedule: Literal["linear", "cosine", "exp"] = "exp"
    distribution: Literal["bernoulli", "exact", "mar"] = "bernoulli"
    shared_count: bool = True  # bernoulli: one count per batch (reference behaviour)
    t_min: float = 0.2  # time truncation
    weighting: Literal["one", "mdm"] = "one"  # w(t) = 1 or gamma'(t)/gamma(t)
    label_drop: float = 0.1  # probability of training a sample with the null class


@dataclass(frozen=True)
class DataConfig:
    name: Literal["fashion-mnist", "imagefolder", "synthetic"] = "fashion-mnist"
    path: str = ""  # empty: the dataset's default location
    image_size: int = 28
    flip: bool = False
    cache_latents: str = ""  # folder for cached VAE latents (kl16 / dcae)
    limit: int = 0  # use only the first N images (0: all)
    num_workers: int = 0


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 20000
    batch_size: int = 256  # global batch across all ranks and accumulation steps
    grad_accum: int = 1
    blr: float = 1e-4  # lr = blr * batch_size / 256
    lr_schedule: Literal["constant", "cosine"] = "constant"
    warmup_steps: int = 1000
    min_lr: float = 0.0
    weight_decay: float = 0.02
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 3.0
    ema: float = 0.9999
    ema_warmup: bool = False  # decay min(ema, (1 + step) / (10 + step)): for short runs
    precision: Literal["fp32", "bf16", "fp16"] = "bf16"  # bf16/fp16 apply on CUDA only
    compile: bool = False
    seed: int = 0
    log_every: int = 50
    ckpt_every: int = 1000
    keep_last: int = 2
    out_dir: str = "runs"


@dataclass(frozen=True)
class RunConfig:
    name: str = "run"
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> "RunConfig":
        tk, bb, hd = self.tokenizer, self.backbone, self.head
        if tk.discrete != (hd.kind == "categorical"):
            raise ValueError(
                f"head {hd.kind!r} does not fit tokenizer {tk.kind!r}: discrete tokens need the "
                "categorical head, continuous tokens the diffusion head"
            )
        if tk.grid < 1 or tk.image_size % (tk.patch_size if tk.kind == "patch" else tk.stride or 1):
            raise ValueError(f"image_size {tk.image_size} is not a multiple of the token stride")
        if (bb.null_mode == "mask" or not bb.mae) and bb.width != bb.decoder_width:
            raise ValueError("null_mode 'mask' and mae=false use the mask token in the encoder: "
                             "width and decoder_width must be equal")
        for name, width, heads in (("width", bb.width, bb.num_heads),
                                   ("decoder_width", bb.decoder_width, bb.decoder_num_heads)):
            if width % heads:
                raise ValueError(f"backbone.{name} {width} is not divisible by its {heads} heads")
        if not 0.0 <= self.masking.t_min < 1.0:
            raise ValueError(f"masking.t_min must be in [0, 1), got {self.masking.t_min}")
        return self


# ----------------------------------------------------------------------------- JSON plumbing


def to_dict(cfg: Any) -> dict[str, Any]:
    """Dataclass -> plain dict (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def to_json(cfg: Any) -> str:
    return json.dumps(to_dict(cfg), indent=2, sort_keys=True)


def _coerce(tp: Any, value: Any, where: str) -> Any:
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
        return tuple(_coerce(a, v, where) for a, v in zip(args, value))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(args[0], value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ValueError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"{where}: expected an integer, got {value!r}")
        try:
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: expected an integer, got {value!r}") from None
    if tp is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: expected a number, got {value!r}") from None
    if tp is str:
        return str(value)
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Plain dict -> dataclass, checking names and types. Unknown keys raise ValueError."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(
            f"unknown config key(s) {', '.join(sorted(where + k for k in unknown))}; "
            f"valid: {', '.join(sorted(names))}"
        )
    kwargs = {k: _coerce(hints[k], v, f"{where}{k}") for k, v in data.items()}
    return cls(**kwargs)


def from_json(cls: type[T], text: str) -> T:
    return from_dict(cls, json.loads(text))


def override(cfg: T, key: str, value: Any) -> T:
    """Return cfg with the dotted `key` (e.g. "train.blr") set to `value` (strings are parsed by the
    field's type)."""
    head, _, rest = key.partition(".")
    names = {f.name: f for f in dataclasses.fields(cfg)}
    if head not in names:
        raise ValueError(f"unknown config key {key!r}; valid at this level: {', '.join(names)}")
    current = getattr(cfg, head)
    if rest:
        if not dataclasses.is_dataclass(current):
            raise ValueError(f"config key {key!r}: {head!r} has no sub-keys")
        return dataclasses.replace(cfg, **{head: override(current, rest, value)})
    tp = typing.get_type_hints(type(cfg))[head]
    if isinstance(value, str) and typing.get_origin(tp) is tuple:
        value = [v for v in value.replace(",", " ").split()]
    return dataclasses.replace(cfg, **{head: _coerce(tp, value, key)})


def apply_overrides(cfg: T, pairs: list[tuple[str, Any]]) -> T:
    for key, value in pairs:
        cfg = override(cfg, key, value)
    return cfg
