"""The last step of every action the controller sends: finite, within the bounds, optionally rate- and
jerk-limited; numpy only.

:class:`ActionGuard` takes the actions a tick computed, with the envs that have one, and returns what
is sent to the robot:

- an env without an action, or with a non-finite one, gets the fallback action (counted in
  ``nonfinite_env_ticks`` for a non-finite action);
- a finite action outside the action bounds is clipped into them (``out_of_bounds="clip"``) or
  replaced by the fallback (``"fallback"``), counted in ``out_of_bounds_env_ticks`` either way;
- with ``max_rate`` no action differs from the previous one sent by more than ``max_rate`` per
  dimension; with ``max_jerk`` the change of that difference is at most ``max_jerk`` per tick, and
  the approach to a target brakes in time (the largest step from which the remaining distance can
  still be covered while slowing by ``max_jerk`` per tick), so a limited action does not overshoot
  its target nor leave the bounds. Limited env-ticks are counted in ``rate_limited_env_ticks`` and
  ``jerk_limited_env_ticks``. The limits start from the ``start`` actions (the safe action, at rest)
  and follow the sent stream across episode resets.

Bounds always hold; the limits hold whenever the previous action sent lies within the bounds (it
does: every action sent passes here).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from operator import le

import numpy as np

OUT_OF_BOUNDS = ("clip", "fallback")
COUNTERS = ("nonfinite_env_ticks", "out_of_bounds_env_ticks", "rate_limited_env_ticks", "jerk_limited_env_ticks")
_BIG = float(np.finfo(np.float32).max)


def check_limit(name: str, value: float | None) -> float | None:
    """``value`` as a finite number > 0, or None (no limit); else a ValueError naming ``name``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0 (action units per tick) or null for no limit, "
                         f"got {value!r}")
    return float(value)


def safe_action_for(given: object, act_dim: int, low: np.ndarray | None, high: np.ndarray | None) -> np.ndarray:
    """The safe action (act_dim,) float32: ``given`` (``act_dim`` finite numbers within the bounds ``low``,
    ``high``), else zeros clipped into the bounds; a ValueError naming what is wrong otherwise."""
    if given is None:
        return np.zeros(act_dim, np.float32) if low is None else np.clip(0.0, low, high).astype(np.float32)
    try:
        safe = np.asarray(given, dtype=np.float64)
    except (TypeError, ValueError):
        safe = np.full(0, np.nan)
    if safe.shape != (act_dim,) or not np.all(np.isfinite(safe)):
        raise ValueError(f"safe_action must be {act_dim} finite numbers, got {given}")
    if low is not None and not (np.all(safe >= low) and np.all(safe <= high)):
        raise ValueError(f"safe_action {safe.tolist()} is outside the action bounds: expected each value within "
                         f"low {np.asarray(low).tolist()} and high {np.asarray(high).tolist()}")
    return safe.astype(np.float32)


