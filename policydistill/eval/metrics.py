"""Per-task episode statistics and teacher-normalised scores."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from policydistill.suites.wrappers import RESET_FAULT, fault_kind

log = logging.getLogger(__name__)

# Two-sided 95% Student-t critical values for 1..30 degrees of freedom; the normal value beyond.
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042)


@dataclass(frozen=True)
class Episode:
    """One finished episode. ``error`` is set when a fault ended it (a dropped episode), with the reason;
    ``ret`` and ``length`` then run up to the fault: the faulting step counts in ``length`` (0 for a fault on
    reset), not its reward. ``env`` is the task's env id, for messages. ``success`` is None where the task
    defines no success."""

    task: str
    seed: int
    ret: float
    length: int
    success: bool | None
    error: str | None = None
    env: str | None = None

    @property
    def fault(self) -> str | None:
        """The kind of fault that ended the episode (see :func:`~policydistill.suites.wrappers.fault_kind`),
        None when none did."""
        return None if self.error is None else fault_kind(self.error)

    def fault_message(self) -> str:
        """``task T (env E) seed S step N: <error>``; no step for a fault on reset."""
        where = f"task {self.task}" + (f" (env {self.env})" if self.env else "") + f" seed {self.seed}"
        step = "" if (self.error or "").startswith(RESET_FAULT) else f" step {self.length}"
        return f"{where}{step}: {self.error}"


def ci95(values: Sequence[float]) -> float:
    """Half-width of the 95% confidence interval of the mean (Student t); 0 for fewer than 2."""
    n = len(values)
    if n < 2:
        return 0.0
    t = _T95[n - 2] if n - 1 <= len(_T95) else 1.96
    return float(t * np.std(values, ddof=1) / math.sqrt(n))


def summarise(episodes: Sequence[Episode]) -> dict[str, float | int | list]:
    """Return mean/std/ci95, success rate (None where the task defines no success) and mean length over all
    episodes of one task. A dropped episode
    counts as a failure with its return and length up to the fault; ``dropped`` is their number and
    ``faults`` lists them as ``{seed, step, kind, error}``. When every episode was dropped the numbers are
    still returned (success 0), with a warning."""
    if not episodes:
        raise ValueError("no episodes to summarise")
    faults = [{"seed": e.seed, "step": e.length, "kind": e.fault, "error": e.fault_message()}
              for e in episodes if e.error is not None]
    if len(faults) == len(episodes):
        log.warning("task %s: all %d episodes ended in a fault, e.g. %s", episodes[0].task, len(episodes),
                    faults[0]["error"])
    returns = [e.ret for e in episodes]
    return {
        "episodes": len(episodes),
        "return_mean": float(np.mean(returns)),
        "return_std": float(np.std(returns)),
        "return_ci95": ci95(returns),
        "success_rate": None if any(e.success is None for e in episodes) else
        float(np.mean([e.success and e.error is None for e in episodes])),
        "length_mean": float(np.mean([e.length for e in episodes])),
        "dropped": len(faults),
        "faults": faults,
    }


def wilson_half_width(rate: float, n: int, z: float = 1.96) -> float:
    """Half-width of the 95% Wilson interval of a success rate ``rate`` measured on ``n`` episodes."""
    if n < 1:
        return 1.0
    return float(z * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / (1 + z * z / n))


def fmt_rate(rate: float | None, spec: str = ".2f") -> str:
    """A success rate for a table or a log line: "n/a" where the task defines no success."""
    return "n/a" if rate is None else format(rate, spec)


def mean_rate(rates: Sequence[float | None]) -> float | None:
    """The mean of success rates, None when one of them is (a task without success)."""
    rates = list(rates)
    return None if not rates or any(r is None for r in rates) else float(np.mean(rates))


def teacher_normalised(student: dict, teacher: dict, random: dict) -> dict[str, float | None]:
    """One task's student against its teacher and a uniform random policy, on the same seeded episodes (each a
    :func:`summarise` row).

    ``score`` = (student - random) / (teacher - random) on mean returns, random-normalised as D4RL's and Atari's
    normalised scores: 0 is random, 1 is the teacher, defined for negative returns too (None when the teacher
    does not beat random). ``return_ratio`` = student / teacher return (None when the teacher's return is not
    positive). ``success_ratio`` = student / teacher success rate and ``success_diff`` their difference (None
    where the task defines no success; the ratio also where the teacher never succeeds).
    ``teacher_dropped``: the teacher's episodes ended by a fault (counted as failures in its numbers)."""
    s, t, r = student["return_mean"], teacher["return_mean"], random["return_mean"]
    ss, ts = student["success_rate"], teacher["success_rate"]
    return {
        "score": float((s - r) / (t - r)) if t - r > 1e-9 * max(1.0, abs(t), abs(r)) else None,
        "return_ratio": float(s / t) if t > 0 else None,
        "success_ratio": float(ss / ts) if ss is not None and ts else None,
        "success_diff": None if ss is None or ts is None else float(ss - ts),
        "teacher_return_mean": float(t),
        "random_return_mean": float(r),
        "teacher_success_rate": ts,
        "teacher_dropped": int(teacher.get("dropped", 0)),
    }


def mean_of(rows: Iterable[dict], key: str) -> float | None:
    """The mean of ``key`` over the rows where it is defined (None where none is)."""
    values = [row[key] for row in rows if row[key] is not None]
    return float(np.mean(values)) if values else None


def headline(mean_success_ratio: float | None, mean_score: float | None) -> dict[str, Any]:
    """The number a result is reported by: the mean success ratio where the suite defines success (a failing
    student cannot score by collecting reward slowly), else the mean score."""
    if mean_success_ratio is not None:
        return {"metric": "success ratio", "value": mean_success_ratio}
    return {"metric": "score", "value": mean_score}


def ordering(scores: dict[str, Sequence[float]]) -> str:
    """Names best first, by how many others each beats on most replicates (seeds; the mean breaks ties), as
    ``a > b > c``; with several replicates, each ``>`` carries on how many the upper one scored higher (``a >(3/3)
    b``). ``scores``: per name one score per replicate, the same replicates for all names."""
    mean = {n: float(np.mean(v)) for n, v in scores.items()}

    def ahead(a: str, b: str) -> int:
        return sum(x > y for x, y in zip(scores[a], scores[b], strict=True))

    def wins(a: str) -> int:
        return sum(2 * ahead(a, b) > len(scores[a]) for b in scores if b != a)

    names = sorted(scores, key=lambda n: (wins(n), mean[n]), reverse=True)
    n = len(next(iter(scores.values()), []))
    text = names[0] if names else ""
    for a, b in zip(names, names[1:], strict=False):
        text += (f" >({ahead(a, b)}/{n}) " if n > 1 else " > ") + b
    return text
