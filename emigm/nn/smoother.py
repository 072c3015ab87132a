"""Self-guidance (Hur et al., NeurIPS 2024): the smoothing module H, its auxiliary task and its export.

H is a small top-down attention-steering add-on (in the style of TOAST) on top of a FROZEN masked
generator. Given the hidden states h of the ordinary pass on x_t, it produces a "semantically smoothed"
prediction, which the sampler guides away from (emigm.core.guidance: logits = (1 + s) normal - s smooth):

1. token selection: a class anchor xi_c = Linear(LayerNorm(embedding(c))) gates every position by
   a_i = clamp(cos(h_i, xi_c), 0, 1);
2. channel selection: a learned square matrix P, initialised to the identity;
3. feedback: one block per backbone layer (two bias-free linears), run from the top layer down; block l
   passes down(x) to the block below and emits the top-down signal td_l = out(down(x));
4. a second pass through the SAME frozen layers on an all-mask input whose class slots hold the null
   class, with td_l added to layer l's attention values (emigm.nn.blocks); the frozen head reads it out.
The feedback's `down` starts as the identity and `out` at zero, so an untrained H gives the plain
all-mask prediction.

Auxiliary task (error-token correction): mask x_0 with the base model's training schedule, replace a
fraction `error_rate` (0.3) of the VISIBLE tokens by uniformly drawn codes (continuous tokens: by
N(0, I) draws), run pass 1 on that input and train H so the smoothed prediction recovers x_0, with
cross-entropy (label smoothing 0.1) plus 0.1 x the variance regulariser: for every layer, the MSE
between down(layer output) and the layer input (both from pass 1, stop-gradient).

Loss positions (`loss_positions`): the paper's equation sums over the MASKED positions; the public code
puts the loss on the REPLACED (error) positions only. We default to "masked", where the smoothed
prediction is used at sampling time; "replaced" and "both" are offered for comparison.

Our extension to continuous tokens: the same module on a diffusion-head model, the smoothed condition
z_bar from the steered pass, the head's loss on z_bar in training and eps = eps_bar + (1 + s)(eps - eps_bar)
in sampling.

The auxiliary task's losses live with the training (emigm.train.smoother).

Recipes (`recipe`): "ours" is the above. "official" does what the public code (JiwanHur/UnlockMGM,
muse/modeling_transformer_toast.py and training/ft_maskgit_org_toast.py) does, point by point:
- error tokens: exactly round(error_rate x visible) per image (half to even, at least 1), at positions
  drawn uniformly among the visible ones (an image with none visible gets one masked position replaced,
  which then counts as visible); their codes drawn from softmax(p), p = softmax of the base's own
  prediction on the all-mask input of the image's class (a double softmax, hence close to uniform);
- the loss: cross-entropy on the replaced positions only (loss_positions "replaced");
- the variance regulariser on the SECOND (steered, all-mask) pass's layer inputs and outputs;
- the frozen base in training mode in all its passes (its dropout active), the masks drawn from the
  global RNG seeded from the training generator (`base_dropout`), so a resumed run is exact;
- the second pass's class slots carry the mask token (as masked positions do), not the null class;
- the value bias added a second time with the top-down signal (emigm.nn.blocks, td_bias);
- init: every linear and the class embedding truncated-normal(0.02), biases zero, LayerNorm eps 1e-5
  (so an untrained module is not the identity).
Still different from the public code in both recipes: the class anchor is one embedding per class, not
the public code's factorised generator (16 factors plus a position term: the same vectors, another
parametrisation); the selection reads the hidden states after the decoder's final norm (the public
MaskGIT is post-LN: its last layer's output is already normalised); categorical heads only for
"official" (the public code has no continuous head).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save
from torch import nn

from emigm.core.config import from_dict, to_dict
from emigm.core.fields import NAME, FieldError, check_fields, option
from emigm.core.fileio import write_bytes
from emigm.core.statedict import CheckpointError, check_state_dict, read_safetensors, shapes_of

Tensor = torch.Tensor
LOSS_POSITIONS = {"masked": "the masked positions (the paper's equation)",
                  "replaced": "the replaced (error) positions (the public code)",
                  "both": "masked and replaced positions"}
RECIPES = {"ours": "our reading of the paper (see emigm.nn.smoother)",
           "official": "what the public code (JiwanHur/UnlockMGM) does, point by point"}
RECIPE_FIELDS = {"ours": {}, "official": {"loss_positions": "replaced"}}  # what each recipe sets on the others
SMOOTHER_DIR, WEIGHTS_FILE, CONFIG_FILE = "self-guidance", "model.safetensors", "config.json"


@dataclass(frozen=True)
class SmootherConfig:
    """The module's shape and its auxiliary task."""

    width: int = option(192, "hidden width of the base model (encoder and decoder)", low=1, high=8192)
    num_layers: int = option(6, "transformer layers of the base model (one feedback block each)", low=1,
                             high=512)
    num_classes: int = option(10, "classes of the base model", low=1, high=100000)
    error_rate: float = option(0.3, "fraction of visible tokens replaced by error tokens", low=0.0, high=1.0)
    loss_positions: str = option("masked", "where the auxiliary loss is taken", choices=LOSS_POSITIONS)
    var_weight: float = option(0.1, "weight of the variance regulariser", low=0.0, high=100.0)
    label_smoothing: float = option(0.1, "label smoothing of the cross-entropy (categorical heads)",
                                    low=0.0, high=1.0)
    recipe: str = option("ours", "the auxiliary task, pass 2 and init: ours or the public code's", choices=RECIPES)

    def __post_init__(self) -> None:
        check_fields(self)
        if self.recipe == "official" and self.loss_positions != "replaced":
            raise FieldError("loss_positions", f"{NAME} must be 'replaced' with recipe official (the public "
                                               f"code's loss positions), got {self.loss_positions!r}")

    @property
    def official(self) -> bool:
        return self.recipe == "official"


