"""Batched tensor path vs gymnasium's SyncVectorEnv: the same PointReach env and the same policy.

- ``sync``: gymnasium ``SyncVectorEnv`` over the suite's envs (autoreset), the policy called once per
  step on the batch: the usual gymnasium way.
- ``batched``: PointReach in VecTask style (one ``mujoco.rollout`` call per step for the whole batch)
  through the protocol adapter and the rollout loop (``policydistill.eval.rollout.drive``: seeded
  episodes, bookkeeping and all).

Both sides run in one process on one thread, interleaved, several rounds each; prints medians of env
steps per second and the ratio batched / sync per batch size.

    .venv/bin/python -m bench batched_envs [--n-envs 8 64 256] [--rounds 5]
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

if not __package__:  # python bench/<name>.py: the bench package lives one folder up
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gymnasium as gym
from gymnasium.vector import AutoresetMode
from policydistill_envs.point_reach_vectask import make_batched

from bench import envelope
from bench.common import one_thread, parse, parser, shown
from policydistill import Suite, load_bundle, load_suite, zoo_dir
from policydistill.eval.rollout import drive

SMOKE = {"n_envs": [8, 64], "iterations": 100, "rounds": 1}


def sync_steps_per_s(suite: Suite, policy: Any, n: int, iterations: int) -> float:
    venv = gym.vector.SyncVectorEnv([lambda i=i: suite.make_env(i % len(suite.tasks)) for i in range(n)],
                                    autoreset_mode=AutoresetMode.NEXT_STEP)
    obs, _ = venv.reset(seed=0)
    t0 = time.perf_counter()
    for _ in range(iterations):
        obs, *_ = venv.step(policy.act({g: obs[g] for g in policy.groups}))
    elapsed = time.perf_counter() - t0
    venv.close()
    return n * iterations / elapsed


def batched_steps_per_s(suite: Suite, policy: Any, n: int, iterations: int) -> float:
    slots = [i % len(suite.tasks) for i in range(n)]
    env = make_batched(suite, slots)
    episodes = max(1, iterations // env.max_episode_length) * n // len(suite.tasks)
    t0 = time.perf_counter()
    records = drive(env, slots, suite.task_names, lambda o: (policy.act(o), {}), episodes, seed=0)
    elapsed = time.perf_counter() - t0
    env.close()
    return sum(r.episode.length for r in records) / elapsed


def main(argv: list[str] | None = None) -> dict:
    p = parser("batched_envs", __doc__)
    p.add_argument("--bundle", default=str(zoo_dir("default") / "north"))
    p.add_argument("--n-envs", type=int, nargs="+", default=[8, 64, 256])
    p.add_argument("--iterations", type=int, default=200, help="batch steps per round (2 episodes of 100)")
    p.add_argument("--rounds", type=int, default=5)
    args = parse(p, argv, SMOKE)
    started = envelope.start()
    one_thread()
    suite = load_suite("default_vectask")
    policy = load_bundle(args.bundle, device="cpu")
    rows = {}
    for n in args.n_envs:
        sync, batched = [], []
        for r in range(args.rounds):  # interleaved, the order alternating
            sides = [(sync, sync_steps_per_s), (batched, batched_steps_per_s)]
            for out, fn in sides if r % 2 == 0 else sides[::-1]:
                out.append(fn(suite, policy, n, args.iterations))
        ratios = [b / s for b, s in zip(batched, sync, strict=True)]
        rows[n] = {"sync_steps_per_s_median": statistics.median(sync),
                   "batched_steps_per_s_median": statistics.median(batched),
                   "ratio_batched_over_sync_median": statistics.median(ratios),
                   "ratio_min": min(ratios), "ratio_max": max(ratios)}
        row = rows[n]
        print(f"n_envs {n:4d}: SyncVectorEnv {row['sync_steps_per_s_median']:9.0f} steps/s, batched tensor "
              f"{row['batched_steps_per_s_median']:9.0f} steps/s, ratio {row['ratio_batched_over_sync_median']:.2f}"
              f" (min {min(ratios):.2f}, max {max(ratios):.2f}, {args.rounds} rounds)")
    return envelope.write(
        "batched_envs", args, started, runs=args.rounds,
        medians={f"n_envs {n}": {"sync_steps_per_s": r["sync_steps_per_s_median"],
                                 "batched_steps_per_s": r["batched_steps_per_s_median"]} for n, r in rows.items()},
        ratios={f"batched_over_sync (n_envs {n})": r["ratio_batched_over_sync_median"] for n, r in rows.items()},
        results={"env": "policydistill/PointReach-v0 (default suite, 4 tasks)", "policy": shown(args.bundle),
                 "threads": 1, "by_n_envs": rows})


if __name__ == "__main__":
    main()
