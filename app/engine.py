"""The explorer's engine: which models it offers, loading each once (emigm.io.loading), and sampling runs
kept as trajectories (every step's state plus its decoded draft) so that views never re-sample.

Models: the shipped exports (assets/<name>/) that hold a generator, `fmnist-emigm` first when present;
any export folder, training checkpoint or official checkpoint given on the command line; with none of
those, random-init presets whose tokenizer is available. A model that fails to load fails alone: its
error names the model, never another one's.
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from emigm.core.presets import PRESETS, get_preset
from emigm.core.statedict import CheckpointError
from emigm.io.exports import read_export_config, resolve_export, shipped_models
from emigm.io.imaging import to_uint8
from emigm.io.loading import Pipeline, build_model_tokenizer, check_size, load_pipeline
from emigm.sample.capabilities import suggested_guidance, suggested_settings
from emigm.sample.checks import check_step
from emigm.sample.sampler import AnatomyOptions, GuidanceConfig, SamplerConfig, StepAnatomy, StepState, sample_steps

PREFERRED = "fmnist-emigm"
FALLBACK_PRESETS = ("fmnist-emigm", "fmnist-emigm-fakecfg", "fmnist-maskgit")
FAKECFG_SUFFIX = "-fakecfg"
WEIGHT_SEED = 0  # random-init weights: the same for every process
# what a run of the Unmasking tab records about every step (the uncertainty and "why" maps); measured on
# the shipped fmnist models: 16 steps cost 0.1 -> 0.1 s (maskgit) and 0.2 -> 0.5 s (emigm) on one CPU core
LAB_MAPS = AnatomyOptions(uncertainty_draws=4)


def generator_exports() -> list[str]:
    """Shipped exports that hold a masked generator (tokenizer exports in assets/ are skipped);
    fmnist-emigm first when shipped."""
    names = []
    for name in shipped_models():
        try:
            read_export_config(resolve_export(name))
        except CheckpointError:
            continue
        names.append(name)
    return sorted(names, key=lambda n: n != PREFERRED)


def preset_config(name: str):
    """A preset, or `<preset>-fakecfg`: the preset trained with the fake-class null vector."""
    if name not in PRESETS and name.endswith(FAKECFG_SUFFIX) and name[: -len(FAKECFG_SUFFIX)] in PRESETS:
        base = PRESETS[name[: -len(FAKECFG_SUFFIX)]]
        return replace(base, name=name, backbone=replace(base.backbone, null_mode="fake"))
    return get_preset(name)


def _wake_zero_layers(model: torch.nn.Module, std: float = 0.02) -> None:
    """Give all-zero Linear weights small random values. Why: the heads zero-init their output and
    modulation layers, so an untrained model would predict the same thing for every class and guidance
    would change nothing; with this its images are still noise, but guidance visibly acts on them."""
    for m in model.modules():
        if isinstance(m, torch.nn.Linear) and not m.weight.any():
            torch.nn.init.normal_(m.weight, std=std)


def random_init(name: str, device: torch.device) -> Pipeline:
    """A preset (or its -fakecfg twin) with seeded random weights and its shipped tokenizer."""
    from emigm.nn.model import MaskedGenerator

    cfg = preset_config(name)
    check_size(cfg, name)
    tokenizer = build_model_tokenizer(cfg, None, device)  # a missing tokenizer is refused before the build
    with torch.random.fork_rng(devices=[]):  # seeded weights without touching the global RNG state
        torch.manual_seed(WEIGHT_SEED)
        model = MaskedGenerator(cfg)
        _wake_zero_layers(model)
    model = model.to(device).eval()
    return Pipeline(model, tokenizer, cfg, None, label=f"{name} (random init)", source="random")


@dataclass(frozen=True)
class Source:
    """Where an offered model comes from: a shipped name or export folder, a checkpoint file, or a
    preset with random weights."""

    name: str
    path: str = ""  # export folder or checkpoint file; "" for a shipped name or a preset
    vae: str = ""
    preset: bool = False

    @property
    def shipped(self) -> bool:
        return not self.preset and not self.path


def sources_from(specs: Sequence[str], vae: str = "") -> list[Source]:
    """Command-line model specs -> Sources: a shipped name, a path (export folder, ckpt-*.pt, official
    .pth), or a preset name (random init). Names are unique (a clashing folder name gets its parent's)."""
    shipped = set(generator_exports())
    out: list[Source] = []
    for spec in specs:
        p = Path(spec).expanduser()
        if spec in shipped:
            src = Source(spec)
        elif p.exists():
            name = p.stem if p.is_file() else p.name
            if any(s.name == name for s in out) or name in shipped:
                name = f"{p.parent.name}/{name}"
            src = Source(name, str(p.resolve()), vae if p.is_file() else "")
        else:
            try:
                preset_config(spec)
            except ValueError:
                raise ValueError(f"unknown model {spec!r}: not a shipped model ({', '.join(sorted(shipped)) or 'none'}), "
                                 f"not an existing path, nor a preset ({', '.join(PRESETS)})") from None
            src = Source(spec, preset=True)
        out.append(src)
    return out


def default_sources(device: torch.device) -> list[Source]:
    """Shipped generators if any, else the fallback presets whose tokenizer is available."""
    shipped = generator_exports()
    if shipped:
        return [Source(n) for n in shipped]
    out = []
    for name in FALLBACK_PRESETS:
        try:
            build_model_tokenizer(preset_config(name), None, "cpu")
        except (OSError, ValueError):
            continue
        out.append(Source(name, preset=True))
    return out


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


def _to_cpu(anatomy: StepAnatomy) -> StepAnatomy:
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


class Stops:
    """Per-session stop requests: Stop sets the flag of the session's current run, which ends after the
    step in progress."""

    def __init__(self) -> None:
        self._flags: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def begin(self, session: str | None) -> threading.Event:
        flag = threading.Event()
        if session:
            with self._lock:
                self._flags[session] = flag
        return flag

    def stop(self, session: str | None) -> bool:
        with self._lock:
            flag = self._flags.get(session or "")
        if flag is None:
            return False
        flag.set()
        return True

    def end(self, session: str | None, flag: threading.Event) -> None:
        with self._lock:
            if session and self._flags.get(session) is flag:
                del self._flags[session]


class Engine:
    """Offers a list of models, loads each once, and runs the sampler as a stream of Trajectories."""

    def __init__(self, models: Sequence[str] | None = None, device: str | torch.device = "cpu",
                 num_threads: int | None = None, vae: str = "") -> None:
        self.device = torch.device(device)
        sources = sources_from(models, vae) if models else default_sources(self.device)
        if not sources:
            raise ValueError("no models to offer: nothing shipped in assets/ and no preset tokenizer available")
        self.sources = {s.name: s for s in sources}
        self.names = list(self.sources)
        self.num_threads = num_threads
        self.stops = Stops()
        self._cache: dict[str, Pipeline] = {}
        # one lock per model: loading one model never makes a request for another one wait
        self._locks = {n: threading.Lock() for n in self.names}

    # ------------------------------------------------------------------ models

    def check_name(self, name: str) -> str:
        if name not in self.sources:
            raise ValueError(f"unknown model {name!r}; this app offers: {', '.join(self.names)}")
        return name

    def is_shipped(self, name: str) -> bool:
        return self.sources[name].shipped

    def is_random(self, name: str) -> bool:
        return self.sources[name].preset

    def load(self, name: str) -> Pipeline:
        """The model's Pipeline, loaded once. A load error is a one-line ValueError naming the model."""
        self.check_name(name)
        if name in self._cache:
            return self._cache[name]
        with self._locks[name]:
            if name not in self._cache:
                self._cache[name] = self._load(self.sources[name])
            return self._cache[name]

    def is_loaded(self, name: str) -> bool:
        return name in self._cache

    def _load(self, src: Source) -> Pipeline:
        try:
            with torch.inference_mode(False):
                if src.preset:
                    return random_init(src.name, self.device)
                return load_pipeline(src.path or src.name, self.device, vae=src.vae)
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ValueError(f"model {src.name!r} cannot be loaded: {first}") from None

    def class_names(self, name: str) -> list[str]:
        return self.load(name).class_names

    def suggested(self, name: str) -> dict[str, Any]:
        """What `name` runs with unless told otherwise, as control values: the sampler rule it was
        trained for and its suggested guidance (emigm.sample.capabilities, as the CLI); {} for a model
        that cannot be loaded (its own error is shown elsewhere)."""
        try:
            model = self.load(name).model
        except ValueError:
            return {}
        out = {**suggested_settings(model), **suggested_guidance(model)}
        for f, v in list(out.items()):
            if isinstance(v, tuple):  # a tuple field is two controls
                del out[f]
                out.update({f"{f}_lo": v[0], f"{f}_hi": v[1]})
        return out

    def banner(self, name: str) -> str:
        from . import text

        try:
            gen = self.load(name)
        except ValueError as e:
            return f"⚠ {e}"
        return text.model_banner(name, gen, self.device.type)

    def partner(self, name: str, null_mode: str) -> str | None:
        """An offered model like `name` (same tokenizer and classes) trained with `null_mode`: `name`
        itself, or its `-fakecfg` twin (or the base of a `-fakecfg` model). Broken partners are skipped."""
        base = name[: -len(FAKECFG_SUFFIX)] if name.endswith(FAKECFG_SUFFIX) else name
        cfg = self.load(name).cfg
        for cand in (name, base + FAKECFG_SUFFIX, base):
            if cand not in self.sources:
                continue
            try:
                c = self.load(cand).cfg
            except ValueError:
                continue
            if (c.backbone.null_mode == null_mode and c.tokenizer == cfg.tokenizer
                    and c.backbone.num_classes == cfg.backbone.num_classes):
                return cand
        return None

    # ------------------------------------------------------------------ runs

    def stream(self, name: str, labels: Sequence[int], seeds: Sequence[int], sampler: SamplerConfig,
               guidance: GuidanceConfig, stop: threading.Event | None = None,
               anatomy: AnatomyOptions | None = None) -> Iterator[Trajectory]:
        """Sample, yielding the growing Trajectory after every step; `stop` ends it after a step;
        `anatomy`: record each step's per-token maps (`slim`) in its state."""
        return self._stream(name, labels, seeds, sampler, guidance, (), stop, anatomy=anatomy)

    def branch(self, init: Trajectory, branch_step: int, sampler: SamplerConfig, guidance: GuidanceConfig,
               stop: threading.Event | None = None, anatomy: AnatomyOptions | None = None) -> Iterator[Trajectory]:
        """Keep the first `branch_step` frames of `init` and resume from that state with new configs
        (same model, labels and seeds)."""
        last_ok = len(init.frames) - (1 if init.complete else 0)  # some token must still be masked
        if not 1 <= branch_step <= last_ok:
            raise ValueError(f"branch_step must be in [1, {last_ok}] for this run, got {branch_step}")
        state = init.frames[branch_step - 1].state
        return self._stream(init.model, state.labels.tolist(), state.seeds.tolist(), sampler, guidance,
                            init.frames[:branch_step], stop, anatomy=anatomy)

    def resume(self, traj: Trajectory, step: int, state: StepState,
               anatomy: AnatomyOptions | None = None) -> Iterator[Trajectory]:
        """Keep the first `step` frames of `traj` and resume from `state` (an edited copy of the state after
        that step: the intervention) with the run's own configs and seed streams."""
        last = traj.frames[step - 1].state
        return self._stream(traj.model, last.labels.tolist(), last.seeds.tolist(), last.sampler, last.guidance,
                            traj.frames[:step], None, init_state=state, anatomy=anatomy)

    def open_step(self, traj: Trajectory, step: int,
                  path_token: tuple[int, int] | None = None) -> tuple[StepState, Any]:
        """Step `step` (1-based) of `traj` opened: the step re-run from the state before it with the configs
        it ran with and its anatomy recorded (emigm.sample.state.StepAnatomy; with `path_token`, that
        token's diffusion-head denoising path), and the Pipeline. Replaying the same seed streams from the
        same state gives the same step (the library's branching), so the anatomy is that of the run."""
        gen = self.load(traj.model)
        shown = traj.frames[step - 1].state
        init = traj.frames[step - 2].state if step >= 2 else None
        fixed = torch.arange(gen.model.num_tokens) if shown.sampler.order == "fixed" else None
        opts = AnatomyOptions(LAB_MAPS.uncertainty_draws, path_token)
        with _num_threads(self.num_threads), torch.inference_mode():
            steps = sample_steps(gen, shown.labels.tolist(), shown.seeds.tolist(), shown.sampler, shown.guidance,
                                 init=init, fixed_order=fixed, anatomy=opts)
            state = next(steps)
            steps.close()
        return replace(state.to("cpu"), anatomy=_to_cpu(state.anatomy)), gen

    def _stream(self, name: str, labels: Sequence[int], seeds: Sequence[int], sampler: SamplerConfig,
                guidance: GuidanceConfig, kept: tuple[Frame, ...],
                stop: threading.Event | None, init_state: StepState | None = None,
                anatomy: AnatomyOptions | None = None) -> Iterator[Trajectory]:
        gen = self.load(name)
        sampler = replace(sampler, draft=True)
        tk = gen.cfg.tokenizer
        traj = Trajectory(model=name, frames=kept, grid=tk.grid, image_size=tk.image_size,
                          class_names=tuple(gen.class_names), random_init=gen.source == "random",
                          tokenizer=tk.kind, branched_from=len(kept))
        init = init_state if init_state is not None else kept[-1].state if kept else None
        fixed = torch.arange(gen.model.num_tokens) if sampler.order == "fixed" else None
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
