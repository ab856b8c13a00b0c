"""An MLP student in the fixed-rate loop at 1 kHz for 10,000 ticks on one core: deadline misses and p99.

The student (see bench/common.py) drives the default suite's simulated robot through
``policydistill.runtime.run.run_policy`` (the code behind ``policydistill run``): each tick reads
the observation, runs the controller, and steps the MuJoCo env. The control thread is pinned to one
CPU. Variants, run alternately in this one process: backend ``torch`` (the export graph run eagerly)
and ``onnx`` (ONNX Runtime), each at normal priority and, with ``--realtime``, with SCHED_FIFO.

The machine is shared: every run records how busy each CPU was (all processes), this process's own
share and its involuntary context switches next to the misses. Reports per variant the median over
runs of the tick-latency p50/p99, the start-jitter p99 and the deadline misses (overruns + missed
ticks) of every run. The variant ``bare`` runs the same loop, pinned the same way, around a controller
and robot that do nothing: the deadline misses of the machine itself (timer wake-ups, preemption), the
floor under every other variant. A ``--smoke`` run skips the SCHED_FIFO variants when the system refuses
SCHED_FIFO (the reason is logged and recorded).

    .venv/bin/python -m bench control_loop [--bundle <student>] [--ticks 10000] [--runs 2] [--realtime]
"""

from __future__ import annotations

import logging
import os
import statistics
import sys
from pathlib import Path
from typing import Any

if not __package__:  # python bench/<name>.py: the bench package lives one folder up
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from bench import envelope
from bench.common import one_thread, parse, parser, realtime_refused, setup_logging, shown, student_bundle
from policydistill.runtime import FixedRateLoop
from policydistill.runtime.loop import format_stats, pin_to_cpu, restore_scheduling
from policydistill.runtime.run import run_policy

log = logging.getLogger("bench.control_loop")
SMOKE = {"ticks": 500, "runs": 1}


class Idle:
    """A controller and robot that do nothing: zero actions, one env, no compute."""

    counts = {"overruns": 0}
    zero = np.zeros((1, 1))

    def step(self, obs: dict, tick: int | None = None, deadline: float | None = None) -> np.ndarray:
        return self.zero

    def skip(self, tick: int) -> np.ndarray:
        return self.zero

    def observe(self) -> dict:
        return {}

    def actuate(self, actions: np.ndarray) -> None:
        return None

    def stats(self) -> dict:
        return {"compute": {"p99_us": 0.0}}


def bare_loop(rate_hz: float, ticks: int, cpu: int, realtime: bool) -> dict:
    """The fixed-rate loop around :class:`Idle`, pinned like the policy runs: the machine's own misses."""
    pinned = pin_to_cpu(cpu, realtime)
    try:
        idle = Idle()
        stats = FixedRateLoop(rate_hz).run(idle, idle, ticks)
    finally:
        restore_scheduling(pinned)
    stats["pinned"] = {k: v for k, v in pinned.items() if k != "previous"}
    return stats


def summarise_runs(rs: list[dict[str, Any]]) -> dict[str, Any]:
    """One variant's runs: medians of the latencies, every run's misses and machine load."""
    return {
        "tick_latency_p50_us": statistics.median(s["latency"]["p50_us"] for s in rs),
        "tick_latency_p99_us": statistics.median(s["latency"]["p99_us"] for s in rs),
        "tick_latency_max_us": max(s["latency"]["max_us"] for s in rs),
        "controller_step_p99_us": statistics.median(s["controller"]["compute"]["p99_us"] for s in rs),
        "jitter_p99_us": statistics.median(s["jitter"]["p99_us"] for s in rs),
        "deadline_misses": [s["deadline_misses"] for s in rs], "overruns": [s["overruns"] for s in rs],
        "missed_ticks": [s["missed"] for s in rs],
        "cpu_busy": [s["machine"]["cpu_busy"] for s in rs], "others_cpu": [s["machine"]["others_cpu"] for s in rs],
        "involuntary_switches": [s["machine"]["involuntary_switches"] for s in rs],
        "realtime_granted": [s["pinned"]["realtime"] for s in rs]}


