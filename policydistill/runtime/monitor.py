"""A failure monitor: how far the student's inputs and outputs are from what it was trained on, every tick.

A :class:`FailureMonitor` scores each env's observation with two numbers, as the gates of gated DAgger do
(:mod:`policydistill.distill.gates`), each divided by its median on in-distribution episodes:

- ``novelty``: the error of a random-network-distillation predictor fitted on the training inputs (an
  out-of-distribution score on the inputs);
- ``disagreement``: the variance of an ensemble of small heads fitted to the training labels (an
  uncertainty score on the outputs).

The score is the larger ratio. An episode's first ticks can be unlike its steady state (a robot settling
after a reset scores several times its median): over the first ticks after each env's reset the score is
also divided by ``start_scale[t]``, the in-distribution episodes' median score at tick t over their steady
median (at least 1; see :func:`~policydistill.distill.monitor.start_profile`). The monitor raises an alarm on
an env once its ``statistic`` exceeds ``threshold``: the score of the tick (``tick``: a sudden departure, as a
fall), or the mean of the scores since the env's reset (``mean``: a sustained one, as a gait that drifts off
over an episode).
The threshold is calibrated by split conformal prediction (:func:`conformal_threshold`) on the largest
score of each of n in-distribution calibration episodes, so that a new in-distribution episode raises an
alarm with probability at most ``alpha`` (for exchangeable episodes): on average over calibration sets, or,
given ``delta``, for this calibration with probability 1 - ``delta``.

The monitor is plain numpy (no torch at run time): its arrays are saved as ``monitor.npz`` and its
settings as ``monitor.json``, stored in the policy's bundle (``policydistill fit-monitor``; ``policy.json``
records their sha256) and exported beside the policy's model (``<model>.monitor/``, recorded in
``<model>.json``); :func:`load_monitor` reads either, or a folder of its own, and checks the hashes.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from policydistill.files import atomic_write_bytes, atomic_write_json, file_sha256, read_json
from policydistill.types import concat_groups

KINDS = ("disagreement", "novelty")
ON_ALARM = ("log", "fallback", "stop", "teacher")
STATISTICS = ("tick", "mean")
ARRAYS = "monitor.npz"
SETTINGS = "monitor.json"
FILES = (ARRAYS, SETTINGS)
_SATURATE = 20.0
"""The pre-activation of the constant units: its float32 tanh is 1.0 exactly."""
EXPORTED = ".monitor"
"""An exported model ``<model>`` has its monitor in the folder ``<model>.monitor``."""


def _binomial_tail(n: int, p: float) -> list[float]:
    """``P(Binomial(n, p) >= k)`` for k = 0..n+1 (computed in log space: n may be thousands)."""
    logs = [math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1) + j * math.log(p)
            + (n - j) * math.log1p(-p) for j in range(n + 1)]
    tail = [0.0] * (n + 2)
    for j in range(n, -1, -1):
        tail[j] = tail[j + 1] + math.exp(logs[j])
    return tail


def conformal_rank(n: int, alpha: float, delta: float | None = None) -> int:
    """The rank of the conformal threshold among n calibration scores (n + 1 when n are too few).

    ``delta`` None: ``ceil((n + 1)(1 - alpha))``, so that a new episode's score exceeds the threshold with
    probability at most ``alpha`` averaged over calibration sets. ``delta``: the smallest k with
    ``P(Binomial(n, 1 - alpha) >= k) <= delta``, so that the false-alarm rate of this one calibrated threshold is
    at most ``alpha`` with probability 1 - ``delta`` over the calibration draw (training-conditional conformal
    prediction: the coverage of the k-th smallest score is Beta(k, n + 1 - k)).
    """
    if delta is None:
        return math.ceil((n + 1) * (1.0 - alpha) - 1e-9)
    tail = _binomial_tail(n, 1.0 - alpha)
    return next((k for k in range(1, n + 1) if tail[k] <= delta), n + 1)


def episodes_needed(alpha: float, delta: float | None = None) -> int:
    """The fewest calibration episodes :func:`conformal_rank` can place a threshold among."""
    if delta is None:
        return math.ceil(1 / alpha - 1 - 1e-9)
    return math.ceil(math.log(delta) / math.log1p(-alpha) - 1e-9)  # (1 - alpha)^n <= delta


def conformal_threshold(episode_scores: Sequence[float], alpha: float, delta: float | None = None) -> float:
    """The :func:`conformal_rank`-th smallest of n calibration episodes' scores: a new exchangeable episode's
    score exceeds it with probability at most ``alpha`` (with probability 1 - ``delta`` over the calibration
    episodes, if given). Needs :func:`episodes_needed` episodes."""
    scores = np.sort(np.asarray(episode_scores, dtype=np.float64))
    n = len(scores)
    if not 0.0 < alpha < 1.0 or (delta is not None and not 0.0 < delta < 1.0):
        raise ValueError(f"alpha and delta must lie in (0, 1), got {alpha} and {delta}")
    k = conformal_rank(n, alpha, delta)
    if k > n:
        raise ValueError(f"a false-alarm rate of {alpha}{'' if delta is None else f' at confidence {1 - delta:g}'} "
                         f"needs at least {episodes_needed(alpha, delta)} calibration episodes, got {n}")
    return float(scores[k - 1])


def _block_diagonal(blocks: list[np.ndarray]) -> np.ndarray:
    out = np.zeros((sum(b.shape[0] for b in blocks), sum(b.shape[1] for b in blocks)), dtype=np.float32)
    r = c = 0
    for b in blocks:
        out[r:r + b.shape[0], c:c + b.shape[1]] = b
        r, c = r + b.shape[0], c + b.shape[1]
    return out


class ScoreNetworks:
    """The two raw scores of an input, numpy only. ``arrays``: ``x_mean``, ``x_std`` (d,) and, per layer i of
    the three-layer tanh networks, ``<net>.<i>.w`` (k, a, b) and ``<net>.<i>.b`` (k, 1, b) for ``heads`` (k
    heads), ``target`` and ``predictor`` (one each), as :meth:`policydistill.distill.gates.GateModel.arrays`
    gives them.

    Every network side by side as one: the first layers concatenated (the input normalisation folded in), the
    second a batch of m = k + 2 square matrices (one batched product, not an m-times larger block-diagonal one),
    the last giving the heads' centred outputs and the predictor's error (predictor minus target) directly, every
    bias the weight of a constant unit, so an input is three matrix products and two tanh. Inputs are normalised,
    not clipped: an input far from the training data scores high."""

    def __init__(self, arrays: Mapping[str, np.ndarray]) -> None:
        a = arrays
        nets = [(name, j) for name in ("heads", "target", "predictor") for j in range(a[f"{name}.0.w"].shape[0])]
        sign = {"heads": 1.0, "target": -1.0, "predictor": 1.0}
        w1 = np.concatenate([a[f"{n}.0.w"][j] for n, j in nets], axis=1)
        b1 = np.concatenate([a[f"{n}.0.b"][j, 0] for n, j in nets])
        w2 = np.stack([a[f"{n}.1.w"][j] for n, j in nets])  # (m, hidden, hidden)
        b2 = np.stack([a[f"{n}.1.b"][j] for n, j in nets])  # (m, 1, hidden)
        k, act = a["heads.2.w"].shape[0], a["heads.2.w"].shape[2]
        centre = np.kron(np.eye(k) - 1.0 / k, np.eye(act)).astype(np.float32)  # outputs -> deviations from their mean
        heads = _block_diagonal([a["heads.2.w"][j] for j in range(k)]) @ centre
        rnd = np.concatenate([sign[n] * a[f"{n}.2.w"][j] for n, j in nets[-2:]])  # (2 * hidden, 16)
        w3 = np.concatenate([np.concatenate([heads, np.zeros((len(heads), 16), np.float32)], axis=1),
                             np.concatenate([np.zeros((len(rnd), heads.shape[1]), np.float32), rnd], axis=1)])
        b3 = np.concatenate([a["heads.2.b"].reshape(-1) @ centre, a["predictor.2.b"][0, 0] - a["target.2.b"][0, 0]])
        mean, inv_std = a["x_mean"].astype(np.float32), (1.0 / a["x_std"]).astype(np.float32)
        (d, _), (m, hidden, _), out = w1.shape, w2.shape, w3.shape[1]
        # Every bias is the weight of a constant unit: the input ends with a 1 (see squared_outputs) and each network's
        # hidden layers have one more unit whose pre-activation is _SATURATE, which tanh maps to 1.0 exactly.
        # ((x - mean) / std) @ w1 + b1 equals [x, 1] @ [w1 / std; b1 - (mean / std) @ w1].
        first = np.zeros((d + 1, m, hidden + 1), np.float32)
        first[:d, :, :hidden] = (inv_std[:, None] * w1).reshape(d, m, hidden)
        first[d, :, :hidden] = (b1 - (mean * inv_std) @ w1).reshape(m, hidden)
        first[d, :, hidden] = _SATURATE
        second = np.zeros((m, hidden + 1, hidden + 1), np.float32)
        second[:, :hidden, :hidden], second[:, hidden, :hidden], second[:, hidden, hidden] = w2, b2[:, 0], _SATURATE
        third = np.zeros((m, hidden + 1, out), np.float32)
        third[:, :hidden], third[0, hidden] = w3.reshape(m, hidden, out), b3
        self._weights = (first.reshape(d + 1, -1), second, third.reshape(-1, out))
        self._ones: dict[int, np.ndarray] = {}
        self.mean = np.zeros((k * act + 16, 2), dtype=np.float32)  # squared outputs -> the two scores
        self.mean[:k * act, 0] = 1.0 / ((k - 1) * act)  # the heads' variance (unbiased) averaged over dims
        self.mean[k * act:, 1] = 1.0 / 16  # the predictor's squared error averaged over its outputs

    def squared_outputs(self, parts: Sequence[np.ndarray]) -> np.ndarray:
        """The input's ``parts`` (n, d_i), side by side (d in all) -> the squared centred head outputs and predictor
        errors (n, k * act + 16)."""
        w1, w2, w3 = self._weights
        n, (m, width, _) = len(parts[0]), w2.shape
        ones = self._ones.get(n)
        if ones is None:
            ones = np.ones((n, 1), np.float32)
            if n <= 64:  # the batch sizes of a control loop, kept
                self._ones[n] = ones
        h = np.dot(np.concatenate([*parts, ones], axis=-1, dtype=np.float32), w1)  # np.dot: the least call
        np.tanh(h, out=h)  # overhead of numpy's products, for the small ones of a tick
        # (m, n, hidden + 1) and back; one env (a controller's usual tick) needs no transpose
        g = np.matmul(h.reshape(m, 1, width) if n == 1 else h.reshape(n, m, width).transpose(1, 0, 2), w2)
        np.tanh(g, out=g)
        out = np.dot(g.reshape(1, m * width) if n == 1 else g.transpose(1, 0, 2).reshape(n, m * width), w3)
        return np.square(out, out=out)

    def raw_scores(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """x (n, d) -> ``disagreement`` (n,) the heads' variance averaged over label dims and ``novelty`` (n,)
        the predictor's squared error averaged over its outputs."""
        both = self.squared_outputs([np.asarray(x, dtype=np.float32)]) @ self.mean
        return {"disagreement": both[:, 0], "novelty": both[:, 1]}


