"""QuadrupedTerrain: the Ant quadruped walking over a seeded heightfield under randomised dynamics."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import gymnasium
import mujoco
import numpy as np
from gymnasium import spaces
from gymnasium.envs.mujoco.mujoco_env import MujocoEnv
from policydistill_envs.cheetah_speed import Range, _check_range

ANT_XML = Path(gymnasium.__file__).parent / "envs/mujoco/assets/ant.xml"
CELL = 0.1  # heightfield grid spacing, metres
HALF_X, HALF_Y = 10.0, 10.0  # heightfield half extents, metres
CENTER_X = 8.0  # the field spans x in [-2, 18] (the robot starts at the origin facing +x), y in [-10, 10]
COARSE = 5  # coarse bumps every COARSE cells (0.5 m), bilinearly interpolated
PAD = (0.6, 1.4)  # terrain fades in between these distances from the start (a flat start pad)
FEET = ("left_ankle_geom", "right_ankle_geom", "third_ankle_geom", "fourth_ankle_geom")
SCAN = np.array([(dx, dy) for dx in (-0.15, 0.0, 0.15) for dy in (-0.15, 0.0, 0.15)])  # (9, 2) around each foot
INIT_Z = 0.75
STANCE = {"hip_1": 0.0, "ankle_1": 1.0, "hip_2": 0.0, "ankle_2": -1.0, "hip_3": 0.0, "ankle_3": -1.0, "hip_4": 0.0,
          "ankle_4": 1.0}  # radians, legs bent down: the standing pose that actions are offsets from
KP, KD, MAX_TORQUE = 80.0, 6.0, 150.0  # joint PD gains (N m / rad, N m s / rad) and torque limit at strength 1


def terrain_xml(top: float) -> str:
    """Gymnasium's Ant model with its floor plane replaced by a heightfield over a backstop plane, its motors by
    joint PD servos (``ctrl`` = target angle), integrated with MuJoCo's implicit-fast integrator.

    ``top`` is the heightfield's elevation scale (m): ``model.hfield_data`` in [0, 1] is a fraction of it. Keeping
    it at the terrain's amplitude keeps the field's bounding box low, so only geoms near the ground are tested.
    """
    root = ET.parse(ANT_XML).getroot()
    root.find("option").set("integrator", "implicitfast")  # a quarter of RK4's cost per step, stable at 10 ms
    actuators = root.find("actuator")
    for motor in list(actuators):  # torque motors -> joint PD servos: force = KP (target - q) - KD qdot, limited
        actuators.remove(motor)
        ET.SubElement(actuators, "general", joint=motor.get("joint"), gaintype="fixed", biastype="affine",
                      gainprm=f"{KP}", biasprm=f"0 {-KP} {-KD}", ctrllimited="false", forcelimited="true",
                      forcerange=f"{-MAX_TORQUE} {MAX_TORQUE}")
    asset, world = root.find("asset"), root.find("worldbody")
    nrow, ncol = int(round(2 * HALF_Y / CELL)) + 1, int(round(2 * HALF_X / CELL)) + 1
    ET.SubElement(asset, "hfield", name="terrain", nrow=str(nrow), ncol=str(ncol),
                  size=f"{HALF_X} {HALF_Y} {top} 0.1")
    floor = world.find("geom[@name='floor']")
    floor.set("pos", "0 0 -0.001")  # beyond the field's edge the robot walks on the plane
    ET.SubElement(world, "geom", name="terrain", type="hfield", hfield="terrain", pos=f"{CENTER_X} 0 0",
                  conaffinity="1", condim="3", rgba="0.6 0.7 0.6 1")
    return ET.tostring(root, encoding="unicode")


def make_heights(rng: np.random.Generator, roughness: float, shape: tuple[int, int]) -> np.ndarray:
    """Heights in metres, ``(nrow, ncol)`` over (y, x), in ``[0, roughness]``: bilinearly interpolated coarse bumps
    plus per-cell noise, faded to 0 on a pad around the start. ``roughness`` 0 gives a flat field."""
    nrow, ncol = shape
    coarse = rng.uniform(0.0, 1.0, size=((nrow - 1) // COARSE + 2, (ncol - 1) // COARSE + 2))
    r, c = np.arange(nrow) / COARSE, np.arange(ncol) / COARSE
    r0, c0 = r.astype(int), c.astype(int)
    fr, fc = (r - r0)[:, None], (c - c0)[None, :]
    smooth = ((1 - fr) * (1 - fc) * coarse[np.ix_(r0, c0)] + (1 - fr) * fc * coarse[np.ix_(r0, c0 + 1)]
              + fr * (1 - fc) * coarse[np.ix_(r0 + 1, c0)] + fr * fc * coarse[np.ix_(r0 + 1, c0 + 1)])
    heights = 0.6 * smooth + 0.4 * rng.uniform(0.0, 1.0, size=shape)
    y = np.linspace(-HALF_Y, HALF_Y, nrow)[:, None]
    x = np.linspace(-HALF_X, HALF_X, ncol)[None, :] + CENTER_X
    fade = np.clip((np.hypot(x, y) - PAD[0]) / (PAD[1] - PAD[0]), 0.0, 1.0)
    return roughness * heights * fade * fade * (3 - 2 * fade)


class QuadrupedTerrainEnv(MujocoEnv):
    """The Ant quadruped rewarded for walking forward (along its own heading) at ``target_speed`` m/s over rough
    ground.

    Actions ``(8,)`` in [-1, 1] are joint-angle offsets from a standing pose (``action_scale`` rad at 1), tracked by
    PD servos (gains ``kp``, ``kd``, torque limit ``max_torque``) at 100 Hz (20 Hz control, 500 steps = 25 s).
    Each reset draws, from ``self.np_random``: scales for all body masses and inertias, for every geom's sliding
    friction and for the servos' strength (gains and torque limit), each applied to the nominal value, never
    compounded; then a new heightfield of amplitude ``roughness`` metres (0: flat) and the start pose; then the
    servo faults: with ``offset_range`` > 0, a zero offset per servo in ``[-offset_range, offset_range]`` rad (a
    calibration error: the servo holds ``target + offset``); with ``weak_leg`` = (low, high), one leg drawn
    uniformly whose two servos' strength is scaled by a factor in that range (a failing motor).

    Observation groups: ``policy`` (22,) = joint angles (8), joint velocities (8), gravity in the base frame (3)
    and base angular velocity (3): encoders and an IMU, no base position or linear velocity, no terrain. With
    ``joint_velocities`` false, ``policy`` (14,) has no joint velocities (servos that report their position
    only) and they end the ``privileged`` group instead (8).
    ``privileged`` (43,) = [mass, friction, strength scales] (3), base linear velocity in the base frame (3), base
    height above the ground under it (1), and terrain height minus base height on a 3x3 grid (0.15 m apart)
    around each foot (36); then, in action order, the servos' zero offsets (8) with ``offset_range`` > 0 and their
    strength factors (8) with ``weak_leg``. With ``last_action``, ``last_action`` (8,) = the action of the step
    before, clipped to [-1, 1] (zeros after a reset): what the servos were told, which a student reading a
    history of it beside the joint angles can compare with where the joints went (as RMA's adaptation module
    reads x_t and a_{t-1}).

    Reward per step: ``exp(-((v_fwd - target)^2 + v_lat^2) / tracking_sigma^2) + alive_bonus
    - ctrl_cost_weight * |a|^2``, ``v_fwd`` and ``v_lat`` being the mean horizontal velocity over the step along
    and across the base's heading; it is positive while alive, so falling is never a way out. The episode ends
    (terminated) when the base tilts past ``max_tilt`` or its height above the ground leaves ``healthy_height``.
    ``info["is_success"]``: not fallen and the mean forward-speed error after ``warmup_steps`` below
    ``success_tolerance * max(1, |target|)``.
    """

    metadata = {"render_modes": ["human", "rgb_array", "depth_array", "rgbd_tracking_array"], "render_fps": 20}

    def __init__(
        self,
        target_speed: float = 0.5,
        roughness: float = 0.08,
        mass_range: Range = (0.7, 1.3),
        friction_range: Range = (0.5, 1.5),
        strength_range: Range = (0.7, 1.3),
        offset_range: float = 0.0,
        weak_leg: Range | None = None,
        last_action: bool = False,
        joint_velocities: bool = True,
        tracking_sigma: float = 0.35,
        action_scale: float = 0.5,
        kp: float = KP,
        kd: float = KD,
        max_torque: float = MAX_TORQUE,
        ctrl_cost_weight: float = 0.02,
        alive_bonus: float = 0.5,
        healthy_height: Range = (0.2, 1.5),
        max_tilt: float = 1.3,
        warmup_steps: int = 20,
        success_tolerance: float = 0.25,
        reset_noise_scale: float = 0.1,
        render_mode: str | None = None,
        width: int = 160,
        height: int = 120,
    ) -> None:
        if not 0.0 <= float(roughness) <= 0.5:
            raise ValueError(f"roughness must be in [0, 0.5] metres, got {roughness!r}")
        if not 0.0 <= float(offset_range) <= 1.0:
            raise ValueError(f"offset_range must be in [0, 1] radians, got {offset_range!r}")
        self.offset_range = float(offset_range)
        self.last_action = np.zeros(8) if last_action else None
        if not isinstance(joint_velocities, bool):
            raise ValueError(f"joint_velocities must be true or false, got {joint_velocities!r}")
        self.joint_velocities = joint_velocities
        self.weak_leg = None if weak_leg is None else _check_range("weak_leg", weak_leg)
        if not 0.0 < float(max_tilt) < np.pi:
            raise ValueError(f"max_tilt must be in (0, pi) radians, got {max_tilt!r}")
        self.target_speed = float(target_speed)
        self.speed_scale = max(1.0, abs(self.target_speed))
        self.roughness = float(roughness)
        self.top = max(self.roughness, 1e-3)
        self.mass_range = _check_range("mass_range", mass_range)
        self.friction_range = _check_range("friction_range", friction_range)
        self.strength_range = _check_range("strength_range", strength_range)
        self.healthy_height = _check_range("healthy_height", healthy_height)
        self.min_up = float(np.cos(max_tilt))
        if not float(tracking_sigma) > 0.0:
            raise ValueError(f"tracking_sigma must be > 0 m/s, got {tracking_sigma!r}")
        self.tracking_sigma = float(tracking_sigma)
        self.ctrl_cost_weight = float(ctrl_cost_weight)
        if not float(action_scale) > 0.0:
            raise ValueError(f"action_scale must be > 0 radians, got {action_scale!r}")
        self.action_scale = float(action_scale)
        for name, value in (("kp", kp), ("kd", kd), ("max_torque", max_torque)):
            if not float(value) > 0.0:
                raise ValueError(f"{name} must be > 0, got {value!r}")
        self.alive_bonus = float(alive_bonus)
        self.warmup_steps = int(warmup_steps)
        self.success_tolerance = float(success_tolerance)
        self.reset_noise_scale = float(reset_noise_scale)
        super().__init__(str(ANT_XML), 5, None, render_mode=render_mode, width=width, height=height,
                         default_camera_config={"distance": 4.0, "trackbodyid": 1, "elevation": -20.0})
        self.fault_fields = [name for name, on in (("offsets", self.offset_range), ("servo_strength", self.weak_leg))
                             if on]  # the attributes that end the privileged group, (8,) each
        moved = 0 if self.joint_velocities else self.model.nu  # joint velocities moved to privileged
        privileged = 7 + 9 * len(FEET) + self.model.nu * len(self.fault_fields) + moved
        self.observation_space = spaces.Dict({
            "policy": spaces.Box(-np.inf, np.inf, shape=(22 - moved,), dtype=np.float32),
            "privileged": spaces.Box(-np.inf, np.inf, shape=(privileged,), dtype=np.float32),
            **({"last_action": spaces.Box(-1.0, 1.0, shape=(self.model.nu,), dtype=np.float32)}
               if last_action else {}),
        })
        m = self.model
        self.hfield_shape = (int(m.hfield_nrow[0]), int(m.hfield_ncol[0]))
        self.feet = [mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_GEOM, name) for name in FEET]
        self.nominal_body_mass = m.body_mass.copy()
        self.nominal_body_inertia = m.body_inertia.copy()
        self.nominal_geom_friction = m.geom_friction.copy()
        self.nominal_gain = m.actuator_gainprm.copy()
        self.nominal_bias = m.actuator_biasprm.copy()
        self.nominal_force = m.actuator_forcerange.copy()
        self.nominal_gain[:, 0], self.nominal_bias[:, 1], self.nominal_bias[:, 2] = kp, -kp, -kd
        self.nominal_force[:] = [-max_torque, max_torque]
        joints = m.actuator_trnid[:, 0]
        self.stance = np.array([STANCE[mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_JOINT, j)] for j in joints])
        self.target_range = m.jnt_range[joints].copy()
        self.init_qpos[m.jnt_qposadr[joints]] = self.stance
        self.scales = np.ones(3)
        self.offsets, self.servo_strength = np.zeros(m.nu), np.ones(m.nu)
        self.heights = np.zeros(self.hfield_shape)
        self._steps, self._error_sum, self._error_count = 0, 0.0, 0

    def _initialize_simulation(self) -> tuple[mujoco.MjModel, mujoco.MjData]:
        model = mujoco.MjModel.from_xml_string(terrain_xml(self.top))
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, self.width)
        model.vis.global_.offheight = max(model.vis.global_.offheight, self.height)
        return model, mujoco.MjData(model)

    def _set_action_space(self) -> spaces.Box:
        self.action_space = spaces.Box(-1.0, 1.0, shape=(self.model.nu,), dtype=np.float32)
        return self.action_space

    def joint_targets(self, action: np.ndarray) -> np.ndarray:
        """PD targets (rad) for ``action`` in [-1, 1]^8: the stance plus ``action_scale * action``, within joint
        limits."""
        target = self.stance + self.action_scale * np.clip(action, -1.0, 1.0)
        return np.clip(target, self.target_range[:, 0], self.target_range[:, 1])

    def _step_mujoco_simulation(self, ctrl: np.ndarray, n_frames: int) -> None:
        self.data.ctrl[:] = ctrl
        mujoco.mj_step(self.model, self.data, nstep=n_frames)  # no contact forces are read: no rnePostConstraint

    # ---- randomisation ------------------------------------------------------------------------

    def apply_dynamics(self, mass: float, friction: float, strength: float, offsets: np.ndarray | None = None,
                       servo_strength: np.ndarray | None = None) -> None:
        """Set the model's masses, friction and servo gains to ``scale * nominal``, each servo's gains also scaled
        by ``servo_strength`` ``(8,)`` (None: 1), and the servos' zero offsets (rad, ``(8,)``; None: 0)."""
        nu = self.model.nu
        self.scales = np.array([mass, friction, strength], dtype=np.float64)
        self.offsets = np.zeros(nu) if offsets is None else np.asarray(offsets, dtype=np.float64)
        self.servo_strength = np.ones(nu) if servo_strength is None else np.asarray(servo_strength, dtype=np.float64)
        servo = strength * self.servo_strength[:, None]
        self.model.body_mass[:] = self.nominal_body_mass * mass
        self.model.body_inertia[:] = self.nominal_body_inertia * mass
        self.model.geom_friction[:] = self.nominal_geom_friction
        self.model.geom_friction[:, 0] = self.nominal_geom_friction[:, 0] * friction
        self.model.actuator_gainprm[:] = self.nominal_gain * servo
        self.model.actuator_biasprm[:] = self.nominal_bias * servo
        self.model.actuator_biasprm[:, 0] = self.model.actuator_gainprm[:, 0] * self.offsets  # holds target + offset
        self.model.actuator_forcerange[:] = self.nominal_force * servo

    def set_terrain(self, heights: np.ndarray) -> None:
        """Install ``heights`` (metres, ``(nrow, ncol)`` over (y, x), >= 0) as the heightfield."""
        self.heights = np.asarray(heights, dtype=np.float64).reshape(self.hfield_shape)
        self.model.hfield_data[:] = self.heights.ravel() / self.top
        if self.mujoco_renderer.viewer is not None and hasattr(self.mujoco_renderer.viewer, "con"):
            mujoco.mjr_uploadHField(self.model, self.mujoco_renderer.viewer.con, 0)

    def ground_height(self, xy: np.ndarray) -> np.ndarray:
        """Terrain height (m) at world points ``xy`` ``(..., 2)``, bilinear over the grid; 0 off the field."""
        col = (xy[..., 0] - CENTER_X + HALF_X) / CELL
        row = (xy[..., 1] + HALF_Y) / CELL
        nrow, ncol = self.hfield_shape
        inside = (col >= 0) & (col <= ncol - 1) & (row >= 0) & (row <= nrow - 1)
        col, row = np.clip(col, 0, ncol - 1.001), np.clip(row, 0, nrow - 1.001)
        c0, r0 = col.astype(int), row.astype(int)
        fc, fr = col - c0, row - r0
        h = self.heights
        z = ((1 - fr) * (1 - fc) * h[r0, c0] + (1 - fr) * fc * h[r0, c0 + 1]
             + fr * (1 - fc) * h[r0 + 1, c0] + fr * fc * h[r0 + 1, c0 + 1])
        return np.where(inside, z, 0.0)

    # ---- observation, reward ------------------------------------------------------------------

    def foot_positions(self) -> np.ndarray:
        """World positions ``(4, 3)`` of the four foot tips (the far ends of the lower-leg capsules)."""
        ids = self.feet
        axis = self.data.geom_xmat[ids].reshape(-1, 3, 3)[:, :, 2]
        return self.data.geom_xpos[ids] - axis * self.model.geom_size[ids, 1:2]

    def _base_frame(self) -> np.ndarray:
        return self.data.xmat[1].reshape(3, 3)  # columns: the base's axes in world coordinates

    def _get_obs(self) -> dict[str, np.ndarray]:
        qpos, qvel = self.data.qpos, self.data.qvel
        rot = self._base_frame()
        gravity = rot.T @ np.array([0.0, 0.0, -1.0])
        lin_vel = rot.T @ qvel[0:3]  # the free joint's linear velocity is in world coordinates
        base = qpos[0:3]
        scan = self.foot_positions()[:, None, :2] + SCAN[None]  # (4, 9, 2)
        heights = self.ground_height(scan).ravel() - base[2]
        joints = [qvel[6:]] if self.joint_velocities else []
        return {
            "policy": np.concatenate([qpos[7:], *joints, gravity, qvel[3:6]]).astype(np.float32),
            "privileged": np.concatenate(
                [self.scales, lin_vel, [base[2] - self.ground_height(base[:2])], heights,
                 *(getattr(self, f) for f in self.fault_fields), *([] if joints else [qvel[6:]])]
            ).astype(np.float32),
            **({"last_action": self.last_action.astype(np.float32)} if self.last_action is not None else {}),
        }

    def _heading_velocity(self, xy_before: np.ndarray) -> tuple[float, float]:
        vel = (self.data.qpos[0:2] - xy_before) / self.dt
        ahead = self._base_frame()[:2, 0]
        norm = float(np.linalg.norm(ahead))
        ahead = ahead / norm if norm > 1e-6 else np.array([1.0, 0.0])
        return float(vel @ ahead), float(vel @ np.array([-ahead[1], ahead[0]]))

    def _healthy(self) -> bool:
        up = float(self._base_frame()[2, 2])
        height = float(self.data.qpos[2] - self.ground_height(self.data.qpos[0:2]))
        low, high = self.healthy_height
        return bool(np.isfinite(self.data.qpos).all() and up >= self.min_up and low <= height <= high)

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        xy_before = self.data.qpos[0:2].copy()
        self.do_simulation(self.joint_targets(action), self.frame_skip)
        if self.last_action is not None:
            self.last_action = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        v_fwd, v_lat = self._heading_velocity(xy_before)
        healthy = self._healthy()
        self._steps += 1
        error = abs(v_fwd - self.target_speed)
        if self._steps > self.warmup_steps:
            self._error_sum += error
            self._error_count += 1
        tracking = float(np.exp(-(error**2 + v_lat**2) / self.tracking_sigma**2))
        ctrl_cost = self.ctrl_cost_weight * float(np.square(action).sum())
        reward = tracking + self.alive_bonus - ctrl_cost
        success = healthy and self._error_count > 0 and (
            self._error_sum / self._error_count < self.success_tolerance * self.speed_scale)
        info = {"forward_velocity": v_fwd, "lateral_velocity": v_lat, "speed_error": error,
                "reward_tracking": tracking, "reward_ctrl": -ctrl_cost, "is_success": success}
        if self.render_mode == "human":
            self.render()
        return self._get_obs(), reward, not healthy, False, info

    def reset_model(self) -> dict[str, np.ndarray]:
        rng = self.np_random
        scales = rng.uniform(*self.mass_range), rng.uniform(*self.friction_range), rng.uniform(*self.strength_range)
        self.set_terrain(make_heights(rng, self.roughness, self.hfield_shape))
        self._steps, self._error_sum, self._error_count = 0, 0.0, 0
        noise = self.reset_noise_scale
        qpos = self.init_qpos + rng.uniform(-noise, noise, size=self.model.nq)
        qpos[2] = INIT_Z
        qvel = self.init_qvel + noise * rng.standard_normal(self.model.nv)
        nu = self.model.nu  # faults drawn last: a seed gives the same episode with and without them
        offsets = rng.uniform(-self.offset_range, self.offset_range, nu) if self.offset_range else None
        servo_strength = np.ones(nu)
        if self.weak_leg:  # actuators come in (hip, ankle) pairs, one pair per leg
            servo_strength[np.arange(nu) // 2 == rng.integers(nu // 2)] = rng.uniform(*self.weak_leg)
        self.apply_dynamics(*scales, offsets, servo_strength)
        self.set_state(qpos, qvel)
        if self.last_action is not None:
            self.last_action = np.zeros(nu)
        return self._get_obs()

    def _get_reset_info(self) -> dict[str, Any]:
        return {"forward_velocity": 0.0, "is_success": False}
