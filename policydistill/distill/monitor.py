"""Fitting a failure monitor (:class:`~policydistill.runtime.monitor.FailureMonitor`) to a distilled student.

The monitor's networks (an ensemble of heads and a random-network-distillation pair, as a gate of gated
DAgger) are fitted on the student's training data: the labelled steps of its run's episode store. Then the
student runs ``episodes`` episodes per task in distribution (on calibration seeds of their own); each
score's median over their steps sets its scale, the median score at each of the first :data:`START_TICKS`
ticks sets the start's (:func:`start_profile`), and the threshold is the split-conformal quantile of the
episodes' largest scores at the false-alarm rate ``alpha``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from policydistill.configs import require_choice, require_int, require_number
from policydistill.data.shards import EpisodeStore
from policydistill.distill.gates import fit_gate_model
from policydistill.eval.rollout import EpisodeRecord, rollout
from policydistill.files import read_json
from policydistill.runtime.monitor import (
    KINDS,
    STATISTICS,
    FailureMonitor,
    conformal_rank,
    conformal_threshold,
    episodes_needed,
)
from policydistill.suites import Suite
from policydistill.types import concat_groups, select_groups

log = logging.getLogger(__name__)

CALIBRATION_SEED = 20_000
"""Calibration episodes are seeded from here: apart from the validation (5000) and test (1000) seeds."""
START_TICKS = 100
"""The longest episode start whose scores the monitor learns (see :func:`start_profile`)."""
MONITOR_HIDDEN = 32
"""The width of the monitor's networks (small: they run every tick)."""


