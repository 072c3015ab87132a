"""A sampling run as the explorer keeps it: every step's state plus its decoded draft, so that views never
re-sample."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from emigm.sample.state import StepAnatomy, StepState


@dataclass(frozen=True)
class Frame:
    """One sampler step: its state and the decoded draft (B, H, W, C) uint8 (committed tokens plus the
    prediction at every still-masked token), with timings."""

    state: StepState
    draft: np.ndarray
    sample_s: float
    decode_s: float


@dataclass(frozen=True)
class Trajectory:
    """A run: its frames (step 1 .. k of N; fewer than N when stopped early) and where it came from."""

    model: str
    frames: tuple[Frame, ...]
    grid: int
    image_size: int
    class_names: tuple[str, ...]
    random_init: bool
    tokenizer: str = "patch"
    branched_from: int = 0  # frames taken over from a parent run (0: a fresh run)
    first_frame_s: float = 0.0
    wall_s: float = 0.0
    stopped: bool = False
    edited: bool = False  # resumed from an edited state (an intervention): its masks are not its reveals
    start: StepState | None = None  # the state before step 1 when the run started from given tokens (inpainting)
    fixed_order: tuple[int, ...] | None = None  # order "fixed": the painted priority (None: raster)
    inpaint: dict | None = None  # an inpainting run: its views (original | reconstruction | masked | results)

    @property
    def states(self) -> list[StepState]:
        return [f.state for f in self.frames]

    @property
    def last(self) -> StepState:
        return self.frames[-1].state

    @property
    def num_steps(self) -> int:
        """The run's steps: those it took once complete (an adaptive order stops when every image is done),
        else the planned number (for an adaptive order, its cap)."""
        return self.last.step + 1 if self.complete else self.last.num_steps

    @property
    def complete(self) -> bool:
        return self.last.done

    @property
    def batch(self) -> int:
        return int(self.last.labels.shape[0])

    def when_map(self) -> np.ndarray:
        """(B, grid, grid) int: the 1-based step at which each token was revealed (0: still masked)."""
        B, L = self.last.mask_after.shape
        when = np.zeros((B, L), dtype=np.int64)
        for f in self.frames:
            when[f.state.revealed.numpy()] = f.state.step + 1
        return when.reshape(B, self.grid, self.grid)

    def label_names(self) -> list[str]:
        return [self.class_names[i] for i in self.last.labels.tolist()]


def to_cpu(anatomy: StepAnatomy) -> StepAnatomy:
    move = lambda v: v.cpu() if isinstance(v, torch.Tensor) else v  # noqa: E731
    return StepAnatomy(**{k: ({n: move(t) for n, t in v.items()} if isinstance(v, dict) else move(v))
                          for k, v in anatomy.__dict__.items()})


def slim(anatomy: StepAnatomy | None) -> StepAnatomy | None:
    """A step's anatomy as a run keeps it, on the CPU: its per-token maps (B, L) and counts, without the
    branches' values and raw logits (an opened step re-computes those, see Engine.open_step)."""
    if anatomy is None:
        return None
    cpu = {k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in anatomy.__dict__.items()
           if k not in ("branches", "raw", "weights", "path")}
    return StepAnatomy(**cpu, branches={}, raw={}, weights={}, path=None)
