"""Pictures of a trajectory as files: the canvas (masked tokens flat grey, tokens revealed at this step
outlined), the draft, the mask/image strip and the GIF of the unmasking. The page draws the same views
itself from a stepper payload (static/explorer.js); these are for downloads.

The canvas is the decoded draft with still-masked tokens greyed (see app/stepper.py for why).
All upscaling is nearest-neighbour; colours are Okabe-Ito (colour-blind safe).
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

from emigm.io.imaging import upscale

from .trajectory import Frame, Trajectory

GREY = (128, 128, 128)  # a masked token
ORANGE = (230, 159, 0)  # revealed at this step
SKY = (86, 180, 233)  # a draft prediction, not committed yet
MASK_DARK, MASK_LIGHT = 60, 235



def rgb(image: np.ndarray) -> np.ndarray:
    """(H, W, 1 or 3) uint8 -> (H, W, 3)."""
    return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image


def _token_pixels(flags: np.ndarray, grid: int, cell: int) -> np.ndarray:
    """(L,) bool per token -> (grid cell, grid cell) bool per pixel."""
    return flags.reshape(grid, grid).repeat(cell, 0).repeat(cell, 1)


def _border(grid: int, cell: int, width: int) -> np.ndarray:
    """(grid cell, grid cell) bool: the outline of every token cell."""
    b = np.zeros((cell, cell), bool)
    b[:width], b[-width:], b[:, :width], b[:, -width:] = True, True, True, True
    return np.tile(b, (grid, grid))


def _outline(arr: np.ndarray, flags: np.ndarray, grid: int, color, width: int) -> None:
    cell = arr.shape[0] // grid
    sel = _token_pixels(flags, grid, cell) & _border(grid, cell, max(1, min(width, cell // 3)))
    arr[sel] = color


def canvas(image: np.ndarray, mask_after: np.ndarray, revealed: np.ndarray, grid: int, scale: int,
           outline: bool = True) -> np.ndarray:
    """The decoded draft after a step with still-masked tokens flat grey and this step's reveals outlined
    (not when `outline` is off: the finished image is shown clean)."""
    arr = upscale(rgb(image), scale).copy()
    cell = arr.shape[0] // grid
    arr[_token_pixels(mask_after, grid, cell)] = GREY
    if outline:
        _outline(arr, revealed, grid, ORANGE, max(2, cell // 8))
    return arr


def draft(image: np.ndarray, mask_after: np.ndarray, grid: int, scale: int, outline: bool = True) -> np.ndarray:
    """Committed tokens plus the model's current guess at every still-masked token (outlined)."""
    arr = upscale(rgb(image), scale).copy()
    if outline:
        _outline(arr, mask_after, grid, SKY, max(1, arr.shape[0] // grid // 12))
    return arr


def mask_image(mask_after: np.ndarray, revealed: np.ndarray, grid: int, cell: int) -> np.ndarray:
    """Token-level mask: masked dark, revealed earlier light, revealed at this step orange."""
    arr = np.full((grid * cell, grid * cell, 3), MASK_LIGHT, np.uint8)
    arr[_token_pixels(mask_after, grid, cell)] = MASK_DARK
    arr[_token_pixels(revealed, grid, cell)] = ORANGE
    return arr


def tile(arrays: list[np.ndarray], cols: int | None = None, pad: int = 4, fill: int = 255) -> np.ndarray:
    """Equal-size (H, W, 3) arrays -> one grid with `pad` pixels of `fill` between tiles."""
    if len(arrays) == 1:
        return arrays[0]
    cols = cols or int(np.ceil(np.sqrt(len(arrays))))
    rows = -(-len(arrays) // cols)
    H, W = arrays[0].shape[:2]
    out = np.full((rows * (H + pad) - pad, cols * (W + pad) - pad, 3), fill, np.uint8)
    for i, a in enumerate(arrays):
        r, c = divmod(i, cols)
        out[r * (H + pad): r * (H + pad) + H, c * (W + pad): c * (W + pad) + W] = a
    return out


def frame_canvas(frame: Frame, grid: int, scale: int, outline: bool = True) -> np.ndarray:
    """The canvas of every sample in the batch, tiled."""
    s = frame.state
    return tile([canvas(frame.draft[b], s.mask_after[b].numpy(), s.revealed[b].numpy(), grid, scale, outline)
                 for b in range(frame.draft.shape[0])])


def frame_draft(frame: Frame, grid: int, scale: int, outline: bool = True) -> np.ndarray:
    s = frame.state
    return tile([draft(frame.draft[b], s.mask_after[b].numpy(), grid, scale, outline)
                 for b in range(frame.draft.shape[0])])


def labelled(arr: np.ndarray, text: str, height: int = 16) -> np.ndarray:
    """`arr` under a white bar holding `text`."""
    bar = Image.new("RGB", (arr.shape[1], height), (255, 255, 255))
    ImageDraw.Draw(bar).text((4, 2), text, fill=(0, 0, 0))
    return np.concatenate([np.asarray(bar), arr], axis=0)


def side_by_side(*arrays: np.ndarray, pad: int = 6) -> np.ndarray:
    return tile(list(arrays), cols=len(arrays), pad=pad)


def frame_pair(frame: Frame, grid: int, scale: int, finished: bool = False) -> np.ndarray:
    """Canvas | draft of one frame, captioned "step k of N"; `finished`: the last step of a finished run,
    the finished image, clean (no outlines), as the page's player shows it."""
    s = frame.state
    pair = side_by_side(frame_canvas(frame, grid, scale, not finished), frame_draft(frame, grid, scale, not finished))
    return labelled(pair, f"step {s.step + 1} of {s.num_steps}   " + ("finished" if finished else "canvas | draft"))


def strip(traj: Trajectory, max_columns: int = 16, height: int = 96) -> np.ndarray:
    """MaskGIT-figure strip for sample 0: the mask after each step over the canvas at that step (the last
    step of a finished run: the finished image, clean)."""
    n = len(traj.frames)
    idx = sorted(set(np.linspace(0, n - 1, min(n, max_columns)).round().astype(int).tolist()))
    scale = max(1, round(height / traj.image_size))
    cell = traj.image_size * scale // traj.grid
    cols = []
    for i in idx:
        f = traj.frames[i]
        s = f.state
        finished = traj.complete and i == n - 1  # the finished image, clean, as in the GIF and the player
        top = mask_image(s.mask_after[0].numpy(), s.revealed[0].numpy(), traj.grid, cell)
        bottom = canvas(f.draft[0], s.mask_after[0].numpy(), s.revealed[0].numpy(), traj.grid, scale,
                        outline=not finished)
        col = tile([top, bottom], cols=1, pad=4)
        cols.append(labelled(col, f"{s.step + 1}/{s.num_steps}"))
    return tile(cols, cols=len(cols), pad=4)


def _gif_palette() -> Image.Image:
    """One fixed palette for every frame: 240 greys and the overlay colours. Why: an adaptive palette
    per frame made the GIF most of a run's export time, and these images are grey plus a few colours."""
    pal = [round(i * 255 / 239) for i in range(240) for _ in range(3)]
    for c in (ORANGE, SKY, GREY, (255, 255, 255), (0, 0, 0)):
        pal += list(c)
    img = Image.new("P", (1, 1))
    img.putpalette(pal + [0] * (768 - len(pal)))
    return img


_PALETTE = _gif_palette()


def gif_bytes(traj: Trajectory, scale: int, ms_per_frame: int = 350) -> bytes:
    """Animated GIF of canvas | draft per step; the last frame (of a finished run: the finished image,
    clean) holds longer. Colour images (ImageNet) keep an adaptive palette."""
    last = len(traj.frames) - 1
    rgb_frames = [frame_pair(f, traj.grid, scale, finished=traj.complete and i == last) for i, f in enumerate(traj.frames)]
    grey = traj.frames[0].draft.shape[-1] == 1
    images = [Image.fromarray(a).quantize(palette=_PALETTE, dither=Image.Dither.NONE) if grey else Image.fromarray(a)
              for a in rgb_frames]
    durations = [ms_per_frame] * (len(images) - 1) + [1500]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=durations, loop=0)
    return buf.getvalue()


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