class FeedbackBlock(nn.Module):
    """x -> (down(x) for the block below, td = out(down(x)) for this layer); bias-free linears, `down`
    the identity and `out` zero at start (official: both truncated-normal(0.02))."""

    def __init__(self, width: int, official: bool = False) -> None:
        super().__init__()
        self.down = nn.Linear(width, width, bias=False)
        self.out = nn.Linear(width, width, bias=False)
        with torch.no_grad():
            if official:
                nn.init.trunc_normal_(self.down.weight, std=0.02)
                nn.init.trunc_normal_(self.out.weight, std=0.02)
            else:
                self.down.weight.copy_(torch.eye(width))
                self.out.weight.zero_()

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.down(x)
        return x, self.out(x)


class Smoother(nn.Module):
    """The self-guidance smoother H for one base model (see the module docstring)."""

    def __init__(self, cfg: SmootherConfig) -> None:
        super().__init__()
        self.cfg = cfg
        D = cfg.width
        self.anchor = nn.Embedding(cfg.num_classes, D)
        self.anchor_norm = nn.LayerNorm(D, eps=1e-5 if cfg.official else 1e-6)
        self.anchor_proj = nn.Linear(D, D)
        self.channel = nn.Parameter(torch.eye(D))  # channel selection P, identity at start
        self.feedback = nn.ModuleList(FeedbackBlock(D, cfg.official) for _ in range(cfg.num_layers))
        if cfg.official:
            with torch.no_grad():
                nn.init.trunc_normal_(self.anchor.weight, std=0.02)
                nn.init.trunc_normal_(self.anchor_proj.weight, std=0.02)
                self.anchor_proj.bias.zero_()
        else:
            nn.init.normal_(self.anchor.weight, std=0.02)

    def select(self, hidden: Tensor, labels: Tensor) -> Tensor:
        """Token then channel selection: (B, S, D) hidden states -> (B, S, D)."""
        xi = self.anchor_proj(self.anchor_norm(self.anchor(labels)))  # (B, D)
        gate = F.cosine_similarity(hidden, xi.unsqueeze(1), dim=-1).clamp(0.0, 1.0)  # (B, S)
        return (hidden * gate.unsqueeze(-1)) @ self.channel

    def top_down(self, x: Tensor) -> list[Tensor]:
        """Top-down signals, one per layer, bottom layer first (computed from the top down)."""
        td: list[Tensor] = [x] * len(self.feedback)
        for layer in reversed(range(len(self.feedback))):
            x, td[layer] = self.feedback[layer](x)
        return td

    def smooth_features(self, model, hidden: Tensor, labels: Tensor, record: bool = False):
        """Pass 2: the frozen layers on an all-mask input (class slots: the null class; official: the
        mask token), steered by the top-down signals from the pass-1 hidden states `hidden`
        (B, Bf + L, D). Returns the model's Features."""
        B, L = hidden.shape[0], model.num_tokens
        mask = torch.ones(B, L, dtype=torch.bool, device=hidden.device)
        tokens = (torch.zeros(B, L, dtype=torch.long, device=hidden.device) if model.discrete
                  else torch.zeros(B, L, model.cfg.tokenizer.token_dim, device=hidden.device, dtype=hidden.dtype))
        null = model.condition(labels, torch.ones_like(labels, dtype=torch.bool))
        td = self.top_down(self.select(hidden, labels))
        official = self.cfg.official
        return model.features(tokens, mask, null, num_visible=0, td=td, record=record, mask_buffer=official,
                              td_bias=official)

    def smooth_z(self, model, hidden: Tensor, labels: Tensor) -> Tensor:
        """The smoothed per-token conditions z_bar (B, L, Dd)."""
        return model.to_z(self.smooth_features(model, hidden, labels).hidden)

    def var_loss(self, layer_io: list[tuple[Tensor, Tensor]]) -> Tensor:
        """sum_l MSE(down_l(output_l), input_l) over the base's layers (stop-gradient on both)."""
        if len(layer_io) != len(self.feedback):
            raise ValueError(f"got {len(layer_io)} layers' inputs and outputs for {len(self.feedback)} feedback blocks")
        return sum(F.mse_loss(block.down(out.detach()), inp.detach())
                   for block, (inp, out) in zip(self.feedback, layer_io))


