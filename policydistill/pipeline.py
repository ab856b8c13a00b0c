"""The main job: train experts -> evaluate them (with baselines) -> distil a generalist -> report.md.

Each stage is a function that reads and writes under ``out`` and adds its section to the report;
a rerun skips what is already done (finished experts are not retrained).
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from policydistill.config import PipelineConfig
from policydistill.eval.evaluate import evaluate, format_table, policies_for_suite
from policydistill.eval.metrics import summarise
from policydistill.eval.report import Report, markdown_table, plot_distill, plot_experts, read_curve
from policydistill.eval.rollout import run_episodes
from policydistill.io import atomic_write_json
from policydistill.pipeline_diffusion import stage_diffusion
from policydistill.policy import RandomPolicy
from policydistill.privileged_stage import stage_privileged
from policydistill.suite import Suite, load_suite
from policydistill.train.experts import train_experts

log = logging.getLogger(__name__)


def random_policies(suite: Suite, seed: int) -> dict[str, RandomPolicy]:
    out = {}
    for i, name in enumerate(suite.task_names):
        env = suite.make_env(i)
        out[name] = RandomPolicy(env.action_space, seed=seed + i)
        env.close()
    return out


def cross_task_success(suite: Suite, policies: dict[str, Any], episodes: int, seed: int) -> list[list[float]]:
    """``m[i][j]``: success rate of task i's policy on task j (off-diagonal: a task-blind policy)."""
    return [[summarise(run_episodes(suite, j, policies[a], episodes, seed=seed))["success_rate"]
             for j in range(len(suite.tasks))] for a in suite.task_names]


def stage_experts(cfg: PipelineConfig, suite: Suite, out: Path, report: Report) -> dict[str, Any]:
    experts = train_experts(suite, cfg.expert, out / "experts", workers=cfg.workers, seed=cfg.seed,
                            device=cfg.device, launcher=cfg.launcher, ray=cfg.ray)
    policies = policies_for_suite(out / "experts", suite, device=cfg.device)
    result = evaluate(suite, policies, episodes=cfg.episodes, seed=cfg.eval_seed,
                      video_dir=out / "videos" if cfg.video else None)
    baseline = evaluate(suite, random_policies(suite, cfg.seed), episodes=cfg.episodes, seed=cfg.eval_seed)
    atomic_write_json(out / "eval_experts.json", result)
    atomic_write_json(out / "eval_random.json", baseline)
    print(format_table(result))
    curves = {n: read_curve(out / "experts" / n / "curve.csv") for n in suite.task_names}
    plot_experts(out / "experts.png", curves, result, baseline)
    rows = []
    for n in suite.task_names:
        e, r, t = experts["tasks"][n], result["tasks"][n], baseline["tasks"][n]
        rows.append([n, e["algo"], e["env_steps"], e["wall_time_s"], e["seconds_to_threshold"],
                     f"{r['return_mean']:.2f} ± {r['return_ci95']:.2f}", r["success_rate"],
                     f"{t['return_mean']:.2f}", t["success_rate"],
                     f"[{n}]({Path(r['video']).relative_to(out)})" if "video" in r else None])
    body = markdown_table(["task", "algo", "env steps", "train s", "s to threshold", "return (95% CI)",
                           "success", "random return", "random success", "video"], rows)
    body += (f"\n\nEvaluation: {cfg.episodes} seeded episodes per task (seeds {cfg.eval_seed}…). "
             "'s to threshold': training wall time until the evaluation success rate first reached the "
             "task's threshold.\n\n![experts](experts.png)")
    report.add("Experts", body)
    return result


def stage_task_blindness(cfg: PipelineConfig, suite: Suite, out: Path, report: Report) -> None:
    if len(suite.tasks) < 2:
        return
    policies = policies_for_suite(out / "experts", suite, device=cfg.device)
    m = cross_task_success(suite, policies, episodes=max(5, cfg.episodes // 2), seed=cfg.eval_seed)
    atomic_write_json(out / "cross_task_success.json", {"tasks": suite.task_names, "success": m})
    rows = [[f"expert {a}", *m[i]] for i, a in enumerate(suite.task_names)]
    report.add("Does the suite need the task id?", markdown_table(["policy \\ task", *suite.task_names], rows)
               + "\n\nSuccess rate of each task's expert on every task. The tasks start from the same "
                 "observations, so a policy that does not know the task behaves like one row: it "
                 "succeeds on its own task and fails the others.")


def stage_distill(cfg: PipelineConfig, suite: Suite, out: Path, report: Report) -> None:
    """DAgger generalist (reads ``policy`` + ``task``) and, beside it, the same student without ``task``."""
    from policydistill.distill.loop import distill

    teachers = policies_for_suite(out / "experts", suite, device=cfg.device)
    runs = {}
    variants = {"dagger": cfg.distill.student.groups,
                "dagger, no task id": [g for g in cfg.distill.student.groups if g != "task"]}
    for name, groups in variants.items():
        if name != "dagger" and (len(suite.tasks) < 2 or groups == cfg.distill.student.groups):
            continue
        dcfg = replace(cfg.distill, suite=cfg.suite, seed=cfg.seed, device=cfg.device,
                       out=str(out / "distill" / name.replace(", ", "_").replace(" ", "_")),
                       student=replace(cfg.distill.student, groups=list(groups)))
        runs[name] = distill(dcfg, suite, teachers)
    plot_distill(out / "distill.png", runs)
    rows = []
    for t in suite.task_names:
        teacher = runs["dagger"]["teacher"][t]
        row = [t, f"{teacher['return_mean']:.2f}", teacher["success_rate"]]
        for run in runs.values():
            final = run["rounds"][-1]["tasks"][t]
            row += [f"{final['return_mean']:.2f}", final["score"], final["success_rate"]]
        rows.append(row)
    header = ["task", "teacher return", "teacher success"]
    for name in runs:
        header += [f"{name}: return", f"{name}: score", f"{name}: success"]
    last = runs["dagger"]["rounds"][-1]
    report.add("DAgger generalist", markdown_table(header, rows) + (
        f"\n\nOne student for all {len(suite.tasks)} tasks, {cfg.distill.method} with a "
        f"{cfg.distill.schedule} beta schedule, {len(runs['dagger']['rounds'])} rounds, {last['labels_used']} "
        f"teacher labels, {last['wall_time_s']:.0f} s. Score: student return / teacher return on the same "
        f"{cfg.distill.eval_episodes} seeded episodes per task. 'no task id': the same student without the "
        "`task` group.\n\n![distill](distill.png)"))


def run_pipeline(cfg: PipelineConfig) -> Path:
    """Run every stage on ``cfg.suite`` under ``cfg.out``; returns the path of report.md."""
    suite = load_suite(cfg.suite)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
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