@dataclass
class FailureMonitor:
    """See the module doc. ``arrays``: the networks' (see :class:`ScoreNetworks`); ``medians``: each score's
    median in distribution; ``alpha``: the false-alarm rate ``threshold`` was calibrated to on ``episodes``
    episodes (``delta``: with probability 1 - delta over them; None: on average, see :func:`conformal_rank`);
    ``start_scale``: the divisor of the score at each tick of an episode's start (empty: none); ``statistic``:
    what is compared with the threshold, ``tick`` or ``mean`` (see the module doc and :meth:`trace`).
    ``arrays``, ``medians`` and ``start_scale`` are read once, when the monitor is built."""

    groups: tuple[str, ...]
    arrays: dict[str, np.ndarray]
    medians: dict[str, float]
    threshold: float
    alpha: float
    episodes: int
    delta: float | None = None
    start_scale: tuple[float, ...] = ()
    statistic: str = "tick"

    def __post_init__(self) -> None:
        if self.statistic not in STATISTICS:
            raise ValueError(f"unknown monitor statistic '{self.statistic}'; expected one of {list(STATISTICS)}")
        self.networks = ScoreNetworks(self.arrays)
        medians = np.asarray([self.medians[kind] for kind in KINDS], dtype=np.float32)
        self._over_medians = self.networks.mean / medians  # squared outputs -> each score over its median
        self.start_scale = tuple(float(v) for v in self.start_scale)
        # tick t since reset -> 1 / divisor; the last entry (1.0) serves every later tick
        self._start_inverse = 1.0 / np.asarray([*self.start_scale, 1.0], dtype=np.float32)

    def raw_scores(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """x (n, d) the student's inputs -> ``disagreement`` and ``novelty`` (n,), not yet over their medians."""
        return self.networks.raw_scores(x)

    def score(self, obs: Mapping[str, np.ndarray], ticks: np.ndarray | None = None) -> np.ndarray:
        """Observation groups (n, ...) and each env's ticks since its reset (n,) int (None: past the start)
        -> each env's score (n,): the larger score-over-median ratio, over ``start_scale`` at the start."""
        try:  # the per-tick path: no group checks unless a group is missing
            parts = [obs[g] for g in self.groups]
        except KeyError:
            parts = [concat_groups(obs, self.groups)]
        ratios = np.dot(self.networks.squared_outputs(parts), self._over_medians)  # (n, 2)
        score = np.maximum(ratios[:, 0], ratios[:, 1])
        return score if ticks is None else self.over_start(score, ticks)

    def trace(self, scores: np.ndarray) -> np.ndarray:
        """One episode's scores (T,) from its reset on -> what is compared with the threshold at each tick (T,):
        the scores over the start's scale, or (``mean``) their running mean."""
        scores = self.over_start(np.asarray(scores, dtype=np.float64), np.arange(len(scores)))
        return scores if self.statistic == "tick" else np.cumsum(scores) / np.arange(1, len(scores) + 1)

    def over_start(self, score: np.ndarray, ticks: np.ndarray | None) -> np.ndarray:
        """Scores (n,) at ticks since reset (n,) int -> over ``start_scale`` where a tick is in it."""
        if ticks is None or not self.start_scale:
            return score
        return score * self._start_inverse[np.minimum(ticks, len(self.start_scale))]

    def save(self, folder: str | Path) -> Path:
        """Write ``monitor.npz`` and ``monitor.json`` into ``folder`` (each atomically)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.savez(buf, **self.arrays)
        atomic_write_bytes(folder / ARRAYS, buf.getvalue())
        atomic_write_json(folder / SETTINGS, {"groups": list(self.groups), "medians": self.medians,
                                              "threshold": self.threshold, "alpha": self.alpha,
                                              "episodes": self.episodes, "delta": self.delta,
                                              "start_scale": list(self.start_scale), "statistic": self.statistic})
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
                   float(settings["threshold"]), float(settings["alpha"]), int(settings["episodes"]),
                   settings.get("delta"), tuple(settings.get("start_scale", ())), settings.get("statistic", "tick"))


def file_hashes(folder: str | Path) -> dict[str, str]:
    """The sha256 of a saved monitor's two files, by file name."""
    return {name: file_sha256(Path(folder) / name) for name in FILES}


def load_monitor(path: str | Path) -> FailureMonitor:
    """The failure monitor stored with a policy: in its bundle (``path`` the bundle's folder), beside its
    exported model (``path`` the model file) or in a folder of its own; the hashes the bundle's ``policy.json``
    or the model's ``<model>.json`` records are checked."""
    path = Path(path)
    folder, record = path, None
    if path.is_file() and Path(f"{path}{EXPORTED}").is_dir():
        folder, record = Path(f"{path}{EXPORTED}"), Path(f"{path}.json")
    elif (path / "policy.json").is_file():
        record = path / "policy.json"
    if not (folder / SETTINGS).is_file():
        raise FileNotFoundError(f"{path} holds no failure monitor (expected a policy bundle or an exported model "
                                f"with one, written by policydistill fit-monitor, or a folder with {SETTINGS} "
                                f"and {ARRAYS})")
    if record is not None:
        recorded = read_json(record).get("monitor", {}).get("sha256")
        if recorded != file_hashes(folder):
            raise ValueError(f"{folder}: the failure monitor's files do not match the sha256 recorded in {record} "
                             "(modified after fit-monitor or export)")
    return FailureMonitor.load(folder)