def student_episodes(suite: Suite, student: Any, episodes: int, seed: int, n_envs: int = 8) -> list[EpisodeRecord]:
    """``episodes`` episodes of every task with ``student`` acting, observations recorded; task i's seeded
    ``seed + i * episodes``, ... (no two tasks start from the same seed: their episodes are independent draws,
    as a conformal calibration needs)."""
    stateful = bool(getattr(student, "stateful", False))

    def act(obs: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        return np.asarray(student.act(select_groups(obs, student.groups), deterministic=True)), {}

    return [rec for i in range(len(suite.tasks))
            for rec in rollout(suite, [i], act, episodes, n_envs=n_envs, seed=seed + i * episodes,
                               on_reset=student.reset if stateful else None, record=True)]


def episode_scores(monitor: FailureMonitor, records: list[EpisodeRecord], until: int = 0) -> np.ndarray:
    """Each episode's largest statistic (see :meth:`FailureMonitor.trace`) over its steps but the last ``until``:
    (episodes,) (-inf for an episode of at most ``until`` steps)."""
    out = []
    for rec in records:
        steps = len(rec.steps["reward"]) - until
        obs = {g: rec.steps[f"obs/{g}"][:max(steps, 0)] for g in monitor.groups}
        out.append(float(monitor.trace(monitor.score(obs)).max()) if steps > 0 else -np.inf)
    return np.asarray(out)


def start_profile(scores: list[np.ndarray], ticks: int = START_TICKS) -> tuple[float, ...]:
    """In-distribution episodes' scores, each (T_i,) from its reset on -> the divisor of the score at each tick
    of their start: the median over the episodes at that tick over the median of the ticks after the first
    ``ticks``. The start ends at the first tick whose median is within the later ticks' upper quartile (empty:
    the start scores like the rest)."""
    steady = [s[ticks:] for s in scores if len(s) > ticks]
    if not steady:
        return ()
    level, upper = np.quantile(np.concatenate(steady), [0.5, 0.75])
    profile = []
    for t in range(ticks):
        median = float(np.median([s[t] for s in scores if len(s) > t]))
        if median <= upper:
            break
        profile.append(max(1.0, median / float(level)))
    return tuple(profile)


def fit_monitor(suite: Suite, student: Any, store: EpisodeStore, alpha: float = 0.05, episodes: int = 20,
                ensemble_size: int = 5, updates: int = 2000, seed: int = 0, hidden: int = MONITOR_HIDDEN,
                delta: float | None = None, start_ticks: int = START_TICKS, statistic: str = "tick"
                ) -> FailureMonitor:
    """A monitor for ``student`` fitted on ``store``'s labelled steps and calibrated to false-alarm rate
    ``alpha`` (with probability 1 - ``delta`` over the calibration, if given) on ``episodes`` fresh
    in-distribution episodes per task (see the module doc); its networks are ``hidden`` wide (small: it runs
    every tick); the start it learns is at most ``start_ticks`` long (0: none); ``statistic``: ``tick`` or
    ``mean``, what its alarm compares with the threshold."""
    groups = tuple(student.groups)
    fields = [f"obs/{g}" for g in groups] + ["label_mean"] + (["query"] if "query" in store.fields else [])
    raw = store.load(fields)
    keep = raw["query"] > 0 if "query" in raw else np.ones(len(raw["label_mean"]), dtype=bool)
    x = concat_groups({g: raw[f"obs/{g}"][keep] for g in groups}, groups)
    model = fit_gate_model(x, raw["label_mean"][keep], ensemble_size, updates, np.random.default_rng(seed),
                           hidden=hidden)
    arrays = model.arrays()
    records = student_episodes(suite, student, episodes, CALIBRATION_SEED + seed)
    steps = np.concatenate([concat_groups({g: r.steps[f"obs/{g}"] for g in groups}, groups) for r in records])
    raw_scores = FailureMonitor(groups, arrays, dict.fromkeys(KINDS, 1.0), np.inf, alpha, 0).raw_scores(steps)
    medians = {k: max(float(np.median(raw_scores[k])), 1e-12) for k in KINDS}
    score = np.max([raw_scores[k] / medians[k] for k in KINDS], axis=0)  # (steps,) of every episode in a row
    ends = np.cumsum([len(r.steps["reward"]) for r in records])
    per_episode = np.split(score, ends[:-1])
    scale = start_profile(per_episode, start_ticks) if start_ticks else ()
    monitor = FailureMonitor(groups, arrays, medians, np.inf, alpha, len(records), delta, scale, statistic)
    monitor.threshold = conformal_threshold([float(monitor.trace(part).max()) for part in per_episode], alpha, delta)
    log.info("failure monitor: threshold %.3g at a false-alarm rate of %g per episode%s, on %d calibration episodes "
             "(their first %d ticks score up to %.3gx their steady median)", monitor.threshold, alpha,
             "" if delta is None else f" with probability {1 - delta:g}", len(records), len(scale),
             max(scale, default=1.0))
    return monitor


@dataclass
class FitMonitorConfig:
    """``policydistill fit-monitor``: the failure monitor of the finished distillation run ``run`` (its
    ``policy`` bundle, ``best`` or ``student``), calibrated to the false-alarm rate ``alpha`` per episode on
    ``episodes`` in-distribution episodes per task, stored in that bundle. ``delta``: the rate holds for this
    calibration with probability 1 - delta (null: on average over calibrations; see
    :func:`~policydistill.runtime.monitor.conformal_rank`). ``start_ticks``: the longest episode start whose own
    scores the monitor learns (0: a start scores like the rest; see :func:`start_profile`). ``statistic``: what the
    alarm compares with the threshold, the tick's score (``tick``) or the mean since the env's reset (``mean``; see
    :class:`~policydistill.runtime.monitor.FailureMonitor`)."""

    run: str = "???"
    policy: str = "best"
    alpha: float = 0.05
    delta: float | None = None
    episodes: int = 20
    updates: int = 2000
    seed: int = 0
    start_ticks: int = START_TICKS
    statistic: str = "tick"

    def __post_init__(self) -> None:
        require_choice("policy", self.policy, ("best", "student"))
        require_number("alpha", self.alpha, 0.0, 1.0, low_open=True)
        if self.delta is not None:
            require_number("delta", self.delta, 0.0, 1.0, low_open=True)
        require_int("episodes", self.episodes)
        require_int("updates", self.updates)
        require_int("seed", self.seed, 0)
        require_int("start_ticks", self.start_ticks, 0)
        require_choice("statistic", self.statistic, STATISTICS)
        run = Path(self.run)
        if not (run / "distill.json").is_file() or not (run / "episodes" / "manifest.json").is_file():
            raise ValueError(f"run={self.run} is not a finished distillation run with stored episodes "
                             "(expected distill.json and episodes/)")


def fit_run_monitor(cfg: FitMonitorConfig) -> Path:
    """Fit the monitor ``cfg`` describes and store it in the policy's bundle; returns the bundle's folder."""
    from policydistill.bundle import attach_monitor, load_bundle
    from policydistill.suites import load_suite

    run = Path(cfg.run)
    suite = load_suite(read_json(run / "distill.json")["config"]["suite"])
    student = load_bundle(run / cfg.policy, device="cpu")
    per_task = len(suite.tasks) * cfg.episodes
    if conformal_rank(per_task, cfg.alpha, cfg.delta) > per_task:
        raise ValueError(f"alpha={cfg.alpha}{'' if cfg.delta is None else f' delta={cfg.delta}'} needs at least "
                         f"{episodes_needed(cfg.alpha, cfg.delta)} calibration episodes, got {per_task} "
                         f"({cfg.episodes} per task): raise episodes")
    monitor = fit_monitor(suite, student, EpisodeStore(run / "episodes"), cfg.alpha, cfg.episodes,
                          updates=cfg.updates, seed=cfg.seed, delta=cfg.delta, start_ticks=cfg.start_ticks,
                          statistic=cfg.statistic)
    return attach_monitor(run / cfg.policy, monitor)
