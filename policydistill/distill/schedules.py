"""Who acts during DAgger: beta is the probability that the teacher acts, per env and step, in a round.

A schedule is a small frozen dataclass called as ``schedule(round, student_return, teacher_return)``
and returning beta in [0, 1]; only :class:`AdaptiveBeta` reads the returns. :func:`draw_actor` turns
beta into a per-env choice.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np


def _check_unit(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def _check_count(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _check_return(name: str, value: float | None) -> float | None:
    if value is not None and not math.isfinite(value):
        raise ValueError(f"{name} must be finite or None, got {value!r}")
    return value


class BetaSchedule:
    """Base of the schedules: ``__call__(round, student_return=None, teacher_return=None) -> beta``."""

    name: ClassVar[str]

    def __call__(self, round: int, student_return: float | None = None, teacher_return: float | None = None) -> float:
        _check_count("round", round, 0)
        _check_return("student_return", student_return)
        _check_return("teacher_return", teacher_return)
        return self._beta(int(round), student_return, teacher_return)

    def _beta(self, round: int, student_return: float | None, teacher_return: float | None) -> float:
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """``{"name": ..., **params}``, the inverse of :func:`make_schedule`."""
        return {"name": self.name, **dataclasses.asdict(self)}  # type: ignore[call-overload]


@dataclass(frozen=True)
class ConstantBeta(BetaSchedule):
    """beta at every round."""

    name: ClassVar[str] = "constant"
    beta: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "beta", _check_unit("beta", self.beta))

    def _beta(self, round: int, student_return: float | None, teacher_return: float | None) -> float:
        return self.beta


@dataclass(frozen=True)
class LinearBeta(BetaSchedule):
    """Linear from ``start`` at round 0 to ``end`` at round ``rounds``, then ``end``."""

    name: ClassVar[str] = "linear"
    start: float = 1.0
    end: float = 0.0
    rounds: int = field(kw_only=True)

    def __post_init__(self) -> None:
        object.__setattr__(self, "start", _check_unit("start", self.start))
        object.__setattr__(self, "end", _check_unit("end", self.end))
        object.__setattr__(self, "rounds", _check_count("rounds", self.rounds, 1))

    def _beta(self, round: int, student_return: float | None, teacher_return: float | None) -> float:
        return self.start + (self.end - self.start) * min(round / self.rounds, 1.0)


@dataclass(frozen=True)
class ExponentialBeta(BetaSchedule):
    """``start * decay ** round``."""

    name: ClassVar[str] = "exponential"
    decay: float = 0.5
    start: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "decay", _check_unit("decay", self.decay))
        object.__setattr__(self, "start", _check_unit("start", self.start))

    def _beta(self, round: int, student_return: float | None, teacher_return: float | None) -> float:
        return self.start * self.decay**round


@dataclass(frozen=True)
class StepBeta(BetaSchedule):
    """1 (teacher only) for rounds before ``switch_round``, 0 (student only) from it on."""

    name: ClassVar[str] = "step"
    switch_round: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "switch_round", _check_count("switch_round", self.switch_round, 0))

    def _beta(self, round: int, student_return: float | None, teacher_return: float | None) -> float:
        return 1.0 if round < self.switch_round else 0.0


@dataclass(frozen=True)
class AdaptiveBeta(BetaSchedule):
    """``clip(1 - G_student / G_teacher, floor, 1)`` from the last evaluation's returns: the teacher hands over
    as the student catches up. 1 when either return is None or ``G_teacher <= 0`` (no usable ratio)."""

    name: ClassVar[str] = "adaptive"
    floor: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "floor", _check_unit("floor", self.floor))

    def _beta(self, round: int, student_return: float | None, teacher_return: float | None) -> float:
        if student_return is None or teacher_return is None or teacher_return <= 0:
            return 1.0
        return float(np.clip(1.0 - student_return / teacher_return, self.floor, 1.0))


SCHEDULES: dict[str, type[BetaSchedule]] = {
    cls.name: cls for cls in (ConstantBeta, LinearBeta, ExponentialBeta, StepBeta, AdaptiveBeta)
}


def make_schedule(name: str, **params: Any) -> BetaSchedule:
    """The schedule called ``name`` (a key of :data:`SCHEDULES`) built from ``params``.

    Unknown names, unknown or missing params are errors listing the valid ones.
    """
    cls = SCHEDULES.get(name)
    if cls is None:
        raise ValueError(f"unknown beta schedule '{name}'; valid: {sorted(SCHEDULES)}")
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    valid = [f.name for f in fields]
    required = [f.name for f in fields if f.default is dataclasses.MISSING]
    unknown = sorted(set(params) - set(valid))
    missing = [k for k in required if k not in params]
    if unknown or missing:
        raise ValueError(f"beta schedule '{name}': unknown params {unknown}, missing params {missing}; "
                         f"valid params: {valid} (required: {required})")
    return cls(**params)


FLAT_KEYS: dict[str, dict[str, str]] = {
    "constant": {"beta": "beta"}, "linear": {"beta_start": "start", "beta_end": "end", "beta_rounds": "rounds"},
    "exponential": {"beta_start": "start", "beta_decay": "decay"}, "step": {"switch_round": "switch_round"},
    "adaptive": {"beta_floor": "floor"},
}
"""Per schedule, the config keys of :class:`ScheduleFields` it reads and the parameter each one sets."""


@dataclass
class ScheduleFields:
    """Config keys of a beta schedule, flat so that choosing another ``schedule`` needs no other change:
    ``constant`` reads ``beta``; ``linear`` goes from ``beta_start`` to ``beta_end`` over ``beta_rounds`` rounds;
    ``exponential`` is ``beta_start * beta_decay ** round``; ``step`` is 1 before ``switch_round``, then 0;
    ``adaptive`` is ``max(beta_floor, 1 - G_student / G_teacher)``. Keys of another schedule are errors."""

    schedule: str = "linear"
    beta: float = 1.0
    beta_start: float = 1.0
    beta_end: float = 0.0
    beta_rounds: int = 4
    beta_decay: float = 0.5
    switch_round: int = 1
    beta_floor: float = 0.0

    def schedule_keys(self) -> set[str]:
        """The keys the chosen schedule reads (with ``schedule`` itself)."""
        if self.schedule not in FLAT_KEYS:
            raise ValueError(f"unknown beta schedule '{self.schedule}'; valid: {sorted(FLAT_KEYS)}")
        return {"schedule", *FLAT_KEYS[self.schedule]}

    def beta_schedule(self) -> BetaSchedule:
        """The schedule these keys describe (parameters checked)."""
        self.schedule_keys()
        return make_schedule(self.schedule, **{param: getattr(self, key)
                                               for key, param in FLAT_KEYS[self.schedule].items()})


def draw_actor(beta: float, n_envs: int, rng: np.random.Generator) -> np.ndarray:
    """Who acts in each env this step: bool (n_envs,), True where the teacher acts (probability ``beta``)."""
    beta = _check_unit("beta", beta)
    n_envs = _check_count("n_envs", n_envs, 0)
    return rng.random(n_envs) < beta
