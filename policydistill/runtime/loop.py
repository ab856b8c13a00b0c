"""A fixed-rate control loop with deadline accounting; numpy only.

Tick ``i`` is released at ``t0 + i * period`` and its deadline is the next release. The loop waits
for the release by sleeping until ``spin_s`` before it and then spinning (``time.sleep(0)``, which
lets other threads run) for precision. Each tick it reads the robot's observation, asks the
controller for the action with the tick's deadline (an action ready after it is an *overrun* and
is replaced by the controller's fallback) and sends the action. When a tick ends after the
deadline of the next one, the ticks in between are *missed*: the robot is sent the fallback for
each (physically it keeps executing it), and their planned actions are never executed. When the
controller stops (too many consecutive policy faults, ``controller.halted``), the loop ends once the
safe action has been sent, before ``ticks``; the statistics say so under ``controller.stopped``.

Recorded per executed tick: latency (release start to action ready, robot I/O included), jitter
(start minus release). :meth:`FixedRateLoop.run` returns the statistics as a dict (see
:func:`format_stats`) with the controller's and the machine's load during the run, and logs a line
every ``log_every_s`` seconds. Python's garbage collector is paused for the run (objects alive at
the start are frozen out of it, cycles made during the run are collected after it): a collection
of the older generations costs about a millisecond, a whole period at 1 kHz.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from typing import Any, Protocol

import numpy as np

from policydistill.runtime.latency import LatencyRecorder, LoadMeter

log = logging.getLogger(__name__)


class Robot(Protocol):
    """What the loop drives: ``observe() -> {group: (n, dim)}``; ``actuate(actions (n, act_dim))``
    returns the (n,) bool mask of envs that started a new episode (or None)."""

    def observe(self) -> dict[str, np.ndarray]: ...

    def actuate(self, actions: np.ndarray) -> np.ndarray | None: ...


def pin_to_cpu(cpu: int | None, realtime: bool = False) -> dict[str, Any]:
    """Pin the calling thread to ``cpu`` and, with ``realtime``, ask for SCHED_FIFO.

    Returns what was done and, under ``previous``, what :func:`restore_scheduling` puts back.
    """
    done: dict[str, Any] = {"cpu": None, "realtime": False,
                            "previous": {"affinity": sorted(os.sched_getaffinity(0)),
                                         "policy": os.sched_getscheduler(0),
                                         "priority": os.sched_getparam(0).sched_priority}}
    if cpu is not None:
        if cpu not in os.sched_getaffinity(0):
            raise ValueError(f"cannot pin to CPU {cpu}: this process may use CPUs {sorted(os.sched_getaffinity(0))}")
        os.sched_setaffinity(0, {cpu})
        done["cpu"] = cpu
    if realtime:
        done["realtime"] = set_realtime(CONTROL_PRIORITY)
    return done


CONTROL_PRIORITY, INFERENCE_PRIORITY = 9, 4
"""SCHED_FIFO priorities above the minimum: the control loop preempts a background inference thread."""


def set_realtime(priority: int) -> bool:
    """Ask SCHED_FIFO at ``priority`` above the minimum for the calling thread; False (logged) if refused."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(os.sched_get_priority_min(os.SCHED_FIFO) + priority))
        return True
    except (OSError, AttributeError) as e:
        log.warning("real-time scheduling (SCHED_FIFO) refused: %s; running with normal priority", e)
        return False


def restore_scheduling(pinned: dict[str, Any]) -> None:
    """Undo :func:`pin_to_cpu` (its return value) for the calling thread."""
    prev = pinned["previous"]
    if pinned["realtime"]:
        os.sched_setscheduler(0, prev["policy"], os.sched_param(prev["priority"]))
    if pinned["cpu"] is not None:
        os.sched_setaffinity(0, prev["affinity"])


