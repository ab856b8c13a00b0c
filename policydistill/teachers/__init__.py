"""Teachers: SB3 experts, callables, bundles, and the bank that routes envs to their task's teacher."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any

import torch

from policydistill.bundle import is_bundle, load_bundle
from policydistill.policy import CallablePolicy, Policy
from policydistill.teachers.bank import TeacherBank
from policydistill.teachers.sb3 import import_sb3_zip, policy_from_sb3

__all__ = ["TeacherBank", "import_sb3_zip", "load_policy", "policy_from_sb3"]


def _takes_no_arguments(fn: Any) -> bool:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    return all(p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
               for p in sig.parameters.values())


def load_policy(spec: str | Path, device: str | torch.device = "auto") -> Policy:
    """A policy from a bundle directory or ``"module:attr"``.

    ``attr`` may be a Policy object, a factory taking no arguments that returns a Policy, or a plain
    function ``obs (dim,) -> action (act_dim,)`` reading the ``policy`` group (wrapped in
    :class:`CallablePolicy`). Bundles are loaded frozen, in eval mode.
    """
    path = Path(spec)
    if is_bundle(path):
        return load_bundle(path, device=device)
    if path.exists():
        raise ValueError(f"'{spec}' exists but is not a policy bundle (no policy.json)")
    module, sep, attr = str(spec).partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"policy spec '{spec}' is neither a bundle directory nor 'module:callable'")
    try:
        obj = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"policy spec '{spec}' cannot be imported: {e}") from e
    if isinstance(obj, Policy):
        return obj
    if not callable(obj):
        raise ValueError(f"policy spec '{spec}' is neither a Policy nor callable")
    if inspect.isclass(obj) or _takes_no_arguments(obj):
        made = obj()
        if not isinstance(made, Policy):
            raise ValueError(f"policy spec '{spec}' returned {type(made).__name__}, not a Policy "
                             "(needs groups, act and reset)")
        return made
    return CallablePolicy(obj)