def main(argv: list[str] | None = None) -> dict:
    p = parser("control_loop", __doc__)
    p.add_argument("--bundle", default=None, help="an MLP student bundle (default: the cached DAgger student)")
    p.add_argument("--rate-hz", type=float, default=1000.0)
    p.add_argument("--ticks", type=int, default=10_000)
    p.add_argument("--runs", type=int, default=2, help="runs per variant")
    p.add_argument("--backends", nargs="+", default=["torch", "onnx"])
    p.add_argument("--realtime", action="store_true", help="also run every variant with SCHED_FIFO")
    p.add_argument("--cpu", type=int, default=None, help="the control thread's CPU (default: the last one)")
    args = parse(p, argv, SMOKE)
    started = envelope.start()
    setup_logging()
    one_thread()
    cpu = max(os.sched_getaffinity(0)) if args.cpu is None else args.cpu
    bundle = student_bundle(args.bundle, args.smoke)

    priorities, skipped = [False, True] if args.realtime else [False], None
    if args.realtime and args.smoke and (refused := realtime_refused()):
        skipped = f"SCHED_FIFO variants skipped in the smoke run: {refused}"
        log.warning(skipped)
        priorities = [False]
    variants = [(b, rt) for rt in priorities for b in ["bare", *args.backends]]
    runs: dict[str, list[dict]] = {f"{b}{'+fifo' if rt else ''}": [] for b, rt in variants}
    for r in range(args.runs):
        for backend, realtime in variants:
            name = f"{backend}{'+fifo' if realtime else ''}"
            if backend == "bare":
                stats = bare_loop(args.rate_hz, args.ticks, cpu, realtime)
                log.info("run %d %s: deadline misses %d", r + 1, name, stats["deadline_misses"])
            else:
                stats = run_policy(bundle, "default", args.rate_hz, args.ticks, backend=backend, cpu=cpu,
                                   realtime=realtime, progress=False)
                log.info("run %d %s:\n%s", r + 1, name, format_stats(stats))
            runs[name].append(stats)

    summary = {name: summarise_runs(rs) for name, rs in runs.items()}
    p99 = {name: s["tick_latency_p99_us"] for name, s in summary.items()}
    pairs = [(f"onnx{sfx}", f"torch{sfx}") for sfx in ("", "+fifo")] + [(f"{b}+fifo", b) for b in args.backends]
    ratios = {f"{a}_over_{b}_tick_latency_p99": p99[a] / p99[b] for a, b in pairs if a in p99 and b in p99}
    print(f"MLP student in the fixed-rate loop: {args.rate_hz:g} Hz, {args.ticks} ticks per run, {args.runs} runs per "
          f"variant, control thread pinned to CPU {cpu}, simulated robot: default suite")
    print(f"  {'variant':<12}{'p50 us':>9}{'p99 us':>9}{'max us':>9}{'jitter p99':>12}  deadline misses per run"
          "   (others' CPU load, cores)")
    for name, s in summary.items():
        print(f"  {name:<12}{s['tick_latency_p50_us']:>9.1f}{s['tick_latency_p99_us']:>9.1f}"
              f"{s['tick_latency_max_us']:>9.0f}{s['jitter_p99_us']:>12.1f}  {s['deadline_misses']}"
              f"   ({', '.join(f'{x:.2f}' for x in s['others_cpu'])})")
    medians = {name: {k: s[k] for k in ("tick_latency_p50_us", "tick_latency_p99_us", "jitter_p99_us",
                                        "controller_step_p99_us")} | {"deadline_misses":
                                                                     statistics.median(s["deadline_misses"])}
               for name, s in summary.items()}
    return envelope.write("control_loop", args, started, runs=args.runs, medians=medians, ratios=ratios,
                          results={"bundle": shown(bundle), "suite": "default", "cpu": cpu, "summary": summary,
                                   "skipped": skipped,
                                   "runs": {k: [{kk: vv for kk, vv in s.items() if kk != "episodes"} for s in v]
                                            for k, v in runs.items()}})


if __name__ == "__main__":
    main()
