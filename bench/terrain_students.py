"""Privileged-information students on the terrain suite: the Ant over rough ground, teachers reading the terrain.

    .venv/bin/python -m bench terrain_students --seeds 0 1 2
    .venv/bin/python -m bench terrain_students --kinds gru mlp --seeds 1     # one piece (pieces are cached)
    .venv/bin/python -m bench terrain_students --suite terrain_offsets        # servo calibration offsets
    .venv/bin/python -m bench terrain_students --suite terrain_encoders --kinds mlp gru mlp_privileged

The zoo teacher reads ``[policy, privileged]`` (terrain heights around the feet, mass, friction and motor-strength
scales, true base velocity and height); every student reads ``[policy, task]`` (joint encoders and an IMU; on
``terrain_encoders`` the encoders give angles only) only, except the reference ``mlp_privileged``. Each (kind,
seed) is one DAgger run (linear beta 1 -> 0); its final student and the teacher are evaluated on the same seeded
episodes (score = student return / teacher return). Then
the terrain roughness (the suite's, 0.08 m in ``terrain``) and the mass scale (drawn from [0.7, 1.3] in
``terrain``) are swept, one at a time and fixed per point, for the teacher, the best history student and the
proprio-only MLP: medians over seeds, plotted beside the result (``terrain_students_sweep.png``; another
``--suite`` adds ``_<suite>`` to the result's names); on a suite with servo offsets (``terrain_offsets``) their
range is swept too; on a suite that observes the last action (``terrain_offsets_large``) the history students
read it too (``[policy, last_action, task]``; the proprio-only MLP does not). Pieces are cached under
``runs/bench/terrain_students`` (``_<suite>``). Targets: the best history student's median score >= 0.90; the
proprio-only MLP clearly lower (by >= 0.05).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if not __package__:  # python bench/<name>.py: the bench package lives one folder up
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from bench import envelope  # noqa: E402
from bench.common import cache_dir, distill_run, one_thread, parse, parser, setup_logging, zoo_teachers  # noqa: E402
from bench.privileged_students import HISTORY_KINDS, KINDS, bench_student  # noqa: E402
from policydistill import DAggerConfig, DistillConfig, Suite, evaluate_per_task, load_bundle  # noqa: E402
from policydistill.eval.metrics import mean_of  # noqa: E402
from policydistill.eval.report import save_figure  # noqa: E402
from policydistill.files import atomic_write_json, read_json  # noqa: E402
from policydistill.types import LAST_ACTION  # noqa: E402

TARGET = 0.90
TARGET_GAP = 0.05
EVAL_SEED = DistillConfig.eval_seed
SMOKE = {"seeds": [0], "rounds": 1, "episodes_per_task": 1, "updates": 10, "eval_episodes": 1,
         "roughness": [0.08], "mass": [1.0], "offsets": [0.3], "sweep_episodes": 1}


def train_values(suite: Suite) -> dict[str, tuple[float, float]]:
    """What the sweeps vary, as the suite's (first) task trains on it, ``(low, high)``: the roughness, the mass
    scale's range and, where the suite has servo offsets, their range."""
    kwargs = suite.tasks[0].kwargs
    rough = float(kwargs.get("roughness", 0.08))
    low, high = kwargs.get("mass_range", (0.7, 1.3))
    out = {"roughness": (rough, rough), "mass": (float(low), float(high))}
    if kwargs.get("offset_range"):
        out["offsets"] = (float(kwargs["offset_range"]),) * 2
    return out


def with_setting(suite: Suite, what: str, value: float) -> Suite:
    """The suite with every task's terrain roughness (``what`` = ``roughness``, metres), mass scale (``mass``) or
    servo offset range (``offsets``, rad) fixed at ``value``; the rest of the randomisation unchanged."""
    kw = {"roughness": {"roughness": value}, "mass": {"mass_range": [value, value]},
          "offsets": {"offset_range": value}}[what]
    tasks = tuple(dataclasses.replace(t, kwargs={**t.kwargs, **kw}) for t in suite.tasks)
    return dataclasses.replace(suite, name=f"{suite.name}_{what}{value}", tasks=tasks)


