"""Pipeline stage: students that act from onboard sensing where their teachers read privileged state.

On ``cfg.privileged.suite`` (the locomotion suite: HalfCheetah speed tracking under per-episode mass,
friction and actuator randomisation) each student kind reading ``groups`` (``policy`` + ``task``: no
``privileged``) is distilled by DAgger from the teachers, then evaluated beside them on the same
seeded, randomised episodes. The section reports each kind's return, teacher-normalised score and
success, and the predictability diagnostic of the proprio-only MLP.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any

from policydistill.config import DistillConfig, PipelineConfig, StudentConfig
from policydistill.distill.predictability import predictability_of
from policydistill.eval.evaluate import policies_for_suite
from policydistill.eval.report import Report, markdown_table, plot_distill
from policydistill.io import read_json
from policydistill.suite import Suite, load_suite

log = logging.getLogger(__name__)

BENCH_RESULT = Path(__file__).resolve().parents[1] / "bench" / "results" / "privileged_students.json"


def zoo_dir(suite: str) -> Path:
    """The committed expert zoo of a bundled suite: ``envs/zoo/<suite>``."""
    return Path(str(resources.files("policydistill_envs"))) / "zoo" / suite


def student_config(kind: str, groups: list[str]) -> StudentConfig:
    """Defaults per kind as ``configs/student/<kind>.yaml`` sets them (history students: one head layer)."""
    return StudentConfig(kind=kind, groups=list(groups), hidden=[256, 256] if kind == "mlp" else [256])


def stage_privileged(cfg: PipelineConfig, suite: Suite, out: Path, report: Report) -> None:
    from policydistill.distill.dagger import distill

    pcfg = cfg.privileged
    if not pcfg.enabled:
        return
    psuite = load_suite(pcfg.suite)
    teachers = policies_for_suite(zoo_dir(psuite.name) if pcfg.teachers == "zoo" else pcfg.teachers, psuite,
                                  device=cfg.device)
    runs: dict[str, dict[str, Any]] = {}
    times: dict[str, float] = {}
    for kind in pcfg.kinds:
        t0 = time.perf_counter()
        dcfg = replace(DistillConfig(), suite=psuite.name, teachers=pcfg.teachers, seed=cfg.seed, device=cfg.device,
                       out=str(out / "privileged" / kind), rounds=pcfg.rounds,
                       episodes_per_task=pcfg.episodes_per_task, updates_per_round=pcfg.updates_per_round,
                       eval_episodes=pcfg.eval_episodes, schedule_params={"rounds": max(1, pcfg.rounds - 1)},
                       student=student_config(kind, pcfg.groups))
        runs[kind] = distill(dcfg, psuite, teachers)
        times[kind] = time.perf_counter() - t0
    plot_distill(out / "privileged.png", runs)
    first = next(iter(runs.values()))
    rows = [["teacher (reads privileged)", "policy, privileged",
             *[f"{first['teacher'][t]['return_mean']:.1f}" for t in psuite.task_names], 1.0,
             sum(first["teacher"][t]["success_rate"] for t in psuite.task_names) / len(psuite.task_names), None, None]]
    for kind, run in runs.items():
        last = run["rounds"][-1]
        pred = predictability_of(run)
        rows.append([kind, ", ".join(run["config"]["student"]["groups"]),
                     *[f"{last['tasks'][t]['return_mean']:.1f}" for t in psuite.task_names], last["mean_score"],
                     sum(last["tasks"][t]["success_rate"] for t in psuite.task_names) / len(psuite.task_names),
                     None if not pred else pred["ratio"], f"{times[kind]:.0f}"])
    header = ["student", "groups", *[f"{t} return" for t in psuite.task_names], "score", "success",
              "predictability ratio", "wall s"]
    report.add("Privileged-information students", markdown_table(header, rows) + (
        f"\n\nSuite `{psuite.name}`: {psuite.description} Each episode draws new dynamics; the teachers read "
        "them (and the true base and joint velocities) in `privileged`, the students read `policy` and `task` "
        "only and must infer them from their own history. DAgger from the committed zoo teachers, "
        f"{pcfg.rounds} rounds of {pcfg.episodes_per_task} episodes per task and {pcfg.updates_per_round} updates "
        f"(a small budget: `bench/privileged_students.py` runs the full comparison over seeds), evaluated on the "
        f"same {pcfg.eval_episodes} seeded episodes per task as the teachers. Score: student return / teacher "
        "return, averaged over tasks. Predictability ratio: held-out action error of the student's architecture "
        "over that of the same architecture reading `privileged` too (above 2 the run warns that the student's "
        "inputs cannot explain the teacher).\n\n![privileged students](privileged.png)" + _benchmark_table()))


def _benchmark_table() -> str:
    """The committed full-budget comparison (``bench/results/privileged_students.json``), when present."""
    path = BENCH_RESULT
    if not path.is_file():
        return ""
    bench = read_json(path)
    rows = [[k, len(v["seeds"]), v["median_score"], f"{v['median_return']:.1f}",
             *[v["median_task_scores"][t] for t in v["median_task_scores"]]] for k, v in bench["kinds"].items()]
    tasks = list(next(iter(bench["kinds"].values()))["median_task_scores"])
    s = bench["settings"]
    return ("\n\nFull budget, from the committed benchmark (`bench/privileged_students.py`, not rerun here): "
            f"{s['rounds']} rounds of {s['episodes_per_task']} episodes per task, {s['updates']} updates per round, "
            f"{s['eval_episodes']} evaluation episodes per task; medians over seeds (teacher return "
            f"{bench['teacher_median_return']:.1f}; `mlp_privileged` reads `privileged` too).\n\n"
            + markdown_table(["student", "seeds", "median score", "median return", *[f"{t} score" for t in tasks]],
                             rows))
