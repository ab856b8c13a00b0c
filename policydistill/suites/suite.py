"""Task suites: named lists of tasks, each an env (gymnasium id or factory) with its success test.

A suite is a YAML file (``envs/suites/<name>.yaml`` for the bundled ones, or any path)::

    name: default
    tasks:
      - {name: north, env: policydistill/PointReach-v0, kwargs: {target: north}, train_steps: 60000}

Any registered gymnasium id (e.g. ``Hopper-v5``) is also a one-task suite.

A task's ``success`` says when an episode succeeded: ``{info_key: <key>}`` (the info value at the episode's
last step), ``{return_at_least: <x>}`` (the episode's return) or ``"module:callable"`` (``fn(info, return) ->
bool`` at each step; its value at the last step counts). Without it, a task whose env reports
``info["is_success"]`` (in the info of its reset too) uses that, and a task whose env reports none has no
success: its success rate is "n/a", never 0.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import gymnasium as gym
import yaml
from gymnasium import spaces

from policydistill.keymap import KeyMap, KeyMaps
from policydistill.suites.wrappers import (
    BoxToGroups,
    DictToGroups,
    SafeEpisodes,
    Success,
    TaskGroup,
    reads_groups_as_is,
)
from policydistill.types import GOAL, TASK


@dataclass(frozen=True)
class TaskSpec:
    """One task: ``env`` is a gymnasium id, ``"module:env-id"`` (importing the module registers the id) or
    ``"module:factory"``; ``kwargs`` go to it.

    ``success_threshold``: the success rate an expert must reach; ``train_steps``: default expert
    budget; ``teacher``: optional policy spec (bundle dir or ``module:callable``); ``success``: when an episode
    succeeded (see the module doc); ``groups``: for an env observing a Dict whose keys are not group names,
    which keys go to which group (``{policy: [...], privileged: [...]}``; unassigned keys go to ``policy``,
    sorted; see :class:`~policydistill.suites.wrappers.DictToGroups`).
    """

    name: str
    env: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    success_threshold: float = 0.9
    train_steps: int = 100_000
    max_episode_steps: int | None = None
    teacher: str | None = None
    success: dict[str, Any] | str | None = None
    groups: dict[str, list[str]] | None = None

    def __post_init__(self) -> None:
        if self.success is not None:
            success_test(self.success, self.name)  # a bad spec is an error when the suite is loaded


@dataclass(frozen=True)
class Suite:
    """An ordered tuple of tasks; a task's index is its ``task`` one-hot position.

    ``batched``: optional batched tensor env for rollouts (see :mod:`policydistill.suites.batched`): ``"gymnasium"``,
    ``"module:factory"`` or a factory ``(suite, slot_tasks) -> BatchedEnv``; None steps one gymnasium env
    per slot.
    """

    name: str
    tasks: tuple[TaskSpec, ...]
    description: str = ""
    batched: str | Callable[..., Any] | None = None

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    @functools.cached_property
    def _probed(self) -> tuple[tuple[spaces.Dict, spaces.Box, KeyMap | None], ...]:
        """(observation space, action space, key map) of every task, from one env each."""
        out = []
        for i in range(len(self.tasks)):
            env = self.make_env(i)
            out.append((env.observation_space, env.action_space, _keymap_of(env)))
            env.close()
        return tuple(out)

    @functools.cached_property
    def spaces(self) -> tuple[tuple[spaces.Dict, spaces.Box], ...]:
        """(observation space, action space) of every task, in task order (built once per suite object)."""
        return tuple((obs, act) for obs, act, _ in self._probed)

    @functools.cached_property
    def keymaps(self) -> tuple[KeyMap | None, ...]:
        """Each task's key map, for an env observing a Dict of its own keys (None: its groups as they are)."""
        return tuple(keymap for _, _, keymap in self._probed)

    @property
    def keymap(self) -> KeyMaps | None:
        """The key map a policy of the whole suite records: the one every task shares, else one per task (None for
        a task observing groups as they are); None when no task's env observes keys of its own."""
        first = self.keymaps[0]
        if all(k == first for k in self.keymaps):
            return first
        return list(self.keymaps)

    @functools.cached_property
    def has_success(self) -> tuple[bool, ...]:
        """Whether each task defines success: a ``success`` spec, or an env that reports ``info["is_success"]``
        (probed on a reset, once per suite object)."""
        return tuple(t.success is not None or _reports_success(self.make_env(i)) for i, t in enumerate(self.tasks))

    def with_goal(self, groups: Sequence[str]) -> tuple[str, ...]:
        """``groups`` with ``goal`` added (before ``task``) when every task observes one: a goal-conditioned
        student acts on its goal as it acts on its task."""
        groups = tuple(groups)
        if GOAL in groups or not all(GOAL in obs.spaces for obs, _ in self.spaces):
            return groups
        at = groups.index(TASK) if TASK in groups else len(groups)
        return (*groups[:at], GOAL, *groups[at:])

    def space_groups(self, tasks: Sequence[int]) -> list[list[int]]:
        """``tasks`` grouped by their observation group shapes and action shape (first-seen order): the tasks
        whose envs can be stepped in one batch."""
        groups: dict[tuple, list[int]] = {}
        for t in tasks:
            obs, act = self.spaces[t]
            key = (tuple((g, s.shape) for g, s in obs.spaces.items()), act.shape)
            groups.setdefault(key, []).append(t)
        return list(groups.values())

    def with_episode_limit(self, steps: int) -> Suite:
        """This suite with every task's episodes cut at ``steps`` (or its own limit when shorter)."""
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"an episode limit must be an int >= 1, got {steps!r}")
        tasks = []
        for t in self.tasks:
            env = self.make_env(t.name)
            own = t.max_episode_steps or (env.spec.max_episode_steps if env.spec else None)
            env.close()
            tasks.append(dataclasses.replace(t, max_episode_steps=min(steps, own) if own else steps))
        return dataclasses.replace(self, tasks=tuple(tasks))

    def index(self, task: str) -> int:
        if task not in self.task_names:
            raise KeyError(f"suite '{self.name}' has no task '{task}'; its tasks are {self.task_names}")
        return self.task_names.index(task)

    def make_env(self, task: int | str, render_mode: str | None = None) -> gym.Env:
        """Build the env of one task, yielding the groups ``policy`` [``privileged``] and ``task``.

        A step that raises or returns non-finite values ends the episode with
        ``info["episode_error"]`` (see :class:`SafeEpisodes`).
        """
        i = self.index(task) if isinstance(task, str) else task
        spec = self.tasks[i]
        kwargs = dict(spec.kwargs)
        if render_mode is not None:
            kwargs["render_mode"] = render_mode
        if spec.max_episode_steps is not None:
            kwargs["max_episode_steps"] = spec.max_episode_steps
        env = _env_factory(spec.env)(**kwargs)
        if spec.success is not None:
            env = Success(env, success_test(spec.success, spec.name))
        if spec.groups is not None or not (isinstance(env.observation_space, spaces.Box)
                                           or reads_groups_as_is(env.observation_space)):
            env = DictToGroups(env, spec.groups, f"task '{spec.name}' (env {spec.env})")
        elif isinstance(env.observation_space, spaces.Box):
            env = BoxToGroups(env)
        return SafeEpisodes(TaskGroup(env, i, len(self.tasks)))


