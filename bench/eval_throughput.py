"""Evaluation rollout throughput: the framework's vectorised evaluation vs a raw ``env.step`` loop.

Both drive the same env with actions from the same trained expert bundle, in one process on one
core, alternating rounds; prints medians and the ratio (target: framework >= 0.7x raw steps/s).

    .venv/bin/python bench/eval_throughput.py [--bundle envs/zoo/default/north] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import gymnasium as gym
import torch

from policydistill.bundle import load_bundle
from policydistill.eval.rollout import run_episodes
from policydistill.io import atomic_write_json
from policydistill.suite import load_suite
from policydistill.types import stack_obs

ROOT = Path(__file__).resolve().parents[1]


def raw_steps_per_s(spec, policy, steps: int) -> float:
    """One env, no wrappers beyond gymnasium's registry ones, batch-1 policy call per step."""
    env = gym.make(spec.env, **spec.kwargs)
    obs, _ = env.reset(seed=0)
    t0 = time.perf_counter()
    for _ in range(steps):
        action = policy.act(stack_obs([obs]))[0]
        obs, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            obs, _ = env.reset()
    return steps / (time.perf_counter() - t0)


def env_only_steps_per_s(spec, steps: int) -> float:
    """The simulator alone: pre-sampled actions, no policy (an upper bound for any evaluation)."""
    env = gym.make(spec.env, **spec.kwargs)
    env.reset(seed=0)
    env.action_space.seed(0)
    actions = [env.action_space.sample() for _ in range(steps)]
    t0 = time.perf_counter()
    for action in actions:
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            env.reset()
    return steps / (time.perf_counter() - t0)


def framework_steps_per_s(suite, task: str, policy, episodes: int, n_envs: int) -> float:
    t0 = time.perf_counter()
    eps = run_episodes(suite, task, policy, episodes, n_envs=n_envs, seed=0)
    return sum(e.length for e in eps) / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", default=str(ROOT / "envs/zoo/default/north"))
    p.add_argument("--suite", default="default")
    p.add_argument("--task", default="north")
    p.add_argument("--episodes", type=int, default=40)
    p.add_argument("--n-envs", type=int, default=8)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", default=str(ROOT / "bench/results/eval_throughput.json"))
    args = p.parse_args()
    torch.set_num_threads(1)
    suite = load_suite(args.suite)
    spec = suite.tasks[suite.index(args.task)]
    policy = load_bundle(args.bundle, device="cpu")
    steps = args.episodes * (spec.max_episode_steps or gym.spec(spec.env).max_episode_steps)
    raw, fw, sim = [], [], []
    for _ in range(args.rounds):
        raw.append(raw_steps_per_s(spec, policy, steps))
        fw.append(framework_steps_per_s(suite, args.task, policy, args.episodes, args.n_envs))
        sim.append(env_only_steps_per_s(spec, steps))
    result = {
        "bench": "eval_throughput", "suite": args.suite, "task": args.task, "rounds": args.rounds,
        "steps_per_round": steps, "n_envs": args.n_envs, "threads": 1,
        "raw_steps_per_s_median": statistics.median(raw), "framework_steps_per_s_median": statistics.median(fw),
        "env_only_steps_per_s_median": statistics.median(sim),
        "ratio_framework_over_raw": statistics.median(f / r for f, r in zip(fw, raw, strict=True)),
        "ratio_framework_over_env_only": statistics.median(f / e for f, e in zip(fw, sim, strict=True)),
        "target_ratio": 0.7,
    }
    atomic_write_json(args.out, result)
    print(f"raw env.step loop:        {result['raw_steps_per_s_median']:9.0f} steps/s (median of {args.rounds})")
    print(f"framework evaluation:     {result['framework_steps_per_s_median']:9.0f} steps/s "
          f"({args.n_envs} envs, batched policy)")
    print(f"simulator alone:          {result['env_only_steps_per_s_median']:9.0f} steps/s (no policy)")
    print(f"ratio framework / raw:    {result['ratio_framework_over_raw']:9.2f}  (target >= 0.7)")
    print(f"ratio framework / sim:    {result['ratio_framework_over_env_only']:9.2f}")


if __name__ == "__main__":
    main()
