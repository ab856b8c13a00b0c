"""Evaluation rollout throughput: the framework's vectorised evaluation vs a raw ``env.step`` loop.

Both drive the same env with actions from the same trained expert bundle, in one process on one
core, alternating rounds; prints medians and the ratio (target: framework >= 0.7x raw steps/s).

    .venv/bin/python -m bench eval_throughput [--bundle envs/zoo/default/north] [--rounds 5]
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

from bench import envelope
from bench.common import one_thread, parse, parser, shown
from policydistill import TaskSpec, load_bundle, load_suite, run_episodes, zoo_dir
from policydistill.types import stack_obs

TARGET = 0.7
SMOKE = {"episodes": 4, "rounds": 1}


def raw_steps_per_s(spec: TaskSpec, policy: Any, steps: int) -> float:
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


def env_only_steps_per_s(spec: TaskSpec, steps: int) -> float:
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


def framework_steps_per_s(suite: Any, task: str, policy: Any, episodes: int, n_envs: int) -> float:
    t0 = time.perf_counter()
    eps = run_episodes(suite, task, policy, episodes, n_envs=n_envs, seed=0)
    return sum(e.length for e in eps) / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> dict:
    p = parser("eval_throughput", __doc__)
    p.add_argument("--bundle", default=str(zoo_dir("default") / "north"))
    p.add_argument("--suite", default="default")
    p.add_argument("--task", default="north")
    p.add_argument("--episodes", type=int, default=40)
    p.add_argument("--n-envs", type=int, default=8)
    p.add_argument("--rounds", type=int, default=5)
    args = parse(p, argv, SMOKE)
    started = envelope.start()
    one_thread()
    suite = load_suite(args.suite)
    spec = suite.tasks[suite.index(args.task)]
    policy = load_bundle(args.bundle, device="cpu")
    steps = args.episodes * (spec.max_episode_steps or gym.spec(spec.env).max_episode_steps)
    raw, fw, sim = [], [], []
    for _ in range(args.rounds):
        raw.append(raw_steps_per_s(spec, policy, steps))
        fw.append(framework_steps_per_s(suite, args.task, policy, args.episodes, args.n_envs))
        sim.append(env_only_steps_per_s(spec, steps))
    medians = {"raw_steps_per_s": statistics.median(raw), "framework_steps_per_s": statistics.median(fw),
               "env_only_steps_per_s": statistics.median(sim)}
    ratios = {"framework_over_raw": statistics.median(f / r for f, r in zip(fw, raw, strict=True)),
              "framework_over_env_only": statistics.median(f / e for f, e in zip(fw, sim, strict=True))}
    print(f"raw env.step loop:        {medians['raw_steps_per_s']:9.0f} steps/s (median of {args.rounds})")
    print(f"framework evaluation:     {medians['framework_steps_per_s']:9.0f} steps/s "
          f"({args.n_envs} envs, batched policy)")
    print(f"simulator alone:          {medians['env_only_steps_per_s']:9.0f} steps/s (no policy)")
    print(f"target: framework / raw >= {TARGET}")
    return envelope.write("eval_throughput", args, started, runs=args.rounds, medians=medians, ratios=ratios,
                          results={"bundle": shown(args.bundle), "steps_per_round": steps, "threads": 1,
                                   "target_ratio": TARGET, "passed": ratios["framework_over_raw"] >= TARGET,
                                   "rounds": {"raw": raw, "framework": fw, "env_only": sim}})


if __name__ == "__main__":
    main()
