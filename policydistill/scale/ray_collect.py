"""``collector=ray``: a distillation round collected by Ray rollout actors.

Each actor holds the suite's envs (kept open across rounds), the teacher and a copy of the acting student;
the round's episodes are split into contiguous ranges, one per actor, the student's weights are sent with
every round, and each actor writes its kept episodes as one shard of the run's episode store; the driver
lists the shards in the manifest with one atomic replace. Episode ``k`` of a task is seeded ``seed + k``, so
the episodes are those the in-process collector runs. An actor that dies mid-round has its range redone on
a new actor. The store must be on a filesystem every actor shares with the driver.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from policydistill.data.shards import (
    ShardWriter,
    commit_shards,
    field_spec,
    prepare_episode,
    read_manifest,
    write_shard,
)
from policydistill.distill.collect import CollectPlan, RoundData, collect, episodes_to_store, suite_layout
from policydistill.policy import Policy, Teacher
from policydistill.scale.ray_session import RayConfig, ray_session
from policydistill.suites import Suite
from policydistill.suites.batched import EnvPool

log = logging.getLogger(__name__)

START_TIMEOUT_S = 120
MAX_ITEM_FAILURES = 3  # the same episodes killing more workers than this is not bad luck


class RolloutWorker:
    """One rollout actor: env copies (kept open), the teacher, a student copy; runs items of a round."""

    def __init__(self, suite: Suite, teacher: Teacher, student: Policy | None, n_envs: int, root: str) -> None:
        torch.set_num_threads(1)
        self.suite, self.teacher, self.student, self.n_envs, self.root = suite, teacher, student, n_envs, Path(root)
        self.pool, self.layout = EnvPool(suite), suite_layout(suite)

    def pid(self) -> int:
        return os.getpid()

    def run(self, item: dict[str, Any], weights: dict[str, torch.Tensor] | None) -> dict[str, Any]:
        """Collect episodes ``item["first"]`` .. ``first + count - 1`` of every task; write the kept ones as
        shard ``item["shard"]``. Returns the shard's manifest entry (None if nothing kept) and counts."""
        if weights is not None:
            self.student.load_state_dict(weights)
        student = self.student if item["beta"] < 1 else None
        first, count = item["first"], item["count"]
        rng = np.random.default_rng([item["rng"], first])
        records = collect(self.suite, list(range(len(self.suite.tasks))), self.teacher, student, item["beta"], count,
                          self.n_envs, seed=item["seed"] + first, rng=rng, pool=self.pool,
                          teacher_noise=item["teacher_noise"], advantage=item["advantage"])
        kept = [prepare_episode(steps, meta) for steps, meta in episodes_to_store(
            records, item["round"], item["beta"], item["success_filter"], self.layout)]
        entry = write_shard(self.root, item["shard"], kept) if kept else None
        return {"entry": entry, "fields": field_spec(kept[0][0]) if kept else None, "episodes": len(records),
                "steps": sum(r.episode.length for r in records), "kept": sum(m["length"] for _, m in kept)}

    def close(self) -> None:
        self.pool.close()


