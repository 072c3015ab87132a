"""Loading the published eMIGM and MAR checkpoints (GSAI-ML/eMIGM `eMIGM_*_256_checkpoint.pth`, MAR
`checkpoint-last.pth`) into our model, with no renaming beyond what the layout needs.

Our parameter names are the checkpoints', so a state dict loads as it is. Two details:
- the state dict may be plain or under "model" / "model_ema" (the EMA weights are preferred);
- under "CFG with mask" the null class and the mask token are one vector: it is read from the
  `mask_token` key (shape (1, width)), and a `fake_latent` copy of it, if present, is dropped.
The architecture is read off the tensor shapes (widths, depths, head size, buffer slots, classes);
the attention head count, which shapes do not show, comes from the paper preset of the same width.
Whether the encoder is MAE-style comes from the reference's saved `args.use_mae` (an argparse.Namespace,
present in files written by its training code); a file without it (the released plain state dicts) is
taken as MAE, as every released model is. The head labels DPM-Solver times as the reference does
(`head.time_label = "reference"`, see emigm.nn.diffusion).
"""
from __future__ import annotations

import argparse
import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from emigm.core.config import RunConfig, TokenizerConfig
from emigm.core.presets import PRESETS
from emigm.core.statedict import CheckpointError, check_state_dict, load_torch
from emigm.nn.budget import check_size, model_spec
from emigm.nn.model import MaskedGenerator

Tensor = torch.Tensor
_HEADS_BY_WIDTH = {p.backbone.width: p.backbone.num_heads for n, p in PRESETS.items() if n.startswith("in256-")}
_NAME_TO_PRESET = {"xsmall": "in256-xs", "small": "in256-s", "base": "in256-b", "large": "in256-l",
                   "huge": "in256-h"}


