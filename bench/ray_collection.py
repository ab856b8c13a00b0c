"""DAgger collection throughput: in-process collector vs Ray rollout actors (1 and 2 workers).

One DAgger round = ``--episodes`` episodes of each of the default suite's 4 tasks, teachers from the
expert zoo, an MLP student acting with probability 1 - beta (0.5), kept episodes written as shards.
The three collectors run in one process against one local Ray instance (2 CPUs), interleaved with the
order rotating, after one warm-up round each (the three collectors' actors ask 0.5 CPU each so that
all of them fit at once; only one collector works at a time); prints medians of env steps per second
and the ratios (Ray 1 worker / in-process round time: target <= 1.3; 2 workers / 1 worker throughput),
with how many cores two busy processes got before and after (the machine is shared).

    .venv/bin/python -m bench ray_collection [--episodes 8] [--rounds 5]
"""

from __future__ import annotations

import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from pathlib import Path

if not __package__:  # python bench/<name>.py: the bench package lives one folder up
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from bench import envelope
from bench.common import one_thread, parse, parser, zoo_teachers
from policydistill import StudentConfig, TeacherBank, build_student
from policydistill.data.shards import ShardWriter
from policydistill.distill.collect import CollectPlan, LocalCollector
from policydistill.scale.ray_collect import RayCollector
from policydistill.scale.ray_session import RayConfig, ray_session

TARGET = 1.3
SMOKE = {"episodes": 1, "rounds": 1, "capacity_spin": 1_000_000}


def _spin(n: int) -> float:
    t0 = time.perf_counter()
    x = 0
    for i in range(n):
        x += i
    return time.perf_counter() - t0


def parallel_capacity(n: int) -> float:
    """How many cores two busy processes of ours get right now: 2 * (time alone) / (time side by side),
    from 1 (a shared machine giving us one core's worth) to 2 (two free cores)."""
    alone = _spin(n)
    with mp.get_context("spawn").Pool(2) as pool:
        pair = max(pool.map(_spin, [n, n]))
    return 2 * alone / pair


def main(argv: list[str] | None = None) -> dict:
    p = parser("ray_collection", __doc__)
    p.add_argument("--episodes", type=int, default=8, help="episodes per task and round")
    p.add_argument("--n-envs", type=int, default=8)
    p.add_argument("--beta", type=float, default=0.5)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--capacity-spin", type=int, default=5_000_000,
                   help="loop iterations of the parallel-capacity probe before and after")
    args = parse(p, argv, SMOKE)
    started = envelope.start()
    one_thread()
    suite, teachers = zoo_teachers("default")
    bank = TeacherBank([teachers[n] for n in suite.task_names])
    student = build_student(suite, StudentConfig(), "cpu")
    plan = CollectPlan(args.beta, args.episodes, student)
    capacity_before = parallel_capacity(args.capacity_spin)
    times: dict[str, list[float]] = {"in-process": [], "ray, 1 worker": [], "ray, 2 workers": []}
    steps: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="ray_collection_") as tmp, ray_session(RayConfig(num_cpus=2)):
        collectors = {"in-process": LocalCollector(suite, args.n_envs, Path(tmp) / "local")}
        for name, workers in (("ray, 1 worker", 1), ("ray, 2 workers", 2)):
            root = Path(tmp) / name.replace(", ", "_").replace(" ", "_")
            ShardWriter(root)  # RayCollector appends to an existing episode store only
            collectors[name] = RayCollector(RayConfig(workers=workers, cpus_per_task=0.5), suite, args.n_envs, root)
        names = list(collectors)
        for r in range(args.rounds + 1):  # round 0 warms every side up and is not counted
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                t0 = time.perf_counter()
                data = collectors[name].round(plan, bank, r, seed=1000 * r, rng=np.random.default_rng(r))
                if r > 0:
                    times[name].append(time.perf_counter() - t0)
                    steps[name] = data.steps
        for c in collectors.values():
            c.close()
    capacity_after = parallel_capacity(args.capacity_spin)
    rate = {n: statistics.median(steps[n] / t for t in ts) for n, ts in times.items()}
    overhead = [ray / local for ray, local in zip(times["ray, 1 worker"], times["in-process"], strict=True)]
    speedup = [one / two for one, two in zip(times["ray, 1 worker"], times["ray, 2 workers"], strict=True)]
    round_time = {n: statistics.median(ts) for n, ts in times.items()}
    for n in names:
        print(f"{n:15s} {rate[n]:8.0f} env steps/s  (round {round_time[n]:.2f} s, median of {args.rounds})")
    print(f"target: Ray 1 worker / in-process round time <= {TARGET} (range {min(overhead):.2f}-{max(overhead):.2f}); "
          f"2 workers / 1 worker throughput range {min(speedup):.2f}-{max(speedup):.2f}")
    print(f"cores two processes of ours got (1-2): {capacity_before:.2f} before, {capacity_after:.2f} after")
    return envelope.write(
        "ray_collection", args, started, runs=args.rounds,
        medians={"steps_per_s": rate, "round_time_s": round_time},
        ratios={"ray1_over_inprocess_round_time": statistics.median(overhead),
                "ray2_over_ray1_throughput": statistics.median(speedup)},
        results={"suite": "default", "env_steps_per_round": steps["in-process"],
                 "ray1_over_inprocess_round_time_range": [min(overhead), max(overhead)],
                 "ray2_over_ray1_throughput_range": [min(speedup), max(speedup)], "target_overhead": TARGET,
                 "parallel_capacity_before_after": [capacity_before, capacity_after], "round_times_s": times})


if __name__ == "__main__":
    main()
