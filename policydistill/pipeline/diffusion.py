"""The pipeline's diffusion -> one-step stage (see :class:`DiffusionStageConfig`).

Takes the committed diffusion teacher of its suite (or trains one from the suite's expert zoo), distils
one one-step student per algorithm, and evaluates all of them on the same seeded episodes: the teacher
at 100, 10 and 1 DDIM steps and every student, each with its teacher-normalised score and success and its batch-1 chunk
latency on one thread (torch eager). Writes ``<out>/diffusion/`` (runs, ``onestep.json``,
``onestep.png``) and a report section.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from policydistill.bundle import load_bundle
from policydistill.configs import require_choice, require_int
from policydistill.distill.diffusion import DiffusionConfig
from policydistill.distill.onestep import ALGOS, OneStepConfig
from policydistill.distill.runner import DistillConfig, distill
from policydistill.eval.evaluate import evaluate, random_baseline
from policydistill.eval.latency import chunk_latency
from policydistill.eval.metrics import mean_of, mean_rate, ordering, teacher_normalised
from policydistill.files import atomic_write_json, read_json
from policydistill.models.diffusion import DiffusionPolicy
from policydistill.pipeline.workers import distill_all
from policydistill.suites import Suite, diffusion_zoo_dir, load_suite, zoo_dir
from policydistill.teachers import policies_for_suite
from policydistill.types import stack_obs

if TYPE_CHECKING:
    from policydistill.eval.report import Report

log = logging.getLogger(__name__)

TEACHER_STEPS = (100, 10, 1)


def ZOO_RECIPE() -> DiffusionConfig:  # noqa: N802 (a constant recipe, built fresh for each use)
    """How the committed diffusion teachers (``envs/zoo/diffusion/<suite>``) were trained from their suite's
    expert zoo (``scripts/train_zoo.py --diffusion``)."""
    return DiffusionConfig(demos="mirror_routes", episodes_per_task=100, train_steps=20_000)


@dataclass
class DiffusionStageConfig:
    """The pipeline's diffusion -> one-step stage on ``suite``: the diffusion teacher ``teacher_from`` (``zoo``:
    the committed one of ``envs/zoo/diffusion/<suite>``; ``train``: trained with ``teacher`` from ``teachers``,
    ``zoo`` being the suite's committed experts; or the path of a diffusion policy bundle), then a one-step
    student per algorithm of ``algos`` (``onestep``: their shared settings; each reads its own), evaluated
    beside the teacher at 100, 10 and 1 DDIM steps on ``eval_episodes`` per task, latency over
    ``latency_calls`` calls."""

    enabled: bool = True
    suite: str = "default_hazard"
    teacher_from: str = "zoo"
    teachers: str = "zoo"
    algos: list[str] = field(default_factory=lambda: ["dmd", "dmd_det", "consistency", "regression"])
    eval_episodes: int = 10
    latency_calls: int = 200
    teacher: DiffusionConfig = field(default_factory=ZOO_RECIPE)
    onestep: OneStepConfig = field(default_factory=lambda: OneStepConfig(
        steps=400, episodes_per_task=10, pairs=8192))

    def __post_init__(self) -> None:
        for algo in self.algos:
            require_choice("diffusion.algos entry", algo, ALGOS)
        require_int("diffusion.eval_episodes", self.eval_episodes)
        require_int("diffusion.latency_calls", self.latency_calls)
        if self.teacher_from == "train":
            return
        unread = [k for k, v in (("teachers", self.teachers != "zoo"), ("teacher", self.teacher != ZOO_RECIPE()))
                  if v]
        if unread:
            raise ValueError(f"diffusion.teacher_from={self.teacher_from} does not read diffusion."
                             f"{', diffusion.'.join(unread)}; set diffusion.teacher_from=train to train the "
                             "teacher with them")
        if self.teacher_from == "zoo" and not (diffusion_zoo_dir(self.suite) / "policy.json").is_file():
            have = sorted(p.name for p in diffusion_zoo_dir(self.suite).parent.iterdir() if p.is_dir())
            raise ValueError(f"there is no committed diffusion teacher for suite '{self.suite}' (there is one for: "
                             f"{', '.join(have)}); set diffusion.teacher_from=train or the path of a diffusion bundle")
        if self.teacher_from != "zoo" and not (Path(self.teacher_from) / "policy.json").is_file():
            raise ValueError(f"diffusion.teacher_from must be zoo, train or a diffusion policy bundle (a folder "
                             f"with policy.json), got {self.teacher_from!r}")

    def teacher_bundle(self) -> Path | None:
        """The diffusion teacher's bundle; None when the stage trains it."""
        if self.teacher_from == "train":
            return None
        return diffusion_zoo_dir(self.suite) if self.teacher_from == "zoo" else Path(self.teacher_from)


