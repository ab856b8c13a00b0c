"""policydistill DAgger vs rsl_rl's Distillation on the same envs, teachers, student network and env-step budget.

    # rsl-rl-lib comes with the dev extra (scripts/setup.sh); alone: .venv/bin/pip install -e ".[rslrl]"
    .venv/bin/python -m bench rsl_rl_peer --suite locomotion --seeds 0 1 2

rsl_rl's ``Distillation`` (PyPI rsl-rl-lib) is driven the way its runner drives it (``act`` ->
``env.step`` -> ``process_env_step`` per step, ``update`` per iteration) through a small adapter: a
``VecEnv`` over the suite's envs (auto-reset, ``dones`` = terminated or truncated), the zoo teachers
behind a ``TeacherBank`` as its teacher module, and its ``MLPModel`` as student with the same hidden
sizes and activation as ours, observation normalisation and IsaacLab's distillation settings
(student noise std 0.1, 2 learning epochs, gradient length 15, lr 1e-3). One iteration collects as many
env steps as one DAgger round (every task's episodes, ``--episodes-per-task`` each), and both students
are evaluated after every round/iteration on the same seeded episodes, outside the timed training.

Printed and written to ``rsl_rl_peer_<suite><tag>.json``: per method the student's mean (random-normalised)
score after each round against env steps, and the training wall time (collection + updates, evaluation
excluded); medians over the seeds and their ratios; and, per seed, our training time until our student scored
above rsl_rl's final score, over rsl_rl's whole training time (target <= 0.7).
"""

from __future__ import annotations

import itertools
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if not __package__:  # python bench/<name>.py: the bench package lives one folder up
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from torch import nn

from bench import envelope
from bench.common import one_thread, parse, parser, run_distill, zoo_teachers
from policydistill import (
    DAggerConfig,
    DistillConfig,
    StudentConfig,
    Suite,
    TeacherBank,
    evaluate_per_task,
)
from policydistill.eval.metrics import teacher_normalised
from policydistill.types import stack_obs

try:
    from rsl_rl.algorithms import Distillation
    from rsl_rl.env import VecEnv
    from rsl_rl.models import MLPModel
    from rsl_rl.storage import RolloutStorage
    from tensordict import TensorDict
except ImportError as e:  # pragma: no cover - a benchmark-only dependency
    raise SystemExit(f"this benchmark needs rsl-rl-lib: .venv/bin/pip install -e '.[rslrl]' ({e})") from e

EVAL_SEED = DistillConfig.eval_seed  # the seeds distill evaluates its students on
SMOKE = {"seeds": [0], "rounds": 2, "episodes_per_task": 1, "eval_episodes": 2}
THRESHOLDS = (0.9, 0.95)
TIME_TARGET = 0.7


class SuiteVecEnv(VecEnv):
    """The suite's envs as an rsl_rl VecEnv: ``per_task`` envs per task, auto-reset with fresh seeds, actions
    clipped to the action space, observations a TensorDict of the groups."""

    def __init__(self, suite: Suite, per_task: int, seed: int) -> None:
        self.envs = [suite.make_env(t) for t in range(len(suite.tasks)) for _ in range(per_task)]
        space = self.envs[0].action_space
        self.low, self.high = space.low, space.high
        self.num_envs, self.num_actions, self.device, self.cfg = len(self.envs), int(space.shape[0]), "cpu", {}
        self.max_episode_length = int(self.envs[0].spec.max_episode_steps or 1000)
        self.episode_length_buf = torch.zeros(self.num_envs, dtype=torch.long)
        self.next_seed = seed
        self.obs = [self._reset(env) for env in self.envs]

    def _reset(self, env) -> dict:
        self.next_seed += 1
        return env.reset(seed=self.next_seed)[0]

    def get_observations(self) -> TensorDict:
        batch = stack_obs(self.obs)
        return TensorDict({g: torch.as_tensor(v) for g, v in batch.items()}, batch_size=[self.num_envs])

    def step(self, actions: torch.Tensor) -> tuple[TensorDict, torch.Tensor, torch.Tensor, dict]:
        a = np.clip(actions.cpu().numpy(), self.low, self.high)
        rewards, dones, timeouts = np.zeros(self.num_envs, np.float32), np.zeros(self.num_envs), np.zeros(self.num_envs)
        for i, env in enumerate(self.envs):
            obs, r, terminated, truncated, _ = env.step(a[i])
            rewards[i], dones[i], timeouts[i] = r, terminated or truncated, truncated and not terminated
            self.obs[i] = self._reset(env) if terminated or truncated else obs
        self.episode_length_buf = torch.where(torch.as_tensor(dones, dtype=torch.bool), 0, self.episode_length_buf + 1)
        return (self.get_observations(), torch.as_tensor(rewards), torch.as_tensor(dones, dtype=torch.float32),
                {"time_outs": torch.as_tensor(timeouts)})


