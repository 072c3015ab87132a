"""Small random-weight networks for the seam tests (tests/test_seams_*.py): the tiny eMIGM-like model
(patch tokens, diffusion head, MAE) and the tiny MaskGIT-like one (VQ codes, categorical head, no MAE)
with a self-guidance smoother, their weights pushed away from the zero-initialised start so that every
input changes the output."""
from __future__ import annotations

from dataclasses import replace

import torch

from emigm.core.presets import get_preset
from emigm.nn.model import MaskedGenerator
from emigm.nn.smoother import Smoother, config_for
from emigm.sample.passes import Networks


def nudged(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return module.eval()


def tiny_model(preset: str = "test-tiny", seed: int = 0, **backbone) -> MaskedGenerator:
    cfg = get_preset(preset)
    if backbone:
        cfg = replace(cfg, backbone=replace(cfg.backbone, **backbone))
    torch.manual_seed(seed)
    return nudged(MaskedGenerator(cfg), seed + 100)


def tiny_maskgit(seed: int = 0) -> Networks:
    model = tiny_model("test-tiny-vq", seed, mae=False)
    torch.manual_seed(seed + 1)
    return Networks(model, nudged(Smoother(config_for(model)), seed + 200))
