"""Label efficiency: teacher labels needed to reach 0.95 of the teachers' return, DAgger vs BC.

    .venv/bin/python bench/label_efficiency.py --suite locomotion --tasks walk run --seeds 0 1 2

Both methods run the same loop with the same labels per round, student and updates (BC: the teacher
always acts; DAgger: ``--schedule``, by default the teacher acts in round 0 and the student from round
1 on). A run that never reaches the target within its rounds counts as not reached, and the budget is
stated in labels and as a multiple of DAgger's median labels to the target. ``--tasks`` keeps a subset
of the suite's tasks. Target: DAgger needs at most 0.3x BC's labels (or BC never gets there within 10x).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import asdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from distill_fidelity import ROOT, run_distill  # noqa: E402

from policydistill.eval.evaluate import policies_for_suite  # noqa: E402
from policydistill.suite import load_suite, suite_from_dict  # noqa: E402


def labels_to_reach(rounds: list[dict], target: float) -> int | None:
    return next((r["labels_used"] for r in rounds if (r["mean_score"] or 0.0) >= target), None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--suite", default="locomotion")
    p.add_argument("--tasks", nargs="+", default=None, help="keep only these tasks of the suite")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--groups", nargs="+", default=["policy", "privileged", "task"])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--episodes-per-task", type=int, default=1)
    p.add_argument("--updates", type=int, default=1000)
    p.add_argument("--schedule", default="step")
    p.add_argument("--schedule-params", default='{"switch_round": 1}', help="JSON")
    p.add_argument("--eval-episodes", type=int, default=20)
    p.add_argument("--target", type=float, default=0.95)
    p.add_argument("--tag", default="", help="suffix of the result file name")
    args = p.parse_args()
    torch.set_num_threads(1)
    suite = load_suite(args.suite)
    teachers = policies_for_suite(ROOT / "envs/zoo" / args.suite, suite, device="cpu")
    if args.tasks:
        suite = suite_from_dict({"name": suite.name, "description": suite.description,
                                 "tasks": [asdict(t) for t in suite.tasks if t.name in args.tasks]}, args.suite)
        teachers = {n: teachers[n] for n in suite.task_names}
    result: dict = {"bench": "label_efficiency", "suite": args.suite, "tasks": suite.task_names, "groups": args.groups,
                    "target": args.target, "rounds": args.rounds, "episodes_per_task": args.episodes_per_task,
                    "updates_per_round": args.updates, "eval_episodes": args.eval_episodes,
                    "dagger_schedule": {"name": args.schedule, **json.loads(args.schedule_params)}, "methods": {}}
    for method in ("dagger", "bc"):
        runs = []
        for seed in args.seeds:
            extra = {"schedule": args.schedule, "schedule_params": json.loads(args.schedule_params)} \
                if method == "dagger" else {}
            rounds = run_distill(suite, teachers, seed, method, args.groups, args.rounds, args.episodes_per_task,
                                 args.updates, args.eval_episodes, **extra)["rounds"]
            runs.append({"seed": seed, "labels_to_target": labels_to_reach(rounds, args.target),
                         "curve": [(r["labels_used"], r["mean_score"]) for r in rounds]})
            print(f"{method} seed {seed}: labels to {args.target}: {runs[-1]['labels_to_target']}, curve "
                  + " ".join(f"{s:.2f}" for _, s in runs[-1]["curve"]), flush=True)
        reached = [r["labels_to_target"] for r in runs if r["labels_to_target"] is not None]
        result["methods"][method] = {"runs": runs, "reached": f"{len(reached)}/{len(runs)}",
                                     "median_labels": statistics.median(reached) if len(reached) == len(runs) else None,
                                     "budget_labels": runs[0]["curve"][-1][0]}
    bc, dagger = (result["methods"][m]["median_labels"] for m in ("bc", "dagger"))
    budget = result["methods"]["bc"]["budget_labels"]
    result["ratio_dagger_over_bc"] = dagger / bc if bc and dagger else None
    result["bc_budget_over_dagger_labels"] = budget / dagger if dagger else None
    if bc and dagger:
        verdict = f"DAgger needs {dagger / bc:.2f}x BC's labels"
    elif dagger:
        verdict = f"BC never reached {args.target} within {budget} labels = {budget / dagger:.1f}x DAgger's"
    else:
        verdict = f"DAgger did not reach {args.target} on every seed within {budget} labels"
    result["verdict"] = verdict
    out = ROOT / "bench/results" / f"label_efficiency_{args.suite}{args.tag}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"median labels to {args.target}: BC {bc} ({result['methods']['bc']['reached']} reached), "
          f"DAgger {dagger} ({result['methods']['dagger']['reached']} reached): {verdict}  "
          "(target <= 0.3x, or BC never reaching it within 10x)")


if __name__ == "__main__":
    main()
