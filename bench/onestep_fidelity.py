"""One-step students vs their 100-step diffusion teacher, side by side, several seeds (medians).

Per seed, on ``--suite`` (default ``default_hazard``: the default tasks with a pit halfway, whose
demonstrations pass it on the left or the right):

1. train a diffusion teacher on the zoo experts' episodes (``--demos mirror_routes``, ``--demo-episodes`` per
   task) with ``--teacher-steps`` updates;
2. distil one one-step student per algorithm with ``--fraction`` of the teacher's updates (and, with
   ``--ablations``, the two distribution-matching students without their regression term);
3. evaluate on the same seeded episodes: the teacher with DDIM 100, 10 and 1 steps, each student,
   and the deterministic student before distillation (the teacher's denoiser at its init level).

Scores here are per task return ratios, return / the 100-step teacher's return (``return_ratio`` of
:func:`policydistill.pipeline.diffusion.compare`), and success / its success. With
``--control`` the same teacher recipe is also run on the plain ``default`` suite with its
(deterministic, uni-modal) zoo experts, to show what one DDIM step does without multi-modality.
Reports medians over seeds, the checks of the targets, and the one-step students in the order of
:func:`policydistill.eval.metrics.ordering` (over seeds, of the random-normalised score the pipeline's report
ranks them by). Runs live under ``--runs`` (default
``runs/bench/onestep``; seed 0's teacher and ``dmd_det`` student are the chunk policies of
``bench chunk_latency`` and ``bench async_inference``) and resume after a kill.

    nice .venv/bin/python -m bench onestep_fidelity [--seeds 0 1 2] [--teacher-steps 20000] [--episodes 50]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

if not __package__:  # python bench/<name>.py: the bench package lives one folder up
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from bench import envelope
from bench.common import (
    ONESTEP_SMOKE,
    OneStepBudget,
    cache_dir,
    median,
    one_thread,
    onestep_config,
    parse,
    parser,
    setup_logging,
    train_diffusion,
    train_onestep,
)
from policydistill import OneStepConfig, load_bundle, load_suite
from policydistill.distill.onestep import ALGOS, init_level
from policydistill.eval.metrics import ordering
from policydistill.files import atomic_write_json, read_json
from policydistill.models.onestep import OneStepPolicy
from policydistill.pipeline.diffusion import compare

log = logging.getLogger("bench.onestep_fidelity")
REFERENCE = "teacher ddim 100"
BUDGET = OneStepBudget()
SMOKE = {"seeds": [0], "episodes": 1, **{k: v for k, v in ONESTEP_SMOKE.settings().items() if k != "fraction"}}


def budget_of(args: argparse.Namespace) -> OneStepBudget:
    return OneStepBudget(teacher_steps=args.teacher_steps, demo_episodes=args.demo_episodes, fraction=args.fraction,
                         student_episodes=args.student_episodes, pairs=args.pairs, eval_episodes=args.eval_episodes)


def run_seed(args: argparse.Namespace, runs_root: Path, seed: int) -> dict[str, Any]:
    """Teacher, students and their comparison for one seed (``result.json``: reused when its settings match)."""
    runs = runs_root / args.suite / f"seed{seed}"
    done = runs / "result.json"
    budget = budget_of(args)
    settings = {"suite": args.suite, "demos": args.demos, "algos": args.algos, "ablations": args.ablations,
                "control": args.control, "episodes": args.episodes, **budget.settings()}
    if done.exists():
        cached = read_json(done)
        if cached.get("settings") != settings:
            raise SystemExit(f"{done} holds results of other settings (or an older version): remove it or give "
                             "another --runs")
        return cached
    suite = load_suite(args.suite)
    teacher, teacher_wall = train_diffusion(args.suite, args.demos, seed, budget, runs / "teacher")
    runs_of = {algo: onestep_config(algo, budget) for algo in args.algos}
    if args.ablations:  # distribution matching without its regression term
        runs_of.update({f"{a} reg_weight 0": onestep_config(a, budget, reg_weight=0.0) for a in ("dmd", "dmd_det")
                        if a in args.algos})
    costs = {}
    for name, method in runs_of.items():
        row = train_onestep(args.suite, teacher, seed, method, budget, runs / name.replace(" ", "_"))
        costs[name] = {"updates": row["updates"], "teacher_calls": row["info"]["teacher_calls"],
                       "wall_time_s": row["wall_time_s"]}
    policies: dict[str, Any] = {f"teacher ddim {k}": load_bundle(teacher, device="cpu").set_sampler("ddim", k)
                                for k in (100, 10, 1)}
    for name in runs_of:
        policies[f"one-step {name}"] = load_bundle(runs / name.replace(" ", "_") / "student", device="cpu")
    base = load_bundle(teacher, device="cpu")
    level = init_level(base, OneStepConfig())  # where dmd_det starts from
    policies["dmd_det before distillation"] = OneStepPolicy.from_teacher(base, stochastic=False, level=level).eval()
    results = compare(suite, policies, REFERENCE, args.episodes, 1000 + 100 * seed, latency_calls=0)
    out = {"seed": seed, "settings": settings, "teacher_updates": args.teacher_steps,
           "teacher_wall_time_s": teacher_wall, "costs": costs, "results": results}
    if args.control:
        control_teacher, _ = train_diffusion("default", "experts", seed, budget,
                                             runs_root / "default" / f"seed{seed}" / "teacher")
        control = {f"teacher ddim {k}": load_bundle(control_teacher, device="cpu").set_sampler("ddim", k)
                   for k in (100, 10, 1)}
        out["control"] = compare(load_suite("default"), control, REFERENCE, args.episodes, 1000 + 100 * seed,
                                 latency_calls=0)
    atomic_write_json(done, out)
    return out


def _worst(result: dict[str, Any], key: str) -> float | None:
    return min((t[key] for t in result["tasks"].values() if t[key] is not None), default=None)


def summarise(per_seed: list[dict[str, Any]], key: str = "results") -> dict[str, Any]:
    """Per policy, medians over seeds of: the mean over tasks of the score, success ratio and success,
    the worst task's score and success ratio, and per task the score and success ratio."""
    names = list(per_seed[0][key])
    tasks = list(per_seed[0][key][REFERENCE]["tasks"])
    out = {}
    for name in names:
        rows = [s[key][name] for s in per_seed]
        per_task = {t: {"score": median([r["tasks"][t]["return_ratio"] for r in rows]),
                        "success_ratio": median([r["tasks"][t]["success_ratio"] for r in rows]),
                        "success_rate": median([r["tasks"][t]["success_rate"] for r in rows])} for t in tasks}
        out[name] = {"mean_score": median([r["mean_return_ratio"] for r in rows]),
                     "mean_success_ratio": median([r["mean_success_ratio"] for r in rows]),
                     "mean_success": median([r["mean_success"] for r in rows]),
                     "worst_task_score": median([_worst(r, "return_ratio") for r in rows]),
                     "worst_task_success_ratio": median([_worst(r, "success_ratio") for r in rows]),
                     "tasks": per_task}
    return out