class ActionGuard:
    """Makes the actions of ``n`` envs safe to send (see the module docstring).

    ``low``/``high`` (act_dim,): the action bounds (infinite: none, but values must be finite);
    ``start`` (n, act_dim): the actions the limits start from; ``fallback()``: the (n, act_dim)
    actions replacing missing or rejected ones (within the bounds); ``counts``: the dict the
    counters are added to.
    """

    def __init__(self, low: np.ndarray, high: np.ndarray, start: np.ndarray, fallback: Callable[[], np.ndarray],
                 counts: dict[str, int], out_of_bounds: str = "clip", max_rate: float | None = None,
                 max_jerk: float | None = None) -> None:
        if out_of_bounds not in OUT_OF_BOUNDS:
            raise ValueError(f"unknown out_of_bounds '{out_of_bounds}'; expected one of {list(OUT_OF_BOUNDS)}")
        self.low = np.maximum(np.asarray(low, np.float32), -_BIG)
        self.high = np.minimum(np.asarray(high, np.float32), _BIG)
        self.out_of_bounds = out_of_bounds
        self.max_rate, self.max_jerk = check_limit("max_rate", max_rate), check_limit("max_jerk", max_jerk)
        self.limited = self.max_rate is not None or self.max_jerk is not None
        self._fallback, self.counts = fallback, counts
        for key in COUNTERS:
            counts.setdefault(key, 0)
        self._prev = np.asarray(start, np.float32).astype(np.float64)
        self._vel = np.zeros_like(self._prev)
        n = len(self._prev)  # bounds as lists for the per-tick check of small batches
        self._low_list, self._high_list = np.tile(self.low, n).tolist(), np.tile(self.high, n).tolist()
        self._checked: np.ndarray | None = None  # the actions :meth:`inside` found inside, until the next call

    def __call__(self, actions: np.ndarray, ok: np.ndarray | None = None) -> np.ndarray:
        """The (n, act_dim) float32 actions to send for ``actions`` (n, act_dim); ``ok`` (n,) bool: the
        envs that have an action (None: all)."""
        if ok is not None or (actions is not self._checked and not self._inside(actions)):
            actions = self._repair(actions, ok)
        self._checked = None
        return self._limit(actions) if self.limited else actions

    def inside(self, actions: np.ndarray) -> bool:
        """Whether every value of ``actions`` (n, act_dim) is within the bounds (so finite); if so, the next call
        takes this same array without checking it again."""
        self._checked = actions if self._inside(actions) else None
        return self._checked is not None

    def _inside(self, actions: np.ndarray) -> bool:
        """Whether every value is within the bounds (so finite): Python comparisons for small batches,
        far cheaper per tick than numpy ufuncs."""
        if actions.size <= 64 and actions.size == len(self._low_list):
            values = actions.ravel().tolist()
            return all(map(le, self._low_list, values)) and all(map(le, values, self._high_list))
        return bool(((actions >= self.low) & (actions <= self.high)).all())

    def reached(self, target: np.ndarray) -> bool:
        """Whether the last actions sent are ``target`` (always, without limits: nothing delays a target)."""
        return not self.limited or bool(np.array_equal(self._prev, target))

    def _repair(self, actions: np.ndarray, ok: np.ndarray | None) -> np.ndarray:
        inside = (actions >= self.low) & (actions <= self.high)  # False for NaN and +-inf too
        finite = np.isfinite(actions).all(axis=1)
        valid = finite.copy() if ok is None else ok & finite
        self.counts["nonfinite_env_ticks"] += int(len(actions) - finite.sum() if ok is None else (ok & ~finite).sum())
        outside = valid & ~inside.all(axis=1)
        if outside.any():
            self.counts["out_of_bounds_env_ticks"] += int(outside.sum())
            if self.out_of_bounds == "clip":
                actions = np.where(outside[:, None], np.clip(actions, self.low, self.high), actions)
            else:
                valid &= ~outside
        if valid.all():
            return actions.astype(np.float32, copy=False)
        return np.where(valid[:, None], actions, self._fallback()).astype(np.float32)

    def _limit(self, target: np.ndarray) -> np.ndarray:
        prev = self._prev
        want = target - prev
        step = want
        if self.max_jerk is not None:
            j = self.max_jerk
            dist = np.abs(want)
            m = np.floor(np.sqrt(0.25 + 2.0 * dist / j) - 0.5)  # whole ticks of braking: j * m(m+1)/2 <= dist
            brake = m * j + np.maximum(dist - j * m * (m + 1) / 2, 0.0) / (m + 1)
            step = np.clip(np.clip(want, -brake, brake), self._vel - j, self._vel + j)
            self.counts["jerk_limited_env_ticks"] += int((step != want).any(axis=1).sum())
        if self.max_rate is not None:
            limited = np.clip(step, -self.max_rate, self.max_rate)
            self.counts["rate_limited_env_ticks"] += int((limited != step).any(axis=1).sum())
            step = limited
        sent = np.where(step == want, target, np.clip(prev + step, self.low, self.high)).astype(np.float32)
        new = sent.astype(np.float64)
        self._vel, self._prev = new - prev, new
        return sent
