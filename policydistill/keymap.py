"""The key -> group mapping of an env whose observation is a Dict of its own keys.

A key map is ``{group: [{"key": name, "shape": [...]}, ...]}``: each group is its keys' values, flattened and
concatenated in that order. :class:`~policydistill.suites.wrappers.DictToGroups` builds it for a suite's env; a
bundle and an export description record it (``obs_keys``), so a deployed policy takes the env's own Dict:
:func:`groups_from_keys` turns one into the groups the policy reads. Plain JSON and numpy only (the runtime
imports it without gymnasium).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from policydistill.types import TASK

KeyMap = dict[str, list[dict[str, Any]]]


def make_keymap(shapes: Mapping[str, tuple[int, ...]], group_keys: Mapping[str, list[str]]) -> KeyMap:
    """The key map of ``group_keys`` ({group: [key, ...]}) over keys of the given shapes ({key: shape})."""
    return {g: [{"key": k, "shape": [int(s) for s in shapes[k]]} for k in keys] for g, keys in group_keys.items()}


def keymap_dims(keymap: KeyMap) -> dict[str, int]:
    """{group: flat width} of a key map."""
    return {g: sum(int(np.prod(e["shape"], dtype=np.int64)) for e in entries) for g, entries in keymap.items()}


def is_keyed(obs: Mapping[str, Any], keymap: KeyMap | None, groups: tuple[str, ...]) -> bool:
    """Whether ``obs`` is an env's own Dict under ``keymap`` (it lacks one of ``groups``), not groups already."""
    return keymap is not None and isinstance(obs, Mapping) and any(g not in obs for g in groups)


def groups_from_keys(obs: Mapping[str, Any], keymap: KeyMap, groups: tuple[str, ...],
                     dims: Mapping[str, int]) -> dict[str, np.ndarray]:
    """``groups`` {group: (n, dim) float32} from an env's own Dict ``obs`` {key: (n, *shape) or shape}.

    A key given in its own shape is one env (n = 1). A group ``obs`` already holds is taken as it is; ``task``
    of a one-task policy (dim 1) is filled with ones; any other missing key is a KeyError naming it and the
    keys expected; a value of the wrong shape a ValueError naming the key.
    """
    out: dict[str, np.ndarray] = {}
    n = None
    for g in groups:
        if g in obs:
            out[g] = np.asarray(obs[g], np.float32)
            continue
        if g not in keymap:
            if g == TASK and dims.get(g) == 1:
                continue  # filled once n is known
            raise KeyError(f"observation lacks '{g}': it is not one of the env's keys "
                           f"{[e['key'] for es in keymap.values() for e in es]}; pass it beside them")
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
