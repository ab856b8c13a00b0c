"""Per-call latency of a chunk policy: wall-clock and thread CPU time of ``predict_chunk`` calls.

Wall-clock time is what a control loop waits for. On a machine shared with other processes it
also holds the time the thread was preempted, which dominates the tail of short calls; the thread
CPU time (``CLOCK_THREAD_CPUTIME_ID``) is the time the call computed, i.e. its latency on a
dedicated core. Both are reported.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from policydistill.types import ObsGroups


def time_calls(fn: Callable[[], object], calls: int, warmup: int = 20) -> dict[str, np.ndarray]:
    """Wall-clock and thread CPU times (ms), each (calls,), of ``calls`` calls of ``fn`` after ``warmup``."""
    for _ in range(warmup):
        fn()
    wall, cpu = np.empty(calls), np.empty(calls)
    wclock, cclock = time.perf_counter_ns, time.thread_time_ns
    for i in range(calls):
        w0, c0 = wclock(), cclock()
        fn()
        c1, w1 = cclock(), wclock()
        wall[i], cpu[i] = (w1 - w0) / 1e6, (c1 - c0) / 1e6
    return {"wall": wall, "cpu": cpu}


def percentiles(times: dict[str, np.ndarray]) -> dict[str, float]:
    """p50 / p99 (ms) of wall-clock (``p50_ms``, ``p99_ms``) and thread CPU time (``cpu_p50_ms``, ...)."""
    out: dict[str, float] = {"calls": int(len(times["wall"]))}
    for key, prefix in (("wall", ""), ("cpu", "cpu_")):
        out[f"{prefix}p50_ms"] = float(np.percentile(times[key], 50))
        out[f"{prefix}p99_ms"] = float(np.percentile(times[key], 99))
    return out


def start_window(policy, obs: ObsGroups) -> dict[str, np.ndarray]:
    """The window a chunk policy sees after a reset: this observation (n, dim) repeated n_obs_steps times."""
    return {g: np.repeat(np.asarray(obs[g], dtype=np.float32)[:, None], policy.n_obs_steps, axis=1)
            for g in policy.groups}


def chunk_latency(policy, obs: ObsGroups, calls: int = 200) -> dict[str, float]:
    """Latency of ``policy.predict_chunk`` on the explicit window of ``obs`` (its batch size as given)."""
    window = start_window(policy, obs)
    return percentiles(time_calls(lambda: policy.predict_chunk(window), calls))
