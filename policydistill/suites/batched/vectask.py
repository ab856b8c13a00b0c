"""IsaacGym VecTask -> the batched protocol.

Works with IsaacGymEnvs tasks (``isaacgymenvs.tasks.base.vec_task.VecTask``) and with any env written
in their style, such as ``policydistill_envs.point_reach_vectask`` (MuJoCo underneath). IsaacGym itself
is imported only by :func:`load_isaacgym_task`; types come from ``isaacgym-stubs``.

Groups: ``policy`` <- ``obs_dict["obs"]``, ``privileged`` <- ``obs_dict["states"]`` (asymmetric
actor-critic states, when ``num_states > 0``), ``task`` <- a constant one-hot given to the adapter.
``terminated = reset_buf & ~time_outs``, ``truncated = time_outs``. Resets call ``reset_idx(env_ids)``
(with ``seeds=`` when the task's ``reset_idx`` takes them) and then ``compute_observations()``.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import torch
from gymnasium import spaces

from policydistill.suites.batched.protocol import Obs, StepResult, check_seeds, mask_rows
from policydistill.types import POLICY, PRIVILEGED, TASK

if TYPE_CHECKING:
    from isaacgym import gymapi

log = logging.getLogger(__name__)


@runtime_checkable
class VecTaskLike(Protocol):
    """What the adapter reads of a VecTask (IsaacGymEnvs' names and shapes)."""

    num_envs: int
    num_obs: int
    num_states: int
    num_actions: int
    max_episode_length: int
    device: torch.device | str
    obs_buf: torch.Tensor  # (num_envs, num_obs)
    reset_buf: torch.Tensor  # (num_envs,)
    progress_buf: torch.Tensor  # (num_envs,)
    extras: dict[str, Any]

    def step(self, actions: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor,
                                                   dict[str, Any]]: ...

    def reset_idx(self, env_ids: torch.Tensor) -> None: ...

    def compute_observations(self) -> Any: ...


class IsaacGymVecTask(VecTaskLike, Protocol):
    """A VecTask backed by IsaacGym's simulator."""

    gym: gymapi.Gym
    sim: gymapi.Sim
    envs: list[gymapi.Env]


def _box(space: Any, dim: int, bound: float = np.inf) -> spaces.Box:
    low = np.broadcast_to(np.asarray(getattr(space, "low", -bound), dtype=np.float32), (dim,))
    high = np.broadcast_to(np.asarray(getattr(space, "high", bound), dtype=np.float32), (dim,))
    return spaces.Box(low.copy(), high.copy(), dtype=np.float32)


class VecTaskEnv:
    """A VecTask as a :class:`~policydistill.suites.batched.BatchedEnv`; ``task_onehot`` (num_envs, n_tasks) adds
    the ``task`` group (row ``i``'s task in its suite)."""

    def __init__(self, task: VecTaskLike, task_onehot: np.ndarray | None = None) -> None:
        missing = [a for a in ("num_envs", "num_obs", "num_actions", "obs_buf", "reset_buf", "step", "reset_idx",
                               "compute_observations") if not hasattr(task, a)]
        if missing:
            raise TypeError(f"{type(task).__name__} is not a VecTask: it lacks {missing}")
        self.task = task
        self.num_envs = int(task.num_envs)
        self.device = torch.device(getattr(task, "rl_device", task.device))
        self.max_episode_length = int(task.max_episode_length)
        self.has_states = int(getattr(task, "num_states", 0)) > 0
        self.seeded_reset = "seeds" in inspect.signature(task.reset_idx).parameters
        groups = {POLICY: _box(None, task.num_obs)}
        if self.has_states:
            groups[PRIVILEGED] = _box(None, task.num_states)
        self.onehot = None
        if task_onehot is not None:
            onehot = np.asarray(task_onehot, dtype=np.float32)
            if onehot.ndim != 2 or len(onehot) != self.num_envs:
                raise ValueError(f"task_onehot must be (num_envs={self.num_envs}, n_tasks), got {onehot.shape}")
            self.onehot = torch.as_tensor(onehot, device=self.device)
            groups[TASK] = spaces.Box(0.0, 1.0, (onehot.shape[1],), np.float32)
        self.single_observation_space = spaces.Dict(groups)
        self.single_action_space = _box(getattr(task, "action_space", None), task.num_actions, 1.0)

    def _groups(self, obs: torch.Tensor, states: torch.Tensor | None) -> Obs:
        out = {POLICY: obs.to(self.device, torch.float32)}
        if self.has_states and states is not None:
            out[PRIVILEGED] = states.to(self.device, torch.float32)
        if self.onehot is not None:
            out[TASK] = self.onehot
        return out

    def reset(self, env_mask: torch.Tensor | np.ndarray | None = None,
              seeds: Sequence[int | None] | None = None) -> Obs:
        rows = mask_rows(env_mask, self.num_envs)
        seeds = check_seeds(seeds, rows)
        env_ids = torch.as_tensor(rows, dtype=torch.long, device=self.task.reset_buf.device)
        if self.seeded_reset:
            self.task.reset_idx(env_ids, seeds=seeds)
        else:
            self.task.reset_idx(env_ids)
        self.task.compute_observations()
        states = self.task.get_state() if self.has_states else None
        return self._groups(self.task.obs_buf.clone(), states.clone() if states is not None else None)

    def step(self, actions: torch.Tensor) -> StepResult:
        obs_dict, reward, reset, extras = self.task.step(actions.to(self.task.reset_buf.device))
        done = reset.to(self.device).bool()
        time_outs = extras.get("time_outs")
        time_outs = torch.zeros_like(done) if time_outs is None else time_outs.to(self.device).bool() & done
        out: dict[str, Any] = {}
        if "is_success" in extras:
            out["is_success"] = extras["is_success"].to(self.device).bool()
        return (self._groups(obs_dict["obs"], obs_dict.get("states")), reward.to(self.device), done & ~time_outs,
                time_outs, out)

    def close(self) -> None:
        destroy = getattr(self.task, "close", None)
        if callable(destroy):
            destroy()


def load_isaacgym_task(task_name: str, cfg: dict[str, Any], rl_device: str = "cuda:0", sim_device: str = "cuda:0",
                       headless: bool = True) -> IsaacGymVecTask:
    """Build an IsaacGymEnvs task by name (e.g. ``"Ant"``) with its config; wrap it with :class:`VecTaskEnv`.

    IsaacGym must be imported before torch, so call this from an entry point that imports ``isaacgym`` first.
    """
    try:
        import isaacgym  # noqa: F401
        from isaacgymenvs.tasks import isaacgym_task_map
    except ImportError as e:
        raise ImportError(
            "IsaacGym is not available: install NVIDIA Isaac Gym (Preview 4, 'pip install -e isaacgym/python' from "
            "NVIDIA's download) and IsaacGymEnvs, and import isaacgym before torch. Without it, use an env written "
            f"in the VecTask style, e.g. policydistill_envs.point_reach_vectask.PointReachVecTask ({e})") from e
    if task_name not in isaacgym_task_map:
        raise ValueError(f"unknown IsaacGymEnvs task '{task_name}'; known: {sorted(isaacgym_task_map)}")
    return isaacgym_task_map[task_name](cfg=cfg, rl_device=rl_device, sim_device=sim_device,
                                        graphics_device_id=-1 if headless else 0, headless=headless,
                                        virtual_screen_capture=False, force_render=not headless)