def _keymap_of(env: gym.Env) -> KeyMap | None:
    """The key map of the :class:`DictToGroups` in ``env``'s wrappers, None without one."""
    while isinstance(env, gym.Wrapper):
        if isinstance(env, DictToGroups):
            return env.keymap
        env = env.env
    return None


def _reports_success(env: gym.Env) -> bool:
    """Whether ``env`` puts ``is_success`` in the info of its reset (then closes it)."""
    try:
        return "is_success" in env.reset(seed=0)[1]
    finally:
        env.close()


def success_test(spec: dict[str, Any] | str, task: str) -> Callable[[dict[str, Any], float], bool]:
    """``fn(info, episode return so far) -> bool`` from a task's ``success`` spec (see the module doc)."""
    if isinstance(spec, str) and ":" in spec:
        module, _, attr = spec.partition(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"task '{task}': success '{spec}' cannot be imported: {e}") from None
    if isinstance(spec, dict) and len(spec) == 1 and "info_key" in spec and isinstance(spec["info_key"], str):
        key = spec["info_key"]
        return lambda info, ret: bool(info.get(key, False))
    if isinstance(spec, dict) and len(spec) == 1 and isinstance(spec.get("return_at_least"), (int, float)) \
            and not isinstance(spec["return_at_least"], bool):
        least = float(spec["return_at_least"])
        return lambda info, ret: ret >= least
    raise ValueError(f"task '{task}': success {spec!r} is not one of {{info_key: <key>}}, {{return_at_least: "
                     "<number>}} or 'module:callable'")


def _module_attr(env: str) -> tuple[str, str] | None:
    """``(module, attr)`` of a ``"module:attr"`` env (a factory or an id the module registers), else None."""
    module, sep, attr = env.partition(":")
    return (module, attr) if sep and "/" not in module else None


def task_name_of(env: str) -> str:
    """The default task name of an env: the part after ``module:``, else the env itself."""
    split = _module_attr(env)
    return split[1] if split else env


