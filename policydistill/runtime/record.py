"""DAgger from deployment: the episodes of a run in which the failure monitor raised an alarm, kept in an
episode store (:mod:`policydistill.data.shards`) for the teachers to label in the next distillation
(``distill ... method.extra_episodes=<store>``).

Every step keeps its observation groups, the action sent, reward and episode ends. A step where a teacher
acted after the alarm (``on_alarm=teacher``) is labelled by the teacher's action (``actor`` teacher,
``query`` intervention); the others are the student's, unlabelled (``query`` 0). Episodes without an alarm, and the
episodes still running when the run ends, are not kept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from policydistill.data.shards import INTERVENTION, NOT_ASKED, STUDENT, TEACHER, ShardWriter


class AlarmRecorder:
    """Buffers each env's episode and writes it to the store at ``root`` when it ends after an alarm of
    ``controller``'s monitor. ``task``/``task_index``: the suite task the envs run."""

    def __init__(self, root: str | Path, controller: Any, task: str, task_index: int, n_envs: int) -> None:
        self.writer, self.controller = ShardWriter(root), controller
        self.task, self.task_index = task, task_index
        self.steps: list[list[tuple]] = [[] for _ in range(n_envs)]
        self.kept = 0

    def step(self, k: int, obs: dict[str, np.ndarray], action: np.ndarray, reward: float, terminated: bool,
             truncated: bool) -> None:
        """Env ``k`` acted ``action`` on ``obs``; the controller's alarm state is this tick's."""
        alarmed, taught = self.controller.alarmed, self.controller.taught
        alarm = bool(alarmed is not None and alarmed[k])
        label = None if taught is None or np.isnan(taught[k]).any() else taught[k]
        self.steps[k].append((obs, np.asarray(action, dtype=np.float32), float(reward), bool(terminated),
                              bool(truncated), alarm, label))

    def end(self, k: int, seed: int, success: bool, ret: float) -> None:
        """Env ``k``'s episode ended: keep it if an alarm was raised in it."""
        steps, self.steps[k] = self.steps[k], []
        alarms = [s[5] for s in steps]
        if not any(alarms):
            return
        action = np.stack([s[1] for s in steps])
        taught = np.asarray([s[6] is not None for s in steps])
        labels = np.stack([np.zeros_like(s[1]) if s[6] is None else s[6] for s in steps]).astype(np.float32)
        arrays = {f"obs/{g}": np.stack([np.asarray(s[0][g], dtype=np.float32) for s in steps]) for g in steps[0][0]}
        arrays.update(action=action, actor=np.where(taught, TEACHER, STUDENT).astype(np.uint8),
                      label_mean=labels,
                      query=np.where(taught, INTERVENTION, NOT_ASKED).astype(np.uint8),
                      reward=np.asarray([s[2] for s in steps], dtype=np.float32),
                      terminated=np.asarray([s[3] for s in steps]), truncated=np.asarray([s[4] for s in steps]))
        self.writer.add(arrays, {"task": self.task, "task_index": self.task_index, "seed": seed, "success": success,
                                 "round": 0, "beta": 0.0, "return": ret, "first_alarm": alarms.index(True),
                                 "source": "deployment"})
        self.writer.flush()
        self.kept += 1
