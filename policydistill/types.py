"""Observation groups and the small records passed between the parts.

An observation is a dict of named groups, each batched: ``{group: array (n_envs, dim)}``.
``policy`` is what a deployed robot senses, ``privileged`` is simulator-only state, ``task`` is the
task id (one-hot over the suite's tasks), ``goal`` the goal a goal-conditioned env asks for (its
``desired_goal``), which a student reads like ``task``, ``extero`` what a robot senses of its surroundings
(a range or proximity sensor) where an env has such a sensor.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

POLICY = "policy"
PRIVILEGED = "privileged"
TASK = "task"
GOAL = "goal"
LAST_ACTION = "last_action"
"""The action of the step before, where an env observes it (a history student can read it; see RMA)."""
EXTERO = "extero"
"""Exteroception: what a sensor reads of the robot's surroundings, where an env has one (PointReach's pit sensor)."""
GROUPS: tuple[str, ...] = (POLICY, PRIVILEGED, TASK, LAST_ACTION, GOAL, EXTERO)

ObsGroups = Mapping[str, np.ndarray]


def all_finite(a: np.ndarray) -> bool:
    """Whether every value of ``a`` is finite (may say False for huge finite values: callers check exactly then).

    A Python sum for small arrays: far cheaper per step than a numpy ufunc and reduction."""
    return math.isfinite(sum(a.ravel().tolist()) if a.size <= 64 else float(a.sum(dtype=np.float64)))


def check_obs(obs: Any, groups: Sequence[str], dims: Mapping[str, int] | None = None) -> None:
    """Raise a one-line error unless ``obs`` maps each of ``groups`` to a finite (n, dim) array.

    ``dims`` {group: dim}, when known, is checked too and named in the message. A missing group is a
    KeyError; None, a wrong shape or a non-finite value a ValueError naming the group, what was
    expected and what came in.
    """
    def want(g: str) -> str:
        return f"(n, {dims[g]})" if dims and g in dims else "(n, dim)"

    if not isinstance(obs, Mapping):
        shape = f" of shape {np.shape(obs)}" if isinstance(obs, np.ndarray) else ""
        raise ValueError(f"observation must be a dict of groups {list(groups)} -> (n, dim) arrays, got "
                         f"{type(obs).__name__}{shape}")
    missing = [g for g in groups if g not in obs]
    if missing:
        raise KeyError(f"observation lacks groups {missing}; it has {sorted(obs)}")
    for g in groups:
        if obs[g] is None:
            raise ValueError(f"observation group '{g}' is None, expected an array of shape {want(g)}")
        a = np.asarray(obs[g])
        if a.ndim != 2:
            raise ValueError(f"observation group '{g}' has shape {a.shape}, expected {want(g)} (one row per env)")
        if dims and g in dims and a.shape[1] != dims[g]:
            raise ValueError(f"observation group '{g}' has shape {a.shape}, expected ({len(a)}, {dims[g]})")
        if a.dtype.kind not in "fiub":
            raise ValueError(f"observation group '{g}' holds {a.dtype} values, expected numbers of shape {want(g)}")
        finite = np.isfinite(a)
        if not finite.all():
            row, col = np.argwhere(~finite)[0]
            raise ValueError(f"observation group '{g}' has a non-finite value ({a[row, col]} at row {row}, column "
                             f"{col}), expected finite numbers")


def check_groups(groups: Sequence[str]) -> tuple[str, ...]:
    """Validate a list of group names (known, non-empty, no repeats) and return it as a tuple."""
    groups = tuple(groups)
    unknown = [g for g in groups if g not in GROUPS]
    if unknown or not groups or len(set(groups)) != len(groups):
        raise ValueError(f"invalid observation groups {list(groups)}: expected a non-empty, "
                         f"repeat-free list drawn from {list(GROUPS)}")
    return groups


def select_groups(obs: ObsGroups, groups: Sequence[str]) -> dict[str, np.ndarray]:
    """Keep only ``groups`` of ``obs``; a missing group is an error naming what exists."""
    missing = [g for g in groups if g not in obs]
    if missing:
        raise KeyError(f"observation lacks groups {missing}; it has {sorted(obs)}")
    return {g: obs[g] for g in groups}


def concat_groups(obs: ObsGroups, groups: Sequence[str]) -> np.ndarray:
    """Concatenate ``groups`` of ``obs`` in the given order: (n_envs, sum of group dims)."""
    return np.concatenate([np.asarray(obs[g], dtype=np.float32) for g in select_groups(obs, groups)], axis=-1)


def group_array(obs: ObsGroups, groups: Sequence[str], space: Mapping, lead: tuple[int, ...] = ()) -> np.ndarray:
    """``groups`` of ``obs``, each checked against its Box in ``space`` (shape (n, *lead, dim)), concatenated
    in order: float32 (n, *lead, sum of dims). A missing group is a KeyError, a wrong shape a ValueError."""
    parts = []
    for g, x in select_groups(obs, groups).items():
        x = np.asarray(x, dtype=np.float32)
        want = (*lead, space[g].shape[0])
        if x.shape[1:] != want:
            raise ValueError(f"observation group '{g}' has shape {x.shape}, expected (n, {', '.join(map(str, want))})")
        parts.append(x)
    return np.concatenate(parts, axis=-1)


def stack_obs(obs_list: Sequence[ObsGroups]) -> dict[str, np.ndarray]:
    """Stack per-env unbatched observations into one batched observation: {group: (n_envs, dim)}."""
    return {g: np.stack([np.asarray(o[g], dtype=np.float32) for o in obs_list]) for g in obs_list[0]}


@dataclass(frozen=True)
class ActionLabel:
    """A teacher's label for a batch of states: ``mean`` (n, act_dim) and, if it has one, ``std``."""

    mean: np.ndarray
    std: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.mean.ndim != 2:
            raise ValueError(f"ActionLabel.mean must be (n, act_dim), got shape {self.mean.shape}")
        if self.std is not None and self.std.shape != self.mean.shape:
            raise ValueError(f"ActionLabel.std shape {self.std.shape} != mean shape {self.mean.shape}")