class BankTeacher(nn.Module):
    """A TeacherBank as rsl_rl's teacher model: TensorDict of groups -> the label means (n, act_dim)."""

    def __init__(self, bank: TeacherBank) -> None:
        super().__init__()
        self.bank = bank

    def forward(self, obs: TensorDict) -> torch.Tensor:
        return torch.as_tensor(self.bank.label({g: obs[g].cpu().numpy() for g in self.bank.groups}).mean)

    def reset(self, dones: torch.Tensor | None = None, hidden_state: None = None) -> None:
        """Stateless teachers."""

    def get_hidden_state(self) -> None:
        return None

    def detach_hidden_state(self, dones: torch.Tensor | None = None) -> None:
        """Stateless teachers."""


class RslStudent:
    """The rsl_rl student as a policydistill Policy for evaluation (deterministic output, clipped)."""

    def __init__(self, model: MLPModel, groups: list[str], low: np.ndarray, high: np.ndarray) -> None:
        self.model, self.groups, self.low, self.high = model, tuple(groups), low, high

    def act(self, obs: dict[str, np.ndarray], deterministic: bool = True) -> np.ndarray:
        td = TensorDict({g: torch.as_tensor(obs[g]) for g in self.groups}, batch_size=[len(obs[self.groups[0]])])
        with torch.inference_mode():
            return np.clip(self.model(td).numpy(), self.low, self.high)

    def reset(self, env_mask: np.ndarray | None = None) -> None:
        """Stateless."""


def evaluate(suite: Suite, policy: Any, baselines: tuple[dict, dict], episodes: int) -> float:
    """Mean score over the tasks on the seeded evaluation episodes, against the runner's (teacher, random)
    evaluations on them."""
    evals = evaluate_per_task(suite, policy, episodes, seed=EVAL_SEED)
    teacher, random = baselines
    return float(np.mean([teacher_normalised(evals[n], teacher[n], random[n])["score"] for n in suite.task_names]))


def run_rsl_rl(suite: Suite, teachers: dict, groups: list[str], hidden: list[int], seed: int, iterations: int,
               episodes_per_task: int, baselines: tuple[dict, dict], eval_episodes: int, epochs: int) -> dict:
    torch.manual_seed(seed)
    env0 = suite.make_env(0)
    steps_per_env = int(env0.spec.max_episode_steps)
    env = SuiteVecEnv(suite, episodes_per_task, seed=10_000 + 1000 * seed)
    obs = env.get_observations()
    student = MLPModel(obs, {"student": groups}, "student", env.num_actions, hidden_dims=hidden, activation="relu",
                       obs_normalization=True, distribution_cfg={"class_name": "GaussianDistribution", "init_std": 0.1})
    teacher = BankTeacher(TeacherBank([teachers[n] for n in suite.task_names]))
    storage = RolloutStorage("distillation", env.num_envs, steps_per_env, obs, [env.num_actions], "cpu")
    alg = Distillation(student, teacher, storage, num_learning_epochs=epochs, gradient_length=15, learning_rate=1e-3)
    alg.teacher_loaded = True
    policy = RslStudent(student, groups, env.low, env.high)
    curve, collect_time, update_time = [], 0.0, 0.0
    for it in range(iterations):
        t0 = time.perf_counter()
        alg.train_mode()
        with torch.inference_mode():
            for _ in range(steps_per_env):
                actions = alg.act(obs)
                obs, rewards, dones, extras = env.step(actions)
                alg.process_env_step(obs, rewards, dones, extras)
            alg.compute_returns(obs)
        t1 = time.perf_counter()
        alg.update()
        collect_time, update_time = collect_time + t1 - t0, update_time + time.perf_counter() - t1
        alg.eval_mode()
        curve.append({"env_steps": (it + 1) * steps_per_env * env.num_envs,
                      "train_time_s": round(collect_time + update_time, 2),
                      "mean_score": evaluate(suite, policy, baselines, eval_episodes)})
    return {"curve": curve, "train_time_s": collect_time + update_time, "collect_time_s": collect_time,
            "update_time_s": update_time}


