"""One-step students vs their 100-step diffusion teacher, side by side, several seeds (medians).

Per seed, on ``--suite`` (default ``default_hazard``: the default tasks with a pit halfway, whose
demonstrations pass it on the left or the right):

1. train a diffusion teacher on the zoo experts' episodes (``--demos mirror_routes``) with
   ``--teacher-steps`` updates;
2. distil one one-step student per algorithm with ``--fraction`` of the teacher's updates (and, with
   ``--ablations``, the two distribution-matching students without their regression term);
3. evaluate on the same seeded episodes: the teacher with DDIM 100, 10 and 1 steps, each student,
   and the deterministic student before distillation (the teacher's denoiser at its init level).

Scores are per task: return / the 100-step teacher's return and success / its success. With
``--control`` the same teacher recipe is also run on the plain ``default`` suite with its
(deterministic, uni-modal) zoo experts, to show what one DDIM step does without multi-modality.
Reports medians over seeds, prints the checks of the targets and writes
``bench/results/onestep_fidelity.json``. Runs live under ``--runs`` and resume after a kill.

    nice .venv/bin/python bench/onestep_fidelity.py [--seeds 0 1 2] [--teacher-steps 20000] [--episodes 50]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from policydistill.bundle import load_bundle
from policydistill.cli import compose_config
from policydistill.distill.diffusion import distill_diffusion
from policydistill.distill.onestep import ALGOS, OneStepAlgo, distill_onestep
from policydistill.eval.evaluate import policies_for_suite
from policydistill.io import atomic_write_json, read_json
from policydistill.models.onestep import OneStepPolicy
from policydistill.pipeline_diffusion import compare, zoo_dir
from policydistill.suite import load_suite

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("bench.onestep_fidelity")
REFERENCE = "teacher ddim 100"


def train_teacher(suite_name: str, demos: str, seed: int, steps: int, out: Path) -> tuple[Path, float]:
    """The diffusion teacher of one seed (resumed if done); returns its bundle and training wall time."""
    suite = load_suite(suite_name)
    zoo = zoo_dir(suite)
    cfg = compose_config("distill", ["method=diffusion", f"suite={suite_name}", f"teachers={zoo}", f"out={out}",
                                     f"seed={seed}", f"diffusion.demos={demos}", f"diffusion.train_steps={steps}",
                                     "eval_episodes=10"])
    summary = distill_diffusion(cfg, suite, policies_for_suite(zoo, suite, device="cpu"))
    return out / "student", summary["rounds"][-1]["wall_time_s"]


def distil(suite_name: str, teacher: Path, algo: str, seed: int, steps: int, out: Path,
           extra: tuple[str, ...] = ()) -> dict[str, Any]:
    suite = load_suite(suite_name)
    cfg = compose_config("distill", ["method=onestep", f"suite={suite_name}", f"teachers={teacher}", f"out={out}",
                                     f"seed={seed}", f"onestep.algo={algo}", f"onestep.steps={steps}",
                                     "eval_episodes=10", *extra])
    return distill_onestep(cfg, suite, policies_for_suite(teacher, suite, device="cpu"))["rounds"][-1]


def run_seed(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    runs = Path(args.runs) / args.suite / f"seed{seed}"
    done = runs / "result.json"
    if done.exists():
        return read_json(done)
    suite = load_suite(args.suite)
    teacher, teacher_wall = train_teacher(args.suite, args.demos, seed, args.teacher_steps, runs / "teacher")
    student_steps = max(1, round(args.fraction * args.teacher_steps))
    costs = {}
    runs_of = {algo: (algo, ()) for algo in args.algos}
    if args.ablations:  # distribution matching without its regression term
        runs_of.update({f"{a} reg_weight 0": (a, ("onestep.reg_weight=0",)) for a in ("dmd", "dmd_det")
                        if a in args.algos})
    for name, (algo, extra) in runs_of.items():
        row = distil(args.suite, teacher, algo, seed, student_steps, runs / name.replace(" ", "_"), extra)
        costs[name] = {"updates": row["updates"], "teacher_calls": row["teacher_calls"],
                       "wall_time_s": row["wall_time_s"]}
    policies: dict[str, Any] = {f"teacher ddim {k}": load_bundle(teacher, device="cpu").set_sampler("ddim", k)
                                for k in (100, 10, 1)}
    for name in runs_of:
        policies[f"one-step {name}"] = load_bundle(runs / name.replace(" ", "_") / "student", device="cpu")
    base = load_bundle(teacher, device="cpu")
    level = OneStepAlgo.init_level(base, compose_config("distill", []).onestep)
    policies["dmd_det before distillation"] = OneStepPolicy.from_teacher(base, stochastic=False, level=level).eval()
    results = compare(suite, policies, REFERENCE, args.episodes, 1000 + 100 * seed, latency_calls=0)
    out = {"seed": seed, "teacher_updates": args.teacher_steps, "teacher_wall_time_s": teacher_wall,
           "costs": costs, "results": results}
    if args.control:
        control_teacher, control_wall = train_teacher("default", "experts", seed, args.teacher_steps,
                                                      Path(args.runs) / "default" / f"seed{seed}" / "teacher")
        control = {f"teacher ddim {k}": load_bundle(control_teacher, device="cpu").set_sampler("ddim", k)
                   for k in (100, 10, 1)}
        out["control"] = compare(load_suite("default"), control, REFERENCE, args.episodes, 1000 + 100 * seed,
                                 latency_calls=0)
    atomic_write_json(done, out)
    return out


def _median(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.median(kept)) if kept else None


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
        per_task = {t: {"score": _median([r["tasks"][t]["score"] for r in rows]),
                        "success_ratio": _median([r["tasks"][t]["success_ratio"] for r in rows]),
                        "success_rate": _median([r["tasks"][t]["success_rate"] for r in rows])} for t in tasks}
        out[name] = {"mean_score": _median([r["mean_score"] for r in rows]),
                     "mean_success_ratio": _median([r["mean_success_ratio"] for r in rows]),
                     "mean_success": _median([r["mean_success"] for r in rows]),
                     "worst_task_score": _median([_worst(r, "score") for r in rows]),
                     "worst_task_success_ratio": _median([_worst(r, "success_ratio") for r in rows]),
                     "tasks": per_task}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--suite", default="default_hazard")
    p.add_argument("--demos", default="mirror_routes")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--teacher-steps", type=int, default=20_000)
    p.add_argument("--fraction", type=float, default=0.1, help="student updates / teacher updates")
    p.add_argument("--algos", nargs="+", default=list(ALGOS))
    p.add_argument("--episodes", type=int, default=50, help="evaluation episodes per task and policy")
    p.add_argument("--control", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--ablations", action=argparse.BooleanOptionalAction, default=True,
                   help="also dmd and dmd_det with reg_weight 0 (pure distribution matching)")
    p.add_argument("--runs", default=str(ROOT / "runs/bench/onestep"))
    p.add_argument("--out", default=str(ROOT / "bench/results/onestep_fidelity.json"))
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    per_seed = [run_seed(args, s) for s in args.seeds]
    table = summarise(per_seed)
    students = [n for n in table if n.startswith("one-step ")]
    best = max(students, key=lambda n: table[n]["mean_score"] or -1.0)
    b = table[best]
    costs = {a: {"updates_ratio": _median([s["costs"][a]["updates"] / s["teacher_updates"] for s in per_seed]),
                 "wall_time_ratio": _median([s["costs"][a]["wall_time_s"] / s["teacher_wall_time_s"]
                                             for s in per_seed]),
                 "teacher_calls": _median([s["costs"][a]["teacher_calls"] for s in per_seed])}
             for a in per_seed[0]["costs"]}
    checks = {"best_student": best,
              "best_mean_score>=0.95": (b["mean_score"] or 0) >= 0.95,
              "best_mean_success_ratio>=0.95": (b["mean_success_ratio"] or 0) >= 0.95,
              "best_worst_task>=0.85": min(b["worst_task_score"] or 0, b["worst_task_success_ratio"] or 0) >= 0.85,
              "teacher_1_step_mean_score": table["teacher ddim 1"]["mean_score"],
              "distillation_updates<=0.1_teacher": all(c["updates_ratio"] <= 0.1 + 1e-9 for c in costs.values())}
    print(f"\nsuite {args.suite}, seeds {args.seeds}, teacher {args.teacher_steps} updates, students "
          f"{args.fraction:.0%} of that, {args.episodes} episodes per task; medians over seeds")
    head = f"{'policy':<34}{'score':>8}{'worst task':>12}{'succ ratio':>12}{'worst task':>12}{'success':>9}"
    print(head + "\n" + "-" * len(head))
    for name, r in table.items():
        cells = [r[k] for k in ("mean_score", "worst_task_score", "mean_success_ratio", "worst_task_success_ratio")]
        text = ["n/a" if v is None else f"{v:.3f}" for v in cells]
        print(f"{name:<34}{text[0]:>8}{text[1]:>12}{text[2]:>12}{text[3]:>12}{r['mean_success']:>9.3f}")
    for algo, c in costs.items():
        print(f"cost {algo:<22} updates {c['updates_ratio']:.3f} of the teacher's, wall time "
              f"{c['wall_time_ratio']:.3f} of the teacher's training, {c['teacher_calls']:.3g} teacher denoiser calls")
    control = summarise(per_seed, "control") if args.control else None
    if control:
        print("\ncontrol: plain default suite, uni-modal zoo demonstrations (score vs 100 steps)")
        for name, r in control.items():
            print(f"{name:<34}{r['mean_score']:>8.3f}{r['worst_task_score']:>12.3f}{r['mean_success']:>9.3f}")

    print("\nchecks:", json.dumps(checks))
    atomic_write_json(args.out, {"suite": args.suite, "demos": args.demos, "seeds": args.seeds,
                                 "teacher_steps": args.teacher_steps, "fraction": args.fraction,
                                 "episodes": args.episodes, "medians": table, "costs": costs, "control": control,
                                 "checks": checks, "per_seed": per_seed,
                                 "wall_time_s": round(time.perf_counter() - t0, 1)})
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
