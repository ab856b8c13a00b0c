"""Label efficiency: teacher labels needed to reach 0.95 of the teachers' return, DAgger vs BC.

    .venv/bin/python bench/label_efficiency.py --suite locomotion --groups policy privileged task --seeds 0 1 2

Both methods run the same loop with the same budget per round (BC: the teacher always acts; DAgger:
linear beta from 1 to 0); a run that never reaches 0.95 within its rounds counts as not reached.
Target: DAgger needs at most 0.3x BC's labels (or BC never gets there within the budget).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from distill_fidelity import ROOT, run_distill  # noqa: E402

from policydistill.eval.evaluate import policies_for_suite  # noqa: E402
from policydistill.suite import load_suite  # noqa: E402


def labels_to_reach(rounds: list[dict], target: float) -> int | None:
    return next((r["labels_used"] for r in rounds if (r["mean_score"] or 0.0) >= target), None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--suite", default="locomotion")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--groups", nargs="+", default=["policy", "privileged", "task"])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--episodes-per-task", type=int, default=1)
    p.add_argument("--updates", type=int, default=1000)
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--target", type=float, default=0.95)
    args = p.parse_args()
    torch.set_num_threads(1)
    suite = load_suite(args.suite)
    teachers = policies_for_suite(ROOT / "envs/zoo" / args.suite, suite, device="cpu")
    result: dict = {"bench": "label_efficiency", "suite": args.suite, "groups": args.groups, "target": args.target,
                    "rounds": args.rounds, "episodes_per_task": args.episodes_per_task, "methods": {}}
    for method in ("bc", "dagger"):
        runs = []
        for seed in args.seeds:
            rounds = run_distill(suite, teachers, seed, method, args.groups, args.rounds, args.episodes_per_task,
                                 args.updates, args.eval_episodes)["rounds"]
            runs.append({"seed": seed, "labels_to_target": labels_to_reach(rounds, args.target),
                         "curve": [(r["labels_used"], r["mean_score"]) for r in rounds]})
            print(f"{method} seed {seed}: labels to {args.target}: {runs[-1]['labels_to_target']}, "
                  f"final score {rounds[-1]['mean_score']:.3f}")
        reached = [r["labels_to_target"] for r in runs if r["labels_to_target"] is not None]
        result["methods"][method] = {"runs": runs, "reached": f"{len(reached)}/{len(runs)}",
                                     "median_labels": statistics.median(reached) if len(reached) == len(runs) else None}
    bc, dagger = (result["methods"][m]["median_labels"] for m in ("bc", "dagger"))
    result["ratio_dagger_over_bc"] = dagger / bc if bc and dagger else None
    out = ROOT / "bench/results" / f"label_efficiency_{args.suite}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"median labels to {args.target}: BC {bc} ({result['methods']['bc']['reached']} reached), "
          f"DAgger {dagger} ({result['methods']['dagger']['reached']} reached); "
          f"ratio {result['ratio_dagger_over_bc']}  (target <= 0.3, or BC never reaching it)")


if __name__ == "__main__":
    main()
