"""The explorer's engine: sampling runs streamed as trajectories (app/trajectory.py) from the models of
its catalogue (app/catalogue.py), each run with its own stop flag (app/stops.py); a step re-run opened."""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, Iterator, Sequence

import torch

from emigm.io.imaging import to_uint8
from emigm.sample.checks import check_step
from emigm.sample.sampler import AnatomyOptions, GuidanceConfig, SamplerConfig, StepState, sample_steps

from .catalogue import Catalogue
from .stops import Stops
from .trajectory import Frame, Trajectory, slim, to_cpu

# what a run of the Unmasking tab records about every step (the uncertainty and "why" maps); measured on
# the shipped fmnist models: 16 steps cost 0.1 -> 0.1 s (maskgit) and 0.2 -> 0.5 s (emigm) on one CPU core
LAB_MAPS = AnatomyOptions(uncertainty_draws=4)


def _fixed(order: str, fixed_order: tuple[int, ...] | None, num_tokens: int) -> torch.Tensor | None:
    """Order "fixed"'s priority: the painted one, else raster; None for the other orders."""
    if order != "fixed":
        return None
    return torch.tensor(fixed_order, dtype=torch.float32) if fixed_order else torch.arange(num_tokens).float()


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


class Engine(Catalogue):
    """The catalogue's models run as streams of Trajectories."""

    def __init__(self, models: Sequence[str] | None = None, device: str | torch.device = "cpu",
                 num_threads: int | None = None, vae: str = "") -> None:
        super().__init__(models, device, vae)
        self.num_threads = num_threads
        self.stops = Stops()

    # ------------------------------------------------------------------ runs

    def stream(self, name: str, labels: Sequence[int], seeds: Sequence[int], sampler: SamplerConfig,
               guidance: GuidanceConfig, stop: threading.Event | None = None,
               anatomy: AnatomyOptions | None = None, fixed_order: tuple[int, ...] | None = None,
               start: StepState | None = None) -> Iterator[Trajectory]:
        """Sample, yielding the growing Trajectory after every step; `stop` ends it after a step;
        `anatomy`: record each step's per-token maps (`slim`) in its state; fixed_order: order "fixed"'s
        priority per token (a painted reveal order); start: the state before step 1 (inpainting:
        emigm.sample.inpaint.inpaint_state), kept by the trajectory so its steps can be opened."""
        return self._stream(name, labels, seeds, sampler, guidance, (), stop, init_state=start, anatomy=anatomy,
                            fixed_order=fixed_order, start=start)

    def branch(self, init: Trajectory, branch_step: int, sampler: SamplerConfig, guidance: GuidanceConfig,
               stop: threading.Event | None = None, anatomy: AnatomyOptions | None = None) -> Iterator[Trajectory]:
        """Keep the first `branch_step` frames of `init` and resume from that state with new configs
        (same model, labels and seeds)."""
        last_ok = len(init.frames) - (1 if init.complete else 0)  # some token must still be masked
        if not 1 <= branch_step <= last_ok:
            raise ValueError(f"branch_step must be in [1, {last_ok}] for this run, got {branch_step}")
        state = init.frames[branch_step - 1].state
        return self._stream(init.model, state.labels.tolist(), state.seeds.tolist(), sampler, guidance,
                            init.frames[:branch_step], stop, anatomy=anatomy, fixed_order=init.fixed_order,
                            start=init.start)

    def resume(self, traj: Trajectory, step: int, state: StepState,
               anatomy: AnatomyOptions | None = None) -> Iterator[Trajectory]:
        """Keep the first `step` frames of `traj` and resume from `state` (an edited copy of the state after
        that step: the intervention) with the run's own configs and seed streams."""
        last = traj.frames[step - 1].state
        return self._stream(traj.model, last.labels.tolist(), last.seeds.tolist(), last.sampler, last.guidance,
                            traj.frames[:step], None, init_state=state, anatomy=anatomy,
                            fixed_order=traj.fixed_order, start=traj.start)

    def open_step(self, traj: Trajectory, step: int,
                  path_token: tuple[int, int] | None = None) -> tuple[StepState, Any]:
        """Step `step` (1-based) of `traj` opened: the step re-run from the state before it with the configs
        it ran with and its anatomy recorded (emigm.sample.state.StepAnatomy; with `path_token`, that
        token's diffusion-head denoising path), and the Pipeline. Replaying the same seed streams from the
        same state gives the same step (the library's branching), so the anatomy is that of the run."""
        gen = self.load(traj.model)
        shown = traj.frames[step - 1].state
        init = traj.frames[step - 2].state if step >= 2 else traj.start
        fixed = _fixed(shown.sampler.order, traj.fixed_order, gen.model.num_tokens)
        opts = AnatomyOptions(LAB_MAPS.uncertainty_draws, path_token, rescore=True)
        with _num_threads(self.num_threads), torch.inference_mode():
            steps = sample_steps(gen, shown.labels.tolist(), shown.seeds.tolist(), shown.sampler, shown.guidance,
                                 init=init, fixed_order=fixed, anatomy=opts)
            state = next(steps)
            steps.close()
        return replace(state.to("cpu"), anatomy=to_cpu(state.anatomy)), gen

    def _stream(self, name: str, labels: Sequence[int], seeds: Sequence[int], sampler: SamplerConfig,
                guidance: GuidanceConfig, kept: tuple[Frame, ...],
                stop: threading.Event | None, init_state: StepState | None = None,
                anatomy: AnatomyOptions | None = None, fixed_order: tuple[int, ...] | None = None,
                start: StepState | None = None) -> Iterator[Trajectory]:
        gen = self.load(name)
        sampler = replace(sampler, draft=True)
        tk = gen.cfg.tokenizer
        traj = Trajectory(model=name, frames=kept, grid=tk.grid, image_size=tk.image_size,
                          class_names=tuple(gen.class_names), random_init=gen.source == "random",
                          tokenizer=tk.kind, branched_from=len(kept), start=start,
                          fixed_order=tuple(fixed_order) if fixed_order else None)
        init = init_state if init_state is not None else kept[-1].state if kept else None
        fixed = _fixed(sampler.order, fixed_order, gen.model.num_tokens)
        steps = sample_steps(gen, labels, seeds, sampler, guidance, init=init,
                             fixed_order=fixed, anatomy=anatomy)
        t0 = time.perf_counter()
        while True:
            t_step = time.perf_counter()
            with _num_threads(self.num_threads), torch.inference_mode():
                state = next(steps, None)
                if state is None:
                    return
                t_dec = time.perf_counter()
                decoded = gen.tokenizer.decode(state.draft)
                check_step(name, state, decoded)  # NaN or inf is an error, never a picture
                draft = to_uint8(decoded)
            now = time.perf_counter()
            frame = Frame(replace(state.to("cpu"), anatomy=slim(state.anatomy)), draft, t_dec - t_step, now - t_dec)
            stopping = stop is not None and stop.is_set() and not state.done
            traj = replace(traj, frames=traj.frames + (frame,), wall_s=now - t0, stopped=stopping,
                           first_frame_s=traj.first_frame_s or now - t0)
            yield traj
            if stopping:
                steps.close()
                return

    def run(self, *args, **kwargs) -> Trajectory:
        """`stream` drained: the finished Trajectory."""
        traj = None
        for traj in self.stream(*args, **kwargs):
            pass
        if traj is None:
            raise ValueError("the sampler produced no steps")
        return traj
