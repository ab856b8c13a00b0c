"""The batched protocol <-> rsl_rl's ``VecEnv`` (rsl-rl-lib >= 5.5: observations as a TensorDict of groups).

- :func:`to_rsl_rl` lets rsl_rl's runners train on any protocol env: finished rows are reset at once
  (rsl_rl's convention), ``dones = terminated | truncated`` and ``extras["time_outs"] = truncated``.
- :class:`FromRslRl` lets rsl_rl users bring their envs to collection and evaluation. rsl_rl envs reset
  themselves when an episode ends, so ``reset`` only acknowledges rows that just ended and seeds are
  not applied (``seeded_reset = False``); rsl_rl's ``critic`` group becomes ``privileged``.

rsl_rl is an optional extra (``pip install policydistill[rslrl]``), imported only here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from policydistill.suites.batched.protocol import BatchedEnv, Obs, StepResult, mask_rows
from policydistill.types import GROUPS

try:
    from rsl_rl.env import VecEnv
    from tensordict import TensorDict
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(f"the rsl_rl adapters need rsl-rl-lib: pip install 'policydistill[rslrl]' ({e})") from e

DEFAULT_GROUP_MAP = {"policy": "policy", "critic": "privileged", "privileged": "privileged", "task": "task"}


class ToRslRl(VecEnv):
    """A protocol env as rsl_rl's VecEnv. ``seed``: episode ``k`` of the run (counted over all rows)
    is reset with ``seed + k``; None lets the env draw."""

    def __init__(self, env: BatchedEnv, seed: int | None = None) -> None:
        self.env = env
        self.num_envs = env.num_envs
        self.num_actions = int(np.prod(env.single_action_space.shape))
        self.max_episode_length = env.max_episode_length
        self.device = env.device
        self.cfg: dict[str, Any] = {}
        self.seed, self.episodes = seed, 0
        self.episode_length_buf = torch.zeros(self.num_envs, dtype=torch.long, device=self.device)
        self._obs = env.reset(None, self._seeds(self.num_envs))

    def _seeds(self, k: int) -> list[int | None]:
        if self.seed is None:
            return [None] * k
        self.episodes += k
        return [self.seed + self.episodes - k + i for i in range(k)]

    def _tensordict(self, obs: Obs) -> TensorDict:
        return TensorDict(dict(obs), batch_size=[self.num_envs], device=self.device)

    def get_observations(self) -> TensorDict:
        return self._tensordict(self._obs)

    def step(self, actions: torch.Tensor) -> tuple[TensorDict, torch.Tensor, torch.Tensor, dict]:
        obs, reward, terminated, truncated, extras = self.env.step(actions)
        done = terminated | truncated
        self.episode_length_buf += 1
        if done.any():
            obs = self.env.reset(done, self._seeds(int(done.sum())))
            self.episode_length_buf[done] = 0
        self._obs = obs
        out = {"time_outs": truncated, "log": {}}
        if "is_success" in extras:
            out["log"]["/success"] = extras["is_success"].float().mean()
        return self._tensordict(obs), reward.to(torch.float32), done.to(torch.long), out


def to_rsl_rl(env: BatchedEnv, seed: int | None = None) -> ToRslRl:
    return ToRslRl(env, seed)


class FromRslRl:
    """An rsl_rl VecEnv as a protocol env. ``group_map`` renames its observation groups to the project's
    (``policy``, ``privileged``, ``task``); groups it does not name are dropped. ``action_space``
    defaults to an unbounded Box of ``num_actions``."""

    seeded_reset = False

    def __init__(self, vec_env: VecEnv, group_map: Mapping[str, str] | None = None,
                 action_space: spaces.Box | None = None) -> None:
        self.vec_env = vec_env
        self.num_envs = int(vec_env.num_envs)
        self.device = torch.device(vec_env.device)
        self.max_episode_length = int(torch.as_tensor(vec_env.max_episode_length).max())
        self.group_map = dict(DEFAULT_GROUP_MAP if group_map is None else group_map)
        bad = sorted(set(self.group_map.values()) - set(GROUPS))
        if bad:
            raise ValueError(f"group_map targets {bad} are not observation groups; expected names in {list(GROUPS)}")
        obs = self._groups(vec_env.get_observations())
        if not obs:
            raise ValueError(f"none of the env's observation groups {list(vec_env.get_observations().keys())} "
                             f"is named in group_map {self.group_map}")
        self.single_observation_space = spaces.Dict(
            {g: spaces.Box(-np.inf, np.inf, (v.shape[1],), np.float32) for g, v in obs.items()})
        self.single_action_space = action_space or spaces.Box(-np.inf, np.inf, (int(vec_env.num_actions),),
                                                              np.float32)
        self._obs = obs
        self._ended = torch.ones(self.num_envs, dtype=torch.bool, device=self.device)

    def _groups(self, td: Any) -> Obs:
        return {self.group_map[k]: td[k].to(torch.float32) for k in td.keys() if k in self.group_map}  # noqa: SIM118

    def reset(self, env_mask: torch.Tensor | np.ndarray | None = None,
              seeds: Sequence[int | None] | None = None) -> Obs:
        rows = torch.as_tensor(mask_rows(env_mask, self.num_envs), device=self.device)
        if not self._ended[rows].all():
            raise ValueError("an rsl_rl env resets its rows itself when their episode ends: only rows that just "
                             "ended (or all rows before the first step) can be reset")
        self._ended[rows] = False
        return dict(self._obs)

    def step(self, actions: torch.Tensor) -> StepResult:
        td, reward, dones, extras = self.vec_env.step(actions.to(self.device))
        done = dones.to(self.device).bool()
        time_outs = extras.get("time_outs")
        time_outs = torch.zeros_like(done) if time_outs is None else time_outs.to(self.device).bool() & done
        self._obs = self._groups(td)
        self._ended = self._ended | done
        return dict(self._obs), reward.to(self.device), done & ~time_outs, time_outs, {}

    def close(self) -> None:
        close = getattr(self.vec_env, "close", None)
        if callable(close):
            close()
