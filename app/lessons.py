"""Curated runs, each teaching one lesson: the first screen's examples and the static site's runs.

A lesson is one Unmasking run or one Compare set (panels that differ in one setting, same class and
seeds). Settings not named take the model's own rule (emigm.sample.capabilities) and the sampler's
defaults, so a lesson says only what it is about. A lesson whose model is not offered (the oracle
before assets/fmnist-oracle exists) is left out.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence


@dataclass(frozen=True)
class Panel:
    title: str
    model: str
    sampler: dict[str, Any] = field(default_factory=dict)
    guidance: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Lesson:
    key: str
    title: str
    lesson: str  # the one thing the run shows, in a sentence
    panels: tuple[Panel, ...]
    label: int = 0
    seeds: tuple[int, ...] = (0, 1)

    @property
    def kind(self) -> str:
        return "unmask" if len(self.panels) == 1 else "compare"

    @property
    def models(self) -> list[str]:
        return list(dict.fromkeys(p.model for p in self.panels))


NO_CFG = {"cfg_scale": 1.0}
LESSONS: tuple[Lesson, ...] = (
    Lesson("unmasking", "An image, token by token",
           "eMIGM reveals few tokens early and most of the image in the last steps (the exp schedule); the "
           "draft shows at every step what the model believes the still-masked tokens will be.",
           (Panel("fmnist-emigm, 16 steps, CFG 3 in (0.1, 0.3]", "fmnist-emigm", {"num_steps": 16},
                  {"cfg_scale": 3.0, "cfg_interval": (0.1, 0.3)}),), label=0, seeds=(0,)),
    Lesson("schedule-4-steps", "exp against linear at 4 steps",
           "With only 4 steps the schedule decides how many tokens each step must reveal at once: linear "
           "reveals a quarter of the image in the first step, exp only a few tokens.",
           (Panel("exp, 4 steps", "fmnist-emigm", {"num_steps": 4, "schedule": "exp"}, NO_CFG),
            Panel("linear, 4 steps", "fmnist-emigm", {"num_steps": 4, "schedule": "linear"}, NO_CFG)),
           label=9, seeds=(0, 1)),
    Lesson("cfg-interval", "CFG in an interval against CFG at every step",
           "Guidance only where it helps, s in (0.1, 0.3], costs 3 extra passes instead of 16, but leaves the "
           "first steps, which set the garment's shape, unguided.",
           (Panel("CFG 3 in (0.1, 0.3]", "fmnist-emigm", {"num_steps": 16},
                  {"cfg_scale": 3.0, "cfg_interval": (0.1, 0.3)}),
            Panel("CFG 3 at every step", "fmnist-emigm", {"num_steps": 16},
                  {"cfg_scale": 3.0, "cfg_interval": (0.0, 1.0)})),
           label=3, seeds=(0, 1)),
    Lesson("self-guidance", "Self-guidance",
           "MaskGIT with its self-guidance smoother: each step is pushed away from a blurred version of its own "
           "prediction, at one extra pass per step.",
           (Panel("self-guidance off", "fmnist-maskgit", {"num_steps": 16}, {**NO_CFG, "sg_scale": 0.0}),
            Panel("self-guidance 1", "fmnist-maskgit", {"num_steps": 16}, {**NO_CFG, "sg_scale": 1.0})),
           label=5, seeds=(0, 1)),
    Lesson("remasking", "Revocable tokens (remasking)",
           "With ReMDM remasking a committed token may be masked again and re-predicted; without it every "
           "token stays as first revealed.",
           (Panel("remask off", "fmnist-emigm", {"num_steps": 16, "remask": "off"}, NO_CFG),
            Panel("remask cap, eta 0.05", "fmnist-emigm", {"num_steps": 16, "remask": "cap", "remask_eta": 0.05},
                  NO_CFG)),
           label=1, seeds=(0, 1)),
    Lesson("oracle", "A learned model against the oracle",
           "The oracle predicts from 10,000 training images exactly: the gap to it is what the learned model "
           "has not learned, on the same VQ codes.",
           (Panel("fmnist-maskgit (learned)", "fmnist-maskgit", {"num_steps": 16}, NO_CFG),
            Panel("fmnist-oracle (exact posterior)", "fmnist-oracle", {"num_steps": 16}, NO_CFG)),
           label=7, seeds=(0, 1)),
)


def available(offered: Sequence[str]) -> list[Lesson]:
    """The lessons whose every model is among `offered`."""
    names = set(offered)
    return [lesson for lesson in LESSONS if all(m in names for m in lesson.models)]
