"""``policydistill train-experts``: one stable-baselines3 specialist per task of a suite, tasks in parallel.

Writes ``<out>/experts.json`` (per task: algorithm, env steps, wall time, return, success, steps and seconds to
the success threshold) and ``<out>/<task>/`` (see :mod:`policydistill.experts.run`). A rerun skips finished
tasks and continues interrupted ones from their last checkpoint; ``out`` is a
:class:`~policydistill.run_folder.RunFolder` (locked while training; a rerun with another config is refused
with the differing keys, but for ``tasks``, ``workers``, ``launcher`` and ``ray``; ``resume=extend`` lets
``expert.total_steps`` grow; ``resume=false`` starts over).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from policydistill.configs import require_choice, require_device, require_int
from policydistill.experts.local import run_local
from policydistill.experts.ray import run_ray
from policydistill.experts.run import ExpertConfig
from policydistill.files import atomic_write_json, read_json, read_json_object
from policydistill.run_folder import RunFolder, resume_mode
from policydistill.scale.ray_session import ENGINES, RayConfig, refuse_ray_keys
from policydistill.suites import Suite

log = logging.getLogger(__name__)


@dataclass
class TrainExpertsConfig:
    """Train ``expert`` specialists for ``tasks`` (None: all) of ``suite`` under ``out``, on ``workers``
    processes (``launcher=local``) or as Ray tasks (``launcher=ray``, see ``ray``)."""

    suite: str = "default"
    out: str = "runs/experts"
    workers: int = 2
    seed: int = 0
    device: str = "auto"
    tasks: list[str] | None = None
    expert: ExpertConfig = field(default_factory=ExpertConfig)
    launcher: str = "local"
    ray: RayConfig = field(default_factory=RayConfig)
    resume: str = "auto"

    def __post_init__(self) -> None:
        require_device(self.device)
        self.resume = resume_mode(self.resume)
        require_int("workers", self.workers)
        require_int("seed", self.seed, 0)
        require_choice("launcher", self.launcher, ENGINES)
        if self.launcher == "local":
            refuse_ray_keys(self.ray, "launcher")


def train_experts(suite: Suite, cfg: ExpertConfig, out: str | Path, workers: int = 2, seed: int = 0,
                  device: str = "auto", tasks: list[str] | None = None, launcher: str = "local",
                  ray: RayConfig | None = None, resume: str = "auto") -> dict[str, Any]:
    """Train (or resume) one expert per task; finished tasks are skipped. Returns experts.json.

    ``launcher``: ``local`` (``workers`` processes) or ``ray`` (one Ray task per expert, see ``ray``)."""
    require_choice("launcher", launcher, ENGINES)
    names = tasks or suite.task_names
    todo = [suite.index(n) for n in names]  # unknown tasks are refused before anything is written
    config = {"suite": suite.name, "seed": seed, "expert": asdict(cfg), "tasks": tasks, "workers": workers,
              "launcher": launcher, "ray": asdict(ray or RayConfig()), "device": device, "resume": resume}
    with RunFolder(out, "train-experts", config, extendable=("expert.total_steps",),
                   free=("tasks", "workers", "launcher", "ray")):
        return _train(suite, todo, cfg, Path(out), workers, seed, device, launcher, ray)


def _train(suite: Suite, todo: list[int], cfg: ExpertConfig, out: Path, workers: int, seed: int, device: str,
           launcher: str, ray: RayConfig | None) -> dict[str, Any]:
    summary_path = out / "experts.json"
    summary: dict[str, Any] = {"suite": suite.name, "tasks": {}}
    if summary_path.exists():
        summary["tasks"] = read_json_object(summary_path, ("suite", "tasks"), "an experts summary")["tasks"]
    pending = []
    for i in todo:
        done = out / suite.tasks[i].name / "result.json"
        total = cfg.total_steps or suite.tasks[i].train_steps
        if done.exists() and (done.parent / "bundle" / "policy.json").exists() and \
                (cfg.stop_at_threshold or read_json(done)["env_steps"] >= total):
            summary["tasks"][suite.tasks[i].name] = read_json(done)
            log.info("%s: already trained, skipped", suite.tasks[i].name)
        else:
            pending.append(i)
    failures: dict[str, str] = {}
    if pending and launcher == "ray":
        run_ray(suite, pending, cfg, out, seed, device, summary, summary_path, failures, ray or RayConfig())
    elif pending:
        run_local(suite, pending, cfg, out, workers, seed, device, summary, summary_path, failures)
    summary["tasks"] = {n: summary["tasks"][n] for n in suite.task_names if n in summary["tasks"]}
    atomic_write_json(summary_path, summary)
    if failures:
        raise RuntimeError(f"expert training failed for {sorted(failures)}: {failures}")
    return summary
