"""The explorer's engine: which models it offers, loading them once, and sampling runs kept as
trajectories (every step's state plus its decoded images) so that views never re-sample.

Models are shipped exports (assets/<name>/, `emigm.checkpoint.shipped_models`) when present; otherwise
random-init presets (`fmnist-emigm`, `fmnist-emigm-fakecfg`) with deterministically seeded weights, so
the mechanics (reveal order, schedules, CFG interval, passes) are real while the images are noise.
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from emigm.checkpoint import (ASSETS_DIR, CheckpointError, load_export, read_export_config, resolve_export,
                              shipped_models)
from emigm.config import RunConfig
from emigm.imaging import to_uint8
from emigm.labels import class_names
from emigm.presets import PRESETS, get_preset
from emigm.sampler import GuidanceConfig, SamplerConfig, StepState, sample_steps

FALLBACK_MODELS = ("fmnist-emigm", "fmnist-emigm-fakecfg")
FAKECFG_SUFFIX = "-fakecfg"
WEIGHT_SEED = 0  # random-init weights: the same for every process


def generator_exports() -> list[str]:
    """Shipped exports that hold a masked generator (tokenizer exports in assets/ are skipped)."""
    names = []
    for name in shipped_models():
        try:
            read_export_config(resolve_export(name))
        except CheckpointError:
            continue
        names.append(name)
    return names


def default_models() -> list[str]:
    """Shipped generators if any, else the random-init fallbacks."""
    return generator_exports() or list(FALLBACK_MODELS)


def preset_config(name: str) -> RunConfig:
    """A preset, or `<preset>-fakecfg`: the preset trained with the fake-class null vector."""
    if name not in PRESETS and name.endswith(FAKECFG_SUFFIX) and name[: -len(FAKECFG_SUFFIX)] in PRESETS:
        base = PRESETS[name[: -len(FAKECFG_SUFFIX)]]
        return replace(base, name=name, backbone=replace(base.backbone, null_mode="fake"))
    return get_preset(name)


def build_decoder(cfg: RunConfig, root: str, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """tokens -> images in [-1, 1] through the model's tokenizer."""
    from emigm.tokenizers import build_tokenizer

    return build_tokenizer(cfg.tokenizer, root).to(device).eval().decode


def _wake_zero_layers(model: torch.nn.Module, std: float = 0.02) -> None:
    """Give all-zero Linear weights small random values. Why: the heads zero-init their output and
    modulation layers, so an untrained model would predict the same thing for every class and guidance
    would change nothing; with this its images are still noise, but guidance visibly acts on them."""
    for m in model.modules():
        if isinstance(m, torch.nn.Linear) and not m.weight.any():
            torch.nn.init.normal_(m.weight, std=std)


@dataclass(frozen=True)
class ModelHandle:
    name: str
    model: torch.nn.Module
    cfg: RunConfig
    decode: Callable[[torch.Tensor], torch.Tensor]
    random_init: bool
    source: str

    @property
    def class_names(self) -> list[str]:
        return class_names(self.cfg)

    @property
    def grid(self) -> int:
        return self.cfg.tokenizer.grid


@dataclass(frozen=True)
class Frame:
    """One sampler step with its decoded images (B, H, W, C) uint8 and timings."""

    state: StepState
    image: np.ndarray
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
    branched_from: int = 0  # frames taken over from a parent run (0: a fresh run)
    first_frame_s: float = 0.0
    wall_s: float = 0.0

    @property
    def states(self) -> list[StepState]:
        return [f.state for f in self.frames]

    @property
    def last(self) -> StepState:
        return self.frames[-1].state

    @property
    def num_steps(self) -> int:
        return self.last.num_steps

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


@contextmanager
def _num_threads(n: int | None):
    """Run with n intra-op threads. Why: the models' per-token ops are tiny, and on a small shared CPU
    extra threads mostly wait on each other (one thread measured ~15x faster on 2 busy cores)."""
    old = torch.get_num_threads()
    if n is None or n == old:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


