"""Confidence-weighted distillation: DAgger students weighed by their SAC teachers' std or critic, or not.

    .venv/bin/python -m bench confidence_weights --seeds 0 1 2 3 4
    .venv/bin/python -m bench confidence_weights --seeds 0 1 2 3 4 --slips 0.3

Teachers: SAC experts (``--teachers``, default the committed ``envs/zoo/default_sac``), whose bundles keep SAC's
std head and Q networks, so each label comes with the teacher's std at that state and can be judged by its
critic. Per seed, DAgger runs with the same settings and seed, one per ``method.confidence`` (``--variants``):
``none``, ``teacher_std`` (each labelled step weighed by its precision) and ``advantage`` (by
``exp(A / std(A))``, A the critic's Q of the label over that of the teacher's own action); weights have mean 1,
capped at 10x; each run ships its ``best/`` student. The students, the teachers and a uniform random policy
then play the same seeded test episodes (1000, ...; ``--eval-episodes`` per task). Reported per task and as
the mean over tasks: success rate and return, medians over seeds, and the seeds where each weighted student is
ahead of the unweighted one. Targets: a weighted student beats the unweighted one on success and on return
(medians over >= 5 seeds), and beats its teacher on at least one task. Pieces (one per variant and seed) are
cached under ``runs/bench/confidence_weights`` (``--cache``).

The teachers can be made imperfect demonstrators, as a human or a noisy planner would be; they then act and
label alike, and their reference numbers are those of their own noisy actions:

- ``--sampled``: with samples of their own SAC policy, the std of each label being the policy's there;
- ``--slips P``: on a fraction P of the steps (drawn per step, from a generator seeded by the run's seed) with a
  uniformly random action instead.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

if not __package__:  # python bench/<name>.py: the bench package lives one folder up
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import envelope
from bench.common import ROOT, cache_dir, one_thread, parse, parser, setup_logging, shown
from policydistill import (
    DAggerConfig,
    DistillConfig,
    StudentConfig,
    Suite,
    evaluate_per_task,
    load_bundle,
    load_suite,
    policies_for_suite,
    run_distill,
)
from policydistill.eval.evaluate import random_policies
from policydistill.files import atomic_write_json, read_json
from policydistill.types import ActionLabel

TEST_SEED = 1000
VARIANTS = ("none", "teacher_std", "advantage")
SMOKE = {"seeds": [0], "rounds": 1, "episodes_per_task": 1, "updates": 10, "eval_episodes": 1}


class Demonstrator:
    """A SAC teacher acting and labelling with its own samples (``sampled``) and/or, on a fraction ``slips`` of
    the steps, a uniformly random action; its label std and its critic are the policy's."""

    def __init__(self, policy: Any, sampled: bool, slips: float) -> None:
        self.policy, self.groups, self.sampled, self.slips = policy, policy.groups, sampled, slips
        self.rng = np.random.default_rng(0)  # replaced by :func:`reseed` before each run
        self.critic = policy.critic
        self.low, self.high = policy.action_space.low, policy.action_space.high

    def act(self, obs: dict[str, Any], deterministic: bool = True) -> Any:
        return self.label(obs).mean

    def label(self, obs: dict[str, Any]) -> ActionLabel:
        mean = np.asarray(self.policy.act(obs, deterministic=not self.sampled), dtype=np.float32)
        slipped = self.rng.random(len(mean)) < self.slips
        noise = self.rng.uniform(self.low, self.high, size=mean.shape).astype(np.float32)
        return ActionLabel(mean=np.where(slipped[:, None], noise, mean), std=self.policy.label(obs).std)

    def advantage(self, obs: dict[str, Any], actions: Any) -> Any:
        return self.policy.advantage(obs, actions)

    def reset(self, env_mask: Any = None) -> None:
        """Stateless."""


def reseed(teachers: dict[str, Any], seed: int) -> None:
    """Demonstrators draw their slips from one generator seeded ``seed``: a run's slips depend on its seed, not on
    the runs before it in this process."""
    rng = np.random.default_rng(seed)
    for teacher in teachers.values():
        if isinstance(teacher, Demonstrator):
            teacher.rng = rng


def measured(suite: Suite, policies: dict[str, Any], episodes: int) -> dict[str, dict[str, float]]:
    """Per task: mean return and success rate of ``policies`` (one per task) on the test seeds."""
    rows = evaluate_per_task(suite, policies, episodes, TEST_SEED)
    return {n: {"return": float(r["return_mean"]), "success": float(r["success_rate"] or 0.0)}
            for n, r in rows.items()}


def piece(cache: Path, variant: str, seed: int, suite: Suite, teachers: dict[str, Any], zoo: str,
          method: DAggerConfig, student: StudentConfig, episodes: int) -> dict[str, Any]:
    """The test results of one DAgger student (``confidence`` = ``variant``) for ``seed``, cached."""
    path = cache / f"{variant}_s{seed}.json"
    method = DAggerConfig(**{**asdict(method), "confidence": variant})
    first = next(iter(teachers.values()))
    settings = {"method": asdict(method), "student": asdict(student), "eval_episodes": episodes,
                "teachers": shown(zoo), "sampled": getattr(first, "sampled", False),
                "slips": getattr(first, "slips", 0.0), "slips_seeded": "per run"}
    cached = read_json(path) if path.is_file() else None
    if cached is not None and cached["settings"] == settings:
        return cached
    reseed(teachers, seed)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = DistillConfig(suite=suite.name, teachers=zoo, out=tmp, seed=seed, device="cpu", method=method,
                            student=student, final_episodes=0)
        summary = run_distill(cfg, suite, teachers)
        policy = load_bundle(Path(tmp) / "best", device="cpu")
        out = {"variant": variant, "seed": seed, "settings": settings, "best_round": summary["best_round"],
               "labels_used": summary["rounds"][-1]["labels_used"],
               "tasks": measured(suite, {n: policy for n in suite.task_names}, episodes)}
    atomic_write_json(path, out)
    return out


