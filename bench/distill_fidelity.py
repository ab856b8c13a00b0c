"""DAgger generalist fidelity: student return / teacher return per task, over several seeds (medians).

    .venv/bin/python bench/distill_fidelity.py --suite default --seeds 0 1 2 --blind
    .venv/bin/python bench/distill_fidelity.py --suite locomotion --groups policy privileged task --rounds 6 \
        --episodes-per-task 4 --updates 1500 --schedule-params '{"rounds": 5, "end": 0.5}' --teacher-noise 0.5

Teachers: the committed zoo (envs/zoo/<suite>). Student and teacher are evaluated on the same seeded
episodes. Targets: default mean >= 0.98, every task >= 0.95, success within 0.02 of the teacher;
locomotion (student reading the teacher's groups) mean >= 0.95. ``--blind`` also trains the same
student without the ``task`` group: it must fail at least one task (success below the task's
threshold) where the task-conditioned student fails none.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from policydistill.config import DistillConfig, StudentConfig
from policydistill.distill.loop import distill
from policydistill.eval.evaluate import policies_for_suite
from policydistill.io import atomic_write_json
from policydistill.suite import load_suite

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"default": {"mean": 0.98, "min": 0.95, "success_gap": 0.02}, "locomotion": {"mean": 0.95}}


def run_distill(suite, teachers, seed: int, method: str, groups: list[str], rounds: int, episodes_per_task: int,
                updates: int, eval_episodes: int, **overrides: Any) -> dict:
    """One distillation run in a temporary folder; returns its distill.json content. ``overrides``: other
    DistillConfig fields (``hidden`` and ``activation`` go to the student)."""
    student = StudentConfig(groups=list(groups), **{k: overrides.pop(k) for k in ("hidden", "activation")
                                                    if k in overrides})
    overrides.setdefault("schedule_params", {"rounds": max(1, rounds - 2)})
    with tempfile.TemporaryDirectory() as tmp:
        cfg = replace(DistillConfig(), method=method, suite=suite.name, teachers="zoo", out=tmp, seed=seed,
                      device="cpu", rounds=rounds, episodes_per_task=episodes_per_task, updates_per_round=updates,
                      eval_episodes=eval_episodes, student=student, **overrides)
        return distill(cfg, suite, teachers)


def summarise_run(suite, seed: int, summary: dict) -> dict:
    """The final round of one run: mean/min score, worst success gap, per-task score and success."""
    last = summary["rounds"][-1]
    tasks = last["tasks"]
    thresholds = {t.name: t.success_threshold for t in suite.tasks}
    return {"seed": seed, "labels_used": last["labels_used"], "wall_time_s": last["wall_time_s"],
            "mean_score": last["mean_score"], "min_score": min(t["score"] for t in tasks.values()),
            "max_success_gap": max(-t["success_diff"] for t in tasks.values()),
            "failed_tasks": [n for n, t in tasks.items() if t["success_rate"] < thresholds[n]],
            "tasks": {n: {k: t[k] for k in ("score", "success_rate", "teacher_success_rate")}
                      for n, t in tasks.items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--suite", default="default")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--groups", nargs="+", default=["policy", "task"])
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--episodes-per-task", type=int, default=4)
    p.add_argument("--updates", type=int, default=500)
    p.add_argument("--schedule", default="linear")
    p.add_argument("--schedule-params", default=None, help='JSON, default {"rounds": rounds - 2} (linear 1 -> 0)')
    p.add_argument("--lr-decay", action="store_true", help="cosine lr decay within each round")
    p.add_argument("--teacher-noise", type=float, default=0.0, help="DART-style noise on the teacher's actions")
    p.add_argument("--collect-steps", type=int, default=None, help="cut collected episodes at this many steps")
    p.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--eval-episodes", type=int, default=20)
    p.add_argument("--blind", action="store_true", help="also train the student without the task group")
    p.add_argument("--tag", default="", help="suffix of the result file name")
    args = p.parse_args()
    torch.set_num_threads(1)
    suite = load_suite(args.suite)
    teachers = policies_for_suite(ROOT / "envs/zoo" / args.suite, suite, device="cpu")
    schedule = {"schedule": args.schedule,
                "schedule_params": json.loads(args.schedule_params or json.dumps({"rounds": max(1, args.rounds - 2)}))}
    variants = {"task": args.groups}
    if args.blind:
        variants["blind"] = [g for g in args.groups if g != "task"]
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for seed in args.seeds:
        for name, groups in variants.items():
            summary = run_distill(suite, teachers, seed, "dagger", groups, args.rounds, args.episodes_per_task,
                                  args.updates, args.eval_episodes, lr_decay=args.lr_decay, hidden=args.hidden,
                                  batch_size=args.batch_size, teacher_noise=args.teacher_noise,
                                  collect_steps=args.collect_steps, **schedule)
            run = summarise_run(suite, seed, summary)
            runs[name].append(run)
            print(f"seed {seed} {name:>5}: mean score {run['mean_score']:.3f}, min {run['min_score']:.3f}, "
                  f"worst success gap {run['max_success_gap']:+.2f}, failed tasks {run['failed_tasks']}, "
                  f"{run['labels_used']} labels, {run['wall_time_s']:.0f} s; "
                  + ", ".join(f"{n} {t['score']:.3f}/{t['success_rate']:.2f}" for n, t in run["tasks"].items()),
                  flush=True)
    main_runs = runs["task"]
    result = {"bench": "distill_fidelity", "suite": args.suite, "groups": args.groups, "seeds": args.seeds,
              "rounds": args.rounds, "episodes_per_task": args.episodes_per_task, "updates_per_round": args.updates,
              "schedule": schedule, "teacher_noise": args.teacher_noise, "collect_steps": args.collect_steps,
              "lr_decay": args.lr_decay, "hidden": args.hidden, "batch_size": args.batch_size,
              "eval_episodes": args.eval_episodes,
              "median_mean_score": statistics.median(r["mean_score"] for r in main_runs),
              "median_min_score": statistics.median(r["min_score"] for r in main_runs),
              "median_max_success_gap": statistics.median(r["max_success_gap"] for r in main_runs),
              "median_task_scores": {n: statistics.median(r["tasks"][n]["score"] for r in main_runs)
                                     for n in suite.task_names},
              "targets": TARGETS.get(args.suite, {}), "runs": main_runs}
    if args.blind:
        result["blind"] = {"groups": variants["blind"], "runs": runs["blind"],
                           "seeds_failing_a_task": sum(bool(r["failed_tasks"]) for r in runs["blind"]),
                           "task_conditioned_seeds_failing_a_task": sum(bool(r["failed_tasks"]) for r in main_runs),
                           "median_success": {n: statistics.median(r["tasks"][n]["success_rate"] for r in runs["blind"])
                                              for n in suite.task_names}}
    out = ROOT / "bench/results" / f"distill_fidelity_{args.suite}{args.tag}.json"
    atomic_write_json(out, result)
    print(f"median over {len(main_runs)} seeds: mean score {result['median_mean_score']:.3f}, min task score "
          f"{result['median_min_score']:.3f}, worst success gap {result['median_max_success_gap']:+.2f}, per task "
          f"{ {n: round(v, 3) for n, v in result['median_task_scores'].items()} }  (targets {result['targets']})")
    if args.blind:
        b = result["blind"]
        print(f"without the task group: {b['seeds_failing_a_task']}/{len(args.seeds)} seeds fail a task (median "
              f"success {b['median_success']}); with it: {b['task_conditioned_seeds_failing_a_task']}/"
              f"{len(args.seeds)}")


if __name__ == "__main__":
    main()
