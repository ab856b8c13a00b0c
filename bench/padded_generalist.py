"""Padded generalist over tasks of different spaces vs one student per task: per-task score, medians over seeds.

    .venv/bin/python -m bench padded_generalist --suite pendulum_reacher --seeds 0 1 2
    .venv/bin/python -m bench padded_generalist --suite hopper_walker_cheetah --seeds 0 1 2 --heads shared per_task

Teachers: the committed zoo (``envs/zoo/<suite>``). Per seed, one DAgger student per task (an MLP on the task's
own one-task suite) and one padded generalist over the whole suite per ``--heads``, all with the same method
settings, except that a generalist takes as many fit updates per round as the single-task students together
(``--updates`` times the number of tasks: the same compute); each run ships its ``best/`` student. Every
student, the teachers and a uniform random policy then play the same seeded episodes (the test seeds 1000, ...;
``--eval-episodes`` per task), and score = (student - random) / (teacher - random) mean return. Target: on every
task, the generalist's median score at most 0.02 below the single-task students' median. Pieces (one per variant
and seed) are cached under ``runs/bench/padded_generalist/<suite>`` (``--cache``).
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

if not __package__:  # python bench/<name>.py: the bench package lives one folder up
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import envelope
from bench.common import cache_dir, one_thread, parse, parser, setup_logging
from policydistill import (
    DAggerConfig,
    DistillConfig,
    StudentConfig,
    Suite,
    evaluate_per_task,
    load_bundle,
    load_suite,
    policies_for_suite,
    run_distill,
    zoo_dir,
)
from policydistill.eval.evaluate import random_policies
from policydistill.eval.metrics import teacher_normalised
from policydistill.files import atomic_write_json, read_json

TARGET_GAP = 0.02
TEST_SEED = 1000
SMOKE = {"seeds": [0], "rounds": 1, "episodes_per_task": 1, "updates": 10, "eval_episodes": 1}


def one_task(suite: Suite, name: str) -> Suite:
    """The task ``name`` of ``suite`` alone (a suite of one task: its single-task student is a plain MLP)."""
    return Suite(name=name, tasks=(suite.tasks[suite.index(name)],))


def returns(suite: Suite, policies: dict[str, Any], episodes: int) -> dict[str, float]:
    """Mean return per task of ``policies`` (one per task) on the test seeds."""
    rows = evaluate_per_task(suite, policies, episodes, TEST_SEED)
    return {n: float(r["return_mean"]) for n, r in rows.items()}


def score(student: float, teacher: float, random: float) -> float | None:
    """The score of :func:`~policydistill.eval.metrics.teacher_normalised` from three mean returns."""
    def row(ret: float) -> dict[str, Any]:
        return {"return_mean": ret, "success_rate": None}

    return teacher_normalised(row(student), row(teacher), row(random))["score"]


def distil(suite: Suite, teachers: dict[str, Any], zoo: Path, seed: int, method: DAggerConfig,
           student: StudentConfig) -> tuple[Any, dict[str, Any]]:
    """One DAgger run of ``student`` on ``suite``: its shipped (``best/``) student and the run's last row."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = DistillConfig(suite=suite.name, teachers=str(zoo), out=tmp, seed=seed, device="cpu", method=method,
                            student=student, final_episodes=0)
        summary = run_distill(cfg, suite, {n: teachers[n] for n in suite.task_names})
        return load_bundle(Path(tmp) / "best", device="cpu"), {
            "best_round": summary["best_round"], "labels_used": summary["rounds"][-1]["labels_used"],
            "wall_time_s": round(sum(r["wall_time_s"] for r in summary["rounds"]), 1)}


def piece(cache: Path, variant: str, seed: int, suite: Suite, teachers: dict[str, Any], zoo: Path,
          method: DAggerConfig, student: StudentConfig, episodes: int) -> dict[str, Any]:
    """Returns per task of ``variant`` (``single``: one student per task; else a generalist) for ``seed``, cached."""
    path = cache / f"{variant}_s{seed}.json"
    settings = {"method": asdict(method), "student": asdict(student), "eval_episodes": episodes}
    cached = read_json(path) if path.is_file() else None
    if cached is not None and cached["settings"] == settings:
        return cached
    if variant == "single":
        out: dict[str, Any] = {"returns": {}, "runs": {}}
        for name in suite.task_names:
            one = one_task(suite, name)
            policy, run = distil(one, teachers, zoo, seed, method, student)
            out["returns"][name] = returns(one, {name: policy}, episodes)[name]
            out["runs"][name] = run
    else:
        policy, run = distil(suite, teachers, zoo, seed, method, student)
        out = {"returns": returns(suite, {n: policy for n in suite.task_names}, episodes), "runs": {"all": run}}
    out = {"variant": variant, "seed": seed, "settings": settings, **out}
    atomic_write_json(path, out)
    return out


