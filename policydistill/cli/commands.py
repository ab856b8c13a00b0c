"""What each CLI subcommand does with its (already validated) config; each returns the numbers a sweep's
summary table shows."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from policydistill.datasets.command import DatasetConfig
from policydistill.distill.monitor import FitMonitorConfig
from policydistill.distill.offline import NO_TEACHERS
from policydistill.distill.retrain import TrainStudentConfig, check_run, locked, output_folder, train_student
from policydistill.distill.runner import DistillConfig, distill
from policydistill.eval.evaluate import EvaluateConfig, evaluate, format_table
from policydistill.eval.metrics import fmt_rate, mean_rate
from policydistill.eval.video import check_renderable
from policydistill.experts import TrainExpertsConfig, train_experts
from policydistill.files import atomic_write_json, check_writable, read_json
from policydistill.pipeline import PipelineConfig, run_pipeline
from policydistill.runtime.export import ExportConfig
from policydistill.runtime.run import RunConfig
from policydistill.scale.torchrun import launch, under_torchrun
from policydistill.suites import load_suite
from policydistill.teachers import policies_for_suite
from policydistill.teachers.sb3 import ImportSB3Config

log = logging.getLogger(__name__)


def train_experts_cmd(cfg: TrainExpertsConfig, overrides: list[str]) -> dict[str, Any]:
    suite = load_suite(cfg.suite)
    summary = train_experts(suite, cfg.expert, cfg.out, workers=cfg.workers, seed=cfg.seed, device=cfg.device,
                            tasks=cfg.tasks, launcher=cfg.launcher, ray=cfg.ray, resume=cfg.resume)
    for name, r in summary["tasks"].items():
        log.info("%-12s %s %7d steps %6.0f s  return %8.2f ± %.2f  success %s", name, r["algo"],
                 r["env_steps"], r["wall_time_s"], r["return_mean"], r["return_std"], fmt_rate(r["success_rate"]))
    log.info("summary: %s", Path(cfg.out) / "experts.json")
    tasks = summary["tasks"].values()
    return {"return": float(np.mean([t["return_mean"] for t in tasks])),
            "success": mean_rate([t["success_rate"] for t in tasks])}


def evaluate_cmd(cfg: EvaluateConfig, overrides: list[str]) -> dict[str, Any]:
    if cfg.out:
        check_writable(cfg.out, "file")
    suite = load_suite(cfg.suite)
    if cfg.video:
        check_renderable(suite)
    policies = policies_for_suite(cfg.policy, suite, device=cfg.device)
    if cfg.sampler:
        from policydistill.models.diffusion import apply_sampler

        apply_sampler(policies.values(), cfg.sampler)
    teachers = policies_for_suite(cfg.teachers, suite, device=cfg.device) if cfg.teachers else None
    video_dir = (Path(cfg.out).parent if cfg.out else Path(".")) / "videos" if cfg.video else None
    result = evaluate(suite, policies, episodes=cfg.episodes, n_envs=cfg.n_envs, seed=cfg.seed,
                      teachers=teachers, video_dir=video_dir)
    result["policy"] = cfg.policy
    if cfg.sampler:
        result["sampler"] = cfg.sampler
    print(format_table(result))
    if cfg.out:
        atomic_write_json(cfg.out, result)
        log.info("wrote %s", cfg.out)
    tasks = result["tasks"].values()
    return {"return": float(np.mean([t["return_mean"] for t in tasks])),
            "success": mean_rate([t["success_rate"] for t in tasks])}


def pipeline_cmd(cfg: PipelineConfig, overrides: list[str]) -> dict[str, Any]:
    return {"report": str(run_pipeline(cfg))}


def import_sb3_cmd(cfg: ImportSB3Config, overrides: list[str]) -> dict[str, Any]:
    from gymnasium import spaces

    from policydistill.teachers.sb3 import import_sb3_zip
    from policydistill.types import select_groups

    suite = load_suite(cfg.suite)
    task = cfg.task or suite.task_names[0]
    obs_space, action_space = suite.spaces[suite.index(task)]
    try:
        obs_space = spaces.Dict(select_groups(obs_space.spaces, cfg.groups))
    except KeyError as e:
        raise ValueError(f"groups={list(cfg.groups)} does not fit task '{task}' of suite '{suite.name}': "
                         f"{e.args[0]}") from None
    path = import_sb3_zip(cfg.model, cfg.out, obs_space, cfg.groups, vecnormalize_path=cfg.vecnormalize,
                          algo=cfg.algo, action_space=action_space, trust_pickle=cfg.trust_pickle)
    log.info("imported %s as bundle %s (task %s of suite %s)", cfg.model, path, task, suite.name)
    return {"bundle": str(path)}


def distill_cmd(cfg: DistillConfig, overrides: list[str]) -> dict[str, Any]:
    summary = distill(cfg)
    last = summary["rounds"][-1]
    ref = "data" if summary["teachers"] == NO_TEACHERS else "teacher"  # offline: scored against its episodes
    for name, t in last["tasks"].items():
        log.info("%-12s student return %8.2f  %s %8.2f  random %8.2f  score %s  success %s (%s %s)", name,
                 t["return_mean"], ref, t["teacher_return_mean"], t["random_return_mean"], fmt_rate(t["score"], ".3f"),
                 fmt_rate(t["success_rate"]), ref, fmt_rate(t["teacher_success_rate"]))
    head = last["headline"]
    log.info("last round: %s %s", head["metric"], fmt_rate(head["value"], ".3f"))
    out = Path(cfg.out)
    log.info("student bundle: %s (last round), %s (round %s: %s)  summary: %s", out / "student", out / "best",
             summary["best_round"], summary["best"]["criterion"], out / "distill.json")
    return {"success_ratio": last["mean_success_ratio"], "success": last["mean_success"], "score": last["mean_score"],
            "return": last["student_return"], "labels": last["labels_used"],
            "rounds": len(summary["rounds"]), "wall_s": last["wall_time_s"]}


def run_cmd(cfg: RunConfig, overrides: list[str]) -> dict[str, Any]:
    from policydistill.runtime.loop import format_stats
    from policydistill.runtime.run import run_policy

    if cfg.out:
        check_writable(cfg.out, "file")
    options = asdict(cfg.runtime)
    budget = options.pop("latency_budget_ms")
    options["latency_budget_s"] = None if budget is None else budget / 1e3
    stats = run_policy(cfg.policy, cfg.suite, cfg.rate_hz, cfg.ticks, task=cfg.task, n_envs=cfg.n_envs,
                       backend=cfg.backend, seed=cfg.seed, cpu=cfg.cpu, realtime=cfg.realtime,
                       log_every_s=cfg.log_every_s, sampler_steps=cfg.sampler_steps, controller=options)
    print(format_stats(stats))
    eps = stats["episodes"]
    if eps["count"]:
        print(f"  episodes {eps['count']}: return {eps['return_mean']:.2f}, success {eps['success_rate']:.2f}")
    if cfg.out:
        atomic_write_json(cfg.out, {"config": asdict(cfg), **stats})
        log.info("wrote %s", cfg.out)
    stopped = stats["controller"]["stopped"]
    if stopped:
        why = "a failure monitor alarm" if stopped["reason"] != "policy faults" else \
            f"{stopped['consecutive_faults']} policy faults in a row (last: {stopped['last_fault']})"
        raise RuntimeError(f"the controller stopped safely at tick {stopped['tick']} after {why}")
    return {"p99_us": stats["latency"]["p99_us"], "misses": stats["deadline_misses"]}


def export_cmd(cfg: ExportConfig, overrides: list[str]) -> dict[str, Any]:
    from policydistill.runtime.export import export_policy, sidecar_path

    out = export_policy(cfg.policy, cfg.format, cfg.out, opset=cfg.opset, check=cfg.check)
    log.info("exported %s -> %s (description %s)", cfg.policy, out, sidecar_path(out))
    return {"model": str(out)}


def train_student_cmd(cfg: TrainStudentConfig, overrides: list[str]) -> dict[str, Any]:
    """One process (``nproc=1``, or a rank under torchrun), else N processes launched through torchrun."""
    if cfg.nproc > 1 and not under_torchrun():
        check_run(Path(cfg.run), cfg.nproc)
        with locked(cfg):
            launch("train-student", overrides, cfg.nproc)
        summary = read_json(output_folder(cfg) / "train_student.json")
    else:
        summary = train_student(cfg)
    return {"loss": summary["final_loss"], "world_size": summary["world_size"]}


def fit_monitor_cmd(cfg: FitMonitorConfig, overrides: list[str]) -> dict[str, Any]:
    from policydistill.distill.monitor import fit_run_monitor
    from policydistill.runtime.monitor import load_monitor

    bundle = fit_run_monitor(cfg)
    monitor = load_monitor(bundle)
    log.info("failure monitor stored in %s: threshold %.3g (false alarms <= %g per in-distribution episode, %d "
             "calibration episodes); use it with: policydistill run policy=%s runtime.monitor=policy", bundle,
             monitor.threshold, monitor.alpha, monitor.episodes, bundle)
    return {"threshold": monitor.threshold, "episodes": monitor.episodes}


def dataset_cmd(cfg: DatasetConfig, overrides: list[str]) -> dict[str, Any]:
    from policydistill.datasets.command import dataset_command

    return dataset_command(cfg)


@dataclass(frozen=True)
class Command:
    """A subcommand: its config schema, what it does, its one-line help."""

    schema: type
    run: Callable[[Any, list[str]], dict[str, Any]]
    usage: str


COMMANDS: dict[str, Command] = {
    "pipeline": Command(PipelineConfig, pipeline_cmd,
                        "train experts on a suite, evaluate them, distil, write report.md (the main job)"),
    "train-experts": Command(TrainExpertsConfig, train_experts_cmd,
                             "one specialist per task: suite=<name> out=<dir> workers=N expert=ppo|sac|td3"),
    "evaluate": Command(EvaluateConfig, evaluate_cmd,
                        "seeded rollouts: policy=<bundle or folder> suite=<name> episodes=N out=<file.json>"),
    "distill": Command(DistillConfig, distill_cmd,
                       "teacher-student distillation: method=bc|dagger|gated|onpolicy|kickstart|diffusion|onestep "
                       "suite=<name> teachers=<dir> out=<dir>"),
    "import-sb3": Command(ImportSB3Config, import_sb3_cmd,
                          "turn an SB3 .zip (+ VecNormalize .pkl) into a bundle, without unpickling"),
    "run": Command(RunConfig, run_cmd,
                   "fixed-rate control loop on a simulated robot: policy=<bundle|.onnx|.pt> suite=<name> rate_hz=<f>"),
    "export": Command(ExportConfig, export_cmd,
                      "policy=<bundle> format=torchscript|onnx out=<path>, normalisation and post-processing inside"),
    "fit-monitor": Command(FitMonitorConfig, fit_monitor_cmd,
                           "the failure monitor of a distill run, conformally calibrated: run=<distill out> "
                           "alpha=0.05"),
    "train-student": Command(TrainStudentConfig, train_student_cmd,
                             "more student updates over a distill run's episodes, DDP on nproc processes: "
                             "run=<distill out> nproc=N"),
    "dataset": Command(DatasetConfig, dataset_cmd,
                       "episode stores in and out of Minari: dataset info|validate path=<store or dataset>, "
                       "dataset export episodes=<store> format=minari out=<dir>, dataset import path=<dataset> "
                       "out=<store>"),
}
