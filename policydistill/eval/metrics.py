"""Per-task episode statistics and teacher-normalised scores."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Two-sided 95% Student-t critical values for 1..30 degrees of freedom; the normal value beyond.
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042)


@dataclass(frozen=True)
class Episode:
    """One finished (or dropped) episode. ``error`` is set when it was dropped, with the reason."""

    task: str
    seed: int
    ret: float
    length: int
    success: bool
    error: str | None = None


def ci95(values: Sequence[float]) -> float:
    """Half-width of the 95% confidence interval of the mean (Student t); 0 for fewer than 2."""
    n = len(values)
    if n < 2:
        return 0.0
    t = _T95[n - 2] if n - 1 <= len(_T95) else 1.96
    return float(t * np.std(values, ddof=1) / math.sqrt(n))


def summarise(episodes: Sequence[Episode]) -> dict[str, float | int | list]:
    """Return mean/std/ci95, success rate and length over the kept episodes; list the dropped ones."""
    kept = [e for e in episodes if e.error is None]
    dropped = [{"seed": e.seed, "error": e.error} for e in episodes if e.error is not None]
    if not kept:
        raise RuntimeError(f"every episode was dropped: {dropped[:3]}")
    returns = [e.ret for e in kept]
    return {
        "episodes": len(kept),
        "return_mean": float(np.mean(returns)),
        "return_std": float(np.std(returns)),
        "return_ci95": ci95(returns),
        "success_rate": float(np.mean([e.success for e in kept])),
        "length_mean": float(np.mean([e.length for e in kept])),
        "dropped": dropped,
    }


def teacher_normalised(student: dict, teacher: dict) -> dict[str, float | None]:
    """``score`` = student return / teacher return (None when the teacher's return is not positive),
    ``success_diff`` = student success rate - teacher success rate."""
    t = teacher["return_mean"]
    return {
        "score": float(student["return_mean"] / t) if t > 0 else None,
        "success_diff": float(student["success_rate"] - teacher["success_rate"]),
        "teacher_return_mean": float(t),
        "teacher_success_rate": float(teacher["success_rate"]),
    }