def run_dagger(suite: Suite, teachers: dict, groups: list[str], hidden: list[int], seed: int, rounds: int,
               episodes_per_task: int, eval_episodes: int, updates: int | None) -> dict:
    method = DAggerConfig(rounds=rounds, episodes_per_task=episodes_per_task, updates_per_round=updates,
                          beta_rounds=max(1, rounds - 2))
    summary = run_distill(suite, teachers, seed, method, StudentConfig(groups=list(groups), hidden=list(hidden)),
                          eval_episodes, n_envs=episodes_per_task * len(suite.tasks))
    rows = summary["rounds"]
    train_times = itertools.accumulate(r["collect_time_s"] + r["update_time_s"] for r in rows)
    curve = [{"env_steps": r["env_steps"], "train_time_s": round(t, 2), "mean_score": r["mean_score"]}
             for r, t in zip(rows, train_times, strict=True)]
    return {"curve": curve, "train_time_s": curve[-1]["train_time_s"],
            "baselines": (summary["teacher"], summary["random"]),
            "collect_time_s": sum(r["collect_time_s"] for r in rows),
            "update_time_s": sum(r["update_time_s"] for r in rows)}


def time_to(curve: list[dict], score: float, above: bool = False) -> float | None:
    """Training seconds until the student's mean score first reached ``score`` (``above``: passed it; None: never
    in the budget)."""
    return next((c["train_time_s"] for c in curve
                 if (c["mean_score"] > score if above else c["mean_score"] >= score)), None)


