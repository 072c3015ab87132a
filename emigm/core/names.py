"""Option names of the run config, at the ground floor: the config validates against them and the
modules that implement each choice key their registries by them (each checks its keys at import)."""
from __future__ import annotations

TOKENIZER_KINDS = ("patch", "vq", "kl", "kl16", "dcae")  # emigm.tokenize.tokenizers.TOKENIZERS
HEAD_KINDS = ("diffusion", "categorical")  # emigm.nn.model
NULL_MODES = ("mask", "fake")  # CFG's null class: the mask token itself, or a separate learned vector
# how DPM-Solver's continuous time becomes the head's time label (emigm.nn.diffusion)
TIME_LABELS = ("interp", "reference")
# what the diffusion head predicts: the noise eps (MAR / eMIGM), or v = alpha eps - sigma x0
# (Salimans & Ho 2022), from which eps = alpha v + sigma x_t is well conditioned at every noise level
PREDICTIONS = ("eps", "v")
DISTRIBUTIONS = ("bernoulli", "exact", "mar")  # training masks, emigm.core.masking
WEIGHTINGS = ("one", "mdm")
DATASETS = ("fashion-mnist", "imagefolder", "synthetic")  # emigm.data.datasets
LR_SCHEDULES = ("constant", "cosine")  # the learning-rate decay after warm-up, emigm.train.optim
PRECISIONS = ("fp32", "bf16", "fp16")  # bf16 / fp16 autocast apply on CUDA only

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