def check_diffusion_teacher(bundle: Path, suite: Suite) -> None:
    """A ValueError unless ``bundle`` holds a diffusion policy that acts on ``suite``."""
    policy = next(iter(policies_for_suite(bundle, suite, device="cpu").values()))
    if not isinstance(policy, DiffusionPolicy):
        raise ValueError(f"diffusion.teacher_from: {bundle} holds a {type(policy).__name__}, not a diffusion policy")


def compare(suite: Suite, policies: dict[str, Any], reference: str, episodes: int, seed: int,
            latency_calls: int) -> dict[str, Any]:
    """Per policy: per-task return and success, score, return ratio and success ratio against ``reference`` (as
    :func:`~policydistill.eval.metrics.teacher_normalised` against a teacher, a uniform random policy on the same
    episodes being the score's 0), their means and worst tasks, and batch-1 chunk latency (skipped when
    ``latency_calls`` is 0)."""
    obs = stack_obs([suite.make_env(0).reset(seed=seed)[0]])
    randoms = random_baseline(suite, episodes, seed)
    results = {}
    for name, policy in policies.items():
        ev = evaluate(suite, dict.fromkeys(suite.task_names, policy), episodes=episodes, seed=seed)
        results[name] = {"tasks": {t: {k: r[k] for k in ("return_mean", "return_ci95", "success_rate")}
                                   for t, r in ev["tasks"].items()},
                         "latency": chunk_latency(policy, obs, latency_calls) if latency_calls else None}
    ref = results[reference]
    for r in results.values():
        for t, row in r["tasks"].items():
            scores = teacher_normalised(row, ref["tasks"][t], randoms[t])
            row.update({k: scores[k] for k in ("score", "return_ratio", "success_ratio")})
        rows = r["tasks"].values()
        for key in ("score", "return_ratio", "success_ratio"):
            values = [row[key] for row in rows if row[key] is not None]
            r[f"mean_{key}"], r[f"min_{key}"] = mean_of(rows, key), min(values) if values else None
        r["mean_success"] = mean_rate([row["success_rate"] for row in r["tasks"].values()])
        if r["latency"]:
            r["speedup_p50"] = ref["latency"]["p50_ms"] / r["latency"]["p50_ms"]
    return results


def plot_onestep(path: Path, results: dict[str, Any]) -> Path:
    """Left: mean random-normalised score and success per policy. Right: batch-1 chunk latency (log)."""
    import matplotlib.pyplot as plt

    from policydistill.eval.report import save_figure

    names = list(results)
    x = np.arange(len(names))
    fig, axes = plt.subplots(1, 2, figsize=(13, 4))
    axes[0].bar(x - 0.2, [results[n]["mean_score"] or 0 for n in names], 0.4, label="score (random-normalised)")
    axes[0].bar(x + 0.2, [results[n]["mean_success"] for n in names], 0.4, label="success rate")
    axes[0].axhline(0.95, color="grey", lw=0.8, ls="--")
    axes[0].set_xticks(x, names, rotation=25, ha="right")
    axes[0].set(title="vs the 100-step teacher, mean over tasks", ylim=(0, 1.1))
    axes[0].legend(fontsize=8)
    axes[1].bar(x, [results[n]["latency"]["p50_ms"] for n in names],
                yerr=[[0] * len(names), [results[n]["latency"]["p99_ms"] - results[n]["latency"]["p50_ms"]
                                         for n in names]], capsize=3)
    axes[1].set_yscale("log")
    axes[1].set_xticks(x, names, rotation=25, ha="right")
    axes[1].set(title="chunk latency, batch 1, one thread (p50, bar to p99)", ylabel="ms")
    fig.tight_layout()
    return save_figure(fig, path)


