"""Confidence-weighted distillation: DAgger students weighed by their SAC teachers' state-dependent std, or not.

    .venv/bin/python -m bench confidence_weights --seeds 0 1 2 3 4

Teachers: SAC experts (``--teachers``, default the committed ``envs/zoo/default_sac``), whose bundles keep SAC's
std head, so each label comes with the teacher's std at that state. Per seed, two DAgger runs with the same
settings and seed, ``method.confidence=none`` and ``method.confidence=teacher_std`` (each labelled step weighed
by its precision, mean 1, capped at 10x); each ships its ``best/`` student. Both students, the teachers and a
uniform random policy then play the same seeded test episodes (1000, ...; ``--eval-episodes`` per task).
Reported per task and as the mean over tasks: success rate and return, medians over seeds, and the seeds where
the weighted student is ahead. Targets: the weighted student beats the unweighted one on success and on return
(medians over >= 5 seeds), and beats its teacher on at least one task. Pieces (one per variant and seed) are
cached under ``runs/bench/confidence_weights`` (``--cache``).

``--sampled``: the teachers are stochastic demonstrators: they act and label with samples of their own SAC
policy (as a human or a noisy planner would), the std of each label being the policy's there; the teachers'
reference numbers are then those of their sampled actions too.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

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
VARIANTS = ("none", "teacher_std")
SMOKE = {"seeds": [0], "rounds": 1, "episodes_per_task": 1, "updates": 10, "eval_episodes": 1}


class Sampled:
    """A Gaussian teacher that acts and labels with samples of its own policy, its label std the policy's."""

    def __init__(self, policy: Any) -> None:
        self.policy, self.groups = policy, policy.groups

    def act(self, obs: dict[str, Any], deterministic: bool = True) -> Any:
        return self.policy.act(obs, deterministic=False)

    def label(self, obs: dict[str, Any]) -> ActionLabel:
        return ActionLabel(mean=self.act(obs), std=self.policy.label(obs).std)

    def reset(self, env_mask: Any = None) -> None:
        """Stateless."""


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
    settings = {"method": asdict(method), "student": asdict(student), "eval_episodes": episodes,
                "teachers": shown(zoo), "sampled": isinstance(next(iter(teachers.values())), Sampled)}
    cached = read_json(path) if path.is_file() else None
    if cached is not None and cached["settings"] == settings:
        return cached
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
    p.add_argument("--tag", default="", help="suffix of the result file name")
    args = parse(p, argv, SMOKE)
    started = envelope.start()
    one_thread()
    setup_logging()
    suite = load_suite(args.suite)
    teachers = policies_for_suite(args.teachers, suite, device="cpu")
    if args.sampled:
        torch.manual_seed(0)
        teachers = {n: Sampled(t) for n, t in teachers.items()}
    method = DAggerConfig(rounds=args.rounds, episodes_per_task=args.episodes_per_task,
                          updates_per_round=args.updates, beta_rounds=max(1, args.rounds - 1))
    student = StudentConfig(hidden=list(args.hidden))
    reference = {"teacher": measured(suite, teachers, args.eval_episodes),
                 "random": measured(suite, random_policies(suite, TEST_SEED), args.eval_episodes)}
    print("teacher success / return: " + ", ".join(
        f"{n} {r['success']:.2f} / {r['return']:.2f}" for n, r in reference["teacher"].items()), flush=True)
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    with cache_dir(args.cache, args.smoke, "confidence_weights") as root:
        cache = root / f"{args.suite}{'_sampled' if args.sampled else ''}"
        cache.mkdir(parents=True, exist_ok=True)
        for seed in args.seeds:
            for variant in VARIANTS:
                run = piece(cache, variant, seed, suite, teachers, args.teachers, method, student,
                            args.eval_episodes)
                runs[variant].append(run)
                print(f"seed {seed} {variant:>11}: success {mean_over_tasks(run['tasks'], 'success'):.3f}, return "
                      f"{mean_over_tasks(run['tasks'], 'return'):.2f} (" + ", ".join(
                          f"{n} {t['success']:.2f}/{t['return']:.1f}" for n, t in run["tasks"].items()) + ")",
                      flush=True)
    medians = {v: {key: statistics.median(mean_over_tasks(r["tasks"], key) for r in runs[v])
                   for key in ("success", "return")} for v in VARIANTS}
    per_task = {v: {n: {key: statistics.median(r["tasks"][n][key] for r in runs[v]) for key in ("success", "return")}
                    for n in suite.task_names} for v in VARIANTS}
    ahead = {key: sum(mean_over_tasks(w["tasks"], key) > mean_over_tasks(u["tasks"], key)
                      for w, u in zip(runs["teacher_std"], runs["none"], strict=True)) for key in ("success", "return")}
    over_teacher = [n for n in suite.task_names
                    if per_task["teacher_std"][n]["return"] > reference["teacher"][n]["return"]]
    beats = {key: medians["teacher_std"][key] > medians["none"][key] for key in ("success", "return")}
    print(f"\nmedians over {len(args.seeds)} seeds (mean over tasks):")
    for v in VARIANTS:
        print(f"  {v:>11}: success {medians[v]['success']:.3f}, return {medians[v]['return']:.2f}")
    teacher_mean = {key: mean_over_tasks(reference["teacher"], key) for key in ("success", "return")}
    print(f"  {'teacher':>11}: success {teacher_mean['success']:.3f}, return {teacher_mean['return']:.2f}")
    for key in ("success", "return"):
        print(f"target: weighted beats unweighted on {key}: {medians['teacher_std'][key]:.3f} vs "
              f"{medians['none'][key]:.3f} (ahead on {ahead[key]} of {len(args.seeds)} seeds) -> "
              f"{'met' if beats[key] else 'not met'}")
    print(f"target: weighted beats its teacher's return on a task: {over_teacher or 'none'} -> "
          f"{'met' if over_teacher else 'not met'}")
    ratios = {"weighted_over_unweighted_return": medians["teacher_std"]["return"] / medians["none"]["return"]
              if medians["none"]["return"] else None,
              "weighted_minus_unweighted_success": medians["teacher_std"]["success"] - medians["none"]["success"]}
    return envelope.write("confidence_weights", args, started, runs=len(args.seeds), medians=medians, ratios=ratios,
                          results={"reference": reference, "per_task": per_task, "ahead": ahead,
                                   "beats": beats, "over_teacher": over_teacher, "runs": runs},
                          tag=(f"_{args.suite}" if args.suite != "default" else "")
                          + ("_sampled" if args.sampled else "") + args.tag)


if __name__ == "__main__":
    main()
