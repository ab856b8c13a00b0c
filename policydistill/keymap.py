"""The key -> group mapping of an env whose observation is a Dict of its own keys.

A key map is ``{group: [{"key": name, "shape": [...]}, ...]}``: each group is its keys' values, flattened and
concatenated in that order. :class:`~policydistill.suites.wrappers.DictToGroups` builds it for a suite's env; a
bundle and an export description record it (``obs_keys``), so a deployed policy takes the env's own Dict:
:func:`groups_from_keys` turns one into the groups the policy reads. A policy of tasks that map their keys
differently records a list, one key map per task (None for a task observing groups as they are), and is given
its task's one-hot beside the env's keys (:func:`task_keymap`). Plain JSON and numpy only (the runtime imports it
without gymnasium).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from policydistill.types import TASK

KeyMap = dict[str, list[dict[str, Any]]]
KeyMaps = KeyMap | list[KeyMap | None]
"""What a policy records: one key map for every task, or one per task."""


def make_keymap(shapes: Mapping[str, tuple[int, ...]], group_keys: Mapping[str, list[str]]) -> KeyMap:
    """The key map of ``group_keys`` ({group: [key, ...]}) over keys of the given shapes ({key: shape})."""
    return {g: [{"key": k, "shape": [int(s) for s in shapes[k]]} for k in keys] for g, keys in group_keys.items()}


def task_keymap(obs: Mapping[str, Any], keymaps: KeyMaps) -> tuple[KeyMap, int | None]:
    """The key map of the task ``obs`` comes from and that task's index (None: one map for every task).

    With one map per task, ``obs`` holds ``task`` (n, n_tasks) beside the env's keys, one task in all its rows
    (its keys' shapes are that task's); otherwise a one-line error says so."""
    if isinstance(keymaps, dict):
        return keymaps, None
    task = call_task(obs, len(keymaps))
    if keymaps[task] is None:
        raise ValueError(f"task {task}'s env observes groups, not keys of its own: give it the groups")
    return keymaps[task], task


def call_task(obs: Mapping[str, Any], n_tasks: int) -> int:
    """The one task whose one-hot every row of ``obs[task]`` holds (the env's own Dict is taken for one task per
    call: its keys' shapes are that task's)."""
    if TASK not in obs:
        raise KeyError(f"observation lacks '{TASK}': a policy of {n_tasks} tasks whose spaces or keys differ is given "
                       "its task's one-hot beside the env's keys")
    tasks = sorted(set(np.asarray(obs[TASK], np.float32).reshape(-1, n_tasks).argmax(1).tolist()))
    if len(tasks) != 1:
        raise ValueError(f"observation's '{TASK}' rows name tasks {tasks}: the env's own Dict is taken for one task "
                         "per call")
    return tasks[0]


def is_keyed(obs: Mapping[str, Any], keymap: KeyMaps | None, groups: tuple[str, ...]) -> bool:
    """Whether ``obs`` is an env's own Dict under ``keymap``, not groups: it lacks one of ``groups``, or holds an env
    key that is not one of them (a key may share a group's name: gymnasium-robotics' ``observation``)."""
    if keymap is None or not isinstance(obs, Mapping):
        return False
    if any(g not in obs for g in groups):
        return True
    maps = [keymap] if isinstance(keymap, dict) else [m for m in keymap if m]
    return any(e["key"] in obs and e["key"] not in groups for m in maps for entries in m.values() for e in entries)


def groups_from_keys(obs: Mapping[str, Any], keymap: KeyMap, groups: tuple[str, ...],
                     dims: Mapping[str, int]) -> dict[str, np.ndarray]:
    """``groups`` {group: (n, dim) float32} from an env's own Dict ``obs`` {key: (n, *shape) or shape}.

    A key given in its own shape is one env (n = 1). A group the key map does not make is taken from ``obs`` as
    it is (``task``, given beside the keys); ``task`` of a one-task policy (dim 1) is filled with ones; any other
    missing key is a KeyError naming it and the keys expected; a value of the wrong shape a ValueError naming the
    key.
    """
    out: dict[str, np.ndarray] = {}
    n = None
    for g in groups:
        if g not in keymap:
            if g in obs:
                a = np.asarray(obs[g], np.float32)
                out[g] = a[None] if a.ndim == 1 else a  # one env's group
            elif g != TASK or dims.get(g) != 1:  # a one-task policy's task is filled once n is known
                raise KeyError(f"observation lacks '{g}': it is not one of the env's keys "
                               f"{[e['key'] for es in keymap.values() for e in es]}; pass it beside them")
            continue
        parts = []
        for entry in keymap[g]:
            key, shape = entry["key"], tuple(entry["shape"])
            if key not in obs:
                raise KeyError(f"observation lacks the env key '{key}' (group '{g}'); expected the keys "
                               f"{[e['key'] for es in keymap.values() for e in es]}")
            a = np.asarray(obs[key], np.float32)
            if a.shape == shape:
                a = a[None]
            if a.shape[1:] != shape:
                raise ValueError(f"observation key '{key}' has shape {a.shape}, expected {shape} or (n, *{shape})")
            parts.append(a.reshape(len(a), -1))
        out[g] = np.concatenate(parts, axis=1)
        n = len(out[g])
    if TASK in groups and TASK not in out:
        out[TASK] = np.ones((n or 1, 1), np.float32)
    return out
