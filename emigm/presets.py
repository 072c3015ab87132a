"""Presets: a dict of named RunConfigs. Test presets, Fashion-MNIST models, and the paper's ImageNet
recipes (spec sec. 3 and 6). CLI choices and app dropdowns read this dict."""
from __future__ import annotations

from dataclasses import replace

from .config import (BackboneConfig, DataConfig, HeadConfig, MaskingConfig, RunConfig, TokenizerConfig,
                     TrainConfig)

IMAGENET_TRAIN_IMAGES = 1_281_167


def _imagenet(name: str, width: int, depth: int, heads: int, head_depth: int, head_width: int,
              batch: int, image_size: int = 256) -> RunConfig:
    steps_per_epoch = IMAGENET_TRAIN_IMAGES // batch
    if image_size == 256:
        tok = TokenizerConfig(kind="kl16", image_size=256, channels=3, latent_channels=16, stride=16,
                              path="kl16.ckpt")
    else:
        tok = TokenizerConfig(kind="dcae", image_size=512, channels=3, latent_channels=32, stride=32,
                              path="dc-ae-f32c32")
    return RunConfig(
        name=name,
        tokenizer=tok,
        backbone=BackboneConfig(width=width, decoder_width=width, encoder_depth=depth, decoder_depth=depth,
                                num_heads=heads, decoder_num_heads=heads, buffer_size=64, num_classes=1000,
                                null_mode="mask", mae=True),
        head=HeadConfig(kind="diffusion", width=head_width, depth=head_depth, batch_mul=4),
        masking=MaskingConfig(schedule="exp", distribution="bernoulli", shared_count=True, t_min=0.2),
        data=DataConfig(name="imagefolder", image_size=image_size, flip=True),
        train=TrainConfig(steps=800 * steps_per_epoch, batch_size=batch, blr=1e-4,
                          warmup_steps=100 * steps_per_epoch, ema=0.9999, grad_clip=3.0,
                          precision="bf16", ckpt_every=5000, log_every=100),
    )


_FMNIST_TOK = TokenizerConfig(kind="patch", image_size=28, channels=1, patch_size=4)
_FMNIST_BACKBONE = BackboneConfig(width=192, decoder_width=192, encoder_depth=4, decoder_depth=4,
                                  num_heads=6, decoder_num_heads=6, buffer_size=4, num_classes=10)
_FMNIST_TRAIN = TrainConfig(steps=40000, batch_size=256, blr=4e-4, warmup_steps=1000, ema=0.999, ema_warmup=True,
                            grad_clip=3.0, precision="bf16", ckpt_every=2000, log_every=100)

FMNIST_EMIGM = RunConfig(
    name="fmnist-emigm",
    tokenizer=_FMNIST_TOK,
    backbone=_FMNIST_BACKBONE,
    head=HeadConfig(kind="diffusion", width=256, depth=3, batch_mul=4),
    masking=MaskingConfig(schedule="exp", distribution="bernoulli", shared_count=True, t_min=0.2),
    data=DataConfig(name="fashion-mnist", image_size=28),
    train=_FMNIST_TRAIN,
)

# A small eMIGM that trains on a 2-core CPU in under an hour: the CPU preview shipped beside the
# GPU-trained models (same recipe, smaller network, far fewer steps).
FMNIST_EMIGM_MINI = replace(
    FMNIST_EMIGM,
    name="fmnist-emigm-mini",
    backbone=replace(_FMNIST_BACKBONE, width=128, decoder_width=128, encoder_depth=3, decoder_depth=3,
                     num_heads=4, decoder_num_heads=4),
    head=HeadConfig(kind="diffusion", width=128, depth=2, batch_mul=4),
    train=TrainConfig(steps=2400, batch_size=64, blr=4e-3, warmup_steps=200, ema=0.999, ema_warmup=True, grad_clip=3.0,
                      precision="fp32", ckpt_every=200, log_every=50, keep_last=2),
)

PRESETS: dict[str, RunConfig] = {
    # Tiny configs for tests: 8x8 images, 16 tokens.
    "test-tiny": RunConfig(
        name="test-tiny",
        tokenizer=TokenizerConfig(kind="patch", image_size=8, channels=1, patch_size=2),
        backbone=BackboneConfig(width=32, decoder_width=32, encoder_depth=1, decoder_depth=1, num_heads=2,
                                decoder_num_heads=2, buffer_size=2, num_classes=10),
        head=HeadConfig(kind="diffusion", width=32, depth=1, batch_mul=2),
        masking=MaskingConfig(schedule="exp", t_min=0.2),
        data=DataConfig(name="synthetic", image_size=8),
        train=TrainConfig(steps=20, batch_size=8, blr=1e-3, warmup_steps=2, ema=0.9, precision="fp32",
                          log_every=5, ckpt_every=10),
    ),
    "test-tiny-vq": RunConfig(
        name="test-tiny-vq",
        tokenizer=TokenizerConfig(kind="vq", image_size=16, channels=1, stride=4, codebook_size=16),
        backbone=BackboneConfig(width=32, decoder_width=32, encoder_depth=1, decoder_depth=1, num_heads=2,
                                decoder_num_heads=2, buffer_size=2, num_classes=10),
        head=HeadConfig(kind="categorical", label_smoothing=0.1),
        masking=MaskingConfig(schedule="cosine", distribution="exact", t_min=0.0),
        data=DataConfig(name="synthetic", image_size=16),
        train=TrainConfig(steps=20, batch_size=8, blr=1e-3, warmup_steps=2, ema=0.9, precision="fp32",
                          log_every=5, ckpt_every=10),
    ),
    "fmnist-emigm": FMNIST_EMIGM,
    "fmnist-emigm-mini": FMNIST_EMIGM_MINI,
    "fmnist-emigm-mini-fakecfg": replace(FMNIST_EMIGM_MINI, name="fmnist-emigm-mini-fakecfg",
                                         backbone=replace(FMNIST_EMIGM_MINI.backbone, null_mode="fake")),
    "fmnist-emigm-fakecfg": replace(FMNIST_EMIGM, name="fmnist-emigm-fakecfg",
                                    backbone=replace(_FMNIST_BACKBONE, null_mode="fake")),
    "fmnist-maskgit": RunConfig(
        name="fmnist-maskgit",
        tokenizer=TokenizerConfig(kind="vq", image_size=28, channels=1, stride=4, codebook_size=512,
                                  path="fmnist-vq"),
        backbone=_FMNIST_BACKBONE,
        head=HeadConfig(kind="categorical", label_smoothing=0.1),
        masking=MaskingConfig(schedule="cosine", distribution="exact", t_min=0.0),
        data=DataConfig(name="fashion-mnist", image_size=28),
        train=_FMNIST_TRAIN,
    ),
    # The paper's ImageNet recipes (spec sec. 6): width / depth / heads / head depth / head width.
    "in256-xs": _imagenet("in256-xs", 448, 10, 8, 3, 1024, 1024),
    "in256-s": _imagenet("in256-s", 512, 12, 8, 3, 1024, 1024),
    "in256-b": _imagenet("in256-b", 768, 12, 12, 6, 1024, 2048),
    "in256-l": _imagenet("in256-l", 1024, 16, 16, 8, 1280, 2048),
    "in256-h": _imagenet("in256-h", 1280, 20, 16, 12, 1536, 2048),
    "in512-l": _imagenet("in512-l", 1024, 16, 16, 8, 1280, 2048, image_size=512),
}


def get_preset(name: str) -> RunConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; valid: {', '.join(PRESETS)}") from None
