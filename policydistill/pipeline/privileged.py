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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from policydistill.configs import require_choice, require_int
from policydistill.distill.dagger import DAggerConfig
from policydistill.distill.predictability import predictability_of
from policydistill.distill.runner import DistillConfig, distill
from policydistill.eval.metrics import mean_rate
from policydistill.models.students import STUDENT_KINDS, StudentConfig
from policydistill.suites import Suite, load_suite, zoo_dir
from policydistill.teachers import policies_for_suite

if TYPE_CHECKING:
    from policydistill.eval.report import Report

log = logging.getLogger(__name__)


@dataclass
class PrivilegedStageConfig:
    """The pipeline's privileged-students stage: each student of ``kinds`` reading ``groups`` is distilled
    by DAgger from the teachers (``zoo``: the committed ``envs/zoo/<suite>``) on ``suite``, with a small
    budget (``python -m bench privileged_students`` runs the full comparison)."""

    enabled: bool = True
    suite: str = "locomotion"
    teachers: str = "zoo"
    kinds: list[str] = field(default_factory=lambda: ["mlp", "history_mlp", "tcn", "gru", "latent"])
    groups: list[str] = field(default_factory=lambda: ["policy", "task"])
    rounds: int = 4
    episodes_per_task: int = 2
    updates_per_round: int = 600
    eval_episodes: int = 3

    def __post_init__(self) -> None:
        for kind in self.kinds:
            require_choice("privileged.kinds entry", kind, STUDENT_KINDS)
        for name in ("rounds", "episodes_per_task", "updates_per_round", "eval_episodes"):
            require_int(f"privileged.{name}", getattr(self, name))


def student_config(kind: str, groups: list[str]) -> StudentConfig:
    """Defaults per kind as ``configs/student/<kind>.yaml`` sets them (history students: one head layer)."""
    return StudentConfig(kind=kind, groups=list(groups), hidden=[256, 256] if kind == "mlp" else [256])


def stage_privileged(cfg: Any, suite: Suite, out: Path, report: Report) -> None:
    from policydistill.eval.report import markdown_table, plot_distill  # matplotlib: imported here

    pcfg = cfg.privileged
    if not pcfg.enabled:
        return
    psuite = load_suite(pcfg.suite)
    spec = zoo_dir(psuite.name) if pcfg.teachers == "zoo" else Path(pcfg.teachers)
    teachers = policies_for_suite(spec, psuite, device=cfg.device)
    runs: dict[str, dict[str, Any]] = {}
    times: dict[str, float] = {}
    method = DAggerConfig(rounds=pcfg.rounds, episodes_per_task=pcfg.episodes_per_task,
                          updates_per_round=pcfg.updates_per_round, beta_rounds=max(1, pcfg.rounds - 1))
    for kind in pcfg.kinds:
        t0 = time.perf_counter()
        dcfg = DistillConfig(suite=psuite.name, teachers=str(spec), seed=cfg.seed, device=cfg.device,
                             out=str(out / "privileged" / kind), method=method, eval_episodes=pcfg.eval_episodes,
                             student=student_config(kind, pcfg.groups), final_episodes=0)  # compared below
        runs[kind] = distill(dcfg, psuite, teachers)
        times[kind] = time.perf_counter() - t0
    plot_distill(out / "privileged.png", runs)
    first = next(iter(runs.values()))
    rows = [["teacher (reads privileged)", "policy, privileged",
             *[f"{first['teacher'][t]['return_mean']:.1f}" for t in psuite.task_names], 1.0,
             mean_rate([first["teacher"][t]["success_rate"] for t in psuite.task_names]), None, None]]
    for kind, run in runs.items():
        last = run["rounds"][-1]
        pred = predictability_of(run)
        rows.append([kind, ", ".join(run["config"]["student"]["groups"]),
                     *[f"{last['tasks'][t]['return_mean']:.1f}" for t in psuite.task_names], last["mean_score"],
                     mean_rate([last["tasks"][t]["success_rate"] for t in psuite.task_names]),
                     None if not pred else pred["ratio"], f"{times[kind]:.0f}"])
    header = ["student", "groups", *[f"{t} return" for t in psuite.task_names], "score", "success",
              "predictability ratio", "wall s"]
    report.add("Privileged-information students", markdown_table(header, rows) + (
        f"\n\nSuite `{psuite.name}`: {psuite.description} Each episode draws new dynamics; the teachers read "
        "them (and the true base and joint velocities) in `privileged`, the students read `policy` and `task` "
        "only and must infer them from their own history. DAgger from the committed zoo teachers, "
        f"{pcfg.rounds} rounds of {pcfg.episodes_per_task} episodes per task and {pcfg.updates_per_round} updates "
        "(a small budget: `python -m bench privileged_students` runs the full comparison over seeds), evaluated "
        f"on the same {pcfg.eval_episodes} seeded episodes per task as the teachers. Score: (student - random) / "
        "(teacher - random) return, random being a uniform random policy, averaged over tasks. Predictability "
        "ratio: held-out action error of the student's architecture "
        "over that of the same architecture reading `privileged` too (above 2 the run warns that the student's "
        "inputs cannot explain the teacher).\n\n![privileged students](privileged.png)"))

