"""Async vs sync inference of a slow chunk policy in the fixed-rate loop: idle ticks for both, side by side.

A diffusion policy sampling with ``--sampler-steps`` DDIM steps (default 100, the teacher as trained;
with the default MLP denoiser 10 steps take 0.25 ms on ONNX Runtime here, too fast to stall the loop at
a rate Python holds) drives the simulated robot of ``--suite`` through
``policydistill.runtime.run.run_policy`` at a rate where one chunk takes longer than a control
period (by default ``--periods-per-chunk`` = 3 periods of the measured median inference latency).
``sync``: the chunk is computed on the control thread when it is needed, so the loop stalls;
``async``: the next chunk is computed in the background while the current one executes.

An idle tick is one where the robot executed the fallback instead of a planned action: overruns and
missed ticks (the loop stalled), ticks where the queue ran dry, and cold starts (the first chunk of
an episode still being computed). Without ``--bundle`` the policy is the diffusion teacher of
``bench onestep_fidelity``'s seed 0 on ``default_hazard`` (see bench/common.py; trained on first use);
the results name the policy measured. A ``--smoke`` run whose SCHED_FIFO request is refused runs the
control thread at normal priority (the reason is logged and recorded).

    .venv/bin/python -m bench async_inference [--bundle <diffusion policy> --suite <its suite>] \
        [--sampler-steps 100] [--ticks 3000] [--runs 2]
"""

from __future__ import annotations

import logging
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

if not __package__:  # python bench/<name>.py: the bench package lives one folder up
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from bench import envelope
from bench.common import (
    chunk_bundles,
    chunk_label,
    one_thread,
    parse,
    parser,
    realtime_refused,
    setup_logging,
    shown,
    time_calls,
)
from policydistill import export_policy
from policydistill.runtime import make_source
from policydistill.runtime.loop import format_stats, pin_to_cpu, restore_scheduling
from policydistill.runtime.run import run_policy

log = logging.getLogger("bench.async_inference")
SMOKE = {"ticks": 200, "runs": 1}


def idle(stats: dict[str, Any]) -> dict[str, int]:
    """A run's idle ticks (the fallback executed) and their causes."""
    c = stats["controller"]
    parts = {"overruns": stats["overruns"], "missed": stats["missed"], "queue_dry": c["starved_env_ticks"],
             "cold_start": c["cold_start_env_ticks"], "nonfinite": c["nonfinite_env_ticks"]}
    return {"idle": sum(parts.values()), **parts}


