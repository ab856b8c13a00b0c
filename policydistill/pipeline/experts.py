"""The pipeline's expert stages: train one specialist per task, evaluate them beside a random baseline (with a
video per task), and show whether the suite needs the task id (every expert on every task)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from policydistill.eval.evaluate import evaluate, format_table, random_policies
from policydistill.eval.metrics import summarise
from policydistill.eval.rollout import run_episodes
from policydistill.experts import train_experts
from policydistill.files import atomic_write_json
from policydistill.suites import Suite
from policydistill.teachers import policies_for_suite

if TYPE_CHECKING:
    from policydistill.eval.report import Report


def cross_task_success(suite: Suite, policies: dict[str, Any], episodes: int, seed: int) -> list[list[float]]:
    """``m[i][j]``: success rate of task i's policy on task j (off-diagonal: a task-blind policy)."""
    return [[summarise(run_episodes(suite, j, policies[a], episodes, seed=seed))["success_rate"]
             for j in range(len(suite.tasks))] for a in suite.task_names]


def stage_experts(cfg: Any, suite: Suite, out: Path, report: Report) -> dict[str, Any]:
    from policydistill.eval.report import markdown_table, plot_experts, read_curve  # matplotlib: imported here

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
                     f"{r['return_mean']:.2f} ± {r['return_ci95']:.2f}", r["success_rate"], r["dropped"],
                     f"{t['return_mean']:.2f}", t["success_rate"],
                     f"[{n}]({Path(r['video']).relative_to(out)})" if "video" in r else None])
    body = markdown_table(["task", "algo", "env steps", "train s", "s to threshold", "return (95% CI)",
                           "success", "dropped", "random return", "random success", "video"], rows)
    body += (f"\n\nEvaluation: {cfg.episodes} seeded episodes per task (seeds {cfg.eval_seed}…). "
             "'s to threshold': training wall time until the evaluation success rate first reached the "
             "task's threshold. 'dropped': episodes ended by an env fault, counted as failures."
             "\n\n![experts](experts.png)")
    report.add("Experts", body)
    return result


def stage_task_blindness(cfg: Any, suite: Suite, out: Path, report: Report) -> None:
    from policydistill.eval.report import markdown_table

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