def main(argv: list[str] | None = None) -> dict:
    p = parser("rsl_rl_peer", __doc__)
    p.add_argument("--suite", default="locomotion")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--groups", nargs="+", default=["policy", "privileged", "task"])
    p.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--episodes-per-task", type=int, default=2)
    p.add_argument("--updates", type=int, default=None,
                   help="our updates per round (default: policydistill's, scaled to the round's data)")
    p.add_argument("--eval-episodes", type=int, default=20)
    p.add_argument("--rsl-epochs", type=int, default=2, help="rsl_rl num_learning_epochs (IsaacLab uses 2)")
    p.add_argument("--tag", default="", help="suffix of the result file name")
    args = parse(p, argv, SMOKE)
    started = envelope.start()
    one_thread()
    suite, teachers = zoo_teachers(args.suite)
    runs: dict[str, list[dict]] = {"policydistill_dagger": [], "rsl_rl_distillation": []}
    for seed in args.seeds:
        ours = run_dagger(suite, teachers, args.groups, args.hidden, seed, args.rounds, args.episodes_per_task,
                          args.eval_episodes, args.updates)
        peer = run_rsl_rl(suite, teachers, args.groups, args.hidden, seed, args.rounds, args.episodes_per_task,
                          ours.pop("baselines"), args.eval_episodes, args.rsl_epochs)
        for name, run in (("policydistill_dagger", ours), ("rsl_rl_distillation", peer)):
            runs[name].append({"seed": seed, **run})
            last = run["curve"][-1]
            print(f"seed {seed} {name:>22}: score {last['mean_score']:.3f} after {last['env_steps']} env steps, "
                  f"training {run['train_time_s']:.0f} s; curve "
                  + " ".join(f"{c['mean_score']:.2f}" for c in run["curve"]), flush=True)
    summary = {}
    for name, rs in runs.items():
        summary[name] = {"median_final_score": statistics.median(r["curve"][-1]["mean_score"] for r in rs),
                         "median_score_per_round": [statistics.median(r["curve"][k]["mean_score"] for r in rs)
                                                    for k in range(args.rounds)],
                         "env_steps_per_round": [c["env_steps"] for c in rs[0]["curve"]],
                         "median_train_time_s": statistics.median(r["train_time_s"] for r in rs),
                         "median_collect_time_s": statistics.median(r["collect_time_s"] for r in rs),
                         "median_update_time_s": statistics.median(r["update_time_s"] for r in rs),
                         "time_to_score": {str(t): [time_to(r["curve"], t) for r in rs] for t in THRESHOLDS}}
    ours, peer = summary["policydistill_dagger"], summary["rsl_rl_distillation"]
    # Our training time until our student scored above rsl_rl's final score, over rsl_rl's whole training time,
    # per seed: the time we need to end higher than rsl_rl does with its budget.
    beat = [time_to(o["curve"], r["curve"][-1]["mean_score"], above=True) for o, r in
            zip(runs["policydistill_dagger"], runs["rsl_rl_distillation"], strict=True)]
    beat_ratio = [None if t is None else t / r["train_time_s"] for t, r in zip(beat, runs["rsl_rl_distillation"],
                                                                           strict=True)]
    for t in THRESHOLDS:
        print(f"training seconds to score {t}: policydistill {ours['time_to_score'][str(t)]}, "
              f"rsl_rl {peer['time_to_score'][str(t)]} (None: not within the budget)")
    print(f"collection {ours['median_collect_time_s']:.1f} s vs {peer['median_collect_time_s']:.1f} s, updates "
          f"{ours['median_update_time_s']:.1f} s vs {peer['median_update_time_s']:.1f} s (policydistill vs rsl_rl)")
    print("our training time until our score passed rsl_rl's final score, over rsl_rl's training time, per seed: "
          + ", ".join("never" if b is None else f"{b:.2f}" for b in beat_ratio) + f" (target <= {TIME_TARGET})")
    print(f"median over {len(args.seeds)} seeds at {ours['env_steps_per_round'][-1]} env steps: score "
          f"policydistill {ours['median_final_score']:.3f} vs rsl_rl {peer['median_final_score']:.3f}; training "
          f"time {ours['median_train_time_s']:.0f} s vs {peer['median_train_time_s']:.0f} s")
    medians = {name: {k: s[k] for k in ("median_final_score", "median_train_time_s", "median_collect_time_s",
                                        "median_update_time_s")} for name, s in summary.items()}
    ratios = {"score_ours_over_rsl_rl": ours["median_final_score"] / peer["median_final_score"]
              if peer["median_final_score"] else None,
              "train_time_rsl_rl_over_ours": peer["median_train_time_s"] / ours["median_train_time_s"],
              "ours_time_to_pass_rsl_rl_final_over_rsl_rl_time": beat_ratio,
              "ours_time_to_pass_rsl_rl_final_over_rsl_rl_time_median":
                  statistics.median(float("inf") if b is None else b for b in beat_ratio)}
    rsl_rl = {"num_learning_epochs": args.rsl_epochs, "gradient_length": 15, "learning_rate": 1e-3, "init_std": 0.1}
    return envelope.write("rsl_rl_peer", args, started, runs=len(args.seeds), medians=medians, ratios=ratios,
                          results={"rsl_rl": rsl_rl, "summary": summary, "runs": runs}, tag=f"_{args.suite}{args.tag}")


if __name__ == "__main__":
    main()