def print_table(table: dict[str, Any]) -> None:
    head = f"{'policy':<34}{'score':>8}{'worst task':>12}{'succ ratio':>12}{'worst task':>12}{'success':>9}"
    print(head + "\n" + "-" * len(head))
    for name, r in table.items():
        cells = [r[k] for k in ("mean_score", "worst_task_score", "mean_success_ratio", "worst_task_success_ratio")]
        text = ["n/a" if v is None else f"{v:.3f}" for v in cells]
        print(f"{name:<34}{text[0]:>8}{text[1]:>12}{text[2]:>12}{text[3]:>12}{r['mean_success']:>9.3f}")


def main(argv: list[str] | None = None) -> dict:
    p = parser("onestep_fidelity", __doc__)
    p.add_argument("--suite", default="default_hazard")
    p.add_argument("--demos", default="mirror_routes")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--teacher-steps", type=int, default=BUDGET.teacher_steps)
    p.add_argument("--demo-episodes", type=int, default=BUDGET.demo_episodes,
                   help="demonstrations per task the teacher trains on")
    p.add_argument("--fraction", type=float, default=BUDGET.fraction, help="student updates / teacher updates")
    p.add_argument("--student-episodes", type=int, default=BUDGET.student_episodes,
                   help="teacher episodes per task whose observations the students train on")
    p.add_argument("--pairs", type=int, default=BUDGET.pairs, help="noise -> teacher output pairs (dmd, regression)")
    p.add_argument("--eval-episodes", type=int, default=BUDGET.eval_episodes,
                   help="evaluation episodes per task after each training run")
    p.add_argument("--algos", nargs="+", default=list(ALGOS))
    p.add_argument("--episodes", type=int, default=50, help="evaluation episodes per task and policy")
    p.add_argument("--control", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--ablations", action=argparse.BooleanOptionalAction, default=True,
                   help="also dmd and dmd_det with reg_weight 0 (pure distribution matching)")
    p.add_argument("--runs", default=None, help="where runs live (default: runs/bench/onestep; smoke: a temporary "
                                                "folder)")
    args = parse(p, argv, SMOKE)
    started = envelope.start()
    setup_logging("%(asctime)s %(name)s: %(message)s")
    one_thread()
    with cache_dir(args.runs, args.smoke, "onestep") as runs_root:
        per_seed = [run_seed(args, runs_root, s) for s in args.seeds]
    table = summarise(per_seed)
    students = [n for n in table if n.startswith("one-step ")]
    best = max(students, key=lambda n: table[n]["mean_score"] or -1.0)
    b = table[best]
    costs = {a: {"updates_ratio": median([s["costs"][a]["updates"] / s["teacher_updates"] for s in per_seed]),
                 "wall_time_ratio": median([s["costs"][a]["wall_time_s"] / s["teacher_wall_time_s"]
                                            for s in per_seed]),
                 "teacher_calls": median([s["costs"][a]["teacher_calls"] for s in per_seed])}
             for a in per_seed[0]["costs"]}
    checks = {"best_student": best,
              "best_mean_score>=0.95": (b["mean_score"] or 0) >= 0.95,
              "best_mean_success_ratio>=0.95": (b["mean_success_ratio"] or 0) >= 0.95,
              "best_worst_task>=0.85": min(b["worst_task_score"] or 0, b["worst_task_success_ratio"] or 0) >= 0.85,
              "teacher_1_step_mean_score": table["teacher ddim 1"]["mean_score"],
              "distillation_updates<=0.1_teacher": all(c["updates_ratio"] <= 0.1 + 1e-9 for c in costs.values())}
    print(f"\nsuite {args.suite}, seeds {args.seeds}, teacher {args.teacher_steps} updates, students "
          f"{args.fraction:.0%} of that, {args.episodes} episodes per task; medians over seeds")
    print_table(table)
    for algo, c in costs.items():
        print(f"cost {algo:<22} updates {c['updates_ratio']:.3f} of the teacher's, wall time "
              f"{c['wall_time_ratio']:.3f} of the teacher's training, {c['teacher_calls']:.3g} teacher denoiser calls")
    control = summarise(per_seed, "control") if args.control else None
    if control:
        print("\ncontrol: plain default suite, uni-modal zoo demonstrations (score vs 100 steps)")
        print_table(control)
    order = ordering({a: [s["results"][f"one-step {a}"]["mean_score"] for s in per_seed] for a in args.algos})
    print(f"\none-step students by random-normalised mean score over seeds (as the pipeline's report): {order}")
    print("\nchecks:", json.dumps(checks))
    ratios = {"score (return / 100-step teacher's)": {n: r["mean_score"] for n, r in table.items()},
              "success ratio (success / 100-step teacher's)": {n: r["mean_success_ratio"] for n, r in table.items()},
              "student wall time / teacher training": {a: c["wall_time_ratio"] for a, c in costs.items()}}
    if control:
        ratios["control score (default suite)"] = {n: r["mean_score"] for n, r in control.items()}
    return envelope.write("onestep_fidelity", args, started, runs=len(args.seeds), medians=table, ratios=ratios,
                          results={"costs": costs, "control": control, "checks": checks, "ordering": order,
                                   "per_seed": per_seed})


if __name__ == "__main__":
    main()
