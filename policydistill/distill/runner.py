"""The runner: the one owner of a distillation run's rounds, for every method alike.

Per round: the method says what to collect (a plan, or nothing), the runner's collector runs the plan
(in this process, or on Ray rollout actors with ``collector=ray``) into the run's episode store, the
method updates from the store through the fit loop, the student is evaluated on every task on the
validation seeds (``eval_seed``), and the round is checkpointed and appended to ``distill.json``. The run
stops after ``rounds`` rounds, or after the first round whose mean score reaches ``stop_score`` (or whose mean
success ratio reaches ``stop_success``).

Per task, a round reports the student's success rate and return, its ``score`` (random-normalised:
(student - random) / (teacher - random) mean return, the teachers and a uniform random policy evaluated once
on the same validation seeds), ``return_ratio`` and ``success_ratio`` (see
:func:`~policydistill.eval.metrics.teacher_normalised`). A round's ``headline`` is its mean success ratio where
the suite defines success, else its mean score.

Output under ``out``::

    distill.json            method, suite, config, the teachers' and random evaluations, a row per round, best round
    student/                the student bundle of the last finished round
    episodes/               episode shards + manifest (what was collected)
    best/                   the student bundle of the best round (validation seeds: mean success, else mean score),
                            evaluated after the run on held-out seeds (``final`` in distill.json)
    checkpoint/round-<r>/   the last finished round: student bundle and the method's state (optimisers, EMA, ...)
    checkpoint/fit-<r>.pt   the round in progress, mid-fit (long fits checkpoint every ``checkpoint_every``)
    tb/                     TensorBoard: every row's numbers against labels used, the fit loss per update

A rerun with the same config resumes: after the last finished round, or inside the round in progress (its
collection, when complete, is kept; its fit continues from its checkpoint); what an interrupted collection
stored is removed first. The folder is a :class:`~policydistill.run_folder.RunFolder`: locked while the run
writes, refused when it holds something else, and a rerun whose config or teachers differ is refused with the
differing keys, unless ``resume=extend`` (``method.rounds``, ``stop_score`` and ``stop_success`` may change) or
``resume=false`` (start over).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from policydistill.bundle import load_bundle, save_bundle
from policydistill.configs import require_choice, require_device, require_int, require_number, set_keys
from policydistill.data.shards import EpisodeStore, drop_rounds, evict
from policydistill.distill.algorithm import Algorithm, Context, stream
from policydistill.distill.collect import Collector, CollectPlan, LocalCollector, RoundData
from policydistill.distill.dagger import DAggerConfig
from policydistill.distill.fit import FitJob, FitResult, fit, save_torch
from policydistill.distill.methods import METHODS, method_config, method_of
from policydistill.distill.offline import NO_TEACHERS, check_data, data_reference
from policydistill.eval.evaluate import evaluate_per_task, evaluate_to_interval, random_baseline
from policydistill.eval.metrics import fmt_rate, headline, mean_of, mean_rate, teacher_normalised
from policydistill.files import atomic_write_json, read_json, read_json_object
from policydistill.models import resolve_device
from policydistill.models.base import TorchPolicy
from policydistill.models.students import StudentConfig
from policydistill.policy import Policy
from policydistill.run_folder import RunFolder, resume_mode
from policydistill.scale.ray_session import ENGINES, RayConfig
from policydistill.suites import Suite, load_suite
from policydistill.suites.batched import EnvPool
from policydistill.teachers import policies_for_suite
from policydistill.teachers.load import teacher_identities

log = logging.getLogger(__name__)

SCHEMA_VERSION = 4
EXTENDABLE = ("method.rounds", "stop_score", "stop_success")
"""Config keys ``resume=extend`` lets change."""
FINAL_PER_EVAL_EPISODE = 40
"""With ``final_episodes`` None, the final evaluation runs at most this many times ``eval_episodes`` per task (400 at
the default 10: what a ± 0.05 interval on a success rate near 0.5 needs)."""
SUMMARY_KEYS = ("schema_version", "method", "suite", "config", "teacher", "random", "teacher_return", "rounds")


@dataclass
class DistillConfig:
    """``policydistill distill``: distil the ``teachers`` (a folder of bundles named by task, one bundle, a
    ``module:callable`` or ``suite``) of ``suite`` into a student, with ``method`` (``method=<name>`` chooses
    it, ``method.<key>=...`` sets its keys), writing under ``out``.

    ``student``: the network the method trains (``student=<kind>``; not read by ``diffusion`` and
    ``onestep``, whose policies follow from their method). ``n_envs``: envs stepped side by side when
    collecting and evaluating; the student's validation, ``eval_episodes`` per task each round on seeds
    ``eval_seed``, ..., steps all of a task's episodes side by side when they are more (:attr:`eval_envs`);
    ``stop_score``: stop after the first round whose mean (random-normalised) score reaches it (None: run every
    round); ``stop_success``: after the first whose mean success ratio (each task's success rate over its teacher's)
    reaches it, on a suite whose every task defines success (where episodes end at success, as on Metaworld, the
    score says little). ``collector``: ``local`` or ``ray`` (rollout actors, see ``ray``), for methods that collect
    through the runner. ``regression_margin``: a task whose success rate (score, where the suite defines no
    success) drops by more than it from one round to the next is flagged. After the last round, the student of
    the best round (``best/``) is evaluated on held-out seeds ``test_seed``, ...: ``final_episodes`` per task
    (None: as many as a ``± final_ci`` 95% interval on success needs, at most 40 × ``eval_episodes``; 0: no
    final evaluation). A key the chosen method does not read is an error naming the keys it reads."""

    suite: str = "default"
    teachers: str = "???"
    out: str = "runs/distill"
    seed: int = 0
    device: str = "auto"
    method: Any = None
    student: StudentConfig = field(default_factory=StudentConfig)
    n_envs: int = 8
    eval_episodes: int = 10
    eval_seed: int = 5000
    stop_score: float | None = None
    stop_success: float | None = None
    collector: str = "local"
    ray: RayConfig = field(default_factory=RayConfig)
    resume: str = "auto"
    regression_margin: float = 0.2
    test_seed: int = 9000
    final_episodes: int | None = None
    final_ci: float = 0.05

    def __post_init__(self) -> None:
        require_device(self.device)
        self.resume = resume_mode(self.resume)
        if self.method is None:
            self.method = DAggerConfig()
        cls = method_of(self.method)
        require_int("n_envs", self.n_envs)
        require_int("eval_episodes", self.eval_episodes)
        require_int("seed", self.seed, 0)
        require_int("eval_seed", self.eval_seed, 0)
        require_number("regression_margin", self.regression_margin, 0.0, 1.0)
        require_int("test_seed", self.test_seed, 0)
        require_number("final_ci", self.final_ci, 0.0, 0.5, low_open=True)
        if self.final_episodes is not None:
            require_int("final_episodes", self.final_episodes, 0)
        tests = range(self.test_seed, self.test_seed + (self.final_episodes or self.final_max_episodes))
        if tests.start < self.eval_seed + self.eval_episodes and self.eval_seed < tests.stop:
            raise ValueError(f"the final evaluation's seeds {tests.start}..{tests.stop - 1} (test_seed) overlap the "
                             f"validation seeds {self.eval_seed}..{self.eval_seed + self.eval_episodes - 1} "
                             "(eval_seed): choose test_seed apart")
        require_choice("collector", self.collector, ENGINES)
        for name in ("stop_score", "stop_success"):
            if getattr(self, name) is not None:
                require_number(name, getattr(self, name))
        unread = []
        if not cls.uses_student:
            unread += [f"student.{k}" for k in set_keys(self.student)]
        if not cls.collects:
            unread += ["collector"] * (self.collector != "local") + [f"ray.{k}" for k in set_keys(self.ray)]
        elif self.collector == "local":
            from policydistill.scale.ray_session import refuse_ray_keys
            refuse_ray_keys(self.ray, "collector")
        elif not cls.ray_collects:
            raise ValueError(f"method '{cls.name}' collects in this process only: use collector=local")
        if unread:
            raise ValueError(f"method '{cls.name}' does not read {', '.join(unread)}: "
                             f"{cls.not_read}; its keys are under method.* "
                             f"(policydistill distill method={cls.name} --cfg lists them)")

    @property
    def final_max_episodes(self) -> int:
        """The most episodes per task of an adaptive final evaluation (``final_episodes`` None)."""
        return FINAL_PER_EVAL_EPISODE * self.eval_episodes

    @property
    def eval_envs(self) -> int:
        """Envs stepped side by side in a round's validation: a task's ``eval_episodes`` in one batch (at least
        ``n_envs``). Episodes are seeded; the batch size changes a deterministic student's actions only in their
        last bits (torch's products round differently by batch size), which a chaotic task can grow."""
        return max(self.n_envs, self.eval_episodes)

    @property
    def method_name(self) -> str:
        return method_of(self.method).name

    def to_dict(self) -> dict[str, Any]:
        """JSON-able config with the method's name under ``method.name``."""
        out = dataclasses.asdict(self)
        out["method"] = {"name": self.method_name, **out["method"]}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DistillConfig:
        """Inverse of :meth:`to_dict`."""
        data = dict(data)
        method = dict(data.pop("method"))
        return cls(**{**data, "method": method_config(method.pop("name"), method),
                      "student": StudentConfig(**data["student"]), "ray": RayConfig(**data["ray"])})


def _log_row(tb: SummaryWriter, row: dict[str, Any]) -> None:
    """Scalars of a row against the labels used so far (losses and per-task scores too)."""
    step = row["labels_used"]
    for k, v in row.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("round", "labels_used"):
            tb.add_scalar(f"distill/{k}", v, step)
    for k, v in row["losses"].items():
        tb.add_scalar(f"losses/{k}", v, step)
    for name, t in row["tasks"].items():
        tb.add_scalar(f"return/{name}", t["return_mean"], step)
        if t["score"] is not None:
            tb.add_scalar(f"score/{name}", t["score"], step)
    tb.flush()


def _metric(task: dict[str, Any]) -> tuple[str, float | None]:
    """What a task is judged by: its success rate where defined, else its score."""
    return ("success", task["success_rate"]) if task["success_rate"] is not None else ("score", task["score"])


def _regressions(prev: dict[str, Any] | None, per_task: dict[str, dict[str, Any]],
                 margin: float) -> list[dict[str, Any]]:
    """The tasks whose success (score) dropped by more than ``margin`` since ``prev``: {task, metric, from, to}."""
    out = []
    for name, task in per_task.items():
        metric, now = _metric(task)
        before = _metric(prev["tasks"][name])[1] if prev is not None and name in prev["tasks"] else None
        if now is not None and before is not None and before - now > margin:
            out.append({"task": name, "metric": metric, "from": before, "to": now})
    return out


def _rank(row: dict[str, Any]) -> tuple[float, int]:
    """How rounds are compared to pick the best: mean success on the validation seeds where the suite defines
    success, else mean score; ties go to the later round (trained on more data). Never the score where there is
    success: on tasks whose episodes end at success, a failing student collects reward for longer."""
    primary = row["mean_success"] if row["mean_success"] is not None else row["mean_score"]
    return (-float("inf") if primary is None else primary, row["round"])


def _why(row: dict[str, Any], eval_seed: int) -> dict[str, Any]:
    """The best round and why it won, for distill.json."""
    key = "mean success" if row["mean_success"] is not None else "mean score"
    return {"round": row["round"], "mean_success": row["mean_success"], "mean_score": row["mean_score"],
            "headline": row["headline"],
            "criterion": f"highest {key} on the validation seeds ({eval_seed}, {eval_seed + 1}, ...), "
                         "ties to the later round"}


def _per_task(row: dict[str, Any]) -> str:
    """``success ratio 0.98; success 0.97 (north 1.00, east 0.94); score 0.99 (north 1.00, east 0.98)`` for a
    round's log line: the headline first, then per task."""
    def one(label: str, mean: float | None, key: str) -> str:
        cells = ", ".join(f"{n} {'n/a' if t[key] is None else format(t[key], '.2f')}" for n, t in row["tasks"].items())
        return f"{label} {'n/a' if mean is None else format(mean, '.3f')} ({cells})"
    head = row["headline"]
    first = f"{head['metric']} {fmt_rate(head['value'], '.3f')}; " if head["metric"] != "score" else ""
    return f"{first}{one('success', row['mean_success'], 'success_rate')}; {one('score', row['mean_score'], 'score')}"


STOPS = (("stop_score", "mean_score", "mean score"), ("stop_success", "mean_success_ratio", "mean success ratio"))
"""(config key, the round's value it is compared with, its name in the log)."""


def _reached(row: dict[str, Any] | None, cfg: DistillConfig) -> str | None:
    """Why the run stops after ``row``: the first of :data:`STOPS` whose value reaches its key (None: it goes on)."""
    for key, value, name in STOPS:
        stop = getattr(cfg, key)
        if stop is not None and row is not None and row[value] is not None and row[value] >= stop:
            return f"{name} {row[value]:.3f} >= {key} {stop}"
    return None


def final_line(final: dict[str, Any]) -> str:
    """``9000, 9001, ...: success 0.975 (north 1.00 ± 0.04 (n=50), ...)`` for a run's final evaluation."""
    tasks = ", ".join(f"{n} {fmt_rate(t['success_rate'])} ± {fmt_rate(t['success_ci95'])} (n={t['episodes']})"
                      for n, t in final["tasks"].items())
    return f"{final['seeds']}: success {fmt_rate(final['mean_success'], '.3f')} ({tasks})"


def load_round(algo: Algorithm, ckpt: Path, r: int, device: torch.device | str | None = None) -> TorchPolicy:
    """Load finished round ``r``'s student bundle and method state from ``ckpt`` (a run's ``checkpoint/``)
    into ``algo`` onto ``device`` (None: the student's); returns the student."""
    here = ckpt / f"round-{r}"
    student = algo.policy()
    device = student.device if device is None else device
    student.load_state_dict(load_bundle(here / "student", device=device, frozen=False).state_dict())
    algo.load_state_dict(torch.load(here / "state.pt", map_location=device, weights_only=True))
    return student


class Runner:
    """One distillation run (see the module doc); :meth:`run` returns the content of ``distill.json``."""

    def __init__(self, cfg: DistillConfig, suite: Suite | None = None,
                 teachers: dict[str, Policy] | None = None) -> None:
        if cfg.teachers in ("", "???") and teachers is None:
            raise ValueError("'distill' needs teachers=<folder of bundles, one per task | bundle | module:callable "
                             f"| suite | {NO_TEACHERS} (offline, from method.data)>")
        self.cfg, self.name = cfg, cfg.method_name
        self.offline = cfg.teachers == NO_TEACHERS and teachers is None
        self._check_offline()
        self.suite = suite or load_suite(cfg.suite)
        if cfg.stop_success is not None:
            without = [t.name for t, has in zip(self.suite.tasks, self.suite.has_success, strict=True) if not has]
            if without:
                raise ValueError(f"stop_success: suite '{self.suite.name}' defines no success for tasks {without} "
                                 "(expected stop_score, on the mean score)")
        if self.offline:
            self.teachers: dict[str, Policy] = {}
        else:
            self.teachers = teachers if teachers is not None else policies_for_suite(cfg.teachers, self.suite,
                                                                                      device=cfg.device)
            missing = [n for n in self.suite.task_names if n not in self.teachers]
            if missing:
                raise ValueError(f"no teacher for tasks {missing}; teachers given for {sorted(self.teachers)}")
        self.out = Path(cfg.out)
        self.ckpt = self.out / "checkpoint"
        self.summary_path = self.out / "distill.json"
        self.summary: dict[str, Any] | None = None
        identities = teacher_identities(cfg.teachers, self.suite) \
            if cfg.teachers not in ("", "???", NO_TEACHERS) else {}
        self.folder = RunFolder(self.out, "distill", {**cfg.to_dict(), "teacher_identity": identities}, EXTENDABLE)
        self.folder.check()
        self.ctx = Context(self.suite, self.teachers, cfg.student, resolve_device(cfg.device), cfg.seed,
                           str(cfg.teachers))
        torch.manual_seed(cfg.seed)  # the student's initial weights
        self.algo: Algorithm = METHODS[self.name].build(cfg.method, self.ctx)
        self.collector: Collector | None = None
        self.eval_pool = EnvPool(self.suite)  # the envs of evaluations and uncut collections, built once
        self.store_root = self.out / "episodes"

    def _check_offline(self) -> None:
        """``teachers=none`` goes with a method that learns from ``method.data`` alone, and ``bc`` reads
        ``method.data`` only then."""
        data = getattr(self.cfg.method, "data", None)
        if self.offline:
            if not METHODS[self.name].learns_offline:
                offline = sorted(n for n, m in METHODS.items() if m.learns_offline)
                raise ValueError(f"method '{self.name}' asks its teachers for labels: teachers={NO_TEACHERS} (offline) "
                                 f"works with method={'|'.join(offline)} and method.data=[<episode store>, ...]")
            check_data(data or [], self.name)
        elif data and self.name == "bc":
            raise ValueError("method.data is read with teachers=none (offline BC from stored episodes); with teachers, "
                             "method.extra_episodes=<store> adds stored steps that the teachers label")

    def _read_summary(self) -> dict[str, Any] | None:
        """The resumed run's distill.json, when it has one."""
        if not self.summary_path.exists():
            return None
        summary = read_json_object(self.summary_path, SUMMARY_KEYS, "a distill summary")
        if summary["schema_version"] != SCHEMA_VERSION:
            raise ValueError(f"{self.out} holds a run written by another version of policydistill "
                             f"(distill.json schema {summary['schema_version']}); choose another out")
        return summary

    # ---- rounds ------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Run (or resume) under the folder's lock."""
        try:
            with self.folder:
                self.summary = self._read_summary() if self.folder.resuming else None
                return self._run()
        finally:
            self.algo.close()
            self.eval_pool.close()
            if self.collector is not None:
                self.collector.close()

    def _run(self) -> dict[str, Any]:
        cfg, algo = self.cfg, self.algo
        if self.summary is None:
            reference = data_reference(self.suite, cfg.method.data) if self.offline else \
                evaluate_per_task(self.suite, algo.reference(), cfg.eval_episodes, cfg.eval_seed, cfg.eval_envs,
                                  self.eval_pool)
            randoms = random_baseline(self.suite, cfg.eval_episodes, cfg.eval_seed, cfg.eval_envs, self.eval_pool)
            self.summary = {"schema_version": SCHEMA_VERSION, "method": self.name, "suite": self.suite.name,
                            "config": cfg.to_dict(), "teachers": str(cfg.teachers), "info": algo.run_info(),
                            "teacher": reference,
                            "random": {n: {k: r[k] for k in ("return_mean", "return_ci95", "success_rate")}
                                       for n, r in randoms.items()},
                            "teacher_return": float(np.mean([t["return_mean"] for t in reference.values()])),
                            "best_round": None, "rounds": []}
            atomic_write_json(self.summary_path, self.summary)
        else:
            self.summary["config"] = cfg.to_dict()
            self._restore()
        rows = self.summary["rounds"]
        tb = SummaryWriter(str(self.out / "tb"))
        try:
            start = len(rows)
            for r in tqdm(range(start, algo.rounds), desc=f"distill ({self.name})", unit="round", initial=start,
                          total=algo.rounds, leave=False):
                prev = rows[-1] if rows else None
                reached = _reached(prev, cfg)
                if reached:
                    log.info("stopping after round %d: %s", r - 1, reached)
                    break
                row = self._round(r, prev, tb)
                self._commit(r, row)
                _log_row(tb, row)
                log.info("round %d: beta %s, labels %d, env steps %d, loss %.4f; %s", r,
                         "-" if row["beta"] is None else f"{row['beta']:.2f}", row["labels_used"], row["env_steps"],
                         row["loss"], _per_task(row))
                for g in row["regressions"]:
                    log.warning("round %d: task %s regressed: %s %.2f -> %.2f (more than regression_margin %s)", r,
                                g["task"], g["metric"], g["from"], g["to"], cfg.regression_margin)
        finally:
            tb.close()
        if cfg.final_episodes != 0 and rows and (self.summary.get("final") or {}).get("round") != \
                self.summary["best_round"]:
            self.summary["final"] = self._final()
            atomic_write_json(self.summary_path, self.summary)
        return self.summary

    def _final(self) -> dict[str, Any]:
        """The shipped student (``best/``) on the held-out seeds (see :class:`DistillConfig`)."""
        cfg, r = self.cfg, self.summary["best_round"]
        student = load_bundle(self.out / "best", device=self.ctx.device)
        if cfg.final_episodes:  # exactly final_episodes per task, in one batch
            tasks = evaluate_to_interval(self.suite, student, cfg.test_seed, 0.0, cfg.final_episodes,
                                         batch=cfg.final_episodes, n_envs=cfg.n_envs, pool=self.eval_pool)
        else:
            tasks = evaluate_to_interval(self.suite, student, cfg.test_seed, cfg.final_ci, cfg.final_max_episodes,
                                         n_envs=cfg.n_envs, pool=self.eval_pool)
        keep = ("episodes", "return_mean", "return_ci95", "success_rate", "success_ci95", "dropped")
        final = {"round": r, "seeds": f"{cfg.test_seed}, {cfg.test_seed + 1}, ...",
                 "tasks": {n: {k: t[k] for k in keep} for n, t in tasks.items()},
                 "mean_success": mean_rate([t["success_rate"] for t in tasks.values()])}
        log.info("final evaluation of round %d (best/) on held-out seeds %s", r, final_line(final))
        return final

    def _round(self, r: int, prev: dict[str, Any] | None, tb: SummaryWriter) -> dict[str, Any]:
        cfg, algo = self.cfg, self.algo
        t0 = time.perf_counter()
        plan = algo.collect(r, prev, self.summary["teacher_return"])
        collected = self._collect(plan, r) if plan is not None else RoundData(0, 0, 0)
        t1 = time.perf_counter()
        store = EpisodeStore(self.store_root) if (self.store_root / "manifest.json").exists() else None
        done_updates = sum(row["updates"] for row in self.summary["rounds"])

        def fit_with(job: FitJob) -> FitResult:
            return fit(job, stream(cfg.seed, r, 2), checkpoint=self.ckpt / f"fit-{r}.pt",
                       on_log=lambda step, loss: tb.add_scalar("train/loss", loss, done_updates + step),
                       log_every=10, desc=f"{self.name} round {r}")

        stats = algo.update(store, r, fit_with)
        t2 = time.perf_counter()
        student = algo.policy()
        evals = evaluate_per_task(self.suite, student, cfg.eval_episodes, cfg.eval_seed, cfg.eval_envs,
                                  self.eval_pool)
        t3 = time.perf_counter()
        teacher, randoms = self.summary["teacher"], self.summary["random"]
        per_task = {n: {"return_mean": e["return_mean"], "return_ci95": e["return_ci95"],
                        "success_rate": e["success_rate"], "dropped": e["dropped"],
                        **teacher_normalised(e, teacher[n], randoms[n])} for n, e in evals.items()}
        mean_score = mean_of(per_task.values(), "score")
        mean_success = mean_rate([t["success_rate"] for t in per_task.values()])
        success_ratio = mean_of(per_task.values(), "success_ratio") if mean_success is not None else None
        env_steps = collected.steps + int(stats.get("env_steps", 0))
        labels = (collected.steps if collected.labels is None else collected.labels) + int(stats.get("labels", 0))
        return {"round": r, "beta": None if plan is None else plan.beta, "episodes": collected.episodes,
                "env_steps": (prev["env_steps"] if prev else 0) + env_steps,
                "labels_used": (prev["labels_used"] if prev else 0) + labels,
                "dataset_steps": store.steps if store is not None else 0, "updates": int(stats["updates"]),
                "loss": float(stats["loss"]), "losses": stats.get("losses", {}),
                "wall_time_s": round((prev["wall_time_s"] if prev else 0.0) + t3 - t0, 2),
                "collect_time_s": round(t1 - t0, 2), "update_time_s": round(t2 - t1, 2),
                "eval_time_s": round(t3 - t2, 2),
                "student_return": float(np.mean([e["return_mean"] for e in evals.values()])),
                "mean_score": mean_score, "mean_success": mean_success, "mean_success_ratio": success_ratio,
                "headline": headline(success_ratio, mean_score),
                "tasks": per_task,
                "regressions": _regressions(prev, per_task, cfg.regression_margin),
                "info": {**collected.info, **stats.get("info", {})}}

    def _collect(self, plan: CollectPlan, r: int) -> RoundData:
        """Run ``plan`` into the store (once: a round whose collection finished before a kill keeps it)."""
        marker = self.ckpt / f"collected-{r}.json"
        if marker.exists():
            return RoundData(**read_json(marker))
        if (self.store_root / "manifest.json").exists():
            drop_rounds(self.store_root, r)  # what an interrupted attempt at this round stored
        if self.collector is None:
            self.collector = self._make_collector()
        data = self.collector.round(plan, plan.teacher or self.ctx.bank, r, seed=self.cfg.seed * 100_000 + r * 1000,
                                    rng=stream(self.cfg.seed, r, 1))
        if plan.only_this_round:
            evict(self.store_root, data.kept)
        elif plan.keep_steps is not None:
            evict(self.store_root, plan.keep_steps)
        atomic_write_json(marker, dataclasses.asdict(data))
        return data

    def _make_collector(self) -> Collector:
        if self.cfg.collector == "ray":
            from policydistill.scale.ray_collect import RayCollector

            return RayCollector(self.cfg.ray, self.suite, self.cfg.n_envs, self.store_root)
        return LocalCollector(self.suite, self.cfg.n_envs, self.store_root, self.eval_pool)

    # ---- checkpoints -------------------------------------------------------------------------

    def _save(self, student: Any, path: Path, r: int) -> None:
        """Save round ``r``'s student as a bundle at ``path``, with the run's meta and the suite's key map."""
        save_bundle(student, path, meta={"distill": self.cfg.to_dict(), "round": r, "suite": self.suite.name},
                    obs_keys=self.suite.keymap)

    def _commit(self, r: int, row: dict[str, Any]) -> None:
        """Checkpoint round ``r`` (student and method state), append its row (the commit), publish the
        student, then drop what the previous round and this one's attempt left."""
        student = self.algo.policy()
        here = self.ckpt / f"round-{r}"
        self._save(student, here / "student", r)
        save_torch(here / "state.pt", self.algo.state_dict())
        rows = self.summary["rounds"]
        rows.append(row)
        best = max(rows, key=_rank)
        self.summary["best_round"], self.summary["best"] = best["round"], _why(best, self.cfg.eval_seed)
        atomic_write_json(self.summary_path, self.summary)
        self._save(student, self.out / "student", r)
        if best["round"] == r:
            self._save(student, self.out / "best", r)
        self._clean(r)

    def _clean(self, r: int) -> None:
        """Remove what rounds up to ``r`` left in checkpoint/ but round ``r``'s own checkpoint."""
        for path in self.ckpt.iterdir():
            index = re.fullmatch(r"(?:round-|fit-|collected-)(\d+)(?:\.pt|\.json)?", path.name)
            if index and int(index.group(1)) <= r and path.name != f"round-{r}":
                shutil.rmtree(path) if path.is_dir() else path.unlink()

    def _restore(self) -> None:
        """Load the last finished round's student and method state (a run with no finished round starts over)."""
        rows = self.summary["rounds"]
        done = len(rows)
        if (self.store_root / "manifest.json").exists() and not (self.ckpt / f"collected-{done}.json").exists():
            drop_rounds(self.store_root, done)  # what an interrupted collection stored
        if not rows:
            return
        r = rows[-1]["round"]
        student = load_round(self.algo, self.ckpt, r)
        self._save(student, self.out / "student", r)
        if self.summary["best_round"] == r:  # a kill may have come between the commit and best/
            self._save(student, self.out / "best", r)
        self._clean(r)
        log.info("resuming after round %d", r)


def distill(cfg: DistillConfig, suite: Suite | None = None,
            teachers: dict[str, Policy] | None = None) -> dict[str, Any]:
    """Run (or resume) a distillation run; returns the content of ``distill.json``. ``suite`` and ``teachers``
    (one per task) default to what ``cfg.suite`` and ``cfg.teachers`` name."""
    return Runner(cfg, suite, teachers).run()


run_distill = distill
"""The same, under a name that does not collide with the package ``policydistill.distill``."""
