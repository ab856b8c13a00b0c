"""Evaluate a policy (one for every task, or one per task) on a suite, optionally against teachers."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from policydistill.configs import require_device, require_int
from policydistill.eval.metrics import fmt_rate, summarise, teacher_normalised, wilson_half_width
from policydistill.eval.rollout import run_episodes
from policydistill.eval.video import record_video
from policydistill.policy import Policy, RandomPolicy
from policydistill.suites import Suite
from policydistill.suites.batched import EnvPool

log = logging.getLogger(__name__)


@dataclass
class EvaluateConfig:
    """``policydistill evaluate``: ``episodes`` seeded episodes per task of ``suite`` (seeds ``seed``, ``seed``
    + 1, ...) on ``n_envs`` envs for ``policy`` (a bundle, a folder of bundles named by task, ``module:callable``
    or ``suite``), beside ``teachers`` when given (scores); a video per task with ``video``; ``sampler``
    (``ddim:<steps>`` or ``ddpm:<steps>``) overrides how a diffusion policy samples. Writes ``out`` (JSON)."""

    policy: str = "???"
    suite: str = "default"
    episodes: int = 20
    out: str | None = None
    teachers: str | None = None
    video: bool = False
    n_envs: int = 8
    seed: int = 1000
    device: str = "auto"
    sampler: str | None = None

    def __post_init__(self) -> None:
        require_device(self.device)
        require_int("episodes", self.episodes)
        require_int("n_envs", self.n_envs)
        require_int("seed", self.seed, 0)


def evaluate_per_task(suite: Suite, policy: Policy | dict[str, Policy], episodes: int, seed: int,
                      n_envs: int = 8, pool: EnvPool | None = None) -> dict[str, dict[str, Any]]:
    """Seeded evaluation of every task (one policy for all, or one per task), each in its own spaces:
    ``{task: summarise(...)}``, with ``dropped`` (int) and ``faults`` for the episodes a fault ended; ``pool``:
    the suite's envs to borrow."""
    return {n: summarise(run_episodes(suite, n, policy[n] if isinstance(policy, dict) else policy, episodes,
                                      n_envs=n_envs, seed=seed, pool=pool)) for n in suite.task_names}


def random_policies(suite: Suite, seed: int) -> dict[str, RandomPolicy]:
    """A uniform random policy per task, in the task's action space."""
    return {name: RandomPolicy(suite.spaces[i][1], seed=seed + i) for i, name in enumerate(suite.task_names)}


def random_baseline(suite: Suite, episodes: int, seed: int, n_envs: int = 8,
                    pool: EnvPool | None = None) -> dict[str, dict[str, Any]]:
    """Per task, a uniform random policy's :func:`summarise` row on the seeded episodes ``seed``, ``seed`` + 1,
    ... (the 0 of the random-normalised score)."""
    return evaluate_per_task(suite, random_policies(suite, seed), episodes, seed, n_envs, pool)


def evaluate_to_interval(suite: Suite, policy: Policy, seed: int, half_width: float = 0.05,
                         max_episodes: int = 400, batch: int = 50, n_envs: int = 8,
                         pool: EnvPool | None = None) -> dict[str, dict[str, Any]]:
    """Per task, seeded episodes (seeds ``seed``, ``seed`` + 1, ...) in batches of ``batch`` until the 95% Wilson
    interval of its success rate is within ``± half_width``, or ``max_episodes``; one batch for a task without
    success. Each task's row is :func:`summarise`'s plus ``success_ci95`` (the interval's half-width, None
    without success)."""
    out = {}
    for name in suite.task_names:
        episodes: list = []
        while True:
            n = min(batch, max_episodes - len(episodes))
            episodes += run_episodes(suite, name, policy, n, n_envs=n_envs, seed=seed + len(episodes), pool=pool)
            row = summarise(episodes)
            rate = row["success_rate"]
            width = None if rate is None else wilson_half_width(rate, len(episodes))
            if width is None or width <= half_width or len(episodes) >= max_episodes:
                break
        out[name] = {**row, "success_ci95": width}
    return out


def evaluate(suite: Suite, policies: dict[str, Policy], episodes: int = 20, n_envs: int = 8, seed: int = 1000,
             teachers: dict[str, Policy] | None = None, video_dir: str | Path | None = None) -> dict[str, Any]:
    """Seeded rollouts of every task; with ``teachers``, the same episodes for them and a uniform random policy,
    and the scores (see :func:`~policydistill.eval.metrics.teacher_normalised`). Episodes
    ended by an env fault count as failures; ``dropped`` and ``faults`` of each task list them."""
    result: dict[str, Any] = {"suite": suite.name, "episodes": episodes, "seed": seed, "tasks": {}}
    total = episodes * len(suite.tasks) * (3 if teachers else 1)
    randoms = random_policies(suite, seed)
    with tqdm(total=total, desc="evaluate", unit="ep", leave=False) as bar:
        for name in suite.task_names:
            eps = run_episodes(suite, name, policies[name], episodes, n_envs=n_envs, seed=seed)
            bar.update(episodes)
            row = summarise(eps)
            if teachers is not None:
                t_row, r_row = (summarise(run_episodes(suite, name, p[name], episodes, n_envs=n_envs, seed=seed))
                                for p in (teachers, randoms))
                bar.update(2 * episodes)
                row["teacher"] = teacher_normalised(row, t_row, r_row)
            if video_dir is not None:
                row["video"] = str(record_video(suite, name, policies[name], Path(video_dir) / name, seed=seed))
            if row["dropped"]:
                log.warning("task %s: %d of %d episodes ended in a fault and count as failures (see 'faults' "
                            "in the result)", name, row["dropped"], episodes)
            result["tasks"][name] = row
    return result


def format_table(result: dict[str, Any]) -> str:
    """A fixed-width table of an evaluation result, one row per task."""
    has_teacher = any("teacher" in r for r in result["tasks"].values())
    head = f"{'task':<14}{'return':>10}{'± ci95':>9}{'success':>9}{'length':>8}{'dropped':>8}"
    if has_teacher:
        head += f"{'teacher':>10}{'random':>10}{'score':>8}{'Δsucc':>8}"
    lines = [head, "-" * len(head)]
    for name, r in result["tasks"].items():
        line = (f"{name:<14}{r['return_mean']:>10.2f}{r['return_ci95']:>9.2f}{fmt_rate(r['success_rate']):>9}"
                f"{r['length_mean']:>8.0f}{r['dropped']:>8d}")
        if "teacher" in r:
            t = r["teacher"]
            line += (f"{t['teacher_return_mean']:>10.2f}{t['random_return_mean']:>10.2f}"
                     f"{fmt_rate(t['score'], '.3f'):>8}{fmt_rate(t['success_diff'], '+.2f'):>8}")
        lines.append(line)
    return "\n".join(lines)
