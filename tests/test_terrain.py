"""QuadrupedTerrain: seeded terrain and dynamics, what each observation group holds, the flat case, kwarg checks."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import mujoco
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from policydistill_envs import QUADRUPED_TERRAIN_ID
from policydistill_envs.quadruped_terrain import CENTER_X, HALF_X, HALF_Y

from policydistill.suites import load_suite


def make(**kwargs: object) -> gym.Env:
    return gym.make(QUADRUPED_TERRAIN_ID, **kwargs)


def rollout(env: gym.Env, seed: int, steps: int) -> list[dict[str, np.ndarray]]:
    """Observations of ``steps`` steps after ``reset(seed)`` under a fixed action sequence."""
    obs, _ = env.reset(seed=seed)
    actions = np.random.default_rng(0).uniform(-1, 1, size=(steps, 8)).astype(np.float32)
    out = [obs]
    for a in actions:
        obs, *_ = env.step(a)
        out.append(obs)
    return out


@pytest.mark.filterwarnings("ignore:.*infinity:UserWarning")
def test_gymnasium_env_checker_and_suite_spaces() -> None:
    check_env(make().unwrapped, skip_render_check=True)
    suite = load_suite("terrain")
    assert suite.task_names == ["rough"] and gym.spec(QUADRUPED_TERRAIN_ID).max_episode_steps == 500
    obs_space, act_space = suite.spaces[0]
    assert set(obs_space.spaces) == {"policy", "privileged", "task"} and act_space.shape == (8,)


def test_terrain_determinism_under_seed() -> None:
    a, b = make(), make()
    obs_a, obs_b = rollout(a, 7, 20), rollout(b, 7, 20)
    ua, ub = a.unwrapped, b.unwrapped
    assert np.array_equal(ua.model.hfield_data, ub.model.hfield_data)
    assert np.array_equal(ua.scales, ub.scales)
    assert np.array_equal(ua.model.body_mass, ub.model.body_mass)
    assert np.array_equal(ua.model.actuator_gear, ub.model.actuator_gear)
    for x, y in zip(obs_a, obs_b, strict=True):
        for group in ("policy", "privileged"):
            assert np.array_equal(x[group], y[group])
    terrain_7 = ua.heights.copy()
    b.reset(seed=8)
    assert not np.allclose(ub.heights, terrain_7)
    assert not np.array_equal(ub.scales, ua.scales)
    a.reset(seed=7)  # the same seed again, after other episodes: the same terrain
    assert np.array_equal(ua.heights, terrain_7)


def test_groups_and_policy_reads_no_terrain_or_dynamics() -> None:
    env = make()
    obs, _ = env.reset(seed=3)
    assert set(obs) == {"policy", "privileged"}
    assert obs["policy"].shape == (22,) and obs["privileged"].shape == (43,)
    assert env.observation_space["policy"].shape == (22,)
    # other terrain and other dynamics from the same seed: the same start state, so the same proprioception,
    # while the privileged group sees the difference
    other = make(roughness=0.3, mass_range=(2.0, 2.0), friction_range=(0.2, 0.2), strength_range=(0.4, 0.4))
    obs_other, _ = other.reset(seed=3)
    assert np.array_equal(obs["policy"], obs_other["policy"])
    assert not np.allclose(obs["privileged"][:3], obs_other["privileged"][:3])
    assert np.array_equal(obs_other["privileged"][:3], np.float32([2.0, 0.2, 0.4]))


def test_without_joint_velocities_the_policy_group_has_angles_and_the_imu_only() -> None:
    """``joint_velocities=False`` (position-only servos): the same 22 numbers, the joint velocities moved from
    ``policy`` to the end of ``privileged``, step after step."""
    full, encoders = make(), make(joint_velocities=False)
    assert encoders.observation_space["policy"].shape == (14,)
    assert encoders.observation_space["privileged"].shape == (51,)
    for a, b in zip(rollout(full, 5, 20), rollout(encoders, 5, 20), strict=True):
        assert np.array_equal(b["policy"], np.concatenate([a["policy"][:8], a["policy"][16:]]))
        assert np.array_equal(b["privileged"], np.concatenate([a["privileged"], a["policy"][8:16]]))


def ray_ground(env: gym.Env, x: float, y: float) -> float:
    """The height at which a vertical ray from 2 m hits the static world (what the physics collides with)."""
    u = env.unwrapped
    geom = np.zeros(1, dtype=np.int32)
    dist = mujoco.mj_ray(u.model, u.data, np.array([x, y, 2.0]), np.array([0.0, 0.0, -1.0]), None, 1, 1, geom)
    return 2.0 - dist


def test_privileged_heights_match_the_physics_ground() -> None:
    env = make(roughness=0.2)
    env.reset(seed=11)
    u = env.unwrapped
    rng = np.random.default_rng(1)
    # inner grid vertices, where MuJoCo's triangles and the bilinear lookup agree exactly
    cols, rows = rng.integers(1, u.hfield_shape[1] - 1, 20), rng.integers(1, u.hfield_shape[0] - 1, 20)
    xs = cols * 2 * HALF_X / (u.hfield_shape[1] - 1) - HALF_X + CENTER_X
    ys = rows * 2 * HALF_Y / (u.hfield_shape[0] - 1) - HALF_Y
    ours = u.ground_height(np.stack([xs, ys], axis=-1))
    theirs = np.array([ray_ground(env, x, y) for x, y in zip(xs, ys, strict=True)])
    assert ours.max() > 0.05
    np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_servo_offsets_are_held_and_privileged() -> None:
    """With ``offset_range``, each servo holds its target plus the episode's offset: floating without gravity, the
    joints settle at stance + offset; the offsets end the privileged group and the policy group does not see them."""
    plain, offset = make(), make(offset_range=0.1)
    obs_plain, _ = plain.reset(seed=4)
    obs, _ = offset.reset(seed=4)
    u = offset.unwrapped
    assert obs["privileged"].shape == (51,) and offset.observation_space["privileged"].shape == (51,)
    assert np.abs(u.offsets).max() <= 0.1 and np.abs(u.offsets).min() > 0.0
    np.testing.assert_allclose(obs["privileged"][-8:], u.offsets, atol=1e-6)
    assert np.array_equal(obs["policy"], obs_plain["policy"])
    u.model.opt.gravity[:] = 0.0
    qpos = u.data.qpos.copy()
    qpos[2] = 3.0  # in the air
    u.set_state(qpos, np.zeros(u.model.nv))
    for _ in range(100):
        offset.step(np.zeros(8, dtype=np.float32))
    servo_angles = u.data.qpos[u.model.jnt_qposadr[u.model.actuator_trnid[:, 0]]]  # in action order
    np.testing.assert_allclose(servo_angles, u.stance + u.offsets, atol=0.01)


def test_the_last_action_group_holds_the_clipped_action_before() -> None:
    """With ``last_action``, the group holds the previous step's action clipped to the bounds, zeros after a reset;
    the other groups are those of the env without it."""
    env, plain = make(last_action=True, offset_range=0.3), make(offset_range=0.3)
    assert env.observation_space["last_action"].shape == (8,) and "last_action" not in plain.observation_space.spaces
    check_env(env.unwrapped, skip_render_check=True)
    obs, _ = env.reset(seed=3)
    same, _ = plain.reset(seed=3)
    assert np.array_equal(obs["last_action"], np.zeros(8)) and np.array_equal(obs["policy"], same["policy"])
    action = np.linspace(-1.5, 1.5, 8).astype(np.float32)
    obs, *_ = env.step(action)
    np.testing.assert_array_equal(obs["last_action"], np.clip(action, -1.0, 1.0))
    assert np.array_equal(env.reset(seed=4)[0]["last_action"], np.zeros(8))


def test_a_weak_leg_is_one_leg_and_privileged() -> None:
    """With ``weak_leg``, both servos of one leg (and no other) get their gains and torque limit scaled by a factor
    in the range, which ends the privileged group."""
    env = make(weak_leg=(0.1, 0.3))
    legs = set()
    for seed in range(12):
        obs, _ = env.reset(seed=seed)
        u = env.unwrapped
        weak = np.flatnonzero(u.servo_strength < 1.0)
        assert len(weak) == 2 and weak[0] % 2 == 0 and weak[1] == weak[0] + 1
        assert 0.1 <= u.servo_strength[weak[0]] == u.servo_strength[weak[1]] <= 0.3
        legs.add(int(weak[0]) // 2)
        assert obs["privileged"].shape == (51,)
        np.testing.assert_allclose(obs["privileged"][-8:], u.servo_strength, atol=1e-6)
        full = u.model.actuator_forcerange[:, 1].max()
        np.testing.assert_allclose(u.model.actuator_forcerange[weak, 1], full * u.servo_strength[weak])
        np.testing.assert_allclose(u.model.actuator_gainprm[weak, 0] / u.model.actuator_gainprm[weak ^ 2, 0],
                                   u.servo_strength[weak])
    assert legs == {0, 1, 2, 3}


def test_roughness_zero_is_flat() -> None:
    env = make(roughness=0.0)
    obs, _ = env.reset(seed=5)
    u = env.unwrapped
    assert not u.model.hfield_data.any()
    base_z = u.data.qpos[2]
    np.testing.assert_allclose(obs["privileged"][7:], -base_z, atol=1e-6)
    assert abs(ray_ground(env, 3.0, 1.0)) < 1e-6
    rough = make(roughness=0.1)
    rough.reset(seed=5)
    assert rough.unwrapped.heights.max() > 0.05 and rough.unwrapped.heights.max() <= 0.1
    assert rough.unwrapped.heights.min() >= 0.0
    assert rough.unwrapped.ground_height(np.zeros(2)) == 0.0  # the flat start pad


def test_a_flipped_robot_ends_the_episode() -> None:
    env = make()
    env.reset(seed=0)
    u = env.unwrapped
    qpos, qvel = u.data.qpos.copy(), np.zeros(u.model.nv)
    qpos[2], qpos[3:7] = 0.6, [0.0, 1.0, 0.0, 0.0]  # upside down
    u.set_state(qpos, qvel)
    _, _, terminated, truncated, info = env.step(np.zeros(8, dtype=np.float32))
    assert terminated and not truncated and not info["is_success"]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"roughness": -0.1}, "roughness"),
    ({"roughness": 2.0}, "roughness"),
    ({"mass_range": (0.0, 1.0)}, "mass_range"),
    ({"friction_range": (1.4, 0.6)}, "friction_range"),
    ({"strength_range": (-1.0, 1.0)}, "strength_range"),
    ({"max_tilt": 0.0}, "max_tilt"),
    ({"action_scale": 0.0}, "action_scale"),
    ({"tracking_sigma": -1.0}, "tracking_sigma"),
    ({"offset_range": -0.1}, "offset_range"),
    ({"weak_leg": (0.5, 0.1)}, "weak_leg"),
    ({"joint_velocities": "no"}, "joint_velocities"),
])
def test_bad_kwargs_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make(**kwargs)


@pytest.mark.parametrize("suite_name", ["terrain", "terrain_offsets", "terrain_encoders"])
def test_the_zoo_expert_walks_at_the_commanded_speed(suite_name: str) -> None:
    from policydistill.bundle import load_bundle

    suite = load_suite(suite_name)
    expert = load_bundle(Path(__file__).resolve().parents[1] / "envs/zoo" / suite_name / "rough", device="cpu")
    assert list(expert.groups) == ["policy", "privileged"]
    env = gym.make(QUADRUPED_TERRAIN_ID, **suite.tasks[0].kwargs)
    obs, _ = env.reset(seed=123)
    speeds = []
    for _ in range(200):
        obs, _, terminated, _, info = env.step(expert.act({k: v[None] for k, v in obs.items()})[0])
        assert not terminated
        speeds.append(info["forward_velocity"])
    assert abs(np.mean(speeds[40:]) - 0.5) < 0.15