class Engine:
    """Offers a list of models, loads each once, and runs the sampler as a stream of Frames."""

    def __init__(self, models: Sequence[str] | None = None, device: str | torch.device = "cpu",
                 num_threads: int | None = None) -> None:
        self.names = list(models) if models else default_models()
        if not self.names:
            raise ValueError("no models to offer")
        self.device = torch.device(device)
        self.num_threads = num_threads
        self._shipped = set(generator_exports())
        self._cache: dict[str, ModelHandle] = {}
        self._lock = threading.Lock()
        for name in self.names:
            self.config(name)  # unknown names fail here, at start-up, not on first use

    # ------------------------------------------------------------------ models

    def check_name(self, name: str) -> str:
        if name not in self.names:
            raise ValueError(f"unknown model {name!r}; this app offers: {', '.join(self.names)}")
        return name

    def is_shipped(self, name: str) -> bool:
        return name in self._shipped

    def config(self, name: str) -> RunConfig:
        """The model's RunConfig without loading weights."""
        if name in self._cache:
            return self._cache[name].cfg
        if self.is_shipped(name):
            return read_export_config(resolve_export(name))[0]
        try:
            return preset_config(name)
        except ValueError:
            raise ValueError(f"unknown model {name!r}: not a shipped export ({', '.join(sorted(self._shipped)) or 'none shipped'}) "
                             f"nor a preset ({', '.join(PRESETS)})") from None

    def banner(self, name: str) -> str:
        """The banner text for a model: shipped (with its export's note) or random init."""
        from . import text

        if not self.is_shipped(name):
            return text.model_banner(name, True)
        _, meta = read_export_config(resolve_export(name))
        return text.model_banner(name, False, str(meta.get("note", "")))

    def class_names(self, name: str) -> list[str]:
        return class_names(self.config(self.check_name(name)))

    def load(self, name: str) -> ModelHandle:
        self.check_name(name)
        with self._lock:
            if name not in self._cache:
                self._cache[name] = self._load(name)
            return self._cache[name]

    def _load(self, name: str) -> ModelHandle:
        from emigm.model import MaskedGenerator

        with torch.inference_mode(False):
            if self.is_shipped(name):
                model, cfg, meta = load_export(name, self.device)
                root, source, random_init = meta["export_dir"], f"shipped export {meta['export_dir']}", False
            else:
                cfg = preset_config(name)
                with torch.random.fork_rng(devices=[]):  # seeded weights without touching global RNG state
                    torch.manual_seed(WEIGHT_SEED)
                    model = MaskedGenerator(cfg)
                    _wake_zero_layers(model)
                model = model.to(self.device).eval()
                root, source, random_init = str(ASSETS_DIR), f"preset {name}, random init (seed {WEIGHT_SEED})", True
        decode = build_decoder(cfg, root, self.device)
        return ModelHandle(name, model, cfg, decode, random_init, source)

    def partner(self, name: str, null_mode: str) -> str | None:
        """An offered model with the same tokenizer and classes as `name` trained with `null_mode`:
        `name` itself, or its `-fakecfg` twin (or the base of a `-fakecfg` model)."""
        cfg = self.config(name)
        base = name[: -len(FAKECFG_SUFFIX)] if name.endswith(FAKECFG_SUFFIX) else name
        for cand in (name, base + FAKECFG_SUFFIX, base):
            if cand in self.names:
                c = self.config(cand)
                if (c.backbone.null_mode == null_mode and c.tokenizer == cfg.tokenizer
                        and c.backbone.num_classes == cfg.backbone.num_classes):
                    return cand
        return None

    # ------------------------------------------------------------------ runs

    def stream(self, name: str, labels: Sequence[int], seeds: Sequence[int], sampler: SamplerConfig,
               guidance: GuidanceConfig) -> Iterator[Trajectory]:
        """Sample, yielding the growing Trajectory after every step."""
        return self._stream(name, labels, seeds, sampler, guidance, ())

    def branch(self, init: Trajectory, branch_step: int, sampler: SamplerConfig,
               guidance: GuidanceConfig) -> Iterator[Trajectory]:
        """Keep the first `branch_step` frames of `init` and resume from that state with new configs
        (same model, labels and seeds)."""
        last_ok = len(init.frames) - (1 if init.complete else 0)  # some token must still be masked
        if not 1 <= branch_step <= last_ok:
            raise ValueError(f"branch_step must be in [1, {last_ok}] for this run, got {branch_step}")
        state = init.frames[branch_step - 1].state
        return self._stream(init.model, state.labels.tolist(), state.seeds.tolist(), sampler, guidance,
                            init.frames[:branch_step])

    def _stream(self, name: str, labels: Sequence[int], seeds: Sequence[int], sampler: SamplerConfig,
                guidance: GuidanceConfig, kept: tuple[Frame, ...]) -> Iterator[Trajectory]:
        handle = self.load(name)
        sampler = replace(sampler, draft=True)
        fixed = torch.arange(handle.cfg.tokenizer.num_tokens) if sampler.order == "fixed" else None
        traj = Trajectory(model=name, frames=kept, grid=handle.grid, image_size=handle.cfg.tokenizer.image_size,
                          class_names=tuple(handle.class_names), random_init=handle.random_init,
                          branched_from=len(kept))
        init = kept[-1].state if kept else None
        steps = sample_steps(handle.model, labels, seeds, sampler, guidance, init=init, fixed_order=fixed)
        t0 = time.perf_counter()
        while True:
            t_step = time.perf_counter()
            with _num_threads(self.num_threads), torch.inference_mode():
                state = next(steps, None)
                if state is None:
                    return
                t_dec = time.perf_counter()
                image = to_uint8(handle.decode(state.tokens))
                draft = to_uint8(handle.decode(state.draft))
            now = time.perf_counter()
            frame = Frame(state.to("cpu"), image, draft, t_dec - t_step, now - t_dec)
            traj = replace(traj, frames=traj.frames + (frame,), wall_s=now - t0,
                           first_frame_s=traj.first_frame_s or now - t0)
            yield traj

    def run(self, *args, **kwargs) -> Trajectory:
        """`stream` drained: the finished Trajectory."""
        traj = None
        for traj in self.stream(*args, **kwargs):
            pass
        if traj is None:
            raise ValueError("the sampler produced no steps")
        return traj