def check_base(model, cfg: SmootherConfig, source: str = "self-guidance smoother") -> None:
    """Refuse a base model (a MaskedGenerator, or its RunConfig) the module does not fit: one line
    naming what differs."""
    bb = (model.cfg if hasattr(model, "cfg") else model).backbone
    if bb.width != bb.decoder_width:
        raise ValueError(f"self-guidance needs equal encoder and decoder widths; the base has "
                         f"{bb.width} and {bb.decoder_width}")
    want = {"width": bb.width, "num_layers": bb.encoder_depth + bb.decoder_depth, "num_classes": bb.num_classes}
    got = {"width": cfg.width, "num_layers": cfg.num_layers, "num_classes": cfg.num_classes}
    bad = [f"{k} {got[k]} (base: {want[k]})" for k in want if want[k] != got[k]]
    if bad:
        raise ValueError(f"{source} does not fit its base model: {', '.join(bad)}")
    tk = (model.cfg if hasattr(model, "cfg") else model).tokenizer
    if cfg.official and not tk.discrete:
        raise ValueError(f"{source}: recipe official is the public code's, for categorical heads only; "
                         "use recipe ours on a continuous-token base")


def config_for(model, recipe: str = "ours", **overrides: Any) -> SmootherConfig:
    """The module config that fits `model`, with the fields its recipe sets (RECIPE_FIELDS)."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown self-guidance recipe {recipe!r}; valid: {', '.join(RECIPES)}")
    bb = model.cfg.backbone
    return SmootherConfig(width=bb.width, num_layers=bb.encoder_depth + bb.decoder_depth,
                          num_classes=bb.num_classes, recipe=recipe, **{**RECIPE_FIELDS[recipe], **overrides})


# ----------------------------------------------------------------------------- export


def base_fingerprint(state: dict[str, Tensor]) -> str:
    """The fingerprint that ties a module to its exact base: sha256 (first 16 hex digits) of the base's
    weights serialised as an export stores them (safetensors of the CPU tensors), so it equals the hash
    of the base export's model.safetensors and is recomputed from whatever base is loaded."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    return hashlib.sha256(save(tensors)).hexdigest()[:16]


def base_record(model, label: str = "") -> dict[str, Any]:
    """What a module's config.json says about its base ("base"): the base's config, a label and the
    fingerprint of its weights."""
    return {**to_dict(model.cfg), "label": label, "fingerprint": base_fingerprint(model.state_dict())}


