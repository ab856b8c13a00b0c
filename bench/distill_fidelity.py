"""DAgger generalist fidelity: per-task score, (student - random) / (teacher - random) return, over seeds (medians).

    .venv/bin/python -m bench distill_fidelity --suite default --seeds 0 1 2 --blind
    .venv/bin/python -m bench distill_fidelity --suite locomotion --groups policy privileged task --rounds 6 \
        --episodes-per-task 16 --collect-steps 100 --updates 1500 --schedule-params '{"rounds": 5, "end": 0.5}' \
        --teacher-noise 0.5 --seeds 0 1 2 3 4

Teachers: the committed zoo (envs/zoo/<suite>). Student and teacher are evaluated on the same seeded
episodes. Targets: default mean >= 0.98, every task >= 0.95, success within 0.02 of the teacher;
locomotion (student reading the teacher's groups) mean >= 0.95. ``--blind`` also trains the same
student without the ``task`` group: it must fail at least one task (success below the task's
threshold) where the task-conditioned student fails none.
"""

from __future__ import annotations

import statistics
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

if not __package__:  # python bench/<name>.py: the bench package lives one folder up
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from bench import envelope
from bench.common import json_object, one_thread, parse, parser, run_distill, schedule_keys, zoo_teachers
from policydistill import DAggerConfig, StudentConfig, Suite

TARGETS = {"default": {"mean": 0.98, "min": 0.95, "success_gap": 0.02}, "locomotion": {"mean": 0.95}}
SMOKE = {"seeds": [0], "rounds": 2, "episodes_per_task": 1, "updates": 10, "eval_episodes": 2}


def summarise_run(suite: Suite, seed: int, summary: dict[str, Any]) -> dict[str, Any]:
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


def main(argv: list[str] | None = None) -> dict:
    p = parser("distill_fidelity", __doc__)
    p.add_argument("--suite", default="default")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--groups", nargs="+", default=["policy", "task"])
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--episodes-per-task", type=int, default=4)
    p.add_argument("--updates", type=int, default=500)
    p.add_argument("--schedule", default="linear")
    p.add_argument("--schedule-params", type=json_object, default=None,
                   help='JSON: the schedule\'s parameters (default {"rounds": rounds - 2}: linear 1 -> 0)')
    p.add_argument("--lr-decay", action="store_true", help="cosine lr decay within each round")
    p.add_argument("--teacher-noise", type=float, default=0.0, help="DART-style noise on the teacher's actions")
    p.add_argument("--collect-steps", type=int, default=None, help="cut collected episodes at this many steps")
    p.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--eval-episodes", type=int, default=20)
    p.add_argument("--blind", action="store_true", help="also train the student without the task group")
    p.add_argument("--tag", default="", help="suffix of the result file name")
    args = parse(p, argv, SMOKE)
    started = envelope.start()
    one_thread()
    suite, teachers = zoo_teachers(args.suite)
    params = args.schedule_params or {"rounds": max(1, args.rounds - 2)}
    method = DAggerConfig(rounds=args.rounds, episodes_per_task=args.episodes_per_task, updates_per_round=args.updates,
                          batch_size=args.batch_size, lr_decay=args.lr_decay, teacher_noise=args.teacher_noise,
                          collect_steps=args.collect_steps, **schedule_keys(args.schedule, params))
    variants = {"task": args.groups}
    if args.blind:
        variants["blind"] = [g for g in args.groups if g != "task"]
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for seed in args.seeds:
        for name, groups in variants.items():
            summary = run_distill(suite, teachers, seed, method, StudentConfig(groups=list(groups), hidden=args.hidden),
                                  args.eval_episodes)
            run = summarise_run(suite, seed, summary)
            runs[name].append(run)
            print(f"seed {seed} {name:>5}: mean score {run['mean_score']:.3f}, min {run['min_score']:.3f}, "
                  f"worst success gap {run['max_success_gap']:+.2f}, failed tasks {run['failed_tasks']}, "
                  f"{run['labels_used']} labels, {run['wall_time_s']:.0f} s; "
                  + ", ".join(f"{n} {t['score']:.3f}/{t['success_rate']:.2f}" for n, t in run["tasks"].items()),
                  flush=True)
    main_runs = runs["task"]
    medians = {"mean_score": statistics.median(r["mean_score"] for r in main_runs),
               "min_score": statistics.median(r["min_score"] for r in main_runs),
               "max_success_gap": statistics.median(r["max_success_gap"] for r in main_runs),
               "task_scores": {n: statistics.median(r["tasks"][n]["score"] for r in main_runs)
                               for n in suite.task_names}}
    results: dict[str, Any] = {"method": asdict(method), "targets": TARGETS.get(args.suite, {}), "runs": main_runs}
    if args.blind:
        blind = runs["blind"]
        results["blind"] = {"groups": variants["blind"], "runs": blind,
                            "seeds_failing_a_task": sum(bool(r["failed_tasks"]) for r in blind),
                            "task_conditioned_seeds_failing_a_task": sum(bool(r["failed_tasks"]) for r in main_runs),
                            "median_success": {n: statistics.median(r["tasks"][n]["success_rate"] for r in blind)
                                               for n in suite.task_names}}
        medians["blind_mean_score"] = statistics.median(r["mean_score"] for r in blind)
    print(f"median over {len(main_runs)} seeds: per task "
          f"{ {n: round(v, 3) for n, v in medians['task_scores'].items()} }  (targets {results['targets']})")
    if args.blind:
        b = results["blind"]
        print(f"without the task group: {b['seeds_failing_a_task']}/{len(args.seeds)} seeds fail a task (median "
              f"success {b['median_success']}); with it: {b['task_conditioned_seeds_failing_a_task']}/"
              f"{len(args.seeds)}")
    ratios = {"score, (student - random) / (teacher - random) return (mean over tasks)": medians["mean_score"],
              "score (worst task)": medians["min_score"]}
    if args.blind:
        ratios["score without the task group (mean over tasks)"] = medians["blind_mean_score"]
    return envelope.write("distill_fidelity", args, started, runs=len(args.seeds), medians=medians, ratios=ratios,
                          results=results, tag=f"_{args.suite}{args.tag}")


if __name__ == "__main__":
    main()
