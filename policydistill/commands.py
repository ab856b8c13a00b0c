"""What each CLI subcommand does with its (already validated) config."""

from __future__ import annotations

import logging
from pathlib import Path

from policydistill.config import (
    DistillConfig,
    EvaluateConfig,
    ExportConfig,
    ImportSB3Config,
    PipelineConfig,
    RunConfig,
    TrainExpertsConfig,
    TrainStudentConfig,
)
from policydistill.eval.evaluate import evaluate, format_table, policies_for_suite
from policydistill.io import atomic_write_json
from policydistill.suite import load_suite

log = logging.getLogger(__name__)


def train_experts_cmd(cfg: TrainExpertsConfig) -> None:
    from policydistill.train.experts import train_experts

    suite = load_suite(cfg.suite)
    summary = train_experts(suite, cfg.expert, cfg.out, workers=cfg.workers, seed=cfg.seed, device=cfg.device,
                            tasks=cfg.tasks, launcher=cfg.launcher, ray=cfg.ray)
    for name, r in summary["tasks"].items():
        log.info("%-12s %s %7d steps %6.0f s  return %8.2f ± %.2f  success %.2f", name, r["algo"],
                 r["env_steps"], r["wall_time_s"], r["return_mean"], r["return_std"], r["success_rate"])
    log.info("summary: %s", Path(cfg.out) / "experts.json")


def evaluate_cmd(cfg: EvaluateConfig) -> None:
    suite = load_suite(cfg.suite)
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


def pipeline_cmd(cfg: PipelineConfig) -> None:
    from policydistill.pipeline import run_pipeline

    run_pipeline(cfg)


def import_sb3_cmd(cfg: ImportSB3Config) -> None:
    from gymnasium import spaces

    from policydistill.teachers.sb3 import import_sb3_zip

    suite = load_suite(cfg.suite)
    task = cfg.task or suite.task_names[0]
    env = suite.make_env(task)
    obs_space = spaces.Dict({g: env.observation_space[g] for g in cfg.groups})
    env.close()
    path = import_sb3_zip(cfg.model, cfg.out, obs_space, cfg.groups, vecnormalize_path=cfg.vecnormalize,
                          algo=cfg.algo)
    log.info("imported %s as bundle %s (task %s of suite %s)", cfg.model, path, task, suite.name)


def distill_cmd(cfg: DistillConfig) -> None:
    from policydistill.distill.loop import distill

    if not cfg.teachers:
        raise ValueError("'distill' needs teachers=<folder of bundles, one per task | bundle | module:callable "
                         "| suite>")
    suite = load_suite(cfg.suite)
    teachers = policies_for_suite(cfg.teachers, suite, device=cfg.device)
    if cfg.method in ("diffusion", "onestep"):
        from policydistill.distill.diffusion import distill_diffusion
        from policydistill.distill.onestep import distill_onestep

        distill = {"diffusion": distill_diffusion, "onestep": distill_onestep}[cfg.method]
    summary = distill(cfg, suite, teachers)
    last = summary["rounds"][-1]
    for name, t in last["tasks"].items():
        score = "n/a" if t["score"] is None else f"{t['score']:.3f}"
        log.info("%-12s student return %8.2f  teacher %8.2f  score %s  success %.2f (teacher %.2f)", name,
                 t["return_mean"], t["teacher_return_mean"], score, t["success_rate"], t["teacher_success_rate"])
    log.info("student bundle: %s  summary: %s", Path(cfg.out) / "student", Path(cfg.out) / "distill.json")


def run_cmd(cfg: RunConfig) -> None:
    from dataclasses import asdict

    from policydistill.runtime.loop import format_stats
    from policydistill.runtime.run import run_policy

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


def export_cmd(cfg: ExportConfig) -> None:
    from policydistill.runtime.export import export_policy, sidecar_path

    out = export_policy(cfg.policy, cfg.format, cfg.out, opset=cfg.opset, check=cfg.check)
    log.info("exported %s -> %s (description %s)", cfg.policy, out, sidecar_path(out))


def train_student_cmd(cfg: TrainStudentConfig) -> None:
    from policydistill.scale.ddp_train import launch

    launch(cfg)
