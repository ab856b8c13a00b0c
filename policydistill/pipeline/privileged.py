"""Pipeline stage: students that act from onboard sensing where their teachers read privileged state.

On ``cfg.privileged.suite`` (the locomotion suite: HalfCheetah speed tracking under per-episode mass,
friction and actuator randomisation) each student kind reading ``groups`` (``policy`` + ``task``: no
``privileged``) is distilled by DAgger from the teachers, then evaluated beside them on the same
seeded, randomised episodes. The section reports each kind's return, teacher-normalised score and
success, and the predictability diagnostic of the proprio-only MLP.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from policydistill.configs import require_choice, require_int
from policydistill.distill.dagger import DAggerConfig
from policydistill.distill.predictability import predictability_of
from policydistill.distill.runner import DistillConfig
from policydistill.eval.metrics import mean_rate
from policydistill.models.students import STUDENT_KINDS, StudentConfig
from policydistill.pipeline.workers import distill_all
from policydistill.suites import Suite, load_suite, zoo_dir

if TYPE_CHECKING:
    from policydistill.eval.report import Report


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


SLOWEST_FIRST = ("latent", "tcn", "gru", "history_mlp", "mlp")
"""The student kinds by their time to distil here, longest first: the workers take them in this order, so that
they end together."""


def slowest_first(kind: str) -> int:
    """Sort key of ``kind`` in :data:`SLOWEST_FIRST` (a kind not there goes last)."""
    return SLOWEST_FIRST.index(kind) if kind in SLOWEST_FIRST else len(SLOWEST_FIRST)


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
    method = DAggerConfig(rounds=pcfg.rounds, episodes_per_task=pcfg.episodes_per_task,
                          updates_per_round=pcfg.updates_per_round, beta_rounds=max(1, pcfg.rounds - 1))
    configs = {kind: DistillConfig(suite=psuite.name, teachers=str(spec), seed=cfg.seed, device=cfg.device,
                                   out=str(out / "privileged" / kind), method=method, eval_episodes=pcfg.eval_episodes,
                                   student=student_config(kind, pcfg.groups), final_episodes=0)  # compared below
               for kind in sorted(pcfg.kinds, key=slowest_first)}
    timed = distill_all(configs, cfg.workers, "privileged student")
    runs = {kind: timed[kind][0] for kind in pcfg.kinds}
    times = {kind: timed[kind][1] for kind in pcfg.kinds}
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
        f"inputs cannot explain the teacher). Wall s: each student's distillation, {min(cfg.workers, len(runs))} at "
        "a time on as many worker processes.\n\n![privileged students](privileged.png)"))

