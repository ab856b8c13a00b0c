"""Metaworld's scripted policies as callable teachers, one per task.

``teacher: policydistill.teachers.metaworld:<task>`` in a suite file, where ``<task>`` is the Metaworld task name
with ``-`` written ``_`` (``pick-place-v3`` -> ``pick_place_v3``), gives that task the scripted policy Metaworld
ships for it (``metaworld.policies``), so ``teachers=suite`` serves every task of ``mt10`` / ``mt50``. Each
attribute is a factory taking no arguments that returns a :class:`~policydistill.policy.CallablePolicy` reading
the ``policy`` group (the 39-dim observation) and acting in [-1, 1]^4. Needs the ``metaworld`` extra.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable

import numpy as np
from gymnasium import spaces

from policydistill.policy import CallablePolicy

ACTION_SPACE = spaces.Box(-1.0, 1.0, shape=(4,), dtype=np.float32)


def task_of(attr: str) -> str:
    """The Metaworld task name of a teacher attribute: ``pick_place_v3`` -> ``pick-place-v3``."""
    return attr.replace("_", "-")


def scripted_teacher(task: str) -> CallablePolicy:
    """The scripted policy of Metaworld task ``task`` (e.g. ``reach-v3``) as a Policy/Teacher."""
    from policydistill_envs.metaworld_tasks import require_metaworld

    require_metaworld()
    from metaworld.policies import ENV_POLICY_MAP

    if task not in ENV_POLICY_MAP:
        raise ValueError(f"metaworld has no scripted policy for {task!r}; it has {sorted(ENV_POLICY_MAP)}")
    scripted = ENV_POLICY_MAP[task]()

    def act(obs: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():  # its gains warn when an action is clipped, which the env does anyway
            warnings.simplefilter("ignore")
            return np.asarray(scripted.get_action(np.asarray(obs, dtype=np.float64)), dtype=np.float32)

    policy = CallablePolicy(act, groups=("policy",), action_space=ACTION_SPACE)
    policy.task = task
    return policy


def __getattr__(name: str) -> Callable[[], CallablePolicy]:
    """``<task>`` (a Metaworld task name with ``_`` for ``-``, ending in ``_v<n>``): a no-argument factory of that
    task's scripted teacher (what :func:`~policydistill.teachers.load.load_policy` calls)."""
    if not re.fullmatch(r"[a-z0-9_]+_v\d+", name):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

    def factory() -> CallablePolicy:
        return scripted_teacher(task_of(name))

    factory.__name__ = factory.__qualname__ = name
    return factory