def main(argv: list[str] | None = None) -> dict:
    p = parser("padded_generalist", __doc__)
    p.add_argument("--suite", default="pendulum_reacher")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--heads", nargs="+", default=["shared"], choices=["shared", "per_task"],
                   help="the generalists to train (student.heads)")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--episodes-per-task", type=int, default=4)
    p.add_argument("--updates", type=int, default=500, help="fit updates per round per task")
    p.add_argument("--eval-episodes", type=int, default=50)
    p.add_argument("--cache", default=None, help="where pieces are cached (default runs/bench/padded_generalist)")
    p.add_argument("--tag", default="", help="suffix of the result file name")
    args = parse(p, argv, SMOKE)
    started = envelope.start()
    one_thread()
    setup_logging()
    suite, zoo = load_suite(args.suite), zoo_dir(args.suite)
    teachers = policies_for_suite(zoo, suite, device="cpu")
    method = DAggerConfig(rounds=args.rounds, episodes_per_task=args.episodes_per_task,
                          updates_per_round=args.updates, beta_rounds=max(1, args.rounds - 2))
    generalist_method = dataclasses.replace(method, updates_per_round=args.updates * len(suite.task_names))
    reference = {"teacher": returns(suite, teachers, args.eval_episodes),
                 "random": returns(suite, random_policies(suite, TEST_SEED), args.eval_episodes)}
    print("teacher / random return: " + ", ".join(
        f"{n} {reference['teacher'][n]:.2f} / {reference['random'][n]:.2f}" for n in suite.task_names), flush=True)
    variants = ["single", *(f"generalist_{h}" for h in args.heads)]
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    with cache_dir(args.cache, args.smoke, "padded_generalist") as root:
        cache = root / args.suite
        cache.mkdir(parents=True, exist_ok=True)
        for seed in args.seeds:
            for variant in variants:
                heads = variant.removeprefix("generalist_") if variant != "single" else "shared"
                run = piece(cache, variant, seed, suite, teachers, zoo, method if variant == "single" else
                            generalist_method, StudentConfig(heads=heads), args.eval_episodes)
                run["scores"] = {n: score(r, reference["teacher"][n], reference["random"][n])
                                 for n, r in run["returns"].items()}
                runs[variant].append(run)
                print(f"seed {seed} {variant:>20}: " + ", ".join(
                    f"{n} {s:.3f}" if s is not None else f"{n} n/a" for n, s in run["scores"].items()), flush=True)
    medians = {v: {n: statistics.median(r["scores"][n] for r in runs[v]) for n in suite.task_names}
               for v in variants}
    gaps = {v: {n: medians["single"][n] - medians[v][n] for n in suite.task_names} for v in variants[1:]}
    met = {v: all(g <= TARGET_GAP for g in gaps[v].values()) for v in gaps}
    print(f"\nmedian score over {len(args.seeds)} seeds (target: generalist at most {TARGET_GAP} below single):")
    width = max(map(len, suite.task_names))
    print(f"  {'task':<{width}}  {'single':>8}  " + "  ".join(f"{v:>20}  {'gap':>6}" for v in gaps))
    for n in suite.task_names:
        print(f"  {n:<{width}}  {medians['single'][n]:8.3f}  "
              + "  ".join(f"{medians[v][n]:20.3f}  {gaps[v][n]:+6.3f}" for v in gaps))
    for v in gaps:
        verdict = "met" if met[v] else "NOT met"
        print(f"  {v}: worst gap {max(gaps[v].values()):+.3f} (target <= {TARGET_GAP}): {verdict}")
    ratios = {f"{v} score / single-task score ({n})": medians[v][n] / medians["single"][n]
              for v in gaps for n in suite.task_names if medians["single"][n]}
    results = {"suite": args.suite, "method": asdict(method), "generalist_method": asdict(generalist_method),
               "test_seed": TEST_SEED, "reference": reference,
               "target_gap": TARGET_GAP, "gaps": gaps, "target_met": met, "runs": runs}
    return envelope.write("padded_generalist", args, started, runs=len(args.seeds),
                          medians={"score": medians, "worst_gap": {v: max(g.values()) for v, g in gaps.items()}},
                          ratios=ratios, results=results, tag=f"_{args.suite}{args.tag}")


if __name__ == "__main__":
    main()