def wait_until(t: float, spin_s: float) -> None:
    """Sleep until ``spin_s`` before ``t`` (perf_counter time), then spin until ``t``."""
    remaining = t - time.perf_counter()
    if remaining > spin_s:
        time.sleep(remaining - spin_s)
    while time.perf_counter() < t:
        time.sleep(0)


class FixedRateLoop:
    """Run a controller on a robot at ``rate_hz`` (see the module docstring)."""

    def __init__(self, rate_hz: float, spin_s: float = 3e-4, log_every_s: float = 0.0) -> None:
        if not rate_hz > 0:
            raise ValueError(f"rate_hz must be > 0, got {rate_hz}")
        self.rate_hz, self.period, self.spin_s, self.log_every_s = float(rate_hz), 1.0 / rate_hz, spin_s, log_every_s

    def run(self, controller: Any, robot: Robot, ticks: int, progress: Any = None) -> dict[str, Any]:
        """Drive ``ticks`` control ticks; returns :meth:`stats`. ``progress(n)`` is told of every tick."""
        if ticks < 1:
            raise ValueError(f"ticks must be >= 1, got {ticks}")
        self.latency, self.jitter = LatencyRecorder(ticks), LatencyRecorder(ticks)
        self.executed = self.missed = self.overruns = 0
        overruns0 = controller.counts["overruns"]
        load = LoadMeter().start()
        gc_was_enabled = gc.isenabled()
        gc.collect()
        gc.freeze()
        gc.disable()
        try:
            self._ticks(controller, robot, ticks, progress)
        finally:
            if gc_was_enabled:
                gc.enable()
            gc.unfreeze()
        self.overruns = controller.counts["overruns"] - overruns0
        self.load = load.stop()
        return self.stats(controller)

    def _ticks(self, controller: Any, robot: Robot, ticks: int, progress: Any) -> None:
        """The loop itself: ``ticks`` releases, executed or missed."""
        period = self.period
        overruns0 = controller.counts["overruns"]
        t0 = time.perf_counter() + period
        next_log, i = t0 + self.log_every_s, 0
        while i < ticks:
            release = t0 + i * period
            wait_until(release, self.spin_s)
            start = time.perf_counter()
            actions = controller.step(robot.observe(), tick=i, deadline=release + period)
            ready = time.perf_counter()
            self.latency.add(ready - start)
            self.jitter.add(start - release)
            self.executed += 1
            reset = robot.actuate(actions)
            if reset is not None and reset.any():
                controller.reset(reset)
            if progress is not None:
                progress(1)
            i += 1
            if getattr(controller, "halted", False):
                break
            while i < ticks and time.perf_counter() > t0 + (i + 1) * period:
                self.missed += 1
                reset = robot.actuate(controller.skip(i))
                if reset is not None and reset.any():
                    controller.reset(reset)
                if progress is not None:
                    progress(1)
                i += 1
            if self.log_every_s and time.perf_counter() >= next_log:
                next_log += self.log_every_s
                self._log_live(i, controller.counts["overruns"] - overruns0)
        self.wall_s = time.perf_counter() - t0

    def _log_live(self, tick: int, overruns: int) -> None:
        v = self.latency.values_us()[-int(self.log_every_s * self.rate_hz):]
        log.info("tick %d: latency mean %.0f us max %.0f us, overruns %d, missed %d", tick, v.mean(), v.max(),
                 overruns, self.missed)

    def stats(self, controller: Any) -> dict[str, Any]:
        """Loop statistics (microseconds) with the controller's under ``controller``."""
        return {"rate_hz": self.rate_hz, "period_us": self.period * 1e6, "ticks": self.executed + self.missed,
                "executed": self.executed, "overruns": self.overruns, "missed": self.missed,
                "deadline_misses": self.overruns + self.missed, "wall_s": self.wall_s,
                "latency": self.latency.summary(), "jitter": self.jitter.summary(), "machine": self.load,
                "controller": controller.stats()}


