"""What several tabs share, below the tabs: reading a class, the session of a request, the controls a
model may offer, the message of a missing run, and two runs compared step by step (Compare's difference
view and the lab's intervention both use it)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr
import numpy as np

from emigm.core.labels import parse_class

from . import controls
from .catalogue import Catalogue
from .claims import measured_warnings, weights_of
from .trajectory import Trajectory

NO_RUN = "Run the sampler first: there is no trajectory in this session yet."


def class_index(names: list[str], class_name: Any) -> int:
    """A class given by name (case-insensitive) or by id: the library's one parser (emigm.core.labels)."""
    return parse_class(class_name, names)


def session_of(request: gr.Request | None) -> str | None:
    return getattr(request, "session_hash", None) if request is not None else None


def model_view(models: Catalogue, model: str) -> controls.ModelView:
    """What the controls may offer for `model`: capabilities, and warnings measured in Results."""
    gen = models.load(model)
    return controls.ModelView(gen.model, gen.smoother, measured_warnings(model, weights_of(gen)))


def token_diff(a: Trajectory, b: Trajectory, k: int) -> np.ndarray:
    """(B, g, g) mean |A - B| per token of the decoded drafts (the shown images) after frame k,
    tokens committed in both only (pixel units; still-masked tokens count 0)."""
    fa, fb = a.frames[k], b.frames[k]
    B, H, W, C = fa.draft.shape
    g = a.grid
    d = np.abs(fa.draft.astype(np.float32) - fb.draft.astype(np.float32))
    d = d.reshape(B, g, H // g, g, W // g, C).mean(axis=(2, 4, 5))
    both = (~fa.state.mask_after & ~fb.state.mask_after).numpy().reshape(B, g, g)
    return np.where(both, d, 0.0)


@dataclass(frozen=True)
class Divergence:
    """Two panels compared step by step over the tokens committed in both (every seed): `image`, the
    mean |A - B| of the shown images (pixel units); `tokens`, the fraction whose committed values
    differ; `step`, the first (1-based) step at which any committed token differs, and `image_step`,
    the first at which the shown images do (None: not in the steps compared). The headline and the
    chart are both drawn from these, so they cannot disagree."""

    image: list[float]
    tokens: list[float]
    step: int | None
    image_step: int | None


def divergence(a: Trajectory, b: Trajectory, tol: float = 1e-5) -> Divergence:
    image, tokens = [], []
    for k, (fa, fb) in enumerate(zip(a.frames, b.frames)):
        both = ~fa.state.mask_after & ~fb.state.mask_after  # (B, L)
        d = token_diff(a, b, k)
        shown = both.numpy().reshape(d.shape)
        image.append(float(d[shown].mean()) if shown.any() else 0.0)
        ta, tb = fa.state.tokens.float(), fb.state.tokens.float()
        delta = (ta - tb).abs()
        differs = (delta.flatten(2).amax(2) if delta.dim() > 2 else delta) > tol  # (B, L)
        n = int(both.sum())
        tokens.append(float((differs & both).sum()) / n if n else 0.0)
    first = lambda xs: next((k + 1 for k, x in enumerate(xs) if x > 0), None)  # noqa: E731
    return Divergence(image, tokens, first(tokens), first(image))
