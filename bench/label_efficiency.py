"""Label efficiency: teacher labels needed to reach 0.95 of the teachers' return, DAgger vs BC.

    .venv/bin/python bench/label_efficiency.py --suite default_hazard --groups policy task --rounds 10 \
        --updates 250 --seeds 0 1 2 3 4 5 6 7 8 9 --tag _hazard_u250   # also 500 (_hazard) and 1000 (_hazard_u1000)

Both methods run the same loop with the same collection per round (``--episodes-per-task`` episodes of
every task, cut at ``--collect-steps``), student, updates, teacher noise and evaluation (BC: the teacher
always acts; DAgger: ``--schedule``, by default the teacher acts in round 0 and the student from round 1
on). Labels are counted as collected: a round whose episodes end early (e.g. in the pit of
``default_hazard``) uses fewer. Each run stops at the first round whose mean score reaches ``--target``.
DAgger gets ``--rounds`` rounds; BC gets as many as ``--budget-multiple`` times DAgger's median labels
to the target need (at least ``--rounds``), so "BC never reached it within 10x" is measured, not assumed.
A run that never reaches the target counts as not reached; medians treat it as above every label count
(a median of "not reached" means most seeds did not reach it). ``--tasks`` keeps a subset of the suite's
tasks. Target: DAgger needs at most 0.3x BC's labels (or BC never gets there within 10x). Writes
``bench/results/label_efficiency_<suite><tag>.json`` and a plot of the score against labels (``.png``).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from dataclasses import asdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from distill_fidelity import ROOT, run_distill  # noqa: E402

from policydistill.distill.dagger import short_episodes  # noqa: E402
from policydistill.eval.evaluate import policies_for_suite  # noqa: E402
from policydistill.io import atomic_write_json
from policydistill.suite import Suite, load_suite, suite_from_dict  # noqa: E402

RATIO_TARGET = 0.3  # DAgger's labels to the target at most this share of BC's ...
BUDGET_TARGET = 10.0  # ... or BC not there within this multiple of DAgger's labels


def labels_to_reach(rounds: list[dict], target: float) -> int | None:
    return next((r["labels_used"] for r in rounds if (r["mean_score"] or 0.0) >= target), None)


def median_labels(labels: list[int | None]) -> float | None:
    """Median labels to the target over seeds, a seed that never reached it counting as infinite; None when
    that median is infinite (most seeds did not reach it)."""
    m = statistics.median(math.inf if x is None else x for x in labels)
    return None if math.isinf(m) else m


def round_labels(suite: Suite, episodes_per_task: int, collect_steps: int | None) -> int:
    """Labels one round collects when no episode ends early: episodes x (cut) episode length, over tasks."""
    cut = short_episodes(suite, collect_steps or 10**9)
    return sum(episodes_per_task * t.max_episode_steps for t in cut.tasks)


def verdict(bc: float | None, dagger: float | None, bc_budget: int, target: float) -> tuple[str, bool]:
    """A one-line verdict and whether the label-efficiency target is met."""
    if bc and dagger:
        ratio = dagger / bc
        return f"DAgger needs {ratio:.2f}x BC's labels", ratio <= RATIO_TARGET
    if dagger:
        multiple = bc_budget / dagger
        return (f"BC never reached {target} (median) within {bc_budget} labels = {multiple:.1f}x DAgger's",
                multiple >= BUDGET_TARGET)
    if bc:
        return f"DAgger did not reach {target} (median) within its rounds; BC did with {bc:.0f} labels", False
    return f"neither reached {target} (median) within its rounds", False


def plot(path: Path, result: dict) -> None:
    """Mean score against labels used, one line per method and seed, the target as a dashed line."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for method, color in (("bc", "tab:blue"), ("dagger", "tab:orange")):
        for k, run in enumerate(result["methods"][method]["runs"]):
            labels, scores = zip(*run["curve"], strict=True)
            ax.plot(labels, scores, marker=".", color=color, alpha=0.7, label=method.upper() if k == 0 else None)
    ax.axhline(result["target"], color="grey", ls="--", lw=0.8)
    ax.set(xscale="log", ylim=(max(-0.5, ax.get_ylim()[0]), 1.05), xlabel="teacher labels used",
           ylabel="student / teacher return", title=f"{result['suite']}{result['tag']}: {result['verdict']}")
    ax.title.set_fontsize(9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--suite", default="locomotion")
    p.add_argument("--tasks", nargs="+", default=None, help="keep only these tasks of the suite")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--groups", nargs="+", default=["policy", "privileged", "task"])
    p.add_argument("--rounds", type=int, default=10, help="DAgger's rounds (BC's at least as many)")
    p.add_argument("--budget-multiple", type=float, default=10.0,
                   help="BC runs up to this multiple of DAgger's median labels to the target")
    p.add_argument("--episodes-per-task", type=int, default=1)
    p.add_argument("--collect-steps", type=int, default=None, help="cut collected episodes at this many steps")
    p.add_argument("--teacher-noise", type=float, default=0.0, help="DART-style noise whenever the teacher acts")
    p.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
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
    per_round = round_labels(suite, args.episodes_per_task, args.collect_steps)
    common = {"teacher_noise": args.teacher_noise, "collect_steps": args.collect_steps, "hidden": args.hidden,
              "stop_score": args.target}
    result: dict = {"bench": "label_efficiency", "suite": args.suite, "tag": args.tag, "tasks": suite.task_names,
                    "groups": args.groups, "seeds": args.seeds, "target": args.target,
                    "episodes_per_task": args.episodes_per_task, "collect_steps": args.collect_steps,
                    "labels_per_round": per_round, "teacher_noise": args.teacher_noise, "hidden": args.hidden,
                    "updates_per_round": args.updates, "eval_episodes": args.eval_episodes,
                    "dagger_schedule": {"name": args.schedule, **json.loads(args.schedule_params)},
                    "budget_multiple": args.budget_multiple, "methods": {}}
    rounds = {"dagger": args.rounds}
    for method in ("dagger", "bc"):
        runs = []
        for seed in args.seeds:
            extra = {"schedule": args.schedule, "schedule_params": json.loads(args.schedule_params)} \
                if method == "dagger" else {}
            summary = run_distill(suite, teachers, seed, method, args.groups, rounds[method], args.episodes_per_task,
                                  args.updates, args.eval_episodes, **common, **extra)
            rows = summary["rounds"]
            runs.append({"seed": seed, "labels_to_target": labels_to_reach(rows, args.target),
                         "labels_used": rows[-1]["labels_used"], "rounds_run": len(rows),
                         "curve": [(r["labels_used"], r["mean_score"]) for r in rows],
                         "final_tasks": {n: {"score": t["score"], "success_rate": t["success_rate"]}
                                         for n, t in rows[-1]["tasks"].items()}})
            print(f"{method} seed {seed}: labels to {args.target}: {runs[-1]['labels_to_target']}, curve "
                  + " ".join(f"{s:.2f}" for _, s in runs[-1]["curve"]), flush=True)
        median = median_labels([r["labels_to_target"] for r in runs])
        result["methods"][method] = {"rounds": rounds[method], "budget_labels": rounds[method] * per_round,
                                     "runs": runs, "median_labels": median,
                                     "reached": f"{sum(r['labels_to_target'] is not None for r in runs)}/{len(runs)}"}
        if method == "dagger":
            want = math.ceil(args.budget_multiple * median / per_round) if median else args.rounds
            rounds["bc"] = max(args.rounds, want)
    bc, dagger = (result["methods"][m]["median_labels"] for m in ("bc", "dagger"))
    bc_budget = result["methods"]["bc"]["budget_labels"]
    for b, d in zip(result["methods"]["bc"]["runs"], result["methods"]["dagger"]["runs"], strict=True):
        b["dagger_over_bc"] = d["labels_to_target"] / b["labels_to_target"] \
            if b["labels_to_target"] and d["labels_to_target"] else None
    result["ratio_dagger_over_bc"] = dagger / bc if bc and dagger else None
    result["bc_budget_over_dagger_labels"] = bc_budget / dagger if dagger else None
    result["paired_median_dagger_over_bc"] = statistics.median(
        b["dagger_over_bc"] for b in result["methods"]["bc"]["runs"]) \
        if all(b["dagger_over_bc"] for b in result["methods"]["bc"]["runs"]) else None
    result["verdict"], result["target_met"] = verdict(bc, dagger, bc_budget, args.target)
    name = f"label_efficiency_{args.suite}{args.tag}"
    atomic_write_json(ROOT / "bench/results" / f"{name}.json", result)
    plot(ROOT / "bench/results" / f"{name}.png", result)
    print(f"median labels to {args.target}: BC {bc} ({result['methods']['bc']['reached']} reached, budget "
          f"{bc_budget}), DAgger {dagger} ({result['methods']['dagger']['reached']} reached): {result['verdict']} "
          f"(median of the per-seed ratios {result['paired_median_dagger_over_bc']}) "
          f"-> target {'met' if result['target_met'] else 'not met'} (<= {RATIO_TARGET}x, or BC never reaching it "
          f"within {BUDGET_TARGET:g}x)")


if __name__ == "__main__":
    main()
