"""What Python sends the page, described once: the payloads that static/explorer.js draws (the step
player, an opened step, the status line). The builders (app/stepper.py, app/lab.py) fill these
structures and `to_json` turns them into the JSON the page and gradio_client receive; the page reads
the field names below and, for what it shares with the library (the kind of an order, the guidance
branch that is the draft), the values these structures carry, never copies of its own.

Fields declared with `optional()` are left out of the JSON while None (the page tests their presence);
every other field is always there (None as null).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from emigm.sample.anatomy import COMBINED


def optional() -> Any:
    """A field left out of the JSON while None."""
    return field(default=None, metadata={"omit_none": True})


def to_json(obj: Any) -> Any:
    """A payload (nested dataclasses, lists, tuples, dicts) as plain JSON values."""
    if is_dataclass(obj) and not isinstance(obj, type):
        out = {}
        for f in fields(obj):
            v = getattr(obj, f.name)
            if v is None and f.metadata.get("omit_none"):
                continue
            out[f.name] = to_json(v)
        return out
    if isinstance(obj, dict):
        return {k: to_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json(v) for v in obj]
    return obj


# ----------------------------------------------------------------------------- the step player


@dataclass(frozen=True)
class StepRecord:
    """One step of one sample: times t -> s, CFG scale (0: off), self-guidance scale (0: off), passes of
    this step and so far (nfe), milliseconds, tokens revealed by it and tokens still masked after it
    (with remasking a token may be revealed more than once, so the share revealed so far is
    1 - masked / L, never the sum of the reveals)."""

    t: float
    s: float
    cfg: float
    sg: float
    passes: int
    nfe: int
    ms: float
    revealed: int
    masked: int


@dataclass(frozen=True)
class PlayerPanel:
    """A panel of the player: its sprite columns (one per seed; none for a panel that did not run, whose
    `note` says why), per seed the 1-based step each token was revealed at (0: not yet), its steps, and
    the frame of its own run shown at each player step (`frame_of`: runs of different lengths scrub
    together)."""

    title: str
    note: str
    cols: list[int]
    key: str | None = None
    measured: dict[str, Any] | None = None  # the FD measured for the panel's setting (app/claims.py)
    when: list[list[int]] | None = optional()
    steps: list[StepRecord] | None = optional()
    N: int | None = optional()
    frame_of: list[int] | None = optional()
    masked: list[list[str]] | None = optional()  # per seed, per step: the mask after it ('1' = masked)
    nfe: int | None = optional()
    image_steps: list[int] | None = optional()  # per seed: the steps its image took (an adaptive order's vary)
    image_nfe: list[int] | None = optional()  # per seed: the transformer passes of those steps
    ms: int | None = optional()


@dataclass(frozen=True)
class StepCost:
    """A run on an oracle model (emigm.nn.oracle): per step, the nats the sampler added by revealing that
    step's tokens together (emigm.eval.sampler_error.run_errors on the run's own draws), their total,
    and the posterior's effective number of references before each step. `measure` is "KL" when the
    reveal path does not depend on token values, else "dependence cost"; `guided`: the target is no
    longer the unguided p(x | c). `per_step` None: not computed, `note` says why."""

    measure: str
    fixed: bool
    guided: bool
    note: str
    per_step: list[float] | None = None
    total: float | None = None
    effective: list[float] | None = None


@dataclass(frozen=True)
class PlayerPayload:
    """The step player (kind "unmask": one run with its lab maps; "compare": side-by-side panels). The
    sprite is one PNG, row = frame (from `first`), column = image; n frames shown of N steps."""

    kind: str
    run: str
    live: bool
    n: int
    N: int
    grid: int
    px: int
    view: int
    L: int
    first: int
    sprite: str
    panels: list[PlayerPanel]
    complete: bool
    # kind "unmask"
    steps: list[StepRecord] | None = optional()
    branched_from: int | None = optional()
    title: str | None = optional()
    unc: list[list[float]] | None = optional()  # per shown frame, the uncertainty of every token
    unc_label: str | None = optional()
    masked: list[str] | None = optional()  # remasking runs: per shown frame, the mask after it
    revisions: list[list[int]] | None = optional()  # remasking runs: times each token was re-masked so far
    cost: StepCost | None = optional()  # runs on an oracle model: the sampler's own error per step
    # kind "compare"
    same_steps: bool | None = optional()


# ----------------------------------------------------------------------------- an opened step


@dataclass(frozen=True)
class Branch:
    name: str  # one of emigm.sample.anatomy.BRANCHES
    title: str


@dataclass(frozen=True)
class TokenMaps:
    """Per token (sample 0) of the opened step: masked before it, masked after it, revealed by it, the
    order's score and Gumbel noise, the rank in this step's selection, the Halton rank (None: not a
    square grid), the uncertainty and where guidance acted."""

    masked: list[int]
    after: list[int]
    revealed: list[int]
    score: list[float | None]
    noise: list[float | None]
    rank: list[int]
    halton: list[int] | None
    unc: list[float | None]
    delta: list[float | None]


@dataclass(frozen=True)
class Count:
    masked: int
    p: float
    expected: float
    drawn: int
    remask_sigma: float
    remasked: int


@dataclass(frozen=True)
class TokenPath:
    """One token's denoising path inside the diffusion head (or, with `note`, why there is none)."""

    token: list[int]
    note: str
    values: list[list[float]] | None = optional()  # the token's channels at each point of the solver
    solver: str | None = optional()
    captions: list[str] | None = optional()  # what each point is: the noise, then the calls made so far
    revealed: bool | None = optional()
    sprite: str | None = optional()


@dataclass(frozen=True)
class AnatomyPayload:
    """An opened step (static/explorer.js emigmAnatomy): each branch's prediction decoded (one sprite
    column per branch, in `branches` order), the token maps and the count."""

    run: str
    step: int
    N: int
    grid: int
    px: int
    view: int
    L: int
    model: str
    discrete: bool
    sprite: str
    branches: list[Branch]
    headline: str
    order: str
    order_kind: str  # its kind in the library's registry (emigm.sample.orders.ORDERS): priority, score, adaptive
    order_fixed: bool  # a priority order fixed before sampling (the same at every step)
    count_rule: str
    guidance: str
    weights: dict[str, float]
    count: Count
    tokens: TokenMaps
    unc_label: str
    delta_label: str
    path: TokenPath | None = None
    kind: str = "anatomy"
    draft_branch: str = COMBINED  # the branch that is the run's draft



# ----------------------------------------------------------------------------- the status line


@dataclass(frozen=True)
class Status:
    """phase running | done (shown as rendering until the player drew run `run`, then ready) | stopped |
    error; notes: {control: message} shown next to those controls; seq differs from the last status."""

    phase: str
    text: str
    run: str
    seq: int
    notes: dict[str, str] | None = optional()