def mean_over_tasks(tasks: dict[str, dict[str, float]], key: str) -> float:
    return statistics.fmean(t[key] for t in tasks.values())


def main(argv: list[str] | None = None) -> dict:
    p = parser("confidence_weights", __doc__)
    p.add_argument("--suite", default="default")
    p.add_argument("--teachers", default=str(ROOT / "envs/zoo/default_sac"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--episodes-per-task", type=int, default=2)
    p.add_argument("--updates", type=int, default=300, help="fit updates per round")
    p.add_argument("--hidden", type=int, nargs="+", default=[64, 64], help="the student's hidden layers")
    p.add_argument("--eval-episodes", type=int, default=50)
    p.add_argument("--cache", default=None, help="where pieces are cached (default runs/bench/confidence_weights)")
    p.add_argument("--sampled", action="store_true", help="teachers that act and label with samples of their policy")
    p.add_argument("--slips", type=float, default=0.0, help="the fraction of steps a teacher acts and labels at random")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--tag", default="", help="suffix of the result file name")
    args = parse(p, argv, SMOKE)
    started = envelope.start()
    one_thread()
    setup_logging()
    suite = load_suite(args.suite)
    teachers = policies_for_suite(args.teachers, suite, device="cpu")
    if args.sampled or args.slips:
        torch.manual_seed(0)
        teachers = {n: Demonstrator(t, args.sampled, args.slips) for n, t in teachers.items()}
        reseed(teachers, 0)  # their reference numbers
    variants = ["none", *[v for v in args.variants if v != "none"]]
    weighted = variants[1:]
    method = DAggerConfig(rounds=args.rounds, episodes_per_task=args.episodes_per_task,
                          updates_per_round=args.updates, beta_rounds=max(1, args.rounds - 1))
    student = StudentConfig(hidden=list(args.hidden))
    reference = {"teacher": measured(suite, teachers, args.eval_episodes),
                 "random": measured(suite, random_policies(suite, TEST_SEED), args.eval_episodes)}
    print("teacher success / return: " + ", ".join(
        f"{n} {r['success']:.2f} / {r['return']:.2f}" for n, r in reference["teacher"].items()), flush=True)
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    noise = ("_sampled" if args.sampled else "") + (f"_slips{args.slips:g}" if args.slips else "")
    with cache_dir(args.cache, args.smoke, "confidence_weights") as root:
        cache = root / f"{args.suite}{noise}"
        cache.mkdir(parents=True, exist_ok=True)
        for seed in args.seeds:
            for variant in variants:
                run = piece(cache, variant, seed, suite, teachers, args.teachers, method, student,
                            args.eval_episodes)
                runs[variant].append(run)
                print(f"seed {seed} {variant:>11}: success {mean_over_tasks(run['tasks'], 'success'):.3f}, return "
                      f"{mean_over_tasks(run['tasks'], 'return'):.2f} (" + ", ".join(
                          f"{n} {t['success']:.2f}/{t['return']:.1f}" for n, t in run["tasks"].items()) + ")",
                      flush=True)
    keys = ("success", "return")
    medians = {v: {key: statistics.median(mean_over_tasks(r["tasks"], key) for r in runs[v]) for key in keys}
               for v in variants}
    per_task = {v: {n: {key: statistics.median(r["tasks"][n][key] for r in runs[v]) for key in keys}
                    for n in suite.task_names} for v in variants}
    ahead = {v: {key: sum(mean_over_tasks(w["tasks"], key) > mean_over_tasks(u["tasks"], key)
                          for w, u in zip(runs[v], runs["none"], strict=True)) for key in keys} for v in weighted}
    over_teacher = {v: [n for n in suite.task_names if per_task[v][n]["return"] > reference["teacher"][n]["return"]]
                    for v in weighted}
    beats = {v: {key: medians[v][key] > medians["none"][key] for key in keys} for v in weighted}
    print(f"\nmedians over {len(args.seeds)} seeds (mean over tasks):")
    for v in variants:
        print(f"  {v:>11}: success {medians[v]['success']:.3f}, return {medians[v]['return']:.2f}")
    teacher_mean = {key: mean_over_tasks(reference["teacher"], key) for key in keys}
    print(f"  {'teacher':>11}: success {teacher_mean['success']:.3f}, return {teacher_mean['return']:.2f}")
    for v in weighted:
        for key in keys:
            print(f"target: {v} beats unweighted on {key}: {medians[v][key]:.3f} vs {medians['none'][key]:.3f} "
                  f"(ahead on {ahead[v][key]} of {len(args.seeds)} seeds) -> {'met' if beats[v][key] else 'not met'}")
        print(f"target: {v} beats its teacher's return on a task: {over_teacher[v] or 'none'} -> "
              f"{'met' if over_teacher[v] else 'not met'}")
    ratios = {v: {"weighted_over_unweighted_return": medians[v]["return"] / medians["none"]["return"]
                  if medians["none"]["return"] else None,
                  "weighted_minus_unweighted_success": medians[v]["success"] - medians["none"]["success"]}
              for v in weighted}
    return envelope.write("confidence_weights", args, started, runs=len(args.seeds), medians=medians, ratios=ratios,
                          results={"reference": reference, "per_task": per_task, "ahead": ahead,
                                   "beats": beats, "over_teacher": over_teacher, "runs": runs},
                          tag=(f"_{args.suite}" if args.suite != "default" else "") + noise + args.tag)


if __name__ == "__main__":
    main()
