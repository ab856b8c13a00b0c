"""``method=onestep``: distil a diffusion policy into a one-step chunk policy, one harness for every algorithm.

The loop of every distiller: act (the frozen diffusion teacher acts with its own sampler and its
executed chunks are recorded), update the student (``onestep.steps`` updates of the chosen
algorithm), evaluate, checkpoint. Algorithms, one file each, share :class:`OneStepAlgo`:

- ``dmd`` / ``dmd_det`` (:mod:`.onestep_dmd`): distribution matching along the diffusion chain;
- ``consistency`` (:mod:`.onestep_consistency`): consistency distillation on teacher DDIM steps;
- ``regression`` (:mod:`.onestep_regression`): noise -> teacher K-step output, one step.

Every student starts from the teacher's denoiser weights and normalisers (the teacher must predict
clean chunks, ``prediction="sample"``). The teacher stays frozen (eval mode, no gradients). All
randomness of an update (windows, noise, levels) comes from the run's seeded generator; the same
minibatch loss trains a finished run further under torchrun/DDP (``policydistill train-student``,
except ``dmd``, whose auxiliary network has an optimiser of its own).

Output under ``out``: ``student/`` (the one-step bundle), ``episodes/`` (teacher rollouts),
``checkpoint.json`` (update reached; auxiliary networks restart from the teacher on resume),
``distill.json`` (teacher and student evaluation, updates, teacher denoiser calls, wall time).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from policydistill.bundle import is_bundle, load_bundle, read_bundle_info, save_bundle
from policydistill.config import DistillConfig, OneStepConfig
from policydistill.data.chunks import ChunkWindows, chunk_windows
from policydistill.data.sampling import RowSampler
from policydistill.data.shards import EpisodeStore, ShardWriter
from policydistill.distill.collect import collect
from policydistill.distill.dagger import evaluate_per_task
from policydistill.distill.diffusion import chunk_noise, cosine_lr
from policydistill.eval.metrics import teacher_normalised
from policydistill.io import atomic_write_json, read_json
from policydistill.models.diffusion import DiffusionPolicy
from policydistill.models.onestep import OneStepPolicy
from policydistill.policy import Policy
from policydistill.suite import Suite

log = logging.getLogger(__name__)

ALGOS = ("dmd", "dmd_det", "consistency", "regression")
PAIR_CHUNK = 1024


class OneStepAlgo:
    """Base of the one-step distillation algorithms.

    Holds the frozen ``teacher``, the ``student`` (initialised from it), the training windows ``data``
    and an Adam optimiser over the student. An update is :meth:`before_student` (auxiliary networks),
    one student step on :meth:`student_loss`, then :meth:`after_step` (target networks). A minibatch
    is ``batch_size`` rows of :meth:`dataset` drawn with :meth:`sample_weights`, plus the per-row
    random inputs of :meth:`randoms`; ``train-student``'s DDP loop builds its batches from the same
    three methods and calls the same :meth:`student_loss`. Subclasses implement :meth:`student_loss`
    (a loss whose gradient trains every student parameter) and :meth:`randoms`. ``teacher_calls``
    counts the teacher's denoiser evaluations (per sample).
    """

    def __init__(self, teacher: DiffusionPolicy, cfg: OneStepConfig, data: ChunkWindows, batch_size: int,
                 rng: np.random.Generator, student: OneStepPolicy) -> None:
        if teacher.schedule.prediction != "sample":
            raise ValueError("one-step distillation needs a teacher that predicts clean chunks "
                             f"(prediction='sample'); this one predicts '{teacher.schedule.prediction}'")
        self.teacher, self.cfg, self.data, self.batch_size = teacher.frozen(), cfg, data, batch_size
        self.student = student.train()
        self.rng = rng
        self.draw = data.balanced_sampler(rng)
        self.opt = torch.optim.Adam(self.student.parameters(), lr=cfg.lr)
        self.teacher_calls = 0
        self._windows: dict[str, torch.Tensor] | None = None
        self._weights = data.sample_weights()
        self._draw: RowSampler | None = None

    @staticmethod
    def init_level(teacher: DiffusionPolicy, cfg: OneStepConfig) -> int:
        """The noise level at which a generator is initialised from the teacher: ``init_level`` of the way
        to the noisiest. At the noisiest level the teacher's estimate hardly depends on its input (it is
        the mean over modes), a saddle point for a generator that must map noise to modes; lower, the
        estimate leans towards the mode the noise points to."""
        return round(cfg.init_level * (teacher.schedule.steps - 1))

    def dataset(self) -> dict[str, torch.Tensor]:
        """The rows minibatches are drawn from: ``window`` (N, n_obs, obs_dim), ``chunk`` (N, H, A)."""
        if self._windows is None:
            self._windows = self.data.rows()
        return self._windows

    def sample_weights(self) -> np.ndarray | None:
        """Sampling probabilities of the rows of :meth:`dataset` (N,): every task the same share."""
        return self._weights

    def randoms(self, rng: np.random.Generator, n: int) -> dict[str, torch.Tensor]:
        """The loss's random inputs for ``n`` rows, ``{name: (n, ...)}`` drawn from ``rng``."""
        return {}

    def sample(self) -> dict[str, torch.Tensor]:
        """A minibatch: ``batch_size`` rows of :meth:`dataset` and their :meth:`randoms`, from ``rng``."""
        rows = self.dataset()
        if self._draw is None:
            self._draw = RowSampler(len(next(iter(rows.values()))), self.sample_weights())
        idx = torch.as_tensor(self._draw(self.rng, self.batch_size), device=self.teacher.device)
        return {**{k: v[idx] for k, v in rows.items()}, **self.randoms(self.rng, self.batch_size)}

    def teacher_view(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Conditioning (b, cond_dim) and normalised teacher chunks (b, H, A) of a minibatch's rows."""
        return self.teacher.cond(batch["window"]), self.teacher.action_normalizer(batch["chunk"])

    def teacher_x0(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The frozen teacher's clean-chunk estimate, counted in ``teacher_calls``."""
        self.teacher_calls += len(x_t)
        with torch.no_grad():
            return self.teacher.x0(x_t, t, cond)

    def prepare(self) -> None:
        """Work before the first update (and after a resume): targets, fixed pairs."""

    def teacher_pairs(self, n: int, k: int, anchor: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``n`` triples (cond (n, cond_dim), noise z (n, H, A), the teacher's ``k``-step DDIM sample from
        that z (n, H, A)) for windows and noise drawn from ``rng``; ``anchor`` (H, A) replaces z when given."""
        loop = self.teacher.sampler_spec("ddim", k)
        conds, zs, ys = [], [], []
        with torch.no_grad():
            for start in range(0, n, PAIR_CHUNK):
                window, _ = self.data.batch(self.draw(min(PAIR_CHUNK, n - start)))
                cond = self.teacher.cond(window)
                z = chunk_noise(self.teacher, self.rng, len(cond)) if anchor is None \
                    else anchor.expand(len(cond), -1, -1)
                ys.append(self.teacher.sample_from(cond, z.clone(), None, loop))
                conds.append(cond)
                zs.append(z)
                self.teacher_calls += len(cond) * k
        return torch.cat(conds), torch.cat(zs), torch.cat(ys)

    def student_loss(self, student: OneStepPolicy, batch: dict[str, torch.Tensor]
                     ) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of ``student`` (this algorithm's student, or its DDP view) on a minibatch (rows and
        random inputs) and its statistics."""
        raise NotImplementedError

    def set_progress(self, step: int) -> None:
        """Learning rates for update ``step`` of ``cfg.steps`` (warm-up, then cosine decay)."""
        factor = cosine_lr(step, self.cfg.steps)
        for opt, lr in self.optimisers():
            for group in opt.param_groups:
                group["lr"] = lr * factor

    def optimisers(self) -> list[tuple[torch.optim.Optimizer, float]]:
        """Each optimiser with its base learning rate."""
        return [(self.opt, self.cfg.lr)]

    def before_student(self) -> dict[str, float]:
        """Work of an update before the student's step (auxiliary networks); returns its statistics."""
        return {}

    def after_step(self) -> None:
        """Work after the student's step (target networks)."""

    def state_modules(self) -> dict[str, torch.nn.Module]:
        """Modules besides the student whose state a checkpoint must keep to resume exactly (after
        :meth:`prepare`)."""
        return {}

    def update(self) -> dict[str, float]:
        """One update: :meth:`before_student`, one student step, :meth:`after_step`; returns the statistics."""
        aux = self.before_student()
        loss, stats = self.student_loss(self.student, self.sample())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"one-step loss became non-finite; lower onestep.lr (now {self.cfg.lr})")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.after_step()
        return {**stats, **aux}


def make_algo(name: str, teacher: DiffusionPolicy, cfg: OneStepConfig, data: ChunkWindows, batch_size: int,
              rng: np.random.Generator) -> OneStepAlgo:
    """The algorithm ``name`` (one of :data:`ALGOS`) with a fresh student."""
    if name in ("dmd", "dmd_det"):
        from policydistill.distill.onestep_dmd import DistributionMatching

        return DistributionMatching(teacher, cfg, data, batch_size, rng, stochastic=name == "dmd")
    if name == "consistency":
        from policydistill.distill.onestep_consistency import ConsistencyDistillation

        return ConsistencyDistillation(teacher, cfg, data, batch_size, rng)
    if name == "regression":
        from policydistill.distill.onestep_regression import Regression

        return Regression(teacher, cfg, data, batch_size, rng)
    raise ValueError(f"unknown onestep.algo '{name}'; expected one of {list(ALGOS)}")


def _teacher_of(teachers: dict[str, Policy], suite: Suite) -> DiffusionPolicy:
    found = {id(t): t for t in teachers.values()}
    if len(found) != 1 or not isinstance(next(iter(found.values())), DiffusionPolicy):
        kinds = sorted({type(t).__name__ for t in teachers.values()})
        raise ValueError(f"method=onestep needs teachers=<one DiffusionPolicy bundle> serving every task of suite "
                         f"'{suite.name}', got {kinds}")
    return next(iter(found.values()))


def check_onestep(cfg: OneStepConfig) -> None:
    """Clear errors for one-step settings out of range, before any collection."""
    for name in ("steps", "episodes_per_task", "aux_updates", "ode_steps", "pairs", "checkpoint_every"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"onestep.{name} must be an int >= 1, got {value!r}")
    if cfg.teacher_steps is not None and (isinstance(cfg.teacher_steps, bool) or not isinstance(cfg.teacher_steps, int)
                                          or cfg.teacher_steps < 1):
        raise ValueError(f"onestep.teacher_steps must be an int >= 1 or null (the teacher's own), "
                         f"got {cfg.teacher_steps!r}")
    if not 0.0 <= cfg.init_level <= 1.0:
        raise ValueError(f"onestep.init_level must be in [0, 1], got {cfg.init_level}")
    if not 0.0 <= cfg.t_min < cfg.t_max <= 1.0:
        raise ValueError(f"onestep.t_min/t_max must satisfy 0 <= t_min < t_max <= 1, got {cfg.t_min}, {cfg.t_max}")


def teacher_train_steps(bundle: str | Path) -> int | None:
    """Updates the diffusion teacher was trained with (from its bundle's meta), if recorded."""
    meta = read_bundle_info(bundle).get("meta", {}).get("distill", {})
    d = meta.get("diffusion") or {}
    return int(d["train_steps"]) * int(d.get("rounds", 1)) if "train_steps" in d else None


def distill_onestep(cfg: DistillConfig, suite: Suite, teachers: dict[str, Policy]) -> dict[str, Any]:
    """Distil the diffusion teacher (the one bundle in ``teachers``) with ``cfg.onestep.algo``; returns the
    content of ``distill.json`` (one row, as the other distillers' rounds)."""
    o = cfg.onestep
    check_onestep(o)
    if o.algo not in ALGOS:
        raise ValueError(f"unknown onestep.algo '{o.algo}'; expected one of {list(ALGOS)}")
    teacher = _teacher_of(teachers, suite)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    summary_path = out / "distill.json"
    if summary_path.exists():
        summary = read_json(summary_path)
        if summary["method"] != "onestep" or summary["suite"] != suite.name or summary["algo"] != o.algo:
            raise ValueError(f"{out} holds a '{summary['method']}' run on suite '{summary['suite']}': "
                             "choose another out")
        if summary["rounds"]:
            return summary
    else:
        summary = {"method": "onestep", "algo": o.algo, "suite": suite.name, "config": asdict(cfg),
                   "teacher_sampler": dict(teacher.sampler), "teacher_train_steps": teacher_train_steps(cfg.teachers)
                   if is_bundle(cfg.teachers) else None,
                   "teacher": evaluate_per_task(suite, teacher, cfg.eval_episodes), "rounds": []}
        atomic_write_json(summary_path, summary)
    t0 = time.perf_counter()
    episodes = out / "episodes"
    writer = ShardWriter(episodes)
    if len(EpisodeStore(episodes)) == 0:
        records = collect(suite, list(range(len(suite.tasks))), teacher, None, 1.0, o.episodes_per_task, cfg.n_envs,
                          seed=cfg.seed * 100_000, rng=rng)
        for rec in records:
            if not rec.episode.error:
                writer.add(rec.steps, {"task": rec.episode.task, "task_index": rec.task_index, "seed": rec.episode.seed,
                                       "success": rec.episode.success, "round": 0, "beta": 1.0,
                                       "return": rec.episode.ret})
        writer.flush()
    data = chunk_windows([episodes, *o.data], teacher.groups, teacher.n_obs_steps, teacher.horizon,
                         device=teacher.device)
    algo = make_algo(o.algo, teacher, o, data, cfg.batch_size, rng)
    meta = {"distill": asdict(cfg), "suite": suite.name, "teacher": str(cfg.teachers)}
    ckpt = out / "checkpoint.json"
    start = 0
    if ckpt.exists() and is_bundle(out / "student"):
        start = read_json(ckpt)["step"]
        algo.student.load_state_dict(load_bundle(out / "student", device=teacher.device, frozen=False).state_dict())
        log.info("resuming %s at update %d", o.algo, start)
    algo.prepare()
    stats: list[dict[str, float]] = []
    for step in tqdm(range(start, o.steps), desc=f"onestep {o.algo}", unit="upd", leave=False, initial=start,
                     total=o.steps):
        algo.set_progress(step)
        stats.append(algo.update())
        if (step + 1) % o.checkpoint_every == 0 and step + 1 < o.steps:
            save_bundle(algo.student.eval(), out / "student", meta=meta)
            algo.student.train()
            atomic_write_json(ckpt, {"step": step + 1})
    student = algo.student.eval()
    save_bundle(student, out / "student", meta=meta)
    atomic_write_json(ckpt, {"step": o.steps})
    evals = evaluate_per_task(suite, student, cfg.eval_episodes)
    per_task = {n: {"return_mean": e["return_mean"], "success_rate": e["success_rate"],
                    **teacher_normalised(e, summary["teacher"][n])} for n, e in evals.items()}
    scores = [t["score"] for t in per_task.values() if t["score"] is not None]
    tail = stats[-max(1, len(stats) // 10):]
    row = {"round": 0, "updates": o.steps, "teacher_calls": algo.teacher_calls, "dataset_steps": len(data),
           "loss": {k: float(np.mean([s[k] for s in tail])) for k in tail[0]} if tail else {},
           "wall_time_s": round(time.perf_counter() - t0, 2),
           "student_return": float(np.mean([e["return_mean"] for e in evals.values()])),
           "mean_score": float(np.mean(scores)) if scores else None, "tasks": per_task}
    summary["rounds"].append(row)
    atomic_write_json(summary_path, summary)
    log.info("%s: %d updates, %d teacher calls, return %.2f, score %s", o.algo, o.steps, algo.teacher_calls,
             row["student_return"], "n/a" if row["mean_score"] is None else f"{row['mean_score']:.3f}")
    return summary