def sweep(suite: Suite, policy: Any, what: str, values: list[float], episodes: int) -> list[float]:
    """Mean return over the suite's tasks at each fixed value of ``what``."""
    out = []
    for v in values:
        evals = evaluate_per_task(with_setting(suite, what, v), policy, episodes, seed=EVAL_SEED)
        out.append(statistics.mean(e["return_mean"] for e in evals.values()))
    return out


def run_piece(kind: str, seed: int, args: argparse.Namespace, suite: Suite, teachers: dict, cache: Path) -> dict:
    """One DAgger run of ``kind``: its final numbers and, for the proprio-only and history students, both sweeps;
    cached in ``cache``."""
    if cache.exists():
        return read_json(cache)
    t0 = time.perf_counter()
    method = DAggerConfig(rounds=args.rounds, episodes_per_task=args.episodes_per_task, updates_per_round=args.updates,
                          beta_rounds=max(1, args.rounds // 2))
    student_cfg = bench_student(kind, [g for g in (LAST_ACTION,) if g in suite.spaces[0][0].spaces])
    with distill_run(suite, teachers, seed, method, student_cfg, args.eval_episodes) as (summary, out):
        last = summary["rounds"][-1]
        result = {"kind": kind, "seed": seed, "groups": student_cfg.groups,
                  "mean_score": mean_of(last["tasks"].values(), "return_ratio"),
                  "student_return": last["student_return"], "labels_used": last["labels_used"],
                  "teacher_return": statistics.mean(t["return_mean"] for t in summary["teacher"].values()),
                  "tasks": {n: {"score": t["return_ratio"], **{k: t[k] for k in ("return_mean", "success_rate",
                                                                                 "teacher_return_mean")}}
                            for n, t in last["tasks"].items()},
                  "curve": [mean_of(r["tasks"].values(), "return_ratio") for r in summary["rounds"]]}
        if kind in ("mlp", *HISTORY_KINDS):
            student = load_bundle(out / "student", device="cpu")
            result["sweeps"] = {what: sweep(suite, student, what, getattr(args, what), args.sweep_episodes)
                                for what in train_values(suite)}
    result["wall_time_s"] = round(time.perf_counter() - t0, 1)
    atomic_write_json(cache, result)
    print(f"{kind:15s} seed {seed}: score {result['mean_score']:.3f}, return {result['student_return']:.1f} "
          f"(teacher {result['teacher_return']:.1f}), {result['wall_time_s']:.0f} s")
    return result


def plot(path: Path, suite: str, train: dict[str, tuple[float, float]], values: dict[str, list[float]],
         lines: dict[str, dict[str, list[float]]]) -> None:
    """Mean return against each swept setting, one line per policy, the training values shaded."""
    fig, axes = plt.subplots(1, len(train), figsize=(5.5 * len(train), 4))
    labels = {"roughness": "terrain roughness, m (fixed per point)", "mass": "mass scale (fixed per point)",
              "offsets": "servo offset range, rad (drawn per joint)"}
    for ax, what in zip(axes, train, strict=True):
        low, high = train[what]
        if high > low:
            ax.axvspan(low, high, color="grey", alpha=0.15, label="training range")
        else:
            ax.axvline(low, color="grey", alpha=0.5, ls="--", label="training value")
        for name, ys in lines[what].items():
            ax.plot(values[what], ys, marker="o", label=name)
        ax.set(xlabel=labels[what], ylabel="mean return (median over seeds)")
        ax.legend(fontsize=8)
    fig.suptitle(f"{suite}: Ant over rough ground, return vs " + ", ".join(train))
    fig.tight_layout()
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict:
    p = parser("terrain_students", __doc__)
    p.add_argument("--suite", default="terrain", help="a suite of QuadrupedTerrain tasks (default: terrain)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--episodes-per-task", type=int, default=8)
    p.add_argument("--updates", type=int, default=1000)
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--roughness", type=float, nargs="+", default=[0.0, 0.04, 0.08, 0.12, 0.16])
    p.add_argument("--mass", type=float, nargs="+", default=[0.5, 0.7, 1.0, 1.3, 1.6])
    p.add_argument("--offsets", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.3, 0.4],
                   help="servo offset ranges swept on a suite with offsets (rad)")
    p.add_argument("--sweep-episodes", type=int, default=5)
    p.add_argument("--cache", default=None,
                   help="where pieces are cached (default: runs/bench/terrain_students; smoke: a temporary folder)")
    args = parse(p, argv, SMOKE)
    started = envelope.start()
    one_thread()
    setup_logging()
    suite, teachers = zoo_teachers(args.suite)
    train = train_values(suite)
    tag = "" if args.suite == "terrain" else f"_{args.suite}"
    settings = f"r{args.rounds}_e{args.episodes_per_task}_u{args.updates}_v{args.eval_episodes}"
    with cache_dir(args.cache, args.smoke, f"terrain_students{tag}") as cache:
        cache.mkdir(parents=True, exist_ok=True)
        for seed in args.seeds:
            for kind in args.kinds:
                run_piece(kind, seed, args, suite, teachers, cache / f"{kind}_{seed}_{settings}.json")
        runs: dict[str, list[dict]] = {}  # everything cached with these settings, from any invocation
        for f in sorted(cache.glob(f"*_{settings}.json")):
            r = read_json(f)
            runs.setdefault(r["kind"], []).append(r)
    kinds = {k: {"seeds": [r["seed"] for r in rs],
                 "median_score": statistics.median(r["mean_score"] for r in rs),
                 "scores": [r["mean_score"] for r in rs],
                 "median_return": statistics.median(r["student_return"] for r in rs),
                 "median_wall_time_s": statistics.median(r["wall_time_s"] for r in rs)}
             for k, rs in runs.items()}
    history = {k: v for k, v in kinds.items() if k in HISTORY_KINDS}
    best = max(history, key=lambda k: history[k]["median_score"]) if history else None
    teacher_return = statistics.median(r["teacher_return"] for rs in runs.values() for r in rs)
    results: dict[str, Any] = {"suite": suite.name, "teacher_median_return": teacher_return, "kinds": kinds,
                               "best_history_kind": best, "target": TARGET, "target_gap": TARGET_GAP, "runs": runs}
    values = {what: getattr(args, what) for what in train}
    lines: dict[str, dict[str, list[float]]] = {}
    if best and "mlp" in runs:
        for what in train:
            def med(kind: str, what: str = what) -> list[float]:
                return [statistics.median(r["sweeps"][what][i] for r in runs[kind]) for i in range(len(values[what]))]
            lines[what] = {"teacher (privileged)": sweep(suite, teachers, what, values[what], args.sweep_episodes),
                           f"{best} student (history)": med(best), "mlp student (proprio only)": med("mlp")}
        results["sweeps"] = {"values": values, "train": train, "returns": lines}
        plot(Path(args.results_dir) / f"terrain_students{tag}_sweep.png", suite.name, train, values, lines)
    print(f"\nteacher median return {teacher_return:.1f}\n{'kind':15s} {'seeds':>6s} {'median score':>13s}  per seed")
    for k, v in kinds.items():
        print(f"{k:15s} {len(v['seeds']):6d} {v['median_score']:13.3f}  " + " ".join(f"{s:.3f}" for s in v["scores"]))
    if best:
        gap = history[best]["median_score"] - kinds["mlp"]["median_score"] if "mlp" in kinds else None
        print(f"target: best history student >= {TARGET}   measured: {best} {history[best]['median_score']:.3f}")
        if gap is not None:
            print(f"target: proprio-only MLP lower by >= {TARGET_GAP}   measured: mlp "
                  f"{kinds['mlp']['median_score']:.3f}, {gap:.3f} below")
    for what, ls in lines.items():
        for name, ys in ls.items():
            print(f"{what} sweep {name:28s} " + " ".join(f"{v}:{y:.0f}" for v, y in zip(values[what], ys, strict=True)))
    ratios = {f"{k}_student_over_teacher_return": v["median_score"] for k, v in kinds.items()}
    if best:
        ratios["best_history_student_over_teacher_return"] = history[best]["median_score"]
    return envelope.write("terrain_students", args, started,
                          runs=max((len(v["seeds"]) for v in kinds.values()), default=0),
                          medians={k: v["median_score"] for k, v in kinds.items()}, ratios=ratios, results=results,
                          tag=tag)


if __name__ == "__main__":
    main()
