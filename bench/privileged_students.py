"""Privileged-information students on the locomotion suite: return under randomised dynamics per student kind.

    .venv/bin/python -m bench privileged_students --seeds 0 1 2
    .venv/bin/python -m bench privileged_students --kinds gru --seeds 1     # one piece (runs resume per piece)

The zoo teachers read ``[policy, privileged]`` (mass, friction and actuator-strength scales, true base
velocity); every student below reads ``[policy, task]`` only, except the reference ``mlp_privileged``.
Each (kind, seed) is one DAgger run (linear beta 1 -> 0); its final student and the teachers are
evaluated on the same seeded episodes (score here = student return / teacher return, the rows'
``return_ratio``, per task, averaged).
Then the mass scale, drawn from [0.7, 1.3] in training, is swept past that range (fixed per sweep
point) for the teachers, the best history student and the proprio-only MLP: medians over seeds,
plotted beside the result (``privileged_students_mass_sweep.png``). Pieces are cached under
``runs/bench/privileged_students`` (``--cache``), one file per kind, seed and budget.
Target: the best history student's median score >= 0.90; the proprio-only MLP reported beside it.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if not __package__:  # python bench/<name>.py: the bench package lives one folder up
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from bench import envelope  # noqa: E402
from bench.common import cache_dir, distill_run, one_thread, parse, parser, setup_logging, zoo_teachers  # noqa: E402
from policydistill import (  # noqa: E402
    DAggerConfig,
    DistillConfig,
    StudentConfig,
    Suite,
    evaluate_per_task,
    load_bundle,
)
from policydistill.eval.metrics import mean_of  # noqa: E402
from policydistill.eval.report import save_figure  # noqa: E402
from policydistill.files import atomic_write_json, read_json  # noqa: E402
from policydistill.pipeline.privileged import student_config  # noqa: E402

HISTORY_KINDS = ("history_mlp", "tcn", "gru", "latent")
KINDS = ("mlp", "mlp_privileged", *HISTORY_KINDS)
TARGET = 0.90
TRAIN_MASS = (0.7, 1.3)
EVAL_SEED = DistillConfig.eval_seed  # the seeds distill evaluates its students on
SMOKE = {"seeds": [0], "rounds": 1, "episodes_per_task": 1, "updates": 10, "eval_episodes": 1,
         "sweep": [1.0], "sweep_episodes": 1}


def bench_student(kind: str, history_groups: Sequence[str] = ()) -> StudentConfig:
    """The student of ``kind`` as the pipeline configures it, reading ``[policy, task]`` (``mlp_privileged``:
    ``[policy, privileged, task]``; a history student also ``history_groups``, e.g. ``last_action``), without
    the predictability check."""
    if kind == "mlp_privileged":
        return dataclasses.replace(student_config("mlp", ["policy", "privileged", "task"]), check_predictable=False)
    extra = list(history_groups) if kind in HISTORY_KINDS else []
    return dataclasses.replace(student_config(kind, ["policy", *extra, "task"]), check_predictable=False)


def with_mass(suite: Suite, scale: float) -> Suite:
    """The suite with every task's mass scale fixed at ``scale`` (other randomisation unchanged)."""
    tasks = tuple(dataclasses.replace(t, kwargs={**t.kwargs, "mass_range": [scale, scale]}) for t in suite.tasks)
    return dataclasses.replace(suite, name=f"{suite.name}_mass{scale}", tasks=tasks)


def sweep(suite: Suite, policy: Any, scales: list[float], episodes: int) -> list[float]:
    """Mean return over the suite's tasks at each fixed mass scale."""
    out = []
    for m in scales:
        evals = evaluate_per_task(with_mass(suite, m), policy, episodes, seed=EVAL_SEED)
        out.append(statistics.mean(e["return_mean"] for e in evals.values()))
    return out