def split_episodes(episodes: int, parts: int) -> list[tuple[int, int]]:
    """``episodes`` indices in at most ``parts`` contiguous (first, count) ranges of near-equal size."""
    parts = max(1, min(parts, episodes))
    sizes = [episodes // parts + (i < episodes % parts) for i in range(parts)]
    return [(sum(sizes[:i]), s) for i, s in enumerate(sizes)]


class RayCollector:
    """``ray.workers`` rollout actors writing into the episode store at ``root``. ``on_event(kind, worker,
    item)`` is called with ``"submitted"``, ``"finished"`` and ``"failed"`` as items move."""

    def __init__(self, ray_cfg: RayConfig, suite: Suite, n_envs: int, root: Path,
                 on_event: Callable[[str, int, dict[str, Any]], None] | None = None) -> None:
        if ray_cfg.workers < 1:
            raise ValueError(f"ray.workers must be >= 1, got {ray_cfg.workers}")
        self.cfg, self.suite, self.n_envs, self.root, self.on_event = ray_cfg, suite, n_envs, Path(root).resolve(), \
            on_event
        ShardWriter(self.root)  # the store exists (empty) before any actor writes a shard
        self._session = ray_session(ray_cfg)
        self.ray = self._session.__enter__()
        self._actor = self.ray.remote(num_cpus=ray_cfg.cpus_per_task)(RolloutWorker)
        self.workers: list[Any] = []
        self._holds: tuple[int, int, int | None] | None = None

    def _start_workers(self, plan: CollectPlan, teacher: Teacher) -> None:
        """(Re)start the actors with this plan's teacher, student and episode limit."""
        self._stop_workers()
        suite = self.suite if plan.episode_steps is None else self.suite.with_episode_limit(plan.episode_steps)
        student = plan.student
        if isinstance(student, torch.nn.Module):
            student = copy.deepcopy(student).to("cpu")
        self._init = (self.ray.put(suite), self.ray.put(teacher), self.ray.put(student))
        self.workers = [self._start() for _ in range(self.cfg.workers)]
        try:  # a cluster without room for the actors would leave them pending forever
            self.ray.get([w.pid.remote() for w in self.workers], timeout=START_TIMEOUT_S)
        except self.ray.exceptions.GetTimeoutError:
            self.close()
            raise RuntimeError(f"{self.cfg.workers} rollout workers of {self.cfg.cpus_per_task} CPU each did not "
                               f"start within {START_TIMEOUT_S} s: the Ray cluster has no room for them (its "
                               f"resources: {self.ray.available_resources()}); lower ray.workers or "
                               "ray.cpus_per_task") from None
        self._holds = (id(teacher), id(plan.student), plan.episode_steps)
        log.info("started %d Ray rollout workers", len(self.workers))

    def _start(self) -> Any:
        suite, teacher, student = self._init
        return self._actor.remote(suite, teacher, student, self.n_envs, str(self.root))

    def worker_pids(self) -> list[int]:
        return self.ray.get([w.pid.remote() for w in self.workers])

    def round(self, plan: CollectPlan, teacher: Teacher, round_index: int, seed: int,
              rng: np.random.Generator) -> RoundData:
        if plan.gate is not None:
            raise ValueError("a gated collection (method=gated) runs in this process: use collector=local")
        ray = self.ray
        if self._holds != (id(teacher), id(plan.student), plan.episode_steps):
            self._start_workers(plan, teacher)
        weights = None
        if isinstance(plan.student, torch.nn.Module) and plan.beta < 1:
            weights = ray.put({k: v.detach().to("cpu") for k, v in plan.student.state_dict().items()})
        base = read_manifest(self.root)["next_shard"]
        stream = int(rng.integers(2 ** 63))
        todo = [{"round": round_index, "beta": plan.beta, "seed": seed, "rng": stream, "first": first, "count": count,
                 "shard": base + j, "index": j, "teacher_noise": plan.teacher_noise, "advantage": plan.advantage,
                 "success_filter": plan.success_filter}
                for j, (first, count) in enumerate(split_episodes(plan.episodes_per_task, len(self.workers)))]
        results: dict[int, dict[str, Any]] = {}
        failures: list[dict[str, Any]] = []
        running: dict[Any, tuple[int, dict[str, Any]]] = {}
        idle = list(range(len(self.workers)))
        while todo or running:
            while todo and idle:
                w, item = idle.pop(0), todo.pop(0)
                running[self.workers[w].run.remote(item, weights)] = (w, item)
                self._event("submitted", w, item)
            done, _ = ray.wait(list(running), num_returns=1)
            w, item = running.pop(done[0])
            try:
                results[item["index"]] = ray.get(done[0])
                self._event("finished", w, item)
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as e:
                episodes = [item["first"], item["first"] + item["count"]]
                failures.append({"worker": w, "episodes": episodes, "error": type(e).__name__})
                log.warning("round %d: rollout worker %d died (%s); its episodes %d..%d are redone on a new worker",
                            round_index, w, type(e).__name__, episodes[0], episodes[1] - 1)
                self._event("failed", w, item)
                if sum(f["episodes"] == episodes for f in failures) > MAX_ITEM_FAILURES:
                    raise RuntimeError(f"round {round_index}: episodes {episodes[0]}..{episodes[1] - 1} killed "
                                       f"{MAX_ITEM_FAILURES + 1} rollout workers; giving up") from e
                self.workers[w] = self._start()
                todo.insert(0, item)
            idle.append(w)
        entries = [results[j]["entry"] for j in sorted(results) if results[j]["entry"] is not None]
        fields = next((results[j]["fields"] for j in sorted(results) if results[j]["fields"]), None)
        if entries:
            commit_shards(self.root, entries, fields)
        info = {"collector": "ray", "workers": len(self.workers)}
        if failures:
            info["worker_failures"] = failures
        return RoundData(sum(r["steps"] for r in results.values()), sum(r["kept"] for r in results.values()),
                         sum(r["episodes"] for r in results.values()), info)

    def _event(self, kind: str, worker: int, item: dict[str, Any]) -> None:
        if self.on_event is not None:
            self.on_event(kind, worker, item)

    def _stop_workers(self) -> None:
        for w in self.workers:
            try:
                self.ray.get(w.close.remote())
                self.ray.kill(w)
            except Exception:  # a dead actor has nothing left to close
                pass
        self.workers = []

    def close(self) -> None:
        self._stop_workers()
        self._session.__exit__(None, None, None)
