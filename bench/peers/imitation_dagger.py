"""imitation's DAgger, run in its own environment (``.venv-imitation``: imitation 1.0.1, stable-baselines3 2.2,
gymnasium 0.29), for ``bench/imitation_peer.py``. Imports nothing of policydistill.

    .venv-imitation/bin/python bench/peers/imitation_dagger.py expert --out <zip> [--steps N] [--seed S]
    .venv-imitation/bin/python bench/peers/imitation_dagger.py dagger --expert <zip> --labels N --seed S
        [--episodes E]

``expert``: an SB3 PPO expert on the env (rewards normalised while it trains, observations not, so that both
libraries feed it the raw observation). ``dagger``: ``SimpleDAggerTrainer`` with its defaults, trained for
``--labels`` expert-labelled steps on one torch thread; the wall time of ``train()``, then the student's mean
return over ``--episodes`` deterministic episodes (seeds 0, 1, ...). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import gymnasium as gym
import numpy as np
import torch

ENV = "InvertedDoublePendulum-v4"


def mean_return(policy, episodes: int) -> tuple[float, float]:
    """Mean and std of the episode return of ``policy`` (an SB3 policy, deterministic) on seeds 0..episodes-1."""
    env = gym.make(ENV)
    returns = []
    for seed in range(episodes):
        obs, _ = env.reset(seed=seed)
        done, total = False, 0.0
        while not done:
            action, _ = policy.predict(obs, deterministic=True)
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    return float(np.mean(returns)), float(np.std(returns))


def train_expert(args: argparse.Namespace) -> dict:
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    env = VecNormalize(make_vec_env(ENV, n_envs=8, seed=args.seed), norm_obs=False, norm_reward=True)
    model = PPO("MlpPolicy", env, seed=args.seed, n_steps=256, batch_size=256, gamma=0.99, learning_rate=3e-4,
                n_epochs=10, gae_lambda=0.95, policy_kwargs={"net_arch": [64, 64]}, verbose=0)
    t0 = time.perf_counter()
    model.learn(args.steps)
    seconds = time.perf_counter() - t0
    model.save(args.out)
    ret, std = mean_return(model.policy, args.episodes)
    return {"expert": args.out, "steps": args.steps, "wall_time_s": seconds, "return_mean": ret, "return_std": std}


def dagger(args: argparse.Namespace) -> dict:
    from imitation.algorithms import bc
    from imitation.algorithms.dagger import SimpleDAggerTrainer
    from imitation.util.util import make_vec_env
    from stable_baselines3 import PPO

    rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)
    env = make_vec_env(ENV, rng=rng, n_envs=1)
    expert = PPO.load(args.expert, device="cpu").policy
    learner = bc.BC(observation_space=env.observation_space, action_space=env.action_space, rng=rng, device="cpu")
    with tempfile.TemporaryDirectory() as scratch:
        trainer = SimpleDAggerTrainer(venv=env, scratch_dir=scratch, expert_policy=expert, bc_trainer=learner, rng=rng)
        t0 = time.perf_counter()
        trainer.train(args.labels)
        seconds = time.perf_counter() - t0
        labels = sum(len(t) for t in trainer._all_demos) if hasattr(trainer, "_all_demos") else None
        rounds = trainer.round_num
    ret, std = mean_return(learner.policy, args.episodes)
    return {"library": "imitation", "labels_asked": args.labels, "labels": labels, "rounds": rounds, "seed": args.seed,
            "wall_time_s": seconds, "return_mean": ret, "return_std": std}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("expert")
    e.add_argument("--out", required=True)
    e.add_argument("--steps", type=int, default=300_000)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--episodes", type=int, default=10)
    d = sub.add_parser("dagger")
    d.add_argument("--expert", required=True)
    d.add_argument("--labels", type=int, required=True)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--episodes", type=int, default=20)
    args = p.parse_args()
    torch.set_num_threads(1)
    print(json.dumps(train_expert(args) if args.command == "expert" else dagger(args)))


if __name__ == "__main__":
    main()
