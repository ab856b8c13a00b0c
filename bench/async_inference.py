"""Async vs sync inference of a slow chunk policy in the fixed-rate loop: idle ticks for both, side by side.

A diffusion policy (``--bundle``) sampling with ``--sampler-steps`` DDIM steps (default 100, the
teacher as trained; with the default MLP denoiser 10 steps take 0.25 ms on ONNX Runtime here, too fast
to stall the loop at a rate Python holds) drives the simulated robot of ``--suite`` through
``policydistill.runtime.run.run_policy`` at a rate where one chunk takes longer than a control
period (by default ``--periods-per-chunk`` = 3 periods of the measured median inference latency).
``sync``: the chunk is computed on the control thread when it is needed, so the loop stalls;
``async``: the next chunk is computed in the background while the current one executes.

An idle tick is one where the robot executed the fallback instead of a planned action: overruns and
missed ticks (the loop stalled), ticks where the queue ran dry, and cold starts (the first chunk of
an episode still being computed). Without ``--bundle`` the harness runs a labelled stand-in that is
slow on purpose (an untrained MLP denoiser in a 10-step sampler, see runtime_setup.py), not the
diffusion policy. Writes ``bench/results/async_inference[_standin].json``.

    .venv/bin/python bench/async_inference.py --bundle <diffusion policy> --suite default_hazard \
        [--sampler-steps 100] [--ticks 3000] [--runs 2]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch
from runtime_setup import ROOT, STAND_IN, stand_in_chunk_policy, time_calls, versions

from policydistill.io import atomic_write_json
from policydistill.runtime import export_policy, make_source
from policydistill.runtime.loop import format_stats, pin_to_cpu, restore_scheduling
from policydistill.runtime.run import run_policy

log = logging.getLogger("bench.async_inference")


def idle(stats: dict) -> dict[str, int]:
    c = stats["controller"]
    parts = {"overruns": stats["overruns"], "missed": stats["missed"], "queue_dry": c["starved_env_ticks"],
             "cold_start": c["cold_start_env_ticks"], "nonfinite": c["nonfinite_env_ticks"]}
    return {"idle": sum(parts.values()), **parts}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", default=None, help="a K-step diffusion policy bundle (default: a slow stand-in)")
    p.add_argument("--sampler-steps", type=int, default=100,
                   help="the bundle's sampler runs with this many (DDIM) steps per chunk")
    p.add_argument("--backend", default="onnx", choices=["torch", "onnx"])
    p.add_argument("--suite", default="default", help="the simulated robot: a suite the policy was trained on")
    p.add_argument("--rate-hz", type=float, default=None, help="default: periods-per-chunk / median latency")
    p.add_argument("--periods-per-chunk", type=float, default=3.0)
    p.add_argument("--ticks", type=int, default=3000)
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--normal-priority", action="store_true",
                   help="run the control thread at normal priority (default: SCHED_FIFO, pinned to the last CPU, "
                        "so that other processes' load does not add misses to both modes)")
    p.add_argument("--out", default=None, help="default: bench/results/async_inference[_standin].json")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    log.setLevel(logging.INFO)
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        if args.bundle:
            source_path, label = Path(args.bundle), str(args.bundle)
            if args.backend == "onnx":
                source_path = export_policy(args.bundle, "onnx", Path(tmp) / "policy.onnx")
        else:
            label = STAND_IN
            policy = stand_in_chunk_policy("denoiser", horizon=16, n_action_steps=8, steps=10, hidden=1024,
                                           layers=3)
            source_path = export_policy(policy, "onnx" if args.backend == "onnx" else "torchscript",
                                        Path(tmp) / ("policy.onnx" if args.backend == "onnx" else "policy.pt"))
        realtime = not args.normal_priority
        cpu = max(os.sched_getaffinity(0)) if realtime else None
        steps = args.sampler_steps if args.bundle else None  # the stand-in is built with 10 steps
        probe = make_source(source_path, sampler_steps=steps)
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
                                   sampler_steps=steps,
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
    result = {"bench": "async_inference", "policy": label, "stand_in": args.bundle is None, "backend": args.backend,
              "sampler_steps": 10 if steps is None else steps,
              "suite": args.suite, "graph": probe.describe(), "median_inference_ms": latency * 1e3, "rate_hz": rate,
              "periods_per_chunk": latency * rate, "ticks": args.ticks, "runs_per_mode": args.runs,
              "control_thread": {"cpu": cpu, "sched_fifo": [s["pinned"]["realtime"] for s in runs["sync"]]},
              "horizon": c["horizon"], "n_action_steps": c["n_action_steps"],
              "latency_budget_ms": c["latency_budget_ms"], "summary": summary,
              "runs": {k: [{kk: vv for kk, vv in s.items() if kk != "episodes"} for s in v] for k, v in runs.items()},
              "versions": versions()}
    out = Path(args.out or ROOT / f"bench/results/async_inference{'' if args.bundle else '_standin'}.json")
    atomic_write_json(out, result)
    print(f"async vs sync inference, {label}\n  {probe.describe()}, backend {args.backend}, control thread "
          f"{'SCHED_FIFO on CPU ' + str(cpu) if realtime else 'at normal priority'}")
    print(f"  median inference {latency * 1e3:.2f} ms = {latency * rate:.2f} control periods at {rate:.1f} Hz; "
          f"{args.ticks} ticks per run, {args.runs} runs per mode; async latency budget "
          f"{c['latency_budget_ms']:.1f} ms")
    for mode, s in summary.items():
        parts = ", ".join(f"{k} {v}" for k, v in s["idle_ticks"][0].items() if k != "idle")
        print(f"  {mode:6s} idle ticks per run {[i['idle'] for i in s['idle_ticks']]} (run 1: {parts}); "
              f"inference p50 {s['inference_p50_ms']:.2f} ms p99 {s['inference_p99_ms']:.2f} ms")
    log.info("wrote %s", out)


if __name__ == "__main__":
    main()