def stage_diffusion(cfg: Any, suite: Suite, out: Path, report: Report) -> None:
    """Diffusion policy -> one-step students on ``cfg.diffusion.suite``; adds the report section."""
    from policydistill.eval.report import markdown_table

    stage = cfg.diffusion
    if not stage.enabled:
        return
    dsuite = load_suite(stage.suite)
    root = out / "diffusion"

    def job(method: Any, teachers: Path, to: Path) -> DistillConfig:
        return DistillConfig(suite=stage.suite, teachers=str(teachers), out=str(to), seed=cfg.seed,
                             device=cfg.device, method=method, eval_episodes=stage.eval_episodes,
                             final_episodes=0)  # compare() evaluates every policy side by side

    if stage.teacher_from == "train":
        distill(job(stage.teacher, zoo_dir(dsuite.name) if stage.teachers == "zoo" else Path(stage.teachers),
                    root / "teacher"))
        bundle = root / "teacher" / "student"
        source = "the expert zoo" if stage.teachers == "zoo" else f"`{stage.teachers}`"
        made = f"trained in this run from {source} ({stage.teacher.train_steps} updates)"
    else:
        bundle = stage.teacher_bundle()
        made = f"`{stage.teacher_from}`"
        if stage.teacher_from == "zoo":
            info = read_json(bundle / "zoo.json")
            made = (f"the committed one of the zoo (`envs/zoo/diffusion/{dsuite.name}`: {info['updates']} updates "
                    f"on {info['recipe']['episodes_per_task']} demonstrations per task, {info['wall_time_s']:.0f} s "
                    "on one core; `scripts/train_zoo.py --diffusion` retrains it)")
    timed = distill_all({algo: job(stage.onestep.for_algo(algo), bundle, root / algo) for algo in stage.algos},
                        cfg.workers, "one-step student")
    runs = {algo: timed[algo][0] for algo in stage.algos}
    policies: dict[str, Any] = {}
    for k in TEACHER_STEPS:
        policies[f"teacher ddim {k}"] = load_bundle(bundle, device=cfg.device).set_sampler("ddim", k)
    for algo in stage.algos:
        policies[f"one-step {algo}"] = load_bundle(root / algo / "student", device=cfg.device)
    results = compare(dsuite, policies, f"teacher ddim {TEACHER_STEPS[0]}", stage.eval_episodes, cfg.eval_seed,
                      stage.latency_calls)
    order = ordering({algo: [results[f"one-step {algo}"]["mean_score"]] for algo in stage.algos})
    atomic_write_json(root / "onestep.json", {"suite": dsuite.name, "teacher": str(bundle),
                                              "onestep_steps": stage.onestep.steps, "results": results,
                                              "ordering": order, "runs": {a: r["rounds"][-1] for a, r in runs.items()}})
    plot_onestep(root / "onestep.png", results)
    rows = []
    for name, r in results.items():
        algo = name.removeprefix("one-step ")
        upd = runs[algo]["rounds"][-1]["updates"] if algo in runs else ""
        lat = r["latency"]
        rows.append([name, r["mean_score"], r["min_score"], r["mean_success"], lat["p50_ms"], lat["p99_ms"],
                     lat["cpu_p99_ms"], f"{r['speedup_p50']:.0f}x", upd])
    report.add("Diffusion policy and one-step students", markdown_table(
        ["policy", "mean score", "worst task score", "success", "p50 ms", "p99 ms", "cpu p99 ms", "speed-up (p50)",
         "updates"], rows)
        + f"\n\nThe one-step students by mean score: {order}."
        + f" Suite `{dsuite.name}` (the default tasks with a pit halfway to the goal; demonstrations: each "
          f"task's zoo expert or its mirror image, per episode, so every task is shown passing left and right). "
          f"Teacher: a diffusion policy, {made}; students: {stage.onestep.steps} updates each, initialised from "
          "the teacher. Score: (return - random) / (the 100-step teacher's return - random) "
          f"on the same {stage.eval_episodes} seeded episodes per task, random being a uniform random policy. "
          f"Latency: one `predict_chunk` at batch 1 on one "
          f"thread (torch eager), {stage.latency_calls} calls; wall-clock, and the thread's CPU time (the latency on "
          "a dedicated core: wall-clock on a shared machine includes preemption). Benchmarks with full budgets: "
          "`bench/onestep_fidelity.py`, `bench/onestep_latency.py`.\n\n![one-step](diffusion/onestep.png)")
