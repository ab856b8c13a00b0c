"""Gymnasium spaces as JSON (exact round trip, infinite bounds allowed) and the fit check.

A Box is stored as ``{"type": "Box", "shape", "dtype", "low", "high"}``; a bound that is the same
everywhere is one number, else a flat row-major list. Infinite bounds are the strings ``"inf"`` and
``"-inf"`` so the file stays strict JSON. A Dict is ``{"type": "Dict", "spaces": {name: Box}}``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from gymnasium import spaces

JsonBound = float | int | str | list[float | int | str]


def _encode_value(v: float | int, integer: bool) -> float | int | str:
    if integer:
        return int(v)
    if math.isnan(v):
        raise ValueError("a Box bound is NaN")
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return float(v)


def _encode_bound(a: np.ndarray) -> JsonBound:
    integer = np.issubdtype(a.dtype, np.integer)
    flat = a.reshape(-1)
    if flat.size > 0 and np.all(flat == flat[0]):
        return _encode_value(flat[0].item(), integer)
    return [_encode_value(v.item(), integer) for v in flat]


def _decode_bound(v: JsonBound, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    def one(x: float | int | str) -> float | int:
        return float(x) if isinstance(x, str) else x

    if isinstance(v, list):
        arr = np.array([one(x) for x in v], dtype=dtype)
        if arr.size != math.prod(shape):
            raise ValueError(f"Box bound has {arr.size} values, shape {shape} needs {math.prod(shape)}")
        return arr.reshape(shape)
    return np.full(shape, one(v), dtype=dtype)


def space_to_json(space: spaces.Space) -> dict[str, Any]:
    """A Box or a Dict of Boxes as a JSON-able dict."""
    if isinstance(space, spaces.Box):
        return {"type": "Box", "shape": list(space.shape), "dtype": np.dtype(space.dtype).name,
                "low": _encode_bound(space.low), "high": _encode_bound(space.high)}
    if isinstance(space, spaces.Dict):
        return {"type": "Dict", "spaces": {k: space_to_json(s) for k, s in space.spaces.items()}}
    raise ValueError(f"cannot store space {space}: only Box and Dict of Boxes are supported")


def space_from_json(data: dict[str, Any]) -> spaces.Space:
    """Inverse of :func:`space_to_json`."""
    kind = data.get("type") if isinstance(data, dict) else None
    if kind == "Box":
        shape = tuple(int(s) for s in data["shape"])
        dtype = np.dtype(data["dtype"])
        return spaces.Box(_decode_bound(data["low"], shape, dtype), _decode_bound(data["high"], shape, dtype),
                          shape=shape, dtype=dtype)
    if kind == "Dict":
        return spaces.Dict({k: space_from_json(v) for k, v in data["spaces"].items()})
    raise ValueError(f"unknown space description {data!r}: expected type 'Box' or 'Dict'")


def _box_str(box: spaces.Box) -> str:
    return f"Box(shape={box.shape}, low={box.low.tolist()}, high={box.high.tolist()})"


def check_spaces(policy_obs_space: spaces.Dict, policy_action_space: spaces.Box, env_obs_space: spaces.Dict,
                 env_action_space: spaces.Box, what: str) -> None:
    """Raise ``ValueError`` unless a policy fits an env.

    Every observation group the policy reads must exist in the env with the same shape (the env
    may have more groups); the action spaces must have the same shape and bounds.
    """
    if not isinstance(env_obs_space, spaces.Dict):
        raise ValueError(f"{what}: env observation space must be a Dict of groups, got {env_obs_space}")
    for group, space in policy_obs_space.spaces.items():
        if group not in env_obs_space.spaces:
            raise ValueError(f"{what}: the policy reads observation group '{group}' which the env lacks; "
                             f"the env has {list(env_obs_space.spaces)}")
        env_space = env_obs_space[group]
        if space.shape != env_space.shape:
            raise ValueError(f"{what}: observation group '{group}' differs: policy {_box_str(space)} "
                             f"vs env {_box_str(env_space)}")
    if not isinstance(env_action_space, spaces.Box):
        raise ValueError(f"{what}: env action space must be a Box, got {env_action_space}")
    same = policy_action_space.shape == env_action_space.shape and all(
        np.allclose(a, b, rtol=0.0, atol=1e-6, equal_nan=False)
        for a, b in ((policy_action_space.low, env_action_space.low),
                     (policy_action_space.high, env_action_space.high)))
    if not same:
        raise ValueError(f"{what}: action space differs: policy {_box_str(policy_action_space)} "
                         f"vs env {_box_str(env_action_space)}")
