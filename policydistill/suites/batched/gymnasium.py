"""gymnasium vector envs -> the batched protocol (the envs are stepped by gymnasium; observations,
rewards and flags come back as tensors)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode

from policydistill.suites.batched.protocol import Obs, StepResult, check_seeds, mask_rows

if TYPE_CHECKING:
    from policydistill.suites import Suite


class EnvPool:
    """Envs of a suite kept open across rollouts (a rollout borrows them and gives them back): building
    a MuJoCo env costs about as much as a hundred steps. ``close()`` closes them."""

    def __init__(self, suite: Suite) -> None:
        self.suite, self.free = suite, {}

    def take(self, task: int) -> gym.Env:
        free = self.free.get(task)
        return free.pop() if free else self.suite.make_env(task)

    def give(self, task: int, env: gym.Env) -> None:
        self.free.setdefault(task, []).append(env)

    def close(self) -> None:
        for envs in self.free.values():
            for env in envs:
                env.close()
        self.free.clear()


class GymEnvs:
    """Plain gymnasium envs, one per row, yielding observation groups, as the batched protocol.

    A row whose episode ended and was not reset is not stepped again (its last observation stands). The
    suite's ``SafeEpisodes`` faults come back as ``episode_error``. Tensors share memory with the numpy
    arrays (CPU). ``on_close(envs)`` takes the envs back (a pool); without it they are closed.
    """

    seeded_reset = True

    def __init__(self, envs: Sequence[gym.Env], on_close: Callable[[list[gym.Env]], None] | None = None) -> None:
        if not envs:
            raise ValueError("GymEnvs needs at least one env")
        self.envs, self.on_close = list(envs), on_close
        self.num_envs = len(self.envs)
        self.device = torch.device("cpu")
        self.single_observation_space: spaces.Dict = self.envs[0].observation_space
        self.single_action_space: spaces.Box = self.envs[0].action_space
        spec = self.envs[0].spec
        self.max_episode_length = int(spec.max_episode_steps or 0) if spec is not None else 0
        self._obs: list[dict[str, np.ndarray]] = [{}] * self.num_envs
        self._ended = np.ones(self.num_envs, dtype=bool)

    def _batch(self) -> Obs:
        return {g: torch.from_numpy(np.stack([o[g] for o in self._obs]).astype(np.float32, copy=False))
                for g in self._obs[0]}

    def reset(self, env_mask: torch.Tensor | np.ndarray | None = None,
              seeds: Sequence[int | None] | None = None) -> Obs:
        rows = mask_rows(env_mask, self.num_envs)
        for row, seed in zip(rows, check_seeds(seeds, rows), strict=True):
            self._obs[row], _ = self.envs[row].reset(seed=seed)
            self._ended[row] = False
        return self._batch()

    def step(self, actions: torch.Tensor | np.ndarray) -> StepResult:
        a = actions.numpy(force=True) if isinstance(actions, torch.Tensor) else np.asarray(actions)
        n = self.num_envs
        reward, terminated, truncated = np.zeros(n), np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
        success = np.zeros(n, dtype=bool)
        errors: list[str | None] | None = None
        for i in np.flatnonzero(~self._ended).tolist():
            self._obs[i], r, te, tr, info = self.envs[i].step(a[i])
            if te or tr:
                reward[i], terminated[i], truncated[i], self._ended[i] = r, te, tr, True
                success[i] = bool(info.get("is_success", False))
                if "episode_error" in info:
                    errors = errors or [None] * n
                    errors[i] = info["episode_error"]
            else:
                reward[i] = r
        extras: dict[str, Any] = {"is_success": torch.from_numpy(success)}
        if errors is not None:
            extras["episode_error"] = errors
        return (self._batch(), torch.from_numpy(reward), torch.from_numpy(terminated), torch.from_numpy(truncated),
                extras)

    def close(self) -> None:
        if self.on_close is not None:
            self.on_close(self.envs)
        else:
            for env in self.envs:
                env.close()


class GymVectorEnv:
    """A gymnasium ``VectorEnv`` created with ``autoreset_mode=DISABLED`` whose envs yield observation
    groups (a Dict space), as the batched protocol. Seeds go to each masked env's ``reset``."""

    seeded_reset = True

    def __init__(self, venv: gym.vector.VectorEnv, max_episode_length: int, device: str | torch.device = "cpu"):
        mode = venv.metadata.get("autoreset_mode")
        if mode != AutoresetMode.DISABLED:
            raise ValueError(f"GymVectorEnv needs a vector env made with autoreset_mode=AutoresetMode.DISABLED "
                             f"(the caller resets finished rows itself), got {mode}")
        if not isinstance(venv.single_observation_space, spaces.Dict):
            raise ValueError("GymVectorEnv needs envs with observation groups (a Dict observation space), "
                             f"got {venv.single_observation_space}; wrap plain envs with wrappers.BoxToGroups")
        self.venv = venv
        self.num_envs = venv.num_envs
        self.device = torch.device(device)
        self.single_observation_space: spaces.Dict = venv.single_observation_space
        self.single_action_space: spaces.Box = venv.single_action_space
        self.max_episode_length = int(max_episode_length)
        self._ended = np.zeros(self.num_envs, dtype=bool)

    def _tensors(self, obs: dict[str, np.ndarray]) -> Obs:
        return {g: torch.tensor(v, dtype=torch.float32, device=self.device) for g, v in obs.items()}

    def reset(self, env_mask: torch.Tensor | np.ndarray | None = None,
              seeds: Sequence[int | None] | None = None) -> Obs:
        rows = mask_rows(env_mask, self.num_envs)
        per_env: list[int | None] = [None] * self.num_envs
        for row, s in zip(rows, check_seeds(seeds, rows), strict=True):
            per_env[row] = s
        mask = np.zeros(self.num_envs, dtype=bool)
        mask[rows] = True
        obs, _ = self.venv.reset(seed=per_env, options=None if mask.all() else {"reset_mask": mask})
        self._ended[rows] = False
        return self._tensors(obs)

    def step(self, actions: torch.Tensor) -> StepResult:
        if self._ended.any():  # rows the caller left ended: reset them, as the protocol says
            self.venv.reset(options={"reset_mask": self._ended.copy()})
        obs, reward, terminated, truncated, info = self.venv.step(actions.detach().cpu().numpy())
        self._ended = terminated | truncated
        extras: dict[str, Any] = {}
        if "is_success" in info:
            extras["is_success"] = torch.as_tensor(np.asarray(info["is_success"], bool) & info["_is_success"])
        if "episode_error" in info:
            extras["episode_error"] = [e if has else None
                                       for e, has in zip(info["episode_error"], info["_episode_error"], strict=True)]
        as_t = lambda x, dtype: torch.as_tensor(np.asarray(x), dtype=dtype, device=self.device)  # noqa: E731
        return (self._tensors(obs), as_t(reward, torch.float64), as_t(terminated, torch.bool),
                as_t(truncated, torch.bool), extras)

    def close(self) -> None:
        self.venv.close()


def from_suite(suite: Suite, slot_tasks: Sequence[int], asynchronous: bool = False) -> GymVectorEnv:
    """The suite's gymnasium envs (row ``i`` runs task ``slot_tasks[i]``) in a Sync (or Async) vector env."""
    fns = [lambda t=t: suite.make_env(t) for t in slot_tasks]
    cls = gym.vector.AsyncVectorEnv if asynchronous else gym.vector.SyncVectorEnv
    try:
        venv = cls(fns, autoreset_mode=AutoresetMode.DISABLED, copy=False)
    except (RuntimeError, AssertionError) as e:
        raise ValueError(f"suite '{suite.name}' cannot run as one vector env (its tasks need one observation and "
                         f"action space): {e}") from e
    probe = suite.make_env(slot_tasks[0])
    steps = probe.spec.max_episode_steps if probe.spec is not None else None
    probe.close()
    return GymVectorEnv(venv, max_episode_length=steps or 0)
