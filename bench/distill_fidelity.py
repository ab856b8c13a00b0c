"""DAgger generalist fidelity: student return / teacher return per task, over several seeds (medians).

    .venv/bin/python bench/distill_fidelity.py --suite default --seeds 0 1 2
    .venv/bin/python bench/distill_fidelity.py --suite locomotion --groups policy privileged task --rounds 12

Teachers: the committed zoo (envs/zoo/<suite>). Student and teacher are evaluated on the same seeded
episodes. Targets: default mean >= 0.98, every task >= 0.95, success within 0.02 of the teacher;
locomotion (student reading the teacher's groups) mean >= 0.95.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

from policydistill.config import DistillConfig, StudentConfig
from policydistill.distill.loop import distill
from policydistill.eval.evaluate import policies_for_suite
from policydistill.suite import load_suite

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"default": {"mean": 0.98, "min": 0.95, "success_gap": 0.02}, "locomotion": {"mean": 0.95}}


def run_distill(suite, teachers, seed: int, method: str, groups: list[str], rounds: int, episodes_per_task: int,
                updates: int, eval_episodes: int) -> dict:
    """One distillation run in a temporary folder; returns its distill.json content."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = replace(DistillConfig(), method=method, suite=suite.name, teachers="zoo", out=tmp, seed=seed,
                      device="cpu", rounds=rounds, episodes_per_task=episodes_per_task, updates_per_round=updates,
                      eval_episodes=eval_episodes, schedule_params={"rounds": max(1, rounds - 2)},
                      student=StudentConfig(groups=list(groups)))
        return distill(cfg, suite, teachers)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--suite", default="default")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--groups", nargs="+", default=["policy", "task"])
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--episodes-per-task", type=int, default=4)
    p.add_argument("--updates", type=int, default=500)
    p.add_argument("--eval-episodes", type=int, default=20)
    args = p.parse_args()
    torch.set_num_threads(1)
    suite = load_suite(args.suite)
    teachers = policies_for_suite(ROOT / "envs/zoo" / args.suite, suite, device="cpu")
    runs = []
    for seed in args.seeds:
        last = run_distill(suite, teachers, seed, "dagger", args.groups, args.rounds, args.episodes_per_task,
                           args.updates, args.eval_episodes)["rounds"][-1]
        tasks = last["tasks"]
        runs.append({"seed": seed, "labels_used": last["labels_used"], "wall_time_s": last["wall_time_s"],
                     "mean_score": last["mean_score"], "min_score": min(t["score"] for t in tasks.values()),
                     "max_success_gap": max(-t["success_diff"] for t in tasks.values()),
                     "tasks": {n: {k: t[k] for k in ("score", "success_rate", "teacher_success_rate")}
                               for n, t in tasks.items()}})
        print(f"seed {seed}: mean score {runs[-1]['mean_score']:.3f}, min {runs[-1]['min_score']:.3f}, "
              f"worst success gap {runs[-1]['max_success_gap']:+.2f}, {last['labels_used']} labels, "
              f"{last['wall_time_s']:.0f} s")
    result = {"bench": "distill_fidelity", "suite": args.suite, "groups": args.groups, "seeds": args.seeds,
              "rounds": args.rounds, "episodes_per_task": args.episodes_per_task, "eval_episodes": args.eval_episodes,
              "median_mean_score": statistics.median(r["mean_score"] for r in runs),
              "median_min_score": statistics.median(r["min_score"] for r in runs),
              "median_max_success_gap": statistics.median(r["max_success_gap"] for r in runs),
              "targets": TARGETS.get(args.suite, {}), "runs": runs}
    out = ROOT / "bench/results" / f"distill_fidelity_{args.suite}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"median over {len(runs)} seeds: mean score {result['median_mean_score']:.3f}, "
          f"min task score {result['median_min_score']:.3f}, worst success gap {result['median_max_success_gap']:+.2f}"
          f"  (targets {result['targets']})")


if __name__ == "__main__":
    main()