def _env_factory(env: str) -> Callable[..., gym.Env]:
    """A callable making ``env``: a registered id, ``"module:factory"``, or ``"module:env-id"`` (gymnasium's
    form: importing the module registers the id, as plugins such as shimmy do)."""
    split = _module_attr(env)
    if split:
        module, attr = split
        try:
            imported = importlib.import_module(module)
        except ImportError as e:
            raise ValueError(f"env '{env}': module '{module}' cannot be imported: {e}") from e
        if hasattr(imported, attr):
            return getattr(imported, attr)
        if attr not in gym.registry:
            raise ValueError(f"env '{env}': module '{module}' has no factory '{attr}' and registers no gymnasium "
                             f"id '{attr}'")
        env = attr
    _register_builtin_envs()
    if env not in gym.registry:
        raise ValueError(f"unknown env id '{env}'. Registered policydistill envs: {builtin_env_ids()}; "
                         "any other registered gymnasium id (e.g. Hopper-v5), 'module:env-id' (the module "
                         "registers it) or 'module:factory' works too")
    return lambda **kw: gym.make(env, **kw)


def _register_builtin_envs() -> None:
    importlib.import_module("policydistill_envs")


def builtin_env_ids() -> list[str]:
    _register_builtin_envs()
    return sorted(k for k in gym.registry if k.startswith("policydistill/"))


def _suite_dir() -> Path:
    return Path(str(resources.files("policydistill_envs") / "suites"))


def zoo_dir(suite: str) -> Path:
    """The committed expert zoo of a bundled suite: ``envs/zoo/<suite>`` (a folder of bundles named by task)."""
    return Path(str(resources.files("policydistill_envs"))) / "zoo" / suite


def diffusion_zoo_dir(suite: str) -> Path:
    """The committed diffusion teacher of a bundled suite: ``envs/zoo/diffusion/<suite>`` (one bundle)."""
    return Path(str(resources.files("policydistill_envs"))) / "zoo" / "diffusion" / suite


def builtin_suites() -> list[str]:
    return sorted(p.stem for p in _suite_dir().glob("*.yaml"))


def suite_from_dict(data: dict[str, Any], where: str) -> Suite:
    """Validate a parsed suite file (unknown keys are errors that list the valid ones)."""
    valid_suite = {"name", "tasks", "description", "batched"}
    valid_task = {f.name for f in dataclasses.fields(TaskSpec)}
    if not isinstance(data, dict) or "tasks" not in data:
        raise ValueError(f"{where}: a suite needs a 'tasks' list; valid keys are {sorted(valid_suite)}")
    unknown = set(data) - valid_suite
    if unknown:
        raise ValueError(f"{where}: unknown suite keys {sorted(unknown)}; valid keys are {sorted(valid_suite)}")
    tasks = []
    for i, t in enumerate(data["tasks"]):
        if isinstance(t, str):
            t = {"name": task_name_of(t), "env": t}
        unknown = set(t) - valid_task
        if unknown or "env" not in t:
            raise ValueError(f"{where}: task {i} has unknown keys {sorted(unknown)} or no 'env'; "
                             f"valid keys are {sorted(valid_task)}")
        tasks.append(TaskSpec(**{"name": task_name_of(str(t["env"])), **t}))
    names = [t.name for t in tasks]
    if not tasks or len(set(names)) != len(names):
        raise ValueError(f"{where}: a suite needs at least one task and unique task names, got {names}")
    return Suite(name=str(data.get("name", Path(where).stem)), tasks=tuple(tasks),
                 description=str(data.get("description", "")), batched=data.get("batched"))


def load_suite(name: str) -> Suite:
    """Resolve a suite by bundled name, YAML path, gymnasium env id (a one-task suite) or env ids joined by
    ``+`` (one task each, named by its id: ``Hopper-v5+Walker2d-v5``)."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return suite_from_dict(yaml.safe_load(path.read_text()), str(path))
    bundled = _suite_dir() / f"{name}.yaml"
    if bundled.is_file():
        return suite_from_dict(yaml.safe_load(bundled.read_text()), str(bundled))
    _register_builtin_envs()
    if name in gym.registry:
        return Suite(name=name, tasks=(TaskSpec(name=name, env=name),))
    if _module_attr(name) and not re.search(r"[+,]", name):  # module:env-id or module:factory, one task
        _env_factory(name)
        return Suite(name=name, tasks=(TaskSpec(name=task_name_of(name), env=name),))
    ids = [t.strip() for t in re.split(r"[+,]", name)]
    if len(ids) > 1:
        return suite_from_dict({"name": name, "tasks": ids}, name)
    raise ValueError(f"unknown suite '{name}': expected one of {builtin_suites()}, a suite .yaml file, "
                     "a registered gymnasium env id (e.g. Hopper-v5), 'module:env-id' (importing the module "
                     "registers it) or env ids joined by '+' (suite=Hopper-v5+Walker2d-v5)")