def run_piece(kind: str, seed: int, args: argparse.Namespace, suite: Suite, teachers: dict, cache: Path) -> dict:
    """One DAgger run of ``kind``; its final numbers and mass sweep, cached in ``cache``."""
    if cache.exists():
        return read_json(cache)
    t0 = time.perf_counter()
    method = DAggerConfig(rounds=args.rounds, episodes_per_task=args.episodes_per_task, updates_per_round=args.updates,
                          beta_rounds=max(1, args.rounds // 2))
    student_cfg = bench_student(kind)
    with distill_run(suite, teachers, seed, method, student_cfg, args.eval_episodes) as (summary, out):
        last = summary["rounds"][-1]
        student = load_bundle(out / "student", device="cpu")
        result = {"kind": kind, "seed": seed, "groups": student_cfg.groups,
                  "mean_score": mean_of(last["tasks"].values(), "return_ratio"),
                  "student_return": last["student_return"], "labels_used": last["labels_used"],
                  "wall_time_s": round(time.perf_counter() - t0, 1),
                  "teacher_return": statistics.mean(t["return_mean"] for t in summary["teacher"].values()),
                  "tasks": {n: {"score": t["return_ratio"], **{k: t[k] for k in ("return_mean", "success_rate",
                                                                                 "teacher_return_mean")}}
                            for n, t in last["tasks"].items()},
                  "curve": [mean_of(r["tasks"].values(), "return_ratio") for r in summary["rounds"]]}
        if kind in ("mlp", *HISTORY_KINDS):
            result["mass_sweep"] = sweep(suite, student, args.sweep, args.sweep_episodes)
    atomic_write_json(cache, result)
    per_task = ", ".join(f"{n} {t['score']:.2f}" for n, t in result["tasks"].items())
    print(f"{kind:15s} seed {seed}: score {result['mean_score']:.3f} ({per_task}), {result['wall_time_s']:.0f} s")
    return result


def plot(path: Path, scales: list[float], lines: dict[str, list[float]]) -> None:
    """Mean return against the fixed mass scale, one line per policy, the training range shaded."""
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.axvspan(*TRAIN_MASS, color="grey", alpha=0.15, label="training range")
    for name, ys in lines.items():
        ax.plot(scales, ys, marker="o", label=name)
    ax.set(xlabel="mass scale (fixed per point)", ylabel="mean return over tasks (median over seeds)",
           title="locomotion: return vs mass scale")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict:
    p = parser("privileged_students", __doc__)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--episodes-per-task", type=int, default=2)
    p.add_argument("--updates", type=int, default=1000)
    p.add_argument("--eval-episodes", type=int, default=20)
    p.add_argument("--sweep", type=float, nargs="+", default=[0.4, 0.55, 0.7, 1.0, 1.3, 1.5, 1.7])
    p.add_argument("--sweep-episodes", type=int, default=4)
    p.add_argument("--cache", default=None,
                   help="where pieces are cached (default: runs/bench/privileged_students; smoke: a temporary folder)")
    args = parse(p, argv, SMOKE)
    started = envelope.start()
    one_thread()
    setup_logging()
    suite, teachers = zoo_teachers("locomotion")
    settings = f"r{args.rounds}_e{args.episodes_per_task}_u{args.updates}_v{args.eval_episodes}"
    with cache_dir(args.cache, args.smoke, "privileged_students") as cache:
        cache.mkdir(parents=True, exist_ok=True)
        for seed in args.seeds:
            for kind in args.kinds:
                run_piece(kind, seed, args, suite, teachers, cache / f"{kind}_{seed}_{settings}.json")
        # aggregate everything cached with these settings (pieces may come from several invocations)
        runs: dict[str, list[dict]] = {}
        for f in sorted(cache.glob(f"*_{settings}.json")):
            r = read_json(f)
            runs.setdefault(r["kind"], []).append(r)
    kinds = {k: {"seeds": [r["seed"] for r in rs],
                 "median_score": statistics.median(r["mean_score"] for r in rs),
                 "median_return": statistics.median(r["student_return"] for r in rs),
                 "median_task_scores": {n: statistics.median(r["tasks"][n]["score"] for r in rs)
                                        for n in suite.task_names},
                 "median_wall_time_s": statistics.median(r["wall_time_s"] for r in rs)}
             for k, rs in runs.items()}
    history = {k: v for k, v in kinds.items() if k in HISTORY_KINDS}
    best = max(history, key=lambda k: history[k]["median_score"]) if history else None
    results: dict[str, Any] = {
        "suite": suite.name, "teacher_median_return": statistics.median(r["teacher_return"] for rs in runs.values()
                                                                        for r in rs),
        "kinds": kinds, "best_history_kind": best, "target": TARGET, "runs": runs}
    lines = {}
    if best and "mlp" in runs:
        teacher_sweep = sweep(suite, teachers, args.sweep, args.sweep_episodes)
        lines = {"teacher (privileged)": teacher_sweep,
                 f"{best} student (history)": [statistics.median(r["mass_sweep"][i] for r in runs[best])
                                               for i in range(len(args.sweep))],
                 "mlp student (proprio only)": [statistics.median(r["mass_sweep"][i] for r in runs["mlp"])
                                                for i in range(len(args.sweep))]}
        results["mass_sweep"] = {"scales": args.sweep, "train_range": TRAIN_MASS, "returns": lines}
        plot(Path(args.results_dir) / "privileged_students_mass_sweep.png", args.sweep, lines)
    print(f"\n{'kind':15s} {'seeds':>6s} {'median score':>13s}  per task (walk run back)")
    for k, v in kinds.items():
        print(f"{k:15s} {len(v['seeds']):6d} {v['median_score']:13.3f}  "
              + " ".join(f"{s:.3f}" for s in v["median_task_scores"].values()))
    if best:
        print(f"best history student: {best} {history[best]['median_score']:.3f} (target >= {TARGET}); "
              f"proprio-only MLP {kinds.get('mlp', {}).get('median_score')}")
    for name, ys in lines.items():
        print(f"mass sweep {name:28s} " + " ".join(f"{m}:{y:.0f}" for m, y in zip(args.sweep, ys, strict=True)))
    ratios = {f"{k}_student_over_teacher_return": v["median_score"] for k, v in kinds.items()}
    if best:
        ratios["best_history_student_over_teacher_return"] = history[best]["median_score"]
    return envelope.write("privileged_students", args, started,
                          runs=max((len(v["seeds"]) for v in kinds.values()), default=0),
                          medians={k: v["median_score"] for k, v in kinds.items()}, ratios=ratios, results=results)


if __name__ == "__main__":
    main()
