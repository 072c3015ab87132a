"""What fits: memory estimates made from a config before anything is allocated, and the caps on
request sizes. One place for the refusals "needs about X GiB; this machine allows Y GiB".

- `model_spec(cfg)`: the name -> (shape, dtype) of every tensor of the model's state dict, from a
  build on the meta device (no memory); files are checked against it before a model is built
  (emigm.io.exports.check_state_dict);
- `check_size`: the weights alone; `check_training_size`: weights, gradients, Adam state and EMA
  plus a lower bound on the activations of one micro-batch; `check_sampling_size`: one sampling
  batch (the transformer's widest layer, the head, the per-step states the CLI keeps).
The limit is half of the machine's physical memory on the CPU, the device's memory on CUDA. The
estimates are deliberately rough lower bounds: they catch configs that cannot run (a width of 4096
at depth 400, a hundred thousand images in one batch) without refusing the ones that can.
"""
from __future__ import annotations

import functools
import os

import torch

from emigm.core.statedict import shapes_of
from emigm.nn.model import MaskedGenerator

GiB = float(1 << 30)
MAX_IMAGES = 10_000  # images in one sampling call (sample --num-images, evaluate --batch-size)
MAX_SAMPLES = 100_000  # images one evaluation generates (evaluate --num-samples)


def memory_limit(device: torch.device | str | None = None) -> int:
    """Bytes a job may take: half of the physical memory here, or the CUDA device's memory."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.get_device_properties(dev).total_memory)
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def _where(device: torch.device | str | None) -> str:
    dev = torch.device(device) if device is not None else torch.device("cpu")
    return f"{dev} has" if dev.type == "cuda" else "this machine allows"


@functools.lru_cache(maxsize=16)
def model_spec(cfg) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """{state-dict key: (shape, dtype)} of MaskedGenerator(cfg), built on the meta device (no values)."""
    return shapes_of(lambda: MaskedGenerator(cfg))


def weight_bytes(cfg) -> int:
    """fp32 bytes of the model's weights (and persistent buffers), counted without allocating them."""
    total = 0
    for shape, _ in model_spec(cfg).values():
        n = 1
        for s in shape:
            n *= s
        total += n
    return 4 * total


def _refuse(source: str, need: float, what: str, device, hint: str = "") -> None:
    limit = memory_limit(device)
    if need > limit:
        raise ValueError(f"{source}: {what} would need about {need / GiB:.1f} GiB; {_where(device)} "
                         f"{limit / GiB:.1f} GiB{hint}")


def check_size(cfg, source: str, device: torch.device | str | None = None) -> None:
    """Refuse a config whose weights alone would not fit, before building it."""
    _refuse(source, weight_bytes(cfg), "the model's weights", "cpu")
    if device is not None and torch.device(device).type == "cuda":
        _refuse(source, weight_bytes(cfg), "the model's weights", device)


def _tokens(cfg) -> int:
    return cfg.tokenizer.num_tokens + cfg.backbone.buffer_size


def training_bytes(cfg, micro_batch: int) -> tuple[int, int]:
    """(state, activations): weights + gradients + Adam's two moments + EMA (20 bytes per fp32
    parameter), and a lower bound on what autograd keeps for one micro-batch (the residual stream of
    every layer)."""
    bb = cfg.backbone
    state = 5 * weight_bytes(cfg)
    layers = bb.encoder_depth + bb.decoder_depth
    acts = 4 * micro_batch * _tokens(cfg) * max(bb.width, bb.decoder_width) * max(layers, 1) * 2
    return state, acts


def check_training_size(cfg, source: str, device: torch.device | str, micro_batch: int) -> None:
    """Refuse a training run whose weights, optimizer state and activations cannot fit on `device`."""
    state, acts = training_bytes(cfg, micro_batch)
    _refuse(source, state + acts, f"training (weights, gradients, Adam state and EMA {state / GiB:.1f} GiB, "
            f"activations of a micro-batch of {micro_batch} at least {acts / GiB:.1f} GiB)", device)
    if torch.device(device).type == "cuda":  # the model is built on the host first
        _refuse(source, weight_bytes(cfg), "the model's weights", "cpu")


def sampling_bytes(cfg, batch: int, sampler, guidance, keep_steps: bool = True,
                   device: torch.device | str = "cpu") -> int:
    """Rough peak bytes of sampling `batch` images at once: weights, the widest transformer layer
    (with the attention matrix where it is materialised: on the CPU), the head's evaluation of every
    token, and, when `keep_steps`, the per-step states kept for a trace."""
    bb, hd, tk = cfg.backbone, cfg.head, cfg.tokenizer
    rows = batch * (1 + len(guidance.guides()))  # the conditional rows and one block per guide in use
    T, L, D = _tokens(cfg), tk.num_tokens, max(bb.width, bb.decoder_width)
    heads = max(bb.num_heads, bb.decoder_num_heads)
    layer = rows * T * D * (5 + bb.mlp_ratio)
    if torch.device(device).type != "cuda":
        layer += rows * heads * T * T
    if hd.kind == "diffusion":
        head = rows * L * (8 * hd.width + 6 * tk.token_dim)
    else:
        head = rows * L * 3 * tk.codebook_size
    kept = 0
    if keep_steps:
        per_token = 8 if tk.discrete else 4 * tk.token_dim
        kept = sampler.num_steps * batch * L * (per_token * (1 + sampler.draft) + 4)
    return weight_bytes(cfg) + 4 * int(layer + head) + kept


def check_sampling_size(cfg, batch: int, sampler, guidance, device: torch.device | str, source: str,
                        keep_steps: bool = True) -> None:
    """Refuse a sampling batch whose estimate exceeds the memory of `device`."""
    need = sampling_bytes(cfg, batch, sampler, guidance, keep_steps, device)
    _refuse(source, need, f"sampling {batch} image(s) at once", device, "; use fewer images")
