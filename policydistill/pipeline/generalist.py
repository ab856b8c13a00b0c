"""The pipeline's generalist stage: one DAgger student for every task of the suite from the trained experts,
beside the same student without the ``task`` group."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from policydistill.configs import require_int
from policydistill.distill.dagger import DAggerConfig
from policydistill.distill.runner import DistillConfig, final_line
from policydistill.eval.metrics import fmt_rate
from policydistill.models.students import StudentConfig
from policydistill.pipeline.workers import distill_all
from policydistill.suites import Suite

if TYPE_CHECKING:
    from policydistill.eval.report import Report


@dataclass
class GeneralistStageConfig:
    """The DAgger generalist: ``method`` (DAgger's keys), the ``student`` it trains (reading ``task`` among
    its groups; the stage also trains it without), ``eval_episodes`` per task each round."""

    method: DAggerConfig = field(default_factory=DAggerConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    eval_episodes: int = 10

    def __post_init__(self) -> None:
        require_int("distill.eval_episodes", self.eval_episodes)


def stage_distill(cfg: Any, suite: Suite, out: Path, report: Report) -> None:
    """DAgger generalist (reads ``policy`` + ``task``) and, beside it, the same student without ``task``."""
    from policydistill.eval.report import markdown_table, plot_distill  # matplotlib: imported here

    stage = cfg.distill
    configs = {}
    variants = {"dagger": stage.student.groups, "dagger, no task id": [g for g in stage.student.groups if g != "task"]}
    for name, groups in variants.items():
        if name != "dagger" and (len(suite.tasks) < 2 or groups == stage.student.groups):
            continue
        folder = out / "distill" / name.replace(", ", "_").replace(" ", "_")
        configs[name] = DistillConfig(suite=cfg.suite, teachers=str(out / "experts"), seed=cfg.seed,
                                      device=cfg.device, out=str(folder), method=stage.method,
                                      student=replace(stage.student, groups=list(groups)),
                                      eval_episodes=stage.eval_episodes)
    timed = distill_all(configs, cfg.workers, "generalist")
    runs = {name: timed[name][0] for name in configs}
    plot_distill(out / "distill.png", runs)
    rows = []
    for t in suite.task_names:
        teacher = runs["dagger"]["teacher"][t]
        row = [t, f"{teacher['return_mean']:.2f}", teacher["success_rate"]]
        for run in runs.values():
            final = run["rounds"][-1]["tasks"][t]
            row += [f"{final['return_mean']:.2f}", final["score"], final["success_rate"], final["dropped"]]
        rows.append(row)
    header = ["task", "teacher return", "teacher success"]
    for name in runs:
        header += [f"{name}: return", f"{name}: score", f"{name}: success", f"{name}: dropped"]
    last = runs["dagger"]["rounds"][-1]
    report.add("DAgger generalist", markdown_table(header, rows) + (
        f"\n\nOne student for all {len(suite.tasks)} tasks, DAgger with a {stage.method.schedule} beta schedule, "
        f"{len(runs['dagger']['rounds'])} rounds, {last['labels_used']} teacher labels, {last['wall_time_s']:.0f} s. "
        f"{_headline(last)}. {_held_out(runs['dagger'])} Score: (student - random) / (teacher - random) return on "
        f"the same {stage.eval_episodes} seeded episodes per task, random being a uniform random policy. "
        "'no task id': the same student without the `task` group. " + _best_and_regressions(runs)
        + "\n\n![distill](distill.png)"))


def _headline(row: dict[str, Any]) -> str:
    """``Headline: success ratio 0.98 (student / teacher success, mean over tasks)`` for a run's last round."""
    head = row["headline"]
    what = "student / teacher success" if head["metric"] == "success ratio" else "random-normalised return"
    return f"Headline: {head['metric']} {fmt_rate(head['value'], '.3f')} ({what}, mean over tasks)"


def _held_out(run: dict[str, Any]) -> str:
    """The shipped student (``best/``) on the held-out seeds, from the run's final evaluation."""
    final = run["final"]
    return f"The student it ships (`best/`, round {final['round']}) on held-out seeds {final_line(final)}."


def _best_and_regressions(runs: dict[str, dict[str, Any]]) -> str:
    """Which round each run ships (``best/``) and why, and the tasks that regressed between rounds."""
    parts = []
    for name, run in runs.items():
        best = run["best"]
        flagged = [f"{g['task']} in round {row['round']} ({g['metric']} {g['from']:.2f} -> {g['to']:.2f})"
                   for row in run["rounds"] for g in row["regressions"]]
        parts.append(f"'{name}' ships round {best['round']} (`best/`: {best['criterion']})"
                     + (f"; regressions: {', '.join(flagged)}" if flagged else "; no task regressed"))
    return ". ".join(parts) + "."