def main(argv: list[str] | None = None) -> dict:
    p = parser("async_inference", __doc__)
    p.add_argument("--bundle", default=None,
                   help="a K-step diffusion policy bundle (default: bench onestep_fidelity's seed-0 teacher)")
    p.add_argument("--sampler-steps", type=int, default=100,
                   help="the bundle's sampler runs with this many (DDIM) steps per chunk")
    p.add_argument("--backend", default="onnx", choices=["torch", "onnx"])
    p.add_argument("--suite", default="default_hazard", help="the simulated robot: a suite the policy was trained on")
    p.add_argument("--rate-hz", type=float, default=None, help="default: periods-per-chunk / median latency")
    p.add_argument("--periods-per-chunk", type=float, default=3.0)
    p.add_argument("--ticks", type=int, default=3000)
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--normal-priority", action="store_true",
                   help="run the control thread at normal priority (default: SCHED_FIFO, pinned to the last CPU, "
                        "so that other processes' load does not add misses to both modes)")
    args = parse(p, argv, SMOKE)
    started = envelope.start()
    setup_logging()
    one_thread()
    bundle = Path(args.bundle) if args.bundle else chunk_bundles(args.smoke)["teacher"]
    label = shown(bundle) if args.bundle else chunk_label(bundle, args.smoke)
    realtime, refused = not args.normal_priority, None
    if realtime and args.smoke and (refused := realtime_refused()):
        log.warning("the smoke run's control thread runs at normal priority: SCHED_FIFO refused (%s)", refused)
        realtime = False
    cpu = max(os.sched_getaffinity(0)) if realtime else None

    with tempfile.TemporaryDirectory() as tmp:
        source_path = export_policy(bundle, "onnx", Path(tmp) / "policy.onnx") if args.backend == "onnx" else bundle
        probe = make_source(source_path, sampler_steps=args.sampler_steps)
        x = np.zeros((1, probe.n_obs_steps * probe.obs_dim), np.float32)
        pinned = pin_to_cpu(cpu, realtime)  # measured as the control thread runs it in sync mode
        try:
            latency = statistics.median(time_calls(lambda: probe.predict(x), 50, warmup=5)) / 1e6
        finally:
            restore_scheduling(pinned)
        rate = args.rate_hz or args.periods_per_chunk / latency
        log.info("%s: median inference %.2f ms; running at %.1f Hz (%.2f periods per chunk)", label,
                 latency * 1e3, rate, latency * rate)
        runs: dict[str, list[dict]] = {"sync": [], "async": []}
        for r in range(args.runs):
            for mode in runs:
                stats = run_policy(source_path, args.suite, rate, args.ticks, backend="torch", progress=False,
                                   sampler_steps=args.sampler_steps,
                                   controller={"async_inference": mode == "async"}, cpu=cpu, realtime=realtime)
                runs[mode].append(stats)
                log.info("run %d %s: %s\n%s", r + 1, mode, idle(stats), format_stats(stats))

    summary = {mode: {"idle_ticks": [idle(s) for s in rs],
                      "idle_median": statistics.median(idle(s)["idle"] for s in rs),
                      "inference_p50_ms": statistics.median(s["controller"]["inference"]["p50_us"] for s in rs) / 1e3,
                      "inference_p99_ms": statistics.median(s["controller"]["inference"]["p99_us"] for s in rs) / 1e3,
                      "tick_latency_p99_us": statistics.median(s["latency"]["p99_us"] for s in rs),
                      "others_cpu": [s["machine"]["others_cpu"] for s in rs]} for mode, rs in runs.items()}
    c = runs["async"][0]["controller"]
    print(f"async vs sync inference, {label}\n  {probe.describe()}, backend {args.backend}, control thread "
          f"{'SCHED_FIFO on CPU ' + str(cpu) if realtime else 'at normal priority'}")
    print(f"  median inference {latency * 1e3:.2f} ms = {latency * rate:.2f} control periods at {rate:.1f} Hz; "
          f"{args.ticks} ticks per run, {args.runs} runs per mode; async latency budget "
          f"{c['latency_budget_ms']:.1f} ms")
    for mode, s in summary.items():
        parts = ", ".join(f"{k} {v}" for k, v in s["idle_ticks"][0].items() if k != "idle")
        print(f"  {mode:6s} idle ticks per run {[i['idle'] for i in s['idle_ticks']]} (run 1: {parts}); "
              f"inference p50 {s['inference_p50_ms']:.2f} ms p99 {s['inference_p99_ms']:.2f} ms")
    sync_idle = summary["sync"]["idle_median"]
    return envelope.write(
        "async_inference", args, started, runs=args.runs,
        medians={mode: {k: s[k] for k in ("idle_median", "inference_p50_ms", "inference_p99_ms",
                                          "tick_latency_p99_us")} for mode, s in summary.items()},
        ratios={"async_over_sync_idle_ticks": summary["async"]["idle_median"] / sync_idle if sync_idle else None},
        results={"policy": label, "bundle": shown(bundle), "graph": probe.describe(),
                 "median_inference_ms": latency * 1e3, "rate_hz": rate, "periods_per_chunk": latency * rate,
                 "control_thread": {"cpu": cpu, "sched_fifo": [s["pinned"]["realtime"] for s in runs["sync"]],
                                    "sched_fifo_refused": refused},
                 "horizon": c["horizon"], "n_action_steps": c["n_action_steps"],
                 "latency_budget_ms": c["latency_budget_ms"], "summary": summary,
                 "runs": {k: [{kk: vv for kk, vv in s.items() if kk != "episodes"} for s in v]
                          for k, v in runs.items()}})


if __name__ == "__main__":
    main()
