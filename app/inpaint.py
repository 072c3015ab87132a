"""Inpainting in the explorer, below the tabs: the picture a run starts from (a Fashion-MNIST test image by
class and index, or an uploaded PNG / JPEG), the paint grid's payload, the mask from the painted tokens or
a preset (with MAGE's ring), the run's starting state, and the views original | tokenizer reconstruction |
masked | the result of every seed. Refusals are FieldErrors naming the control they go next to."""
from __future__ import annotations

import base64
import io
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from PIL import Image

from emigm.core.fields import FieldError
from emigm.io.imaging import to_uint8, upscale
from emigm.io.pictures import (
    Picture,
    PictureError,
    class_test_index,
    encode_picture,
    fmnist_picture,
    masked_view,
    read_picture,
)
from emigm.sample.inpaint import MAX_RING, MaskError, add_ring, check_mask, inpaint_state, parse_mask
from emigm.sample.orders import painted_priority, parse_reveal_order
from emigm.sample.state import StepState

SOURCES = ("test image", "upload")
# the presets of the mask control: label -> mask spec (emigm.sample.inpaint.parse_mask)
PRESETS = {"left half": "left", "right half": "right", "top half": "top", "bottom half": "bottom",
           "centre": "centre", "random 30%": "random:0.3", "random 60%": "random:0.6"}
MAX_SEEDS = 4
VIEW_PX = 168
MASK_ID, ORDER_ID = "ctl-ip_mask", "ctl-reveal_order"  # the text controls the paint grid writes


@dataclass(frozen=True)
class Start:
    """An inpainting run's start: the picture, its tokens (1, L, ...), the painted mask (L,) bool, the
    state before step 1 for B seeds, the steps used and the reconstruction (H, W, C) uint8."""

    picture: Picture
    tokens: torch.Tensor
    mask: torch.Tensor
    state: StepState
    num_steps: int
    reconstruction: np.ndarray


def picture(pipe, source: str, class_id: int, index: Any, upload: Any) -> Picture:
    """The picture the controls name, at the model's size, or a FieldError next to the control at fault."""
    tok = pipe.tokenizer
    size = dict(size=tok.image_size, channels=tok.channels)
    if source not in SOURCES:
        raise FieldError("ip_source", f"image source must be one of {', '.join(SOURCES)}, got {source!r}")
    try:
        if source == "upload":
            if not upload:
                raise FieldError("ip_upload", "upload a PNG or JPEG first (or pick a test image)")
            path = upload if isinstance(upload, str) else getattr(upload, "path", None) or getattr(upload, "name", "")
            return read_picture(path, name="the upload", **size)
        if isinstance(index, bool) or not isinstance(index, (int, float)) or float(index) != int(index):
            raise FieldError("ip_index", f"the index within the class must be a whole number, got {index!r}")
        return fmnist_picture(class_test_index(class_id, int(index)), **size)
    except PictureError as e:
        raise FieldError("ip_upload" if source == "upload" else "ip_index", str(e)) from None


def mask_of(spec: Any, ring: Any, num_tokens: int) -> torch.Tensor:
    """(L,) bool from the mask control (a preset's spec or the painted "tokens:I,J,...") and the ring."""
    if isinstance(ring, bool) or not isinstance(ring, (int, float)) or float(ring) != int(ring) or \
            not 0 <= int(ring) <= MAX_RING:
        raise FieldError("ip_ring", f"the ring must be a whole number of tokens in [0, {MAX_RING}], got {ring!r}")
    text = str(spec or "").strip()
    try:
        if not text:
            raise MaskError("paint some tokens (or pick a preset): the mask paints no token, nothing to inpaint")
        mask = parse_mask(PRESETS.get(text, text), num_tokens)
        if int(ring) and not bool(mask.any()):
            raise MaskError("a ring needs a painted region to go around: the mask paints no token")
        mask = add_ring(mask, int(ring))
        check_mask(mask)
    except MaskError as e:
        raise FieldError("ip_mask", str(e)) from None
    return mask


def reveal_priority(order: str, text: Any, num_tokens: int) -> torch.Tensor | None:
    """The painted reveal order as order "fixed"'s priority, or None when none is painted. Painted with
    another order chosen: a FieldError next to the reveal order."""
    text = str(text or "").strip()
    if not text:
        return None
    if order != "fixed":
        raise FieldError("reveal_order", f"a painted reveal order goes with order fixed (the order is {order}); "
                                         "choose fixed or clear the painted order")
    try:
        return painted_priority(parse_reveal_order(text, num_tokens), num_tokens)
    except ValueError as e:
        raise FieldError("reveal_order", str(e)) from None


def start(pipe, pic: Picture, mask: torch.Tensor, label: int, seeds: list[int], sampler, guidance) -> Start:
    """The run's first state for every seed (steps lowered to the painted count when more were asked for)."""
    painted = int(mask.sum())
    if sampler.num_steps > painted:
        sampler = replace(sampler, num_steps=painted)
    tokens = encode_picture(pipe, pic)
    batch = tokens.expand(len(seeds), *tokens.shape[1:]).clone()
    state = inpaint_state(batch, mask.to(batch.device), [label] * len(seeds), seeds, sampler, guidance)
    with torch.inference_mode():
        recon = to_uint8(pipe.tokenizer.decode(tokens))[0]
    return Start(pic, tokens, mask, state, sampler.num_steps, recon)


def data_url(arr: np.ndarray, px: int = VIEW_PX) -> str:
    """An (H, W) or (H, W, C) uint8 image as a PNG data URL, upscaled nearest-neighbour to about px."""
    a = arr if arr.ndim == 3 else arr[..., None]
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    a = upscale(a, max(1, px // a.shape[0]))
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def paint_payload(pic: Picture | None, grid: int, painted: list[int] = (), order: list[int] = (),
                  text: str = "") -> dict[str, Any]:
    """The paint grid's value (app/static/paint.js): the converted picture under a grid x grid board."""
    if pic is None:
        return {"grid": 0, "text": text or "Pick a test image or upload one to paint its tokens."}
    return {"grid": grid, "image": data_url(pic.pixels, 224), "painted": list(painted), "order": list(order),
            "mask_id": MASK_ID, "order_id": ORDER_ID, "notes": list(pic.notes), "what": pic.what}


def views_payload(st: Start, results: list[np.ndarray] | None, seeds: list[int], grid: int) -> dict[str, Any]:
    """original | reconstruction | masked | a result per seed, as data URLs with captions (the page draws them)."""
    recon = st.reconstruction
    masked = to_uint8(masked_view(torch.from_numpy(recon).permute(2, 0, 1)[None].float() / 127.5 - 1, st.mask, grid))[0]
    tiles = [("original", data_url(st.picture.pixels)), ("tokenizer reconstruction", data_url(recon)),
             (f"masked ({int(st.mask.sum())} of {st.mask.numel()} tokens)", data_url(masked))]
    for i, s in enumerate(seeds):
        tiles.append((f"result, seed {s}", data_url(results[i]) if results is not None else ""))
    return {"tiles": [{"title": t, "src": u} for t, u in tiles], "notes": list(st.picture.notes),
            "what": st.picture.what}