def save_smoother(smoother: Smoother, out_dir: str | os.PathLike, base_cfg: dict[str, Any],
                  meta: dict[str, Any] | None = None, state: dict[str, Tensor] | None = None) -> Path:
    """Write model.safetensors + config.json ({"config", "base", "meta"}) into out_dir; `base_cfg` is
    the base's record (`base_record`: config, label, fingerprint)."""
    out = Path(out_dir)
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in (state or smoother.state_dict()).items()}
    write_bytes(out / WEIGHTS_FILE, save(tensors), checksum=True)
    doc = {"config": to_dict(smoother.cfg), "base": base_cfg, "meta": meta or {}}
    write_bytes(out / CONFIG_FILE, json.dumps(doc, indent=2, sort_keys=True).encode())
    return out


def read_smoother(folder: str | os.PathLike, base_cfg, base_state: dict[str, Tensor]) -> tuple[SmootherConfig, dict[str, Tensor]]:
    """Read and check a module exported by `save_smoother` against its base (`base_cfg`: the base's
    RunConfig; `base_state`: its weights, read from its file or from a built model) BEFORE anything is
    built: its config, its fit to the base (shapes, classes, tokenizer), the base's fingerprint
    recomputed from `base_state` and compared with the one the module recorded, and its weights (keys,
    shapes, dtypes, finite and bounded values). Returns (config, weights); one-line CheckpointError
    or ValueError naming the file."""
    folder = Path(folder)
    name = f"{folder.parent.name}/{folder.name}"  # the base export's folder and the module's
    cfg_path, weights = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    for f in (cfg_path, weights):
        if not f.is_file():
            raise CheckpointError(f"self-guidance smoother file missing: {f.name} in {name}")
    try:
        doc = json.loads(cfg_path.read_text())
        cfg = from_dict(SmootherConfig, doc["config"])
        base = doc["base"]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{name}/{CONFIG_FILE}: not a self-guidance smoother config ({e})") from None
    check_base(base_cfg, cfg, f"self-guidance smoother {name}")
    tk = base_cfg.tokenizer
    base_tk = base.get("tokenizer", {}) if isinstance(base, dict) else {}
    if not isinstance(base_tk, dict):
        raise CheckpointError(f"{name}/{CONFIG_FILE}: not a self-guidance smoother config (base.tokenizer: expected "
                              f"an object, got {type(base_tk).__name__})")
    for key in ("kind", "codebook_size", "latent_channels", "image_size"):
        if key in base_tk and base_tk[key] != getattr(tk, key):
            raise CheckpointError(f"self-guidance smoother {name} was trained on a base with "
                                  f"tokenizer.{key} {base_tk[key]!r}; this model has {getattr(tk, key)!r}")
    recorded = base.get("fingerprint") if isinstance(base, dict) else None
    actual = base_fingerprint(base_state)
    if not recorded:
        raise CheckpointError(f"self-guidance smoother {name} records no fingerprint of its base's weights, "
                              "so it cannot be tied to this model; retrain it with train-sg on this base")
    if recorded != actual:
        raise CheckpointError(f"self-guidance smoother {name} was trained on another base (its base's "
                              f"weights have fingerprint {str(recorded)[:16]!r}, this model's {actual!r}); retrain "
                              "it with train-sg on this base")
    state = read_safetensors(weights, f"self-guidance smoother weights ({name})")
    expected = shapes_of(lambda: Smoother(cfg))  # shapes only: checked before anything is allocated
    check_state_dict(expected, state, f"{name}/{WEIGHTS_FILE}")
    return cfg, state


def build_smoother(cfg: SmootherConfig, state: dict[str, Tensor], device: str | torch.device = "cpu") -> Smoother:
    """A checked module (`read_smoother`) built, loaded and frozen on `device`."""
    smoother = Smoother(cfg)
    smoother.load_state_dict(state)
    return smoother.to(device).eval().requires_grad_(False)


def load_smoother(folder: str | os.PathLike, model, device: str | torch.device = "cpu") -> Smoother:
    """Load a module exported by `save_smoother` and check that it fits `model` (shapes, classes,
    tokens, codebook, the fingerprint of its weights): `read_smoother` then `build_smoother`."""
    cfg, state = read_smoother(folder, model.cfg, model.state_dict())
    return build_smoother(cfg, state, device)
