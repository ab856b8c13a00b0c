"""DAgger collection on Ray actors (``collector=ray``).

Each :class:`RolloutWorker` actor holds env copies (the suite's batched env, or its gymnasium envs in
one vector env, kept across rounds), the teacher bank (labels are made where the episodes run) and a
student copy that receives the current weights each round. A round's episodes are split into items
(a range of episode indices for every task, seeded ``seed + k`` as in-process collection); a worker
runs :func:`~policydistill.distill.collect.collect` on its item and writes the kept episodes as one
shard of the store; the driver commits all the round's shards to the manifest at once.

A worker that dies mid-round (killed, out of memory, node lost) is reported in the round's info and
replaced, and its item is redone, so the round completes with all its episodes.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from policydistill.batched.protocol import BatchedEnv, resolve_factory
from policydistill.config import DistillConfig
from policydistill.data.shards import commit_shards, field_spec, prepare_episode, read_manifest, write_shard
from policydistill.distill.collect import collect
from policydistill.distill.collectors import RoundData, episodes_to_store, suite_layout
from policydistill.policy import Policy, Teacher
from policydistill.scale.ray_session import ray_session
from policydistill.suite import Suite

log = logging.getLogger(__name__)

START_TIMEOUT_S = 120
MAX_ITEM_FAILURES = 3  # the same episodes killing more workers than this is not bad luck


class _Kept:
    """A batched env whose ``close`` is a no-op: the holder closes it."""

    def __init__(self, env: BatchedEnv) -> None:
        self.env = env

    def __getattr__(self, name: str) -> Any:
        return getattr(self.env, name)

    def close(self) -> None:
        """Kept open for the next round."""


class HeldEnvs:
    """A batched env factory that builds each row layout once and hands the same env out again."""

    def __init__(self, inner: str | Callable[..., BatchedEnv] | None) -> None:
        self.inner = resolve_factory(inner or "gymnasium")
        self.envs: dict[tuple[int, ...], _Kept] = {}

    def __call__(self, suite: Suite, slot_tasks: Sequence[int]) -> _Kept:
        key = tuple(slot_tasks)
        if key not in self.envs:
            self.envs[key] = _Kept(self.inner(suite, key))
        return self.envs[key]

    def close(self) -> None:
        for kept in self.envs.values():
            kept.env.close()
        self.envs.clear()


class RolloutWorker:
    """One rollout actor: env copies, the teacher bank, a student copy; runs items of a round."""

    def __init__(self, suite: Suite, bank: Teacher, student: Policy, cfg: DistillConfig, root: str) -> None:
        torch.set_num_threads(1)
        self.held = HeldEnvs(suite.batched)
        self.suite = dataclasses.replace(suite, batched=self.held)
        self.bank, self.student, self.cfg, self.root = bank, student, cfg, Path(root)
        self.layout = suite_layout(suite)

    def pid(self) -> int:
        return os.getpid()

    def run(self, item: dict[str, Any], weights: dict[str, torch.Tensor] | None) -> dict[str, Any]:
        """Collect episodes ``item["first"]`` .. ``first + count - 1`` of every task; write the kept ones as
        shard ``item["shard"]``. Returns the shard's manifest entry (None if nothing kept) and counts."""
        student = None
        if weights is not None:
            self.student.load_state_dict(weights)
            student = self.student
        first, count = item["first"], item["count"]
        rng = np.random.default_rng([self.cfg.seed, item["round"], first])
        records = collect(self.suite, list(range(len(self.suite.tasks))), self.bank, student, item["beta"], count,
                          self.cfg.n_envs, seed=item["seed"] + first, rng=rng, teacher_noise=self.cfg.teacher_noise)
        kept = [prepare_episode(steps, meta) for steps, meta in episodes_to_store(
            records, item["round"], item["beta"], item["attempt"], self.cfg.success_filter, self.layout)]
        entry = write_shard(self.root, item["shard"], kept) if kept else None
        return {"entry": entry, "fields": field_spec(kept[0][0]) if kept else None, "episodes": len(records),
                "steps": sum(r.episode.length for r in records), "kept": sum(m["length"] for _, m in kept)}

    def close(self) -> None:
        self.held.close()


def split_episodes(episodes: int, parts: int) -> list[tuple[int, int]]:
    """``episodes`` indices in at most ``parts`` contiguous (first, count) ranges of near-equal size."""
    parts = max(1, min(parts, episodes))
    sizes = [episodes // parts + (i < episodes % parts) for i in range(parts)]
    return [(sum(sizes[:i]), s) for i, s in enumerate(sizes)]


class RayCollector:
    """``cfg.ray.workers`` rollout actors writing into the episode store at ``root``. ``on_event(kind,
    worker, item)`` is called with ``"submitted"``, ``"finished"`` and ``"failed"`` as items move."""

    def __init__(self, cfg: DistillConfig, suite: Suite, bank: Teacher, student: Policy, root: Path,
                 on_event: Callable[[str, int, dict[str, Any]], None] | None = None) -> None:
        if cfg.ray.workers < 1:
            raise ValueError(f"ray.workers must be >= 1, got {cfg.ray.workers}")
        self.cfg, self.root, self.on_event = cfg, Path(root).resolve(), on_event
        self._session = ray_session(cfg.ray)
        self.ray = self._session.__enter__()
        self._actor = self.ray.remote(num_cpus=cfg.ray.cpus_per_task)(RolloutWorker)
        cpu_student = copy.deepcopy(student).to("cpu") if isinstance(student, torch.nn.Module) else student
        self._init = (self.ray.put(suite), self.ray.put(bank), self.ray.put(cpu_student))
        self.workers = [self._start() for _ in range(cfg.ray.workers)]
        try:  # a cluster without room for the actors would leave them pending forever
            self.ray.get([w.pid.remote() for w in self.workers], timeout=START_TIMEOUT_S)
        except self.ray.exceptions.GetTimeoutError:
            self.close()
            raise RuntimeError(f"{cfg.ray.workers} rollout workers of {cfg.ray.cpus_per_task} CPU each did not start "
                               f"within {START_TIMEOUT_S} s: the Ray cluster has no room for them (its resources: "
                               f"{self.ray.available_resources()}); lower ray.workers or ray.cpus_per_task") from None
        log.info("started %d Ray rollout workers", len(self.workers))

    def _start(self) -> Any:
        suite, bank, student = self._init
        return self._actor.remote(suite, bank, student, self.cfg, str(self.root))

    def worker_pids(self) -> list[int]:
        return self.ray.get([w.pid.remote() for w in self.workers])

    def round(self, round_index: int, beta: float, student: Policy | None, seed: int, attempt: int) -> RoundData:
        ray = self.ray
        weights = None
        if student is not None:
            weights = ray.put({k: v.detach().to("cpu") for k, v in student.state_dict().items()})
        base = read_manifest(self.root)["next_shard"]
        todo = [{"round": round_index, "beta": beta, "seed": seed, "attempt": attempt, "first": first,
                 "count": count, "shard": base + j, "index": j}
                for j, (first, count) in enumerate(split_episodes(self.cfg.episodes_per_task, len(self.workers)))]
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

    def close(self) -> None:
        for w in self.workers:
            try:
                self.ray.get(w.close.remote())
                self.ray.kill(w)
            except Exception:  # a dead actor has nothing left to close
                pass
        self._session.__exit__(None, None, None)
