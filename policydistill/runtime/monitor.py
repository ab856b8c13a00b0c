"""A failure monitor: how far the student's inputs and outputs are from what it was trained on, every tick.

A :class:`FailureMonitor` scores each env's observation with two numbers, as the gates of gated DAgger do
(:mod:`policydistill.distill.gates`), each divided by its median on in-distribution episodes:

- ``novelty``: the error of a random-network-distillation predictor fitted on the training inputs (an
  out-of-distribution score on the inputs);
- ``disagreement``: the variance of an ensemble of small heads fitted to the training labels (an
  uncertainty score on the outputs).

The score is the larger ratio; the monitor raises an alarm on an env once its score exceeds ``threshold``.
The threshold is calibrated by split conformal prediction (:func:`conformal_threshold`) on the largest
score of each of n in-distribution calibration episodes, so that a new in-distribution episode raises an
alarm with probability at most ``alpha`` (for exchangeable episodes).

The monitor is plain numpy (no torch at run time): its arrays are saved as ``monitor.npz`` and its
settings as ``monitor.json`` in a folder of its own (``<run>/monitor``), read by the controller.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from policydistill.files import atomic_write_bytes, atomic_write_json, read_json
from policydistill.types import concat_groups

KINDS = ("disagreement", "novelty")
ON_ALARM = ("log", "fallback", "stop", "teacher")
ARRAYS = "monitor.npz"
SETTINGS = "monitor.json"


def conformal_rank(n: int, alpha: float) -> int:
    """The rank ``ceil((n + 1)(1 - alpha))`` of the conformal threshold among n calibration scores."""
    return math.ceil((n + 1) * (1.0 - alpha) - 1e-9)


def conformal_threshold(episode_scores: Sequence[float], alpha: float) -> float:
    """The :func:`conformal_rank`-th smallest of n calibration episodes' scores: a new exchangeable episode's
    score exceeds it with probability at most ``alpha``. Needs n >= 1 / alpha - 1 episodes."""
    scores = np.sort(np.asarray(episode_scores, dtype=np.float64))
    n = len(scores)
    k = conformal_rank(n, alpha)
    if not 0.0 < alpha < 1.0 or k > n:
        raise ValueError(f"a false-alarm rate of {alpha} needs at least {math.ceil(1 / alpha - 1)} calibration "
                         f"episodes, got {n}")
    return float(scores[k - 1])


def _block_diagonal(blocks: list[np.ndarray]) -> np.ndarray:
    out = np.zeros((sum(b.shape[0] for b in blocks), sum(b.shape[1] for b in blocks)), dtype=np.float32)
    r = c = 0
    for b in blocks:
        out[r:r + b.shape[0], c:c + b.shape[1]] = b
        r, c = r + b.shape[0], c + b.shape[1]
    return out


@dataclass
class FailureMonitor:
    """See the module doc. ``arrays``: ``x_mean``, ``x_std`` (d,) and, per layer i of the three-layer tanh
    networks, ``<net>.<i>.w`` (k, a, b) and ``<net>.<i>.b`` (k, 1, b) for ``heads`` (k heads), ``target`` and
    ``predictor`` (one each); ``medians``: each score's median in distribution; ``alpha``: the false-alarm rate
    ``threshold`` was calibrated to on ``episodes`` episodes."""

    groups: tuple[str, ...]
    arrays: dict[str, np.ndarray]
    medians: dict[str, float]
    threshold: float
    alpha: float
    episodes: int

    def __post_init__(self) -> None:
        """Every network side by side as one: the first layers concatenated, the second block-diagonal, the last
        giving the heads' outputs and the predictor's error (predictor minus target) directly, so a tick is three
        matrix products."""
        a = self.arrays
        nets = [(name, j) for name in ("heads", "target", "predictor") for j in range(a[f"{name}.0.w"].shape[0])]
        sign = {"heads": 1.0, "target": -1.0, "predictor": 1.0}
        w1 = np.concatenate([a[f"{n}.0.w"][j] for n, j in nets], axis=1)
        b1 = np.concatenate([a[f"{n}.0.b"][j, 0] for n, j in nets])
        w2 = _block_diagonal([a[f"{n}.1.w"][j] for n, j in nets])
        b2 = np.concatenate([a[f"{n}.1.b"][j, 0] for n, j in nets])
        k, act = a["heads.2.w"].shape[0], a["heads.2.w"].shape[2]
        centre = np.kron(np.eye(k) - 1.0 / k, np.eye(act)).astype(np.float32)  # outputs -> deviations from their mean
        heads = _block_diagonal([a["heads.2.w"][j] for j in range(k)]) @ centre
        rnd = np.concatenate([sign[n] * a[f"{n}.2.w"][j] for n, j in nets[-2:]])  # (2 * hidden, 16)
        w3 = np.concatenate([np.concatenate([heads, np.zeros((len(heads), 16), np.float32)], axis=1),
                             np.concatenate([np.zeros((len(rnd), heads.shape[1]), np.float32), rnd], axis=1)])
        b3 = np.concatenate([a["heads.2.b"].reshape(-1) @ centre, a["predictor.2.b"][0, 0] - a["target.2.b"][0, 0]])
        self._layers = [(w.astype(np.float32), b.astype(np.float32)) for w, b in ((w1, b1), (w2, b2), (w3, b3))]
        self._mean = np.zeros((k * act + 16, 2), dtype=np.float32)  # squared outputs -> the two scores
        self._mean[:k * act, 0] = 1.0 / ((k - 1) * act)  # the heads' variance (unbiased) averaged over dims
        self._mean[k * act:, 1] = 1.0 / 16  # the predictor's squared error averaged over its outputs
        self._inv_std = (1.0 / a["x_std"]).astype(np.float32)

    def _scores(self, x: np.ndarray) -> np.ndarray:
        (w1, b1), (w2, b2), (w3, b3) = self._layers
        z = np.clip((np.asarray(x, dtype=np.float32) - self.arrays["x_mean"]) * self._inv_std, -10.0, 10.0)
        return np.square(np.tanh(np.tanh(z @ w1 + b1) @ w2 + b2) @ w3 + b3) @ self._mean  # (n, 2)

    def raw_scores(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """x (n, d) the student's inputs -> ``disagreement`` and ``novelty`` (n,), not yet over their medians."""
        both = self._scores(x)
        return {"disagreement": both[:, 0], "novelty": both[:, 1]}

    def score(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        """Observation groups (n, ...) -> each env's score (n,): the larger score-over-median ratio."""
        medians = np.asarray([self.medians[k] for k in KINDS], dtype=np.float32)
        return (self._scores(concat_groups(obs, self.groups)) / medians).max(1)

    def save(self, folder: str | Path) -> Path:
        """Write ``monitor.npz`` and ``monitor.json`` into ``folder`` (each atomically)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.savez(buf, **self.arrays)
        atomic_write_bytes(folder / ARRAYS, buf.getvalue())
        atomic_write_json(folder / SETTINGS, {"groups": list(self.groups), "medians": self.medians,
                                              "threshold": self.threshold, "alpha": self.alpha,
                                              "episodes": self.episodes})
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> FailureMonitor:
        folder = Path(folder)
        if not (folder / SETTINGS).is_file() or not (folder / ARRAYS).is_file():
            raise FileNotFoundError(f"{folder} is not a failure monitor (expected {SETTINGS} and {ARRAYS})")
        settings: dict[str, Any] = read_json(folder / SETTINGS)
        with np.load(folder / ARRAYS, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        return cls(tuple(settings["groups"]), arrays, {k: float(v) for k, v in settings["medians"].items()},
                   float(settings["threshold"]), float(settings["alpha"]), int(settings["episodes"]))
