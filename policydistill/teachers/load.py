"""Policies from what a user names: a bundle, a folder of bundles (one per task, or a folder of several: an
ensemble), ``module:attr``, or ``suite``."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any

import torch

from policydistill.bundle import POLICY_JSON, find_bundles, is_bundle, load_bundle
from policydistill.files import file_sha256
from policydistill.models import resolve_device
from policydistill.policy import CallablePolicy, ModulePolicy, Policy
from policydistill.suites import Suite
from policydistill.teachers.ensemble import EnsembleTeacher


def _takes_no_arguments(fn: Any) -> bool:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    return all(p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
               for p in sig.parameters.values())


def load_policy(spec: str | Path, device: str | torch.device = "auto") -> Policy:
    """A policy from a bundle directory or ``"module:attr"``.

    ``attr`` may be a Policy object, a torch module ``(n, dim) -> (n, act_dim)`` reading the ``policy`` group
    (wrapped in :class:`ModulePolicy`), a factory taking no arguments that returns a Policy, or a plain
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
    if isinstance(obj, torch.nn.Module):
        return ModulePolicy(obj, device=str(resolve_device(device)))
    if not callable(obj):
        raise ValueError(f"policy spec '{spec}' is neither a Policy nor callable")
    if inspect.isclass(obj) or _takes_no_arguments(obj):
        made = obj()
        if not isinstance(made, Policy):
            raise ValueError(f"policy spec '{spec}' returned {type(made).__name__}, not a Policy "
                             "(needs groups, act and reset)")
        return made
    return CallablePolicy(obj)


def policies_for_suite(spec: str | Path, suite: Suite, device: str = "auto") -> dict[str, Policy]:
    """The policy of every task of ``suite`` from ``spec``.

    ``spec``: one bundle or ``module:callable`` (serves every task); a folder of bundles named by task
    (one per task, or a folder of bundles per task: an :class:`EnsembleTeacher` of them); or ``suite`` (each
    task's own ``teacher`` from the suite file).
    """
    if str(spec) == "suite":
        missing = [t.name for t in suite.tasks if not t.teacher]
        if missing:
            raise ValueError(f"suite '{suite.name}' names no teacher for tasks {missing}")
        return {t.name: load_policy(t.teacher, device=device) for t in suite.tasks}
    path = Path(spec)
    if is_bundle(path) or (not path.exists() and ":" in str(spec)):
        policy = load_policy(str(spec), device=device)
        return dict.fromkeys(suite.task_names, policy)
    if not path.is_dir():
        raise FileNotFoundError(f"no policy bundle or folder of bundles at '{path}' "
                                "(expected a bundle, a folder of bundles, 'module:callable' or 'suite')")
    found = find_bundles(path)
    members = {n: _members(path / n) for n in suite.task_names if n not in found}
    missing = [n for n, m in members.items() if not m]
    if missing:
        raise ValueError(f"'{path}' has no bundle (nor a folder of bundles) for tasks {missing} of suite "
                         f"'{suite.name}'; it has bundles {sorted(found)}")
    return {n: load_bundle(found[n], device=device) if n in found
            else EnsembleTeacher([load_bundle(m, device=device) for m in members[n]]) for n in suite.task_names}


def _members(folder: Path) -> list[Path]:
    """The bundles of a task's ensemble folder, by name (none if it holds fewer than 2)."""
    bundles = find_bundles(folder) if folder.is_dir() else {}
    return [bundles[k] for k in sorted(bundles)] if len(bundles) >= 2 else []


def _identity(spec: str | Path) -> str:
    """What a policy spec is: ``bundle sha256:<hash of its policy.json>`` (which holds the weights' hash) for a
    bundle, the spec itself for ``module:callable``."""
    path = Path(spec)
    return f"bundle sha256:{file_sha256(path / POLICY_JSON)[:16]}" if is_bundle(path) else str(spec)



def teacher_identities(spec: str | Path, suite: Suite) -> dict[str, str]:
    """Per task of ``suite``, the identity of the policy :func:`policies_for_suite` gives it (see ``_identity``):
    a run resumed with other teachers is told apart from one resumed with its own."""
    if str(spec) == "suite":
        return {t.name: _identity(t.teacher) for t in suite.tasks}
    path = Path(spec)
    if is_bundle(path) or not path.is_dir():
        return dict.fromkeys(suite.task_names, _identity(spec))
    found = find_bundles(path)
    return {n: _identity(found[n]) if n in found else
            "ensemble " + ", ".join(_identity(m) for m in _members(path / n)) for n in suite.task_names}
