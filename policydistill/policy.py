"""The one protocol every policy in the project follows: experts, students, exported runtimes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import gymnasium as gym
import numpy as np

from policydistill.types import ActionLabel, ObsGroups, check_groups, concat_groups


@runtime_checkable
class Policy(Protocol):
    """Batched policy over observation groups.

    ``groups``: the observation groups it reads, in the order it reads them.
    ``act(obs, deterministic)``: obs ``{group: (n_envs, dim)}`` -> actions ``(n_envs, act_dim)`` in
    the env's action space. ``reset(env_mask)``: forget history/hidden state/queued actions of the
    envs where ``env_mask`` (n_envs,) is True, or of all envs when it is None.
    """

    groups: tuple[str, ...]

    def act(self, obs: ObsGroups, deterministic: bool = True) -> np.ndarray: ...

    def reset(self, env_mask: np.ndarray | None = None) -> None: ...


@runtime_checkable
class Teacher(Policy, Protocol):
    """A frozen policy that can also label any batch of states with its action distribution."""

    def label(self, obs: ObsGroups) -> ActionLabel: ...


class _DeterministicTeacher:
    """Shared by the adapters below: ``groups`` in, ``_actions(x (n, dim)) -> (n, act_dim)`` out,
    clipped to ``action_space`` when given; the label is the action itself; no state to reset."""

    groups: tuple[str, ...]
    action_space: gym.spaces.Box | None

    def _actions(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def act(self, obs: ObsGroups, deterministic: bool = True) -> np.ndarray:
        x = concat_groups(obs, self.groups)
        out = np.asarray(self._actions(x), dtype=np.float32).reshape(len(x), -1)
        if self.action_space is not None:
            out = np.clip(out, self.action_space.low, self.action_space.high)
        return out

    def label(self, obs: ObsGroups) -> ActionLabel:
        return ActionLabel(mean=self.act(obs))

    def reset(self, env_mask: np.ndarray | None = None) -> None:
        """Stateless: nothing to forget."""


class CallablePolicy(_DeterministicTeacher):
    """A plain Python callable ``obs -> action`` (e.g. a scripted controller) as a Policy/Teacher.

    ``fn`` receives the concatenated ``groups`` (n_envs, dim) when ``batched`` is True, else one
    unbatched observation (dim,) at a time, and returns actions of the same batching.
    """

    def __init__(self, fn: Callable[[np.ndarray], np.ndarray], groups: Sequence[str] = ("policy",),
                 action_space: gym.spaces.Box | None = None, batched: bool = False) -> None:
        self.fn = fn
        self.groups = check_groups(groups)
        self.action_space = action_space
        self.batched = batched

    def _actions(self, x: np.ndarray) -> np.ndarray:
        return self.fn(x) if self.batched else np.stack([self.fn(row) for row in x])


class ModulePolicy(_DeterministicTeacher):
    """A plain torch module ``(n, obs_dim) -> (n, act_dim)`` over the concatenated ``groups``, as a
    frozen Policy/Teacher (eval mode, no gradients). Actions are clipped to ``action_space``."""

    def __init__(self, module, groups: Sequence[str] = ("policy",), action_space: gym.spaces.Box | None = None,
                 device: str = "cpu") -> None:
        import torch

        self.module = module.to(device).eval().requires_grad_(False)
        self.groups = check_groups(groups)
        self.action_space = action_space
        self.device = torch.device(device)

    def _actions(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.module(torch.as_tensor(x, device=self.device)).float().cpu().numpy()


class RandomPolicy:
    """Uniform random actions in a Box space; the floor every learned policy must beat."""

    def __init__(self, action_space: gym.spaces.Box, groups: Sequence[str] = ("policy",), seed: int = 0):
        self.action_space = action_space
        self.groups = check_groups(groups)
        self.rng = np.random.default_rng(seed)

    def act(self, obs: ObsGroups, deterministic: bool = True) -> np.ndarray:
        n = len(next(iter(obs.values())))
        low, high = self.action_space.low, self.action_space.high
        return self.rng.uniform(low, high, size=(n, *low.shape)).astype(np.float32)

    def reset(self, env_mask: np.ndarray | None = None) -> None:
        """Stateless: nothing to forget."""