def official_checkpoint(path: str | os.PathLike, ck: Any = None) -> tuple[dict[str, Tensor], Any]:
    """(model weights, saved args or None) of an official checkpoint (`ck`: its contents, when already
    read). Weights: "model_ema", else "model", else the plain dict; args: the reference's
    argparse.Namespace under "args", if any."""
    ck = load_torch(path) if ck is None else ck
    args = ck.get("args") if isinstance(ck, dict) else None
    if isinstance(ck, dict):
        for key in ("model_ema", "model"):
            if isinstance(ck.get(key), dict):
                ck = ck[key]
                break
    if not isinstance(ck, dict) or not ck or not all(isinstance(v, Tensor) for v in ck.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors (plain or under 'model' / 'model_ema')")
    return dict(ck), args


def saved_use_mae(args: Any, source: str = "checkpoint") -> bool:
    """The reference's `args.use_mae` when the file saved it, else True (MAE, as every released model)."""
    mae = getattr(args, "use_mae", None) if isinstance(args, argparse.Namespace) else None
    if mae is None:
        return True
    if not isinstance(mae, bool):
        raise CheckpointError(f"{source}: args.use_mae should be true or false, got {mae!r}")
    return mae


def _count(state: dict[str, Tensor], prefix: str) -> int:
    idx = {int(m.group(1)) for k in state if (m := re.match(rf"{re.escape(prefix)}\.(\d+)\.", k))}
    return max(idx) + 1 if idx else 0


def infer_config(state: dict[str, Tensor], source: str = "checkpoint", mae: bool = True) -> RunConfig:
    """A RunConfig whose model matches the state dict's shapes (KL-16 latents at 16 px per token), with
    the MAE encoder or not (`mae`) and the reference's DPM-Solver time labels."""
    need = ("class_emb.weight", "z_proj.weight", "mask_token", "encoder_pos_embed_learned",
            "diffusion_pos_embed_learned", "decoder_embed.weight", "diffloss.net.input_proj.weight")
    missing = [k for k in need if k not in state]
    if missing:
        raise CheckpointError(f"{source} is not an eMIGM / MAR checkpoint: missing {', '.join(missing)}")
    # the architecture is read off these shapes: check their ranks before indexing them
    ranks = {k: (2,) for k in need} | {"mask_token": (2, 3), "encoder_pos_embed_learned": (3,),
                                       "diffusion_pos_embed_learned": (3,)}
    wrong = [f"{k} {tuple(state[k].shape)} (expected {' or '.join(f'{r}-d' for r in ranks[k])})"
             for k in need if state[k].dim() not in ranks[k]]
    if wrong:
        raise CheckpointError(f"{source} is not an eMIGM / MAR checkpoint: wrong rank of {', '.join(wrong[:3])}")
    try:
        return _config_from_shapes(state, source, mae)
    except CheckpointError:
        raise
    except ValueError as e:
        raise CheckpointError(f"{source}: its tensor shapes do not describe a valid model ({e})") from None


def _config_from_shapes(state: dict[str, Tensor], source: str, mae: bool) -> RunConfig:
    classes, width = state["class_emb.weight"].shape
    token_dim = state["z_proj.weight"].shape[1]
    tokens = state["diffusion_pos_embed_learned"].shape[1]
    decoder_width = state["decoder_embed.weight"].shape[0]
    grid = int(round(tokens ** 0.5))
    if grid * grid != tokens:
        raise CheckpointError(f"{source}: {tokens} tokens do not form a square grid")
    null_mode = "mask" if state["mask_token"].dim() == 2 else "fake"
    base = PRESETS["in256-b"]
    heads = _HEADS_BY_WIDTH.get(width, max(1, width // 64))
    dec_heads = _HEADS_BY_WIDTH.get(decoder_width, max(1, decoder_width // 64))
    return replace(
        base,
        name=Path(source).stem,
        tokenizer=TokenizerConfig(kind="kl16", image_size=16 * grid, channels=3, latent_channels=token_dim,
                                  stride=16, path="kl16.ckpt"),
        backbone=replace(base.backbone, width=width, decoder_width=decoder_width,
                         encoder_depth=_count(state, "encoder_blocks"), decoder_depth=_count(state, "decoder_blocks"),
                         num_heads=heads, decoder_num_heads=dec_heads,
                         buffer_size=state["encoder_pos_embed_learned"].shape[1] - tokens,
                         num_classes=classes, null_mode=null_mode, mae=mae),
        head=replace(base.head, width=state["diffloss.net.input_proj.weight"].shape[0],
                     depth=_count(state, "diffloss.net.res_blocks"), time_label="reference"),
        data=replace(base.data, image_size=16 * grid),
    )


def read_official(path: str | os.PathLike, device: str | torch.device = "cpu",
                  ck: Any = None) -> tuple[dict[str, Tensor], RunConfig]:
    """An official checkpoint read and checked, nothing built: (weights, inferred RunConfig); `ck`: the
    file's contents when already read. The inferred size is checked, and the weights (keys, shapes,
    dtypes, finite and bounded values); errors are a CheckpointError naming the file."""
    state, args = official_checkpoint(path, ck)
    cfg = infer_config(state, str(path), mae=saved_use_mae(args, str(path)))
    if cfg.backbone.null_mode == "mask":
        shared = state.pop("fake_latent", None)
        if shared is not None and shared.shape != state["mask_token"].shape:
            raise CheckpointError(f"{path}: fake_latent {tuple(shared.shape)} and mask_token "
                                  f"{tuple(state['mask_token'].shape)} should be one vector under CFG with mask")
    check_size(cfg, Path(path).name, device)
    check_state_dict(model_spec(cfg), state, str(path))  # before the model is built
    return state, cfg


def load_official(path: str | os.PathLike, device: str | torch.device = "cpu",
                  ck: Any = None) -> tuple[MaskedGenerator, RunConfig]:
    """An official eMIGM / MAR checkpoint -> (model in eval mode, its inferred RunConfig): `read_official`,
    then the model is built."""
    state, cfg = read_official(path, device, ck)
    model = MaskedGenerator(cfg)
    model.load_state_dict(state)
    return model.to(device).eval(), cfg
