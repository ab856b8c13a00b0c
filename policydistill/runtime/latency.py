"""Latency records and machine-load readings for the control loop; numpy only."""

from __future__ import annotations

import os
import resource
import time
from typing import Any

import numpy as np


class LatencyRecorder:
    """The last ``capacity`` durations (seconds, stored as microseconds) and their summary."""

    def __init__(self, capacity: int = 100_000) -> None:
        self._us = np.zeros(capacity)
        self._n = 0

    def add(self, seconds: float) -> None:
        self._us[self._n % len(self._us)] = seconds * 1e6
        self._n += 1

    @property
    def count(self) -> int:
        return self._n

    def values_us(self) -> np.ndarray:
        """The kept durations in microseconds (oldest first only until the ring wraps)."""
        return self._us[:min(self._n, len(self._us))]

    def summary(self) -> dict[str, float | int | None]:
        """count, mean, p50, p95, p99 and max in microseconds (None without samples)."""
        v = self.values_us()
        if not len(v):
            return {"count": 0, "mean_us": None, "p50_us": None, "p95_us": None, "p99_us": None, "max_us": None}
        p50, p95, p99 = np.percentile(v, [50, 95, 99])
        return {"count": self._n, "mean_us": float(v.mean()), "p50_us": float(p50), "p95_us": float(p95),
                "p99_us": float(p99), "max_us": float(v.max())}


def _cpu_times() -> dict[str, tuple[int, int]]:
    """Per-CPU (busy, total) jiffies from /proc/stat ({} where it is not readable)."""
    out = {}
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("cpu") and line[3:4].isdigit():
                    name, *vals = line.split()
                    v = [int(x) for x in vals]
                    idle = v[3] + (v[4] if len(v) > 4 else 0)
                    out[name] = (sum(v[:8]) - idle, sum(v[:8]))
    except OSError:
        pass
    return out


class LoadMeter:
    """How busy the machine was between :meth:`start` and :meth:`stop`: per-CPU busy fraction (all
    processes), this process's own CPU use, its involuntary context switches and the load average."""

    def start(self) -> LoadMeter:
        self._cpu, self._wall, self._own = _cpu_times(), time.perf_counter(), time.process_time()
        self._ivcsw, self._load = resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw, os.getloadavg()
        return self

    def stop(self) -> dict[str, Any]:
        cpu, wall = _cpu_times(), time.perf_counter() - self._wall
        busy = {name: round((b - self._cpu[name][0]) / max(t - self._cpu[name][1], 1), 3)
                for name, (b, t) in cpu.items() if name in self._cpu}
        own = (time.process_time() - self._own) / max(wall, 1e-9)
        return {"cpu_busy": busy, "own_cpu": round(own, 3),
                "others_cpu": round(max(sum(busy.values()) - own, 0.0), 3),
                "involuntary_switches": resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw - self._ivcsw,
                "loadavg_before": [round(x, 2) for x in self._load], "loadavg_after":
                [round(x, 2) for x in os.getloadavg()], "affinity": sorted(os.sched_getaffinity(0)),
                "cpus": os.cpu_count()}
