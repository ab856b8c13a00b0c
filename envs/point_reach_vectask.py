"""PointReach written in IsaacGym's VecTask style, with MuJoCo underneath.

``num_envs`` point masses live in torch buffers with IsaacGym's names (``obs_buf``, ``states_buf``,
``rew_buf``, ``reset_buf``, ``progress_buf``, ``timeout_buf``, ``extras``) and the VecTask method set
(``step`` = clip -> ``pre_physics_step`` -> simulate -> ``post_physics_step``; ``reset_idx``,
``compute_observations``, ``compute_reward``). The physics of the whole batch is one
``mujoco.rollout`` call per control step on the same MJCF model as :class:`PointReachEnv`, so with
the same reset seed and actions it follows the gymnasium env step for step.

As in IsaacGymEnvs' Cartpole, envs flagged in ``reset_buf`` are reset at the start of the next step;
``reset_idx(env_ids, seeds)`` may be called earlier (a seed reproduces PointReachEnv.reset(seed=...)).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import mujoco
import numpy as np
import torch
from gymnasium import spaces
from mujoco import rollout
from policydistill_envs.point_reach import ASSET, resolve_target

if TYPE_CHECKING:
    from policydistill.suites import Suite
    from policydistill.suites.batched.vectask import VecTaskEnv


class PointReachVecTask:
    """Batched PointReach. ``cfg["env"]``: ``numEnvs``, ``maxEpisodeLength`` (100), ``targets`` (one
    compass name or (x, y) per env), ``successRadius`` (0.05), ``ctrlCostWeight`` (0.01), ``resetNoise``
    (0.05), ``controlFrequencyInv`` (4 physics steps of 0.01 s per action), ``clipActions`` (1.0).

    obs_buf (n, 4) = [x, y, vx, vy]; states_buf (n, 2) = goal (privileged); actions (n, 2) in [-1, 1].
    """

    def __init__(self, cfg: dict[str, Any], rl_device: str = "cpu", sim_device: str = "cpu",
                 graphics_device_id: int = -1, headless: bool = True) -> None:
        env_cfg = dict(cfg["env"])
        known = {"numEnvs", "maxEpisodeLength", "targets", "successRadius", "ctrlCostWeight", "resetNoise",
                 "controlFrequencyInv", "clipActions", "seed"}
        unknown = set(env_cfg) - known
        if unknown:
            raise ValueError(f"unknown PointReachVecTask cfg['env'] keys {sorted(unknown)}; valid: {sorted(known)}")
        self.cfg = cfg
        self.num_envs = int(env_cfg["numEnvs"])
        self.max_episode_length = int(env_cfg.get("maxEpisodeLength", 100))
        self.success_radius = float(env_cfg.get("successRadius", 0.05))
        self.ctrl_cost_weight = float(env_cfg.get("ctrlCostWeight", 0.01))
        self.reset_noise = float(env_cfg.get("resetNoise", 0.05))
        self.control_freq_inv = int(env_cfg.get("controlFrequencyInv", 4))
        self.clip_actions = float(env_cfg.get("clipActions", 1.0))
        targets = env_cfg.get("targets", ["north"] * self.num_envs)
        if len(targets) != self.num_envs:
            raise ValueError(f"cfg['env']['targets'] has {len(targets)} entries for numEnvs={self.num_envs}")
        self.device = torch.device(rl_device)
        self.num_obs, self.num_states, self.num_actions = 4, 2, 2
        self.observation_space = spaces.Box(-np.inf, np.inf, (self.num_obs,), np.float32)
        self.state_space = spaces.Box(-np.inf, np.inf, (self.num_states,), np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (self.num_actions,), np.float32)
        self.create_sim()
        self.goal = np.stack([resolve_target(t) for t in targets])  # (n, 2) float64
        self.reward_scale = np.maximum(np.linalg.norm(self.goal, axis=1), 0.1)
        self.rng = np.random.default_rng(env_cfg.get("seed"))
        n = self.num_envs
        self.obs_buf = torch.zeros(n, self.num_obs, device=self.device)
        self.states_buf = torch.as_tensor(self.goal, dtype=torch.float32, device=self.device)
        self.rew_buf = torch.zeros(n, device=self.device)
        self.reset_buf = torch.ones(n, dtype=torch.long, device=self.device)
        self.progress_buf = torch.zeros(n, dtype=torch.long, device=self.device)
        self.timeout_buf = torch.zeros(n, dtype=torch.bool, device=self.device)
        self.extras: dict[str, Any] = {}
        self.obs_dict: dict[str, torch.Tensor] = {}
        self.reset_idx(torch.arange(n, device=self.device))
        self.compute_observations()

    def create_sim(self) -> None:
        """One MuJoCo model for the batch; the physics state of every env in ``self.state`` (n, nstate)."""
        self.model = mujoco.MjModel.from_xml_path(str(ASSET))
        self.data = mujoco.MjData(self.model)
        self.init_qpos = self.data.qpos.copy()
        self.nq, self.nv = self.model.nq, self.model.nv
        self.state = np.zeros((self.num_envs, mujoco.mj_stateSize(self.model, mujoco.mjtState.mjSTATE_FULLPHYSICS)))
        self.runner = rollout.Rollout(nthread=0)

    @property
    def qpos(self) -> np.ndarray:
        return self.state[:, 1:1 + self.nq]

    @property
    def qvel(self) -> np.ndarray:
        return self.state[:, 1 + self.nq:1 + self.nq + self.nv]

    def reset_idx(self, env_ids: torch.Tensor, seeds: Sequence[int | None] | None = None) -> None:
        """New episodes for ``env_ids``: position uniform in +-resetNoise (seeded per env when given), at rest."""
        ids = env_ids.detach().cpu().numpy().astype(int).reshape(-1)
        if seeds is None:
            noise = self.rng.uniform(-self.reset_noise, self.reset_noise, size=(len(ids), self.nq))
        else:
            noise = np.stack([(self.rng if s is None else np.random.default_rng(s)).uniform(
                -self.reset_noise, self.reset_noise, size=self.nq) for s in seeds])
        self.state[ids] = 0.0
        self.state[ids, 1:1 + self.nq] = self.init_qpos + noise
        self.reset_buf[env_ids] = 0
        self.progress_buf[env_ids] = 0
        self.timeout_buf[env_ids] = False

    def pre_physics_step(self, actions: torch.Tensor) -> None:
        env_ids = self.reset_buf.nonzero(as_tuple=False).squeeze(-1)
        if len(env_ids) > 0:
            self.reset_idx(env_ids)
        self.actions = actions.detach().to("cpu", torch.float64).numpy()
        control = np.repeat(self.actions[:, None, :], self.control_freq_inv, axis=1)
        states, _ = self.runner.rollout(self.model, self.data, self.state, control, nstep=self.control_freq_inv)
        self.state = states[:, -1].copy()

    def post_physics_step(self) -> None:
        self.progress_buf += 1
        self.compute_observations()
        self.compute_reward()

    def compute_observations(self) -> torch.Tensor:
        self.obs_buf[:] = torch.as_tensor(np.concatenate([self.qpos[:, :2], self.qvel[:, :2]], axis=1),
                                          dtype=torch.float32)
        return self.obs_buf

    def compute_reward(self) -> None:
        dist = np.linalg.norm(self.qpos[:, :2] - self.goal, axis=1)
        reward = 1.0 - dist / self.reward_scale - self.ctrl_cost_weight * np.sum(self.actions ** 2, axis=1)
        self.rew_buf[:] = torch.as_tensor(reward, dtype=torch.float32)
        self.extras["is_success"] = torch.as_tensor(dist < self.success_radius, device=self.device)
        self.reset_buf[:] = (self.progress_buf >= self.max_episode_length).long()

    def get_state(self) -> torch.Tensor:
        return self.states_buf

    def step(self, actions: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor,
                                                   dict[str, Any]]:
        """VecTask.step: (obs_dict {"obs", "states"}, rew_buf, reset_buf, extras with "time_outs")."""
        self.pre_physics_step(torch.clamp(actions, -self.clip_actions, self.clip_actions))
        self.post_physics_step()
        self.timeout_buf = (self.progress_buf >= self.max_episode_length) & (self.reset_buf != 0)
        self.extras["time_outs"] = self.timeout_buf
        self.obs_dict = {"obs": self.obs_buf.clone(), "states": self.get_state().clone()}
        return self.obs_dict, self.rew_buf.clone(), self.reset_buf.clone(), self.extras

    def reset(self) -> dict[str, torch.Tensor]:
        self.obs_dict = {"obs": self.obs_buf.clone(), "states": self.get_state().clone()}
        return self.obs_dict


def make_batched(suite: Suite, slot_tasks: Sequence[int]) -> VecTaskEnv:
    """The suite factory (``batched: policydistill_envs.point_reach_vectask:make_batched``): a
    PointReachVecTask whose row ``i`` runs the PointReach task ``slot_tasks[i]``, behind the VecTask adapter."""
    from policydistill_envs import POINT_REACH_ID

    from policydistill.suites.batched.vectask import VecTaskEnv

    targets, extra = [], {}
    for t in slot_tasks:
        spec = suite.tasks[t]
        if spec.env != POINT_REACH_ID:
            raise ValueError(f"task '{spec.name}' runs {spec.env}; PointReachVecTask runs only {POINT_REACH_ID}")
        kwargs = dict(spec.kwargs)
        targets.append(kwargs.pop("target", "north"))
        names = {"success_radius": "successRadius", "ctrl_cost_weight": "ctrlCostWeight",
                 "reset_noise": "resetNoise", "frame_skip": "controlFrequencyInv"}
        unknown = set(kwargs) - set(names)
        if unknown:
            raise ValueError(f"task '{spec.name}': PointReachVecTask does not support kwargs {sorted(unknown)}")
        for k, v in kwargs.items():
            if extra.setdefault(names[k], v) != v:
                raise ValueError(f"PointReachVecTask needs the same '{k}' for every task of a batch")
    steps = suite.tasks[slot_tasks[0]].max_episode_steps or gym.registry[POINT_REACH_ID].max_episode_steps
    task = PointReachVecTask({"env": {"numEnvs": len(slot_tasks), "targets": targets, "maxEpisodeLength": steps,
                                      **extra}})
    onehot = np.zeros((len(slot_tasks), len(suite.tasks)), dtype=np.float32)
    onehot[np.arange(len(slot_tasks)), list(slot_tasks)] = 1.0
    return VecTaskEnv(task, task_onehot=onehot)
