"""Drawing minibatch rows: per-task balancing weights, and weighted draws whose cumulative sum is built
once instead of on every draw (``rng.choice`` redoes it per call: O(N) per update)."""

from __future__ import annotations

import numpy as np


def task_weights(task: np.ndarray) -> np.ndarray:
    """Sampling probabilities (N,) that give every task id of ``task`` (N,) the same share."""
    p = 1.0 / np.bincount(task)[task]
    return p / p.sum()


def row_weights(task: np.ndarray | None, weight: np.ndarray | None) -> np.ndarray | None:
    """Sampling probabilities (N,) over rows of per-row ``task`` ids and loss ``weight`` (N,): rows of weight 0
    are never drawn; among the others every task gets the same share (``task`` None: uniform). None: uniform
    over all rows."""
    if weight is None:
        return None if task is None else task_weights(task)
    keep = np.asarray(weight) > 0
    if not keep.any():
        raise ValueError("every row has weight 0: nothing to train on")
    p = np.zeros(len(keep))
    p[keep] = 1.0 if task is None else 1.0 / np.bincount(task[keep])[task[keep]]
    return p / p.sum()


class RowSampler:
    """``sampler(rng, b) -> idx (b,)``: ``b`` of ``n`` row indices drawn with probabilities ``p`` (n,), or
    uniformly (None). The same indices and generator use as ``rng.choice(n, b, p=p)``."""

    def __init__(self, n: int, p: np.ndarray | None = None) -> None:
        if p is not None and len(p) != n:
            raise ValueError(f"sampling probabilities have length {len(p)}, expected {n}")
        self.n = n
        self.cdf = None if p is None else np.cumsum(p, dtype=np.float64)
        if self.cdf is not None:
            self.cdf /= self.cdf[-1]

    def __call__(self, rng: np.random.Generator, b: int) -> np.ndarray:
        if self.cdf is None:
            return rng.integers(0, self.n, size=b)
        return self.cdf.searchsorted(rng.random(b), side="right")
