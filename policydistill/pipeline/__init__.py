"""The main job: train experts -> evaluate them (with baselines) -> distil a generalist -> a diffusion policy
and its one-step students -> privileged-information students -> ``report.md``.

Each stage (one file each) reads and writes under ``out`` and adds its section to the report; a rerun skips
what is already done (finished experts are not retrained, finished distillation runs resume). ``out`` is a
:class:`~policydistill.run_folder.RunFolder`: locked while the pipeline runs, a rerun with another config is
refused with the differing keys (``resume=false`` starts over).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from policydistill.configs import require_choice, require_device, require_int
from policydistill.experts import ExpertConfig
from policydistill.pipeline.diffusion import DiffusionStageConfig, check_diffusion_teacher, stage_diffusion
from policydistill.pipeline.experts import stage_experts, stage_task_blindness
from policydistill.pipeline.generalist import GeneralistStageConfig, stage_distill
from policydistill.pipeline.privileged import PrivilegedStageConfig, stage_privileged
from policydistill.run_folder import RunFolder, resume_mode
from policydistill.scale.ray_session import ENGINES, RayConfig, refuse_ray_keys
from policydistill.suites import Suite, load_suite, zoo_dir
from policydistill.teachers import policies_for_suite

log = logging.getLogger(__name__)


@dataclass
class PipelineConfig:
    """``policydistill pipeline``: every stage on ``suite`` under ``out``. Experts: ``expert`` on ``workers``
    processes (``launcher=ray``: Ray tasks), evaluated on ``episodes`` seeded episodes per task (seeds
    ``eval_seed``, ...) with a video per task (``video``). Then the stages ``distill`` (the DAgger generalist),
    ``diffusion`` (diffusion -> one-step, on its own suite) and ``privileged`` (students without privileged
    state, on its own suite, distilled on ``workers`` processes), each with its own keys."""

    suite: str = "default"
    out: str = "runs/pipeline"
    workers: int = 2
    seed: int = 0
    episodes: int = 20
    eval_seed: int = 1000
    video: bool = True
    device: str = "auto"
    expert: ExpertConfig = field(default_factory=ExpertConfig)
    launcher: str = "local"
    ray: RayConfig = field(default_factory=RayConfig)
    distill: GeneralistStageConfig = field(default_factory=GeneralistStageConfig)
    diffusion: DiffusionStageConfig = field(default_factory=DiffusionStageConfig)
    privileged: PrivilegedStageConfig = field(default_factory=PrivilegedStageConfig)
    resume: str = "auto"

    def __post_init__(self) -> None:
        require_device(self.device)
        self.resume = resume_mode(self.resume)
        require_int("workers", self.workers)
        require_int("episodes", self.episodes)
        require_choice("launcher", self.launcher, ENGINES)
        if self.launcher == "local":
            refuse_ray_keys(self.ray, "launcher")


def run_pipeline(cfg: PipelineConfig) -> Path:
    """Run every stage on ``cfg.suite`` under ``cfg.out``; returns the path of report.md."""
    suite = load_suite(cfg.suite)
    for stage in (cfg.diffusion, cfg.privileged):  # what later stages read is refused before any work
        if not stage.enabled:
            continue
        stage_suite = load_suite(stage.suite)
        if stage is cfg.diffusion and cfg.diffusion.teacher_from != "train":
            check_diffusion_teacher(cfg.diffusion.teacher_bundle(), stage_suite)
        else:
            policies_for_suite(zoo_dir(stage_suite.name) if stage.teachers == "zoo" else stage.teachers, stage_suite,
                               device="cpu")
    out = Path(cfg.out)
    with RunFolder(out, "pipeline", asdict(cfg), free=("workers", "launcher", "ray")):
        return _run(cfg, suite, out)


def _run(cfg: PipelineConfig, suite: Suite, out: Path) -> Path:
    from policydistill.eval.report import Report, markdown_table  # imports matplotlib: not at CLI start-up

    report = Report(f"policydistill report: suite '{suite.name}'")
    timings = []
    stages = [("experts", stage_experts), ("task blindness", stage_task_blindness), ("distill", stage_distill),
              ("diffusion -> one-step", stage_diffusion), ("privileged students", stage_privileged)]
    for name, stage in stages:
        t0 = time.perf_counter()
        log.info("stage %s", name)
        stage(cfg, suite, out, report)
        timings.append([name, round(time.perf_counter() - t0, 1)])
    report.add("Stage times", markdown_table(["stage", "wall time (s)"], timings)
               + f"\n\nTotal: {sum(t for _, t in timings):.0f} s with {cfg.workers} workers.")
    path = report.write(out / "report.md")
    log.info("report: %s", path)
    return path
