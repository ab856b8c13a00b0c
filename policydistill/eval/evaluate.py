"""Evaluate a policy (one for every task, or one per task) on a suite, optionally against teachers."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from tqdm import tqdm

from policydistill.bundle import find_bundles, is_bundle, load_bundle
from policydistill.eval.metrics import summarise, teacher_normalised
from policydistill.eval.rollout import run_episodes
from policydistill.eval.video import record_video
from policydistill.policy import Policy
from policydistill.suite import Suite
from policydistill.teachers import load_policy

log = logging.getLogger(__name__)


def policies_for_suite(spec: str | Path, suite: Suite, device: str = "auto") -> dict[str, Policy]:
    """The policy of every task of ``suite`` from ``spec``.

    ``spec``: one bundle or ``module:callable`` (serves every task); a folder of bundles named by task
    (one per task); or ``suite`` (each task's own ``teacher`` from the suite file).
    """
    if str(spec) == "suite":
        missing = [t.name for t in suite.tasks if not t.teacher]
        if missing:
            raise ValueError(f"suite '{suite.name}' names no teacher for tasks {missing}")
        return {t.name: load_policy(t.teacher, device=device) for t in suite.tasks}
    path = Path(spec)
    if is_bundle(path) or (not path.exists() and ":" in str(spec)):
        policy = load_policy(str(spec), device=device)
        return {name: policy for name in suite.task_names}
    if not path.is_dir():
        raise FileNotFoundError(f"no policy bundle or folder of bundles at '{path}' "
                                "(expected a bundle, a folder of bundles, 'module:callable' or 'suite')")
    found = find_bundles(path)
    missing = [n for n in suite.task_names if n not in found]
    if missing:
        raise ValueError(f"'{path}' has no bundle for tasks {missing} of suite '{suite.name}'; "
                         f"it has bundles {sorted(found)}")
    return {n: load_bundle(found[n], device=device) for n in suite.task_names}


def evaluate(suite: Suite, policies: dict[str, Policy], episodes: int = 20, n_envs: int = 8, seed: int = 1000,
             teachers: dict[str, Policy] | None = None, video_dir: str | Path | None = None) -> dict[str, Any]:
    """Seeded rollouts of every task; with ``teachers``, the same episodes for them and the scores."""
    result: dict[str, Any] = {"suite": suite.name, "episodes": episodes, "seed": seed, "tasks": {}}
    total = episodes * len(suite.tasks) * (2 if teachers else 1)
    with tqdm(total=total, desc="evaluate", unit="ep", leave=False) as bar:
        for name in suite.task_names:
            eps = run_episodes(suite, name, policies[name], episodes, n_envs=n_envs, seed=seed)
            bar.update(episodes)
            row = summarise(eps)
            if teachers is not None:
                t_row = summarise(run_episodes(suite, name, teachers[name], episodes, n_envs=n_envs, seed=seed))
                bar.update(episodes)
                row["teacher"] = teacher_normalised(row, t_row)
            if video_dir is not None:
                row["video"] = str(record_video(suite, name, policies[name], Path(video_dir) / name, seed=seed))
            if row["dropped"]:
                log.warning("task %s: %d episodes dropped (see 'dropped' in the result)", name, len(row["dropped"]))
            result["tasks"][name] = row
    return result


def format_table(result: dict[str, Any]) -> str:
    """A fixed-width table of an evaluation result, one row per task."""
    has_teacher = any("teacher" in r for r in result["tasks"].values())
    head = f"{'task':<14}{'return':>10}{'± ci95':>9}{'success':>9}{'length':>8}{'dropped':>8}"
    if has_teacher:
        head += f"{'teacher':>10}{'score':>8}{'Δsucc':>8}"
    lines = [head, "-" * len(head)]
    for name, r in result["tasks"].items():
        line = (f"{name:<14}{r['return_mean']:>10.2f}{r['return_ci95']:>9.2f}{r['success_rate']:>9.2f}"
                f"{r['length_mean']:>8.0f}{len(r['dropped']):>8d}")
        if "teacher" in r:
            t = r["teacher"]
            score = "n/a" if t["score"] is None else f"{t['score']:.3f}"
            line += f"{t['teacher_return_mean']:>10.2f}{score:>8}{t['success_diff']:>+8.2f}"
        lines.append(line)
    return "\n".join(lines)
