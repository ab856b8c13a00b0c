"""DAgger collection throughput: in-process collector vs Ray rollout actors (1 and 2 workers).

One DAgger round = ``--episodes`` episodes of each of the default suite's 4 tasks, teachers from the
expert zoo, an MLP student acting with probability 1 - beta (0.5), kept episodes written as shards.
The three collectors run in one process against one local Ray instance (2 CPUs), interleaved with the
order rotating, after one warm-up round each (the three collectors' actors ask 0.5 CPU each so that
all of them fit at once; only one collector works at a time); prints medians of env steps per second and the ratios
(Ray 1 worker / in-process round time: target <= 1.3; 2 workers / 1 worker throughput), writes
bench/results/ray_collection.json with the machine's load average.

    .venv/bin/python bench/ray_collection.py [--episodes 8] [--rounds 5]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from policydistill.config import DistillConfig, RayConfig
from policydistill.data.shards import ShardWriter
from policydistill.distill.collectors import LocalCollector
from policydistill.distill.dagger import build_student
from policydistill.eval.evaluate import policies_for_suite
from policydistill.io import atomic_write_json
from policydistill.scale.ray_collect import RayCollector
from policydistill.scale.ray_session import ray_session
from policydistill.suite import load_suite
from policydistill.teachers import TeacherBank

ROOT = Path(__file__).resolve().parents[1]


def _spin(n: int) -> float:
    t0 = time.perf_counter()
    x = 0
    for i in range(n):
        x += i
    return time.perf_counter() - t0


def parallel_capacity(n: int = 5_000_000) -> float:
    """How many cores two busy processes of ours get right now: 2 * (time alone) / (time side by side),
    from 1 (a shared machine giving us one core's worth) to 2 (two free cores)."""
    alone = _spin(n)
    with mp.get_context("spawn").Pool(2) as pool:
        pair = max(pool.map(_spin, [n, n]))
    return 2 * alone / pair


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--episodes", type=int, default=8, help="episodes per task and round")
    p.add_argument("--n-envs", type=int, default=8)
    p.add_argument("--beta", type=float, default=0.5)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", default=str(ROOT / "bench/results/ray_collection.json"))
    args = p.parse_args()
    torch.set_num_threads(1)
    suite = load_suite("default")
    teachers = policies_for_suite(ROOT / "envs/zoo/default", suite, device="cpu")
    bank = TeacherBank([teachers[n] for n in suite.task_names])
    cfg = DistillConfig(episodes_per_task=args.episodes, n_envs=args.n_envs, collector="ray", ray=RayConfig())
    student = build_student(suite, cfg.student, "cpu")
    load_before, capacity_before = os.getloadavg(), parallel_capacity()
    tmp = Path(tempfile.mkdtemp(prefix="ray_collection_"))
    times: dict[str, list[float]] = {"in-process": [], "ray, 1 worker": [], "ray, 2 workers": []}
    steps: dict[str, int] = {}
    with ray_session(RayConfig(num_cpus=2)):
        collectors = {"in-process": LocalCollector(cfg, suite, bank, ShardWriter(tmp / "local"),
                                                   np.random.default_rng(0))}
        for name, workers in (("ray, 1 worker", 1), ("ray, 2 workers", 2)):
            root = tmp / name.replace(", ", "_").replace(" ", "_")
            ShardWriter(root)
            ray_cfg = RayConfig(workers=workers, cpus_per_task=0.5)
            collectors[name] = RayCollector(replace(cfg, ray=ray_cfg), suite, bank, student, root)
        names = list(collectors)
        for r in range(args.rounds + 1):  # round 0 warms every side up and is not counted
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                t0 = time.perf_counter()
                data = collectors[name].round(r, args.beta, student, seed=1000 * r, attempt=0)
                if r > 0:
                    times[name].append(time.perf_counter() - t0)
                    steps[name] = data.steps
        for c in collectors.values():
            c.close()
    rate = {n: statistics.median(steps[n] / t for t in ts) for n, ts in times.items()}
    overhead = [ray / local for ray, local in zip(times["ray, 1 worker"], times["in-process"], strict=True)]
    speedup = [one / two for one, two in zip(times["ray, 1 worker"], times["ray, 2 workers"], strict=True)]
    result = {"bench": "ray_collection", "suite": "default", "episodes_per_task": args.episodes,
              "env_steps_per_round": steps["in-process"], "beta": args.beta, "n_envs": args.n_envs,
              "rounds": args.rounds, "cpus": os.cpu_count(), "loadavg_before": load_before,
              "loadavg_after": os.getloadavg(),
              "parallel_capacity_before_after": [capacity_before, parallel_capacity()],
              "steps_per_s_median": rate,
              "round_time_s_median": {n: statistics.median(ts) for n, ts in times.items()},
              "ratio_ray1_over_inprocess_time_median": statistics.median(overhead),
              "ratio_ray1_over_inprocess_time_range": [min(overhead), max(overhead)],
              "speedup_ray2_over_ray1_median": statistics.median(speedup),
              "speedup_ray2_over_ray1_range": [min(speedup), max(speedup)], "target_overhead": 1.3}
    atomic_write_json(args.out, result)
    for n in names:
        print(f"{n:15s} {rate[n]:8.0f} env steps/s  (round {result['round_time_s_median'][n]:.2f} s, median of "
              f"{args.rounds})")
    print(f"Ray 1 worker / in-process round time: {result['ratio_ray1_over_inprocess_time_median']:.2f} "
          f"(range {min(overhead):.2f}-{max(overhead):.2f}; target <= 1.3)")
    print(f"2 workers / 1 worker throughput:      {result['speedup_ray2_over_ray1_median']:.2f} "
          f"(range {min(speedup):.2f}-{max(speedup):.2f})")
    print(f"load average before/after: {load_before[0]:.2f} / {result['loadavg_after'][0]:.2f} on "
          f"{os.cpu_count()} CPUs; cores two processes of ours got (1-2): "
          f"{capacity_before:.2f} before, {result['parallel_capacity_before_after'][1]:.2f} after")


if __name__ == "__main__":
    main()
