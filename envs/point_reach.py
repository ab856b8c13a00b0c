"""PointReach: a damped point mass on a plane that must reach a fixed goal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from gymnasium import spaces
from gymnasium.envs.mujoco.mujoco_env import MujocoEnv

ASSET = Path(__file__).parent / "assets" / "point_reach.xml"
TARGET_DISTANCE = 0.5
TARGETS: dict[str, tuple[float, float]] = {
    "north": (0.0, TARGET_DISTANCE),
    "east": (TARGET_DISTANCE, 0.0),
    "south": (0.0, -TARGET_DISTANCE),
    "west": (-TARGET_DISTANCE, 0.0),
}


def resolve_target(target: str | tuple[float, float] | list[float]) -> np.ndarray:
    """Goal position, shape (2,), from a compass name or an explicit (x, y)."""
    if isinstance(target, str):
        if target not in TARGETS:
            raise ValueError(
                f"unknown target {target!r}; expected one of {sorted(TARGETS)} or an (x, y) pair"
            )
        return np.asarray(TARGETS[target], dtype=np.float64)
    goal = np.asarray(target, dtype=np.float64)
    if goal.shape != (2,) or not np.all(np.isfinite(goal)):
        raise ValueError(f"target must be a compass name or a finite (x, y) pair, got {target!r}")
    return goal


class PointReachEnv(MujocoEnv):
    """Drive a point mass to ``target`` within the episode.

    Observation groups: ``policy`` = [x, y, vx, vy] (4,), ``privileged`` = [target_x, target_y] (2,).
    Action: motor commands (2,) in [-1, 1]. Reward: ``1 - distance / |goal| - ctrl_cost_weight * |a|^2``:
    about 0 at the start, 1 at the goal, so a good return is positive and teacher-normalised scores
    (student return / teacher return) are meaningful.
    ``info["is_success"]`` is true while the point is within ``success_radius`` of the goal.
    Every task starts from the same state distribution (uniform +-``reset_noise`` around the origin,
    zero velocity), so the goal is only visible through ``privileged`` (or a task id added later).

    ``hazard_radius`` > 0 (off by default) puts a pit of that radius halfway between the start and
    the goal: entering it ends the episode (``terminated``, ``info["hazard"]``, no success). The
    straight line to the goal crosses it, so a policy must pass it on the left or on the right; the
    env is mirror-symmetric about the start-goal axis (:meth:`mirror_maps`), so both ways are equally
    good and the average of the two is a fall into the pit.

    ``pit_sensor`` > 0 (off by default) adds the group ``extero`` (2,): a proximity sensor of that range
    pointing at the pit, ``max(0, 1 - d / pit_sensor) * u`` where d is the distance to the pit's edge and u the
    unit vector towards its centre; zero while the pit is out of range, and always without a pit.
    """

    metadata = {"render_modes": ["human", "rgb_array", "depth_array"], "render_fps": 25}

    def __init__(
        self,
        target: str | tuple[float, float] = "north",
        success_radius: float = 0.05,
        ctrl_cost_weight: float = 0.01,
        reset_noise: float = 0.05,
        frame_skip: int = 4,
        hazard_radius: float = 0.0,
        pit_sensor: float = 0.0,
        render_mode: str | None = None,
        width: int = 160,
        height: int = 120,
    ) -> None:
        self.goal = resolve_target(target)
        self.reward_scale = max(float(np.linalg.norm(self.goal)), 0.1)
        self.success_radius = float(success_radius)
        self.ctrl_cost_weight = float(ctrl_cost_weight)
        self.reset_noise = float(reset_noise)
        self.hazard_radius = float(hazard_radius)
        if not (np.isfinite(self.hazard_radius) and 0.0 <= self.hazard_radius < 0.5 * np.linalg.norm(self.goal)):
            raise ValueError(f"hazard_radius must be in [0, |goal| / 2), got {hazard_radius!r}")
        self.hazard_center = 0.5 * self.goal
        self.pit_sensor = float(pit_sensor)
        if not (np.isfinite(self.pit_sensor) and self.pit_sensor >= 0.0):
            raise ValueError(f"pit_sensor must be a range >= 0 (0: no sensor), got {pit_sensor!r}")
        if isinstance(frame_skip, bool) or not isinstance(frame_skip, int) or frame_skip < 1:
            raise ValueError(f"frame_skip must be an integer >= 1 (simulation steps per control step), "
                             f"got {frame_skip!r}")
        groups = {
            "policy": spaces.Box(-np.inf, np.inf, shape=(4,), dtype=np.float32),
            "privileged": spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32),
        }
        if self.pit_sensor > 0:
            groups["extero"] = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        observation_space = spaces.Dict(groups)
        self.metadata = {**self.metadata, "render_fps": int(round(1.0 / (0.01 * frame_skip)))}
        super().__init__(
            str(ASSET),
            frame_skip,
            observation_space,
            render_mode=render_mode,
            width=width,
            height=height,
            camera_name="top",
        )
        self.model.site_pos[self.model.site("target").id, :2] = self.goal
        hazard = self.model.site("hazard").id
        self.model.site_pos[hazard, :2] = self.hazard_center
        self.model.site_size[hazard, 0] = max(self.hazard_radius, 1e-3)
        self.model.site_rgba[hazard, 3] = 0.6 if self.hazard_radius > 0 else 0.0

    def in_hazard(self) -> bool:
        """True while the point is inside the pit (never when ``hazard_radius`` is 0)."""
        return bool(np.linalg.norm(self.data.qpos[:2] - self.hazard_center) < self.hazard_radius)

    def mirror_maps(self) -> dict[str, np.ndarray]:
        """The reflection about the start-goal axis that maps this env onto itself, as matrices:
        ``policy`` (4, 4) on [x, y, vx, vy], ``privileged`` (2, 2) on the goal, ``action`` (2, 2) (and ``extero``
        (2, 2) on the pit sensor's vector, with the sensor).

        A policy ``pi`` and its mirror image ``obs -> A pi(M obs)`` earn the same returns here."""
        u = self.goal / np.linalg.norm(self.goal)
        r = (2.0 * np.outer(u, u) - np.eye(2)).astype(np.float32)
        zero = np.zeros((2, 2), dtype=np.float32)
        maps = {"policy": np.block([[r, zero], [zero, r]]), "privileged": r, "action": r}
        return {**maps, "extero": r} if self.pit_sensor > 0 else maps

    def distance(self) -> float:
        """Euclidean distance from the point to the goal."""
        return float(np.linalg.norm(self.data.qpos[:2] - self.goal))

    def sense_pit(self) -> np.ndarray:
        """The pit sensor's reading (2,): proximity in [0, 1] times the unit vector towards the pit's centre."""
        if self.hazard_radius == 0:
            return np.zeros(2, dtype=np.float32)
        offset = self.hazard_center - self.data.qpos[:2]
        centre = float(np.linalg.norm(offset))
        proximity = max(0.0, 1.0 - max(centre - self.hazard_radius, 0.0) / self.pit_sensor)
        return (proximity * offset / max(centre, 1e-9)).astype(np.float32)

    def _get_obs(self) -> dict[str, np.ndarray]:
        obs = {
            "policy": np.concatenate([self.data.qpos[:2], self.data.qvel[:2]]).astype(np.float32),
            "privileged": self.goal.astype(np.float32),
        }
        if self.pit_sensor > 0:
            obs["extero"] = self.sense_pit()
        return obs

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        action = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        self.do_simulation(action, self.frame_skip)
        dist = self.distance()
        ctrl_cost = self.ctrl_cost_weight * float(np.sum(action**2))
        reward = 1.0 - dist / self.reward_scale - ctrl_cost
        fell = self.in_hazard()
        info = {"distance": dist, "ctrl_cost": ctrl_cost, "is_success": bool(dist < self.success_radius) and not fell,
                "hazard": fell}
        if self.render_mode == "human":
            self.render()
        return self._get_obs(), reward, fell, False, info

    def reset_model(self) -> dict[str, np.ndarray]:
        qpos = self.init_qpos + self.np_random.uniform(
            -self.reset_noise, self.reset_noise, size=self.model.nq
        )
        self.set_state(qpos, np.zeros(self.model.nv))
        return self._get_obs()

    def _get_reset_info(self) -> dict[str, Any]:
        dist = self.distance()
        return {"distance": dist, "is_success": bool(dist < self.success_radius)}
