"""The training data order: a deterministic, resumable stream of per-rank micro-batches.

Epoch e visits the dataset in a permutation drawn from a generator seeded by (seed, e); each
optimiser step takes the next `batch_size` items of it, of which rank r keeps the strided share
r::world_size, split into `grad_accum` micro-batches. The position (epoch, index) is all a checkpoint
needs to continue the same order, with any number of DataLoader workers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from emigm.core.seeds import STREAM_DATA, mix_seed

Tensor = torch.Tensor


def epoch_permutation(n: int, seed: int, epoch: int) -> Tensor:
    """The data order of `epoch`: a permutation of range(n) (int64) from a generator seeded by
    (seed, epoch)."""
    g = torch.Generator().manual_seed(mix_seed(seed, STREAM_DATA, epoch))
    return torch.randperm(n, generator=g)


@dataclass(frozen=True)
class Share:
    """This rank's part of every step: a step takes `batch_size` items, rank r of `world_size` the strided
    share [r::world_size] of them, split into `grad_accum` micro-batches."""

    batch_size: int
    grad_accum: int = 1
    rank: int = 0
    world_size: int = 1


class DataStream:
    """Deterministic, resumable per-rank micro-batches.

    Each step consumes `share.batch_size` items of the epoch's permutation (seeded by (seed, epoch)) from
    position `index`; this rank takes its `share` of them. A partial last batch of an epoch is dropped.
    `position` is saved in checkpoints."""

    def __init__(self, dataset: torch.utils.data.Dataset, share: Share, seed: int, *, epoch: int = 0,
                 index: int = 0, num_workers: int = 0, pin_memory: bool = False) -> None:
        if len(dataset) < share.batch_size:
            raise ValueError(f"the dataset has {len(dataset)} images, fewer than one batch ({share.batch_size})")
        self.dataset, self.batch_size, self.grad_accum = dataset, share.batch_size, share.grad_accum
        self.rank, self.world_size, self.seed = share.rank, share.world_size, seed
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.epoch, self.index = epoch, index
        self._perm: Tensor | None = None
        self._loader: Iterator | None = None

    @property
    def position(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    def _step_indices(self, start: int) -> list[list[int]]:
        """Micro-batch index lists of this rank for the step that starts at `start`."""
        share = self._perm[start:start + self.batch_size][self.rank::self.world_size]
        return [c.tolist() for c in share.chunk(self.grad_accum)]

    def _start_epoch(self) -> None:
        self._perm = epoch_permutation(len(self.dataset), self.seed, self.epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self.epoch)  # augmentations seeded by (seed, epoch, index)
        self._loader = None
        if self.num_workers > 0:  # workers fork with this epoch; they see indices, not randomness
            starts = range(self.index, len(self.dataset) - self.batch_size + 1, self.batch_size)
            plan = [idx for start in starts for idx in self._step_indices(start)]
            self._loader = iter(torch.utils.data.DataLoader(self.dataset, batch_sampler=plan,
                                                            num_workers=self.num_workers,
                                                            pin_memory=self.pin_memory))

    def _fetch(self, idx: list[int]) -> tuple[Tensor, Tensor]:
        items = [self.dataset[i] for i in idx]
        return torch.stack([x for x, _ in items]), torch.stack([torch.as_tensor(y) for _, y in items])

    def next_step(self) -> list[tuple[Tensor, Tensor]]:
        """grad_accum micro-batches (x (b, ...) float32, y (b,) int64) for one optimiser step."""
        if self.index + self.batch_size > len(self.dataset):
            self.epoch, self.index, self._perm = self.epoch + 1, 0, None
        if self._perm is None:
            self._start_epoch()
        if self._loader is not None:
            batches = [next(self._loader) for _ in range(self.grad_accum)]
        else:
            batches = [self._fetch(idx) for idx in self._step_indices(self.index)]
        self.index += self.batch_size
        return batches
