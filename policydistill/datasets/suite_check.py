"""An imported episode checked against the suite it is said to come from: its task is one of the suite's,
its observation groups and action have the suite's sizes; a ``task`` group is added when the dataset has none
(the one-hot the suite's envs yield)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from policydistill.data.shards import OBS_PREFIX, EpisodeArrays, Meta
from policydistill.suites import Suite, load_suite


@dataclass
class SuiteCheck:
    """``task``: the task of episodes that name none (a suite of one task needs none)."""

    suite: Suite
    task: str | None = None
    _task_obs: dict[int, np.ndarray] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.suite.name

    @classmethod
    def of(cls, suite: str | None, where: str, task: str | None = None) -> SuiteCheck:
        if not suite:
            raise ValueError(f"{where} does not say which suite its episodes were played on: give suite=<name>")
        check = cls(load_suite(suite), task)
        if task is not None:
            check.suite.index(task)
        return check

    def _task_index(self, meta: Meta, where: str) -> int:
        names = self.suite.task_names
        task = meta.get("task") or self.task or (names[0] if len(names) == 1 else None)
        if task is None:
            raise ValueError(f"{where} does not name its task and suite '{self.name}' has {len(names)}: give "
                             f"task=<one of {names}>")
        if task not in names:
            raise ValueError(f"{where}: task '{task}' is not a task of suite '{self.name}' (its tasks: {names})")
        index = names.index(task)
        if "task_index" in meta and meta["task_index"] != index:
            raise ValueError(f"{where}: task '{task}' has index {index} in suite '{self.name}', the dataset says "
                             f"{meta['task_index']}")
        return index

    def _task_group(self, index: int) -> np.ndarray:
        if index not in self._task_obs:
            env = self.suite.make_env(index)
            obs, _ = env.reset(seed=0)
            env.close()
            self._task_obs[index] = np.asarray(obs["task"], dtype=np.float32)
        return self._task_obs[index]

    def episode(self, arrays: EpisodeArrays, meta: Meta, where: str) -> tuple[EpisodeArrays, Meta]:
        """One imported episode checked (see the module doc) with its ``task`` and ``task_index`` set."""
        index = self._task_index(meta, where)
        obs_space, act_space = self.suite.spaces[index]
        for key, x in arrays.items():
            if not key.startswith(OBS_PREFIX):
                continue
            group = key[len(OBS_PREFIX):]
            if group not in obs_space.spaces:
                raise ValueError(f"{where}: observation group '{group}' is not one the suite '{self.name}' yields "
                                 f"(it has {sorted(obs_space.spaces)})")
            want = obs_space[group].shape[0]
            if x.shape[1:] != (want,):
                raise ValueError(f"{where}: observation group '{group}' has shape {x.shape[1:]}, suite "
                                 f"'{self.name}' task '{self.suite.task_names[index]}' has ({want},)")
        if OBS_PREFIX + "task" not in arrays and "task" in obs_space.spaces:
            arrays[OBS_PREFIX + "task"] = np.tile(self._task_group(index), (len(arrays["reward"]), 1))
        widest = max(a.shape[0] for _, a in self.suite.spaces)
        if arrays["action"].shape[1:] not in ((act_space.shape[0],), (widest,)):
            raise ValueError(f"{where}: actions have shape {arrays['action'].shape[1:]}, suite '{self.name}' task "
                             f"'{self.suite.task_names[index]}' acts with {act_space.shape}")
        out: dict[str, Any] = {**meta, "task": self.suite.task_names[index], "task_index": index}
        return arrays, out
