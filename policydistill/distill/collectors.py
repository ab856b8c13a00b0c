"""Who collects a distillation round: ``collector=local`` (this process) or ``collector=ray`` (rollout
actors, :mod:`policydistill.scale.ray_collect`). Both run :func:`~policydistill.distill.collect.collect`
on the same seeded episodes and store the kept ones as shards of the run's episode store."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from policydistill.config import DistillConfig
from policydistill.data.shards import EpisodeArrays, Meta, ShardWriter
from policydistill.distill.collect import collect, task_spaces
from policydistill.eval.rollout import EnvPool, EpisodeRecord
from policydistill.models.generalist import SpaceLayout
from policydistill.policy import Policy, Teacher
from policydistill.scale.ray_session import check_engine
from policydistill.suite import Suite


@dataclass
class RoundData:
    """What a round collected: env ``steps`` (every episode), ``kept`` steps stored, ``episodes`` run,
    and ``info`` for the round's summary (e.g. workers that failed)."""

    steps: int
    kept: int
    episodes: int
    info: dict[str, Any] = field(default_factory=dict)


def episodes_to_store(records: Sequence[EpisodeRecord], round_index: int, beta: float, attempt: int,
                      success_filter: bool, layout: SpaceLayout | None = None) -> list[tuple[EpisodeArrays, Meta]]:
    """The episodes a round keeps (not dropped; with ``success_filter``, teacher-only episodes only if
    successful) with their metadata, not yet validated (whoever stores them validates them). With a
    ``layout`` whose tasks differ in their spaces, the arrays are padded to the widest (see
    :class:`~policydistill.models.generalist.SpaceLayout`) and the metadata gets the task's real ``dims``."""
    out = []
    for rec in records:
        teacher_only = not rec.steps["actor"].any()
        if rec.episode.error or (success_filter and teacher_only and not rec.episode.success):
            continue
        meta = {"task": rec.episode.task, "task_index": rec.task_index, "seed": rec.episode.seed,
                "success": rec.episode.success, "round": round_index, "beta": beta, "return": rec.episode.ret,
                "attempt": attempt}
        steps = rec.steps
        if layout is not None and not layout.uniform:
            steps = layout.pad_steps(steps)
            meta["dims"] = {**layout.group_dims[rec.task_index], "action": layout.act_dims[rec.task_index]}
        out.append((steps, meta))
    return out


def suite_layout(suite: Suite) -> SpaceLayout:
    """The per-task dims of ``suite`` (what padding to the widest spaces needs)."""
    return SpaceLayout.from_spaces(*zip(*task_spaces(suite), strict=True))


class Collector(Protocol):
    def round(self, round_index: int, beta: float, student: Policy | None, seed: int, attempt: int) -> RoundData:
        """Collect ``episodes_per_task`` episodes of every task (episode ``k`` seeded ``seed + k``), with
        ``student`` acting with probability ``1 - beta`` (None: the teacher always acts); store them."""
        ...

    def close(self) -> None: ...


class LocalCollector:
    """Collect in this process with the run's ``rng`` and append to ``writer``."""

    def __init__(self, cfg: DistillConfig, suite: Suite, bank: Teacher, writer: ShardWriter,
                 rng: np.random.Generator) -> None:
        self.cfg, self.suite, self.bank, self.writer, self.rng = cfg, suite, bank, writer, rng
        self.layout, self.pool = suite_layout(suite), EnvPool(suite)  # envs stay open across rounds

    def round(self, round_index: int, beta: float, student: Policy | None, seed: int, attempt: int) -> RoundData:
        records = collect(self.suite, list(range(len(self.suite.tasks))), self.bank, student, beta,
                          self.cfg.episodes_per_task, self.cfg.n_envs, seed=seed, rng=self.rng, pool=self.pool,
                          teacher_noise=self.cfg.teacher_noise)
        kept = 0
        for arrays, meta in episodes_to_store(records, round_index, beta, attempt, self.cfg.success_filter,
                                              self.layout):
            self.writer.add(arrays, meta)
            kept += len(arrays["reward"])
        self.writer.flush()
        return RoundData(sum(r.episode.length for r in records), kept, len(records))

    def close(self) -> None:
        self.pool.close()


def make_collector(cfg: DistillConfig, suite: Suite, bank: Teacher, student: Policy, writer: ShardWriter,
                   rng: np.random.Generator) -> Collector:
    """The collector ``cfg.collector`` names; a Ray one starts its actors (and Ray, if needed) here."""
    if check_engine(cfg.collector, "collector") == "ray":
        from policydistill.scale.ray_collect import RayCollector

        return RayCollector(cfg, suite, bank, student, Path(writer.root))
    return LocalCollector(cfg, suite, bank, writer, rng)
