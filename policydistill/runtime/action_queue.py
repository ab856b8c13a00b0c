"""A per-env queue of timestamped actions planned by action chunks; numpy only.

Time is counted in control ticks. A chunk ``(n, H, act_dim)`` computed from the observation of
tick ``start`` plans the actions of ticks ``start .. start + H - 1``; it arrives at tick ``now >=
start`` (later when inference ran in the background). Its actions for ticks before ``now`` are
stale: they are dropped on arrival and never executed; so are planned actions whose tick passed
without being executed (a missed control tick). :meth:`ActionQueue.pop` returns only the action
planned for exactly that tick.

Two ways to combine a new chunk with the plan already queued:

- ``replace``: the new chunk replaces the plan (the old plan's later actions are discarded). With
  ``blend_steps = B > 0`` the first B executable actions of the new chunk cross-fade from the old
  plan: at the k-th (k = 0, 1, ...) tick the action is ``(1 - a_k) * old + a_k * new`` with
  ``a_k = (k + 1) / (B + 1)``, where the old plan has an action for that tick, so there is no jump
  at a chunk boundary.
- ``ensemble`` (temporal ensembling, as in ACT): every chunk's prediction for a tick is kept, and
  the executed action is their weighted average with weights ``w_i = exp(-m * i)``, where ``i = 0``
  is the oldest prediction for that tick (the first to arrive), ``i = 1`` the next, ... So ``m > 0``
  favours older predictions (ACT's choice), ``m = 0`` is the plain mean and ``m < 0`` favours newer
  ones. The queue keeps running sums (float64); :func:`ensemble_offline` computes the same average
  from the whole list of chunks, as the definition.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

MODES = ("replace", "ensemble")


class ActionQueue:
    """Planned actions of ``n_envs`` envs for up to ``capacity`` future ticks (capacity >= horizon)."""

    def __init__(self, n_envs: int, act_dim: int, capacity: int, mode: str = "replace", ensemble_m: float = 0.0,
                 blend_steps: int = 0) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown action queue mode '{mode}'; expected one of {list(MODES)}")
        if n_envs < 1 or act_dim < 1 or capacity < 1 or blend_steps < 0 or not math.isfinite(ensemble_m):
            raise ValueError(f"action queue needs n_envs, act_dim, capacity >= 1, blend_steps >= 0 and a finite "
                             f"ensemble_m, got {n_envs}, {act_dim}, {capacity}, {blend_steps}, {ensemble_m}")
        self.n_envs, self.act_dim, self.capacity = n_envs, act_dim, capacity
        self.mode, self.ensemble_m, self.blend_steps = mode, float(ensemble_m), int(blend_steps)
        self._sum = np.zeros((n_envs, capacity, act_dim))       # weighted sum of the predictions
        self._weight = np.zeros((n_envs, capacity))             # sum of their weights
        self._count = np.zeros((n_envs, capacity), np.int64)    # how many predictions
        self._tick = np.full((n_envs, capacity), -1, np.int64)  # the tick a slot plans; -1: empty
        self.dropped = np.zeros(n_envs, np.int64)
        """Stale actions discarded per env (arrived too late, or their tick was missed)."""

    def add(self, chunk: np.ndarray, start: int, now: int, envs: np.ndarray | None = None) -> None:
        """Queue ``chunk`` (n_envs, H, act_dim) planned from tick ``start``, arriving at tick ``now``.

        ``envs`` (n_envs,) bool: only these envs take the chunk (default: all).
        """
        chunk = np.asarray(chunk)
        if chunk.ndim != 3 or chunk.shape[0] != self.n_envs or chunk.shape[2] != self.act_dim \
                or not 1 <= chunk.shape[1] <= self.capacity:
            raise ValueError(f"chunk has shape {chunk.shape}, expected ({self.n_envs}, H <= {self.capacity}, "
                             f"{self.act_dim})")
        if now < start:
            raise ValueError(f"a chunk planned from tick {start} cannot arrive earlier, at tick {now}")
        rows = np.arange(self.n_envs) if envs is None else np.flatnonzero(envs)
        horizon = chunk.shape[1]
        stale = min(now - start, horizon)
        self.dropped[rows] += stale
        if stale == horizon or not len(rows):
            return
        ticks = np.arange(now, start + horizon)
        at = np.ix_(rows, ticks % self.capacity)
        fresh = chunk[rows, stale:].astype(np.float64)
        planned = self._tick[at] == ticks
        if self.mode == "ensemble":
            count = np.where(planned, self._count[at], 0)
            w = np.exp(-self.ensemble_m * count)
            self._sum[at] = np.where(planned[..., None], self._sum[at], 0.0) + w[..., None] * fresh
            self._weight[at] = np.where(planned, self._weight[at], 0.0) + w
            self._count[at] = count + 1
        else:
            if self.blend_steps:
                alpha = np.minimum((np.arange(len(ticks)) + 1.0) / (self.blend_steps + 1), 1.0)[None, :, None]
                old = self._sum[at] / np.maximum(self._weight[at], 1e-300)[..., None]
                fresh = np.where(planned[..., None], (1.0 - alpha) * old + alpha * fresh, fresh)
            later = self._tick[rows] > ticks[-1]
            self._tick[rows] = np.where(later, -1, self._tick[rows])
            self._sum[at], self._weight[at], self._count[at] = fresh, 1.0, 1
        self._tick[at] = ticks

    def pop(self, tick: int) -> tuple[np.ndarray, np.ndarray]:
        """The actions planned for ``tick``: (n_envs, act_dim) float32 and which envs have one (n_envs,) bool.

        Envs without a plan get zeros. Actions planned for earlier ticks are dropped.
        """
        stale = (self._tick >= 0) & (self._tick < tick)
        if stale.any():
            self.dropped += stale.sum(axis=1)
            self._tick[stale] = -1
        slot = tick % self.capacity
        valid = self._tick[:, slot] == tick
        weight = np.where(valid, self._weight[:, slot], 1.0)
        actions = np.where(valid[:, None], self._sum[:, slot] / weight[:, None], 0.0).astype(np.float32)
        self._tick[:, slot] = np.where(valid, -1, self._tick[:, slot])
        return actions, valid

    def has(self, tick: int) -> np.ndarray:
        """Which envs have an action planned for ``tick``: (n_envs,) bool."""
        return self._tick[:, tick % self.capacity] == tick

    def remaining(self, tick: int) -> np.ndarray:
        """Per env, how many consecutive ticks from ``tick`` on have a planned action: (n_envs,) int."""
        ticks = tick + np.arange(self.capacity)
        planned = self._tick[:, ticks % self.capacity] == ticks
        return np.cumprod(planned, axis=1).sum(axis=1)

    def clear(self, envs: np.ndarray | None = None) -> None:
        """Forget the plan of ``envs`` (n_envs,) bool, or of every env."""
        if envs is None:
            self._tick[:] = -1
        else:
            self._tick[np.asarray(envs, dtype=bool)] = -1


def ensemble_offline(chunks: Sequence[tuple[int, int, np.ndarray]], tick: int, ensemble_m: float) -> np.ndarray | None:
    """The temporally ensembled action of ``tick`` from every chunk, by definition.

    ``chunks``: ``(start, arrival, chunk (n, H, act_dim))`` in arrival order. The predictions for
    ``tick`` are those of the chunks that arrived at or before it and plan it; the i-th (oldest
    first) weighs ``exp(-m * i)``. Returns (n, act_dim) float64, or None when nothing plans ``tick``.
    """
    preds = [c[:, tick - start] for start, arrival, c in chunks
             if arrival <= tick and start <= tick < start + c.shape[1]]
    if not preds:
        return None
    w = np.exp(-ensemble_m * np.arange(len(preds)))
    return np.tensordot(w, np.asarray(preds, dtype=np.float64), axes=1) / w.sum()
