"""Batched tensor environments (IsaacGym-style): the protocol, its adapters and the factory a suite names.

Adapters: :mod:`.gymnasium` (plain gymnasium envs, one per row, and gymnasium vector envs), :mod:`.vectask`
(IsaacGym VecTask and envs in its style), :mod:`.rsl_rl` (rsl_rl's VecEnv, both ways; imports rsl_rl).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

from policydistill.suites.batched.gymnasium import EnvPool, GymEnvs, GymVectorEnv, from_suite
from policydistill.suites.batched.protocol import BatchedEnv, BatchedEnvFactory, obs_to_numpy

if TYPE_CHECKING:
    from policydistill.suites import Suite

__all__ = ["BatchedEnv", "BatchedEnvFactory", "EnvPool", "GymEnvs", "GymVectorEnv", "make_batched_env",
           "obs_to_numpy", "resolve_factory"]


def resolve_factory(spec: str | BatchedEnvFactory) -> BatchedEnvFactory:
    """A suite's ``batched`` entry: ``"gymnasium"`` (its gymnasium envs in a vector env), a
    ``"module:factory"`` string, or a factory callable ``(suite, slot_tasks) -> BatchedEnv``."""
    if callable(spec):
        return spec
    if spec == "gymnasium":
        return from_suite
    module, sep, attr = str(spec).partition(":")
    if not sep:
        raise ValueError(f"suite 'batched: {spec}' must be 'gymnasium' or 'module:factory'")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"batched env factory '{spec}' cannot be imported: {e}") from e


def make_batched_env(suite: Suite, slot_tasks: Sequence[int]) -> BatchedEnv:
    """The suite's batched env with one row per entry of ``slot_tasks``."""
    if suite.batched is None:
        raise ValueError(f"suite '{suite.name}' has no 'batched' env factory")
    env = resolve_factory(suite.batched)(suite, list(slot_tasks))
    if env.num_envs != len(slot_tasks):
        raise ValueError(f"batched env factory {suite.batched} made {env.num_envs} rows, asked for {len(slot_tasks)}")
    return env
