"""Metaworld MT10 / MT50: a DAgger generalist from Metaworld's scripted teachers, scored on held-out goals.

    .venv-metaworld/bin/python -m bench mt10 --seeds 0 1 2
    .venv-metaworld/bin/python -m bench mt10 --suite mt50 --seeds 0 --heads shared --episodes-per-task 16
        --updates 8000 --val-episodes 5 --episodes 20 --tag _s0     # (one command; seeds 1, 2 alike)

Needs the metaworld venv (``bash scripts/setup_metaworld.sh``). Per seed: DAgger (``teachers=suite``: each task's
scripted policy, :mod:`policydistill.teachers.metaworld`) on the suite's train goals (``--suite``, validated each
round on ``--val-episodes`` per task; by default per-task first and last layers and one teacher-labelled perturbed
copy of every stored state per round, ``--relabel-noise``), then the student the run ships (``best/``: the round
with the highest validation success, recorded as ``best_round``) is evaluated on ``--episodes`` per task of the
held-out goals (``<suite>_heldout``, seeds 9000, ...) and of the train goals, beside the scripted teachers on the
same held-out episodes. Targets (held-out goals, medians over the seeds): MT10 mean success >= 0.95, every task >=
0.85, distillation wall time <= 15 min on 2 cores; MT50 mean success >= 0.90.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

if not __package__:  # python bench/<name>.py: the bench package lives one folder up
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import envelope
from bench.common import json_object, one_thread, parse, parser, schedule_keys
from policydistill import DAggerConfig, StudentConfig
from policydistill.bundle import load_bundle
from policydistill.distill.runner import DistillConfig, distill
from policydistill.eval.evaluate import evaluate_per_task
from policydistill.suites import load_suite
from policydistill.teachers import policies_for_suite

TARGETS = {"mt10": {"mean_success": 0.95, "min_task_success": 0.85, "wall_time_s": 900},
           "mt50": {"mean_success": 0.90}}
SMOKE = {"seeds": [0], "rounds": 1, "episodes_per_task": 1, "updates": 5, "episodes": 2, "val_episodes": 1,
         "collect_steps": 20}
HELD_OUT_SEED = 9000


def success(evals: dict[str, dict[str, Any]]) -> dict[str, float]:
    return {n: float(e["success_rate"]) for n, e in evals.items()}


def main(argv: list[str] | None = None) -> dict:
    p = parser("mt10", __doc__)
    p.add_argument("--suite", default="mt10", choices=sorted(TARGETS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--episodes-per-task", type=int, default=48)
    p.add_argument("--collect-steps", type=int, default=500, help="cut collected episodes at this many steps")
    p.add_argument("--updates", type=int, default=3000, help="fit updates per round")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--hidden", type=int, nargs="+", default=[512, 512])
    p.add_argument("--heads", default="per_task", choices=["shared", "per_task"],
                   help="the student's first and last layers: shared by the tasks or one per task")
    p.add_argument("--relabel-noise", type=float, default=0.1,
                   help="DAgger's relabel_noise: teacher-labelled perturbed copies of the stored states (0: off)")
    p.add_argument("--schedule", default="linear")
    p.add_argument("--schedule-params", type=json_object, default=None,
                   help='JSON: the schedule\'s parameters (default {"rounds": rounds - 2}: linear 1 -> 0)')
    p.add_argument("--n-envs", type=int, default=8)
    p.add_argument("--val-episodes", type=int, default=10, help="validation episodes per task each round")
    p.add_argument("--episodes", type=int, default=50, help="final evaluation episodes per task (each goal split)")
    p.add_argument("--tag", default="", help="suffix of the result file name")
    args = parse(p, argv, SMOKE)
    started = envelope.start()
    one_thread()
    suite, held_out = load_suite(args.suite), load_suite(f"{args.suite}_heldout")
    assert held_out.task_names == suite.task_names, "the held-out suite must list the same tasks in the same order"
    teachers = policies_for_suite("suite", suite, device="cpu")
    params = args.schedule_params or {"rounds": max(1, args.rounds - 2)}
    method = DAggerConfig(rounds=args.rounds, episodes_per_task=args.episodes_per_task, updates_per_round=args.updates,
                          batch_size=args.batch_size, lr=args.lr, lr_decay=True, collect_steps=args.collect_steps,
                          max_steps=1_000_000, relabel_noise=args.relabel_noise, **schedule_keys(args.schedule, params))
    student_cfg = StudentConfig(groups=["policy", "task"], hidden=args.hidden, heads=args.heads)
    t0 = time.perf_counter()
    teacher_held_out = success(evaluate_per_task(held_out, teachers, args.episodes, HELD_OUT_SEED, args.n_envs))
    teacher_eval_s = time.perf_counter() - t0
    print(f"scripted teachers, held-out goals ({args.episodes} episodes per task): {teacher_held_out}", flush=True)
    runs = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory(prefix="bench_mt10_") as tmp:
            cfg = DistillConfig(suite=args.suite, teachers="suite", out=tmp, seed=seed, device="cpu", method=method,
                                student=student_cfg, n_envs=args.n_envs, eval_episodes=args.val_episodes,
                                final_episodes=0)  # best/ is evaluated below, on the held-out goals
            t0 = time.perf_counter()
            summary = distill(cfg, suite, teachers)
            wall = time.perf_counter() - t0
            student = load_bundle(Path(tmp) / "best", device="cpu")  # the student the run ships
            t0 = time.perf_counter()
            held = success(evaluate_per_task(held_out, student, args.episodes, HELD_OUT_SEED, args.n_envs))
            train = success(evaluate_per_task(suite, student, args.episodes, HELD_OUT_SEED, args.n_envs))
            eval_s = time.perf_counter() - t0
        last = summary["rounds"][-1]
        run = {"seed": seed, "wall_time_s": round(wall, 1), "eval_time_s": round(eval_s, 1),
               "best_round": summary["best_round"], "best": summary["best"],
               "labels_used": last["labels_used"], "env_steps": last["env_steps"],
               "held_out_mean": statistics.fmean(held.values()), "held_out_min": min(held.values()),
               "train_mean": statistics.fmean(train.values()), "train_min": min(train.values()),
               "held_out": held, "train": train,
               "rounds": [{k: r[k] for k in ("round", "beta", "labels_used", "loss", "wall_time_s")}
                          | {"val_success": statistics.fmean(t["success_rate"] for t in r["tasks"].values())}
                          for r in summary["rounds"]]}
        runs.append(run)
        print(f"seed {seed} (best round {run['best_round']} of {len(summary['rounds'])}): held-out success mean "
              f"{run['held_out_mean']:.3f} min {run['held_out_min']:.2f}, train goals mean {run['train_mean']:.3f} "
              f"min {run['train_min']:.2f}; distill {wall:.0f} s, {run['labels_used']} labels; held-out per task "
              f"{held}", flush=True)
    medians = {"held_out_mean_success": statistics.median(r["held_out_mean"] for r in runs),
               "held_out_min_task_success": statistics.median(r["held_out_min"] for r in runs),
               "train_mean_success": statistics.median(r["train_mean"] for r in runs),
               "train_min_task_success": statistics.median(r["train_min"] for r in runs),
               "wall_time_s": statistics.median(r["wall_time_s"] for r in runs),
               "held_out_task_success": {n: statistics.median(r["held_out"][n] for r in runs)
                                         for n in suite.task_names},
               "teacher_held_out_mean_success": statistics.fmean(teacher_held_out.values())}
    targets = TARGETS[args.suite]
    measured = {"mean_success": medians["held_out_mean_success"],
                "min_task_success": medians["held_out_min_task_success"], "wall_time_s": medians["wall_time_s"]}
    met = {k: (measured[k] <= v if k == "wall_time_s" else measured[k] >= v) for k, v in targets.items()}
    print(f"\n{args.suite}, median over {len(runs)} seeds (held-out goals, {args.episodes} episodes per task):")
    for k, v in targets.items():
        print(f"  {k:<18} measured {measured[k]:>8.3f}   target {'<=' if k == 'wall_time_s' else '>='} {v:<6}"
              f" {'met' if met[k] else 'NOT met'}")
    results = {"method": asdict(method), "student": asdict(student_cfg), "targets": targets, "met": met,
               "teacher_held_out": teacher_held_out, "teacher_eval_time_s": round(teacher_eval_s, 1), "runs": runs}
    ratios = {"student_held_out_success (mean)": medians["held_out_mean_success"],
              "student_held_out_success (worst task)": medians["held_out_min_task_success"],
              "student_over_teacher_held_out_success": medians["held_out_mean_success"]
              / max(medians["teacher_held_out_mean_success"], 1e-9)}
    tag = "" if args.suite == "mt10" else f"_{args.suite}"
    return envelope.write("mt10", args, started, runs=len(runs), medians=medians, ratios=ratios, results=results,
                          tag=tag + args.tag)


if __name__ == "__main__":
    main()