def format_stats(stats: dict[str, Any]) -> str:
    """A fixed-width summary of :meth:`FixedRateLoop.run` statistics."""
    def row(name: str, s: dict[str, Any]) -> str:
        if not s.get("count"):
            return f"  {name:<18}{'-':>10}"
        return (f"  {name:<18}{s['p50_us']:>10.1f}{s['p95_us']:>10.1f}{s['p99_us']:>10.1f}{s['max_us']:>10.1f}")

    c, m = stats["controller"], stats["machine"]
    lines = [f"fixed-rate loop: {stats['rate_hz']:g} Hz, {stats['ticks']} ticks in {stats['wall_s']:.2f} s; "
             f"{c['source']} ({c['inference_mode']})",
             f"  {'(us)':<18}{'p50':>10}{'p95':>10}{'p99':>10}{'max':>10}",
             row("tick latency", stats["latency"]), row("controller step", c["compute"]),
             row("start jitter", stats["jitter"])]
    if c["kind"] == "chunk":
        lines.append(row("chunk inference", c["inference"]))
    if "monitor" in c:
        lines.append(row("failure monitor", c["monitor"]["compute"]))
    lines.append(f"  deadline misses {stats['deadline_misses']} (overruns {stats['overruns']}, missed ticks "
                 f"{stats['missed']}); fallback '{c['fallback']}'")
    if c["kind"] == "chunk":
        lines.append(f"  chunks {c['chunks']} (over the {c['latency_budget_ms']:.1f} ms budget: "
                     f"{c['chunks_over_budget']}), queue ran dry {c['starved_env_ticks']} env-ticks, cold start "
                     f"{c['cold_start_env_ticks']}, stale actions dropped {c['stale_dropped']}")
    if c["nonfinite_env_ticks"]:
        lines.append(f"  non-finite actions replaced by the fallback: {c['nonfinite_env_ticks']} env-ticks")
    if c.get("out_of_bounds_env_ticks"):
        done = "clipped into the bounds" if c["out_of_bounds"] == "clip" else "replaced by the fallback"
        lines.append(f"  actions outside the bounds {done}: {c['out_of_bounds_env_ticks']} env-ticks")
    if c.get("rate_limited_env_ticks") or c.get("jerk_limited_env_ticks"):
        lines.append(f"  limited actions: rate (max {c['max_rate']}) {c['rate_limited_env_ticks']} env-ticks, "
                     f"jerk (max {c['max_jerk']}) {c['jerk_limited_env_ticks']} env-ticks")
    if c.get("policy_faults"):
        lines.append(f"  policy faults (fallback executed): {c['policy_faults']}; first {c['first_fault']}")
    if "monitor" in c:
        mon = c["monitor"]
        taught = f"; the teacher acted {c['teacher_env_ticks']} env-ticks" if mon["on_alarm"] == "teacher" else ""
        lines.append(f"  failure monitor: {mon['alarms']} alarms (threshold {mon['threshold']:.3g}, false alarms <= "
                     f"{mon['alpha']:g} per in-distribution episode; on alarm: {mon['on_alarm']}){taught}")
    if c.get("stopped"):
        st = c["stopped"]
        why = (f"{st['consecutive_faults']} consecutive policy faults (last {st['last_fault']})"
               if st["reason"] == "policy faults" else f"a {st['reason']}")
        lines.append(f"  STOPPED at tick {st['tick']} after {why}; the safe action was sent and the loop ended")
    busy = ", ".join(f"{k} {v:.0%}" for k, v in m["cpu_busy"].items())
    lines.append(f"  machine: CPU busy {busy}; this process {m['own_cpu']:.0%} of a core, others "
                 f"{m['others_cpu']:.2f} cores; load average {m['loadavg_before'][0]} -> {m['loadavg_after'][0]}; "
                 f"affinity {m['affinity']}, involuntary switches {m['involuntary_switches']}")
    return "\n".join(lines)
