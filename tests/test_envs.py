"""Contract tests for the bundled task-suite environments."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import policydistill_envs
import pytest
from gymnasium.utils.env_checker import check_env
from policydistill_envs import CHEETAH_SPEED_ID, POINT_REACH_ID
from policydistill_envs.cheetah_speed import CheetahSpeedEnv
from policydistill_envs.point_reach import TARGETS, PointReachEnv, resolve_target

SHAPES = {
    POINT_REACH_ID: {"policy": (4,), "privileged": (2,)},
    CHEETAH_SPEED_ID: {"policy": (9,), "privileged": (11,)},
}
EPISODE_STEPS = {POINT_REACH_ID: 100, CHEETAH_SPEED_ID: 400}


def p_controller(obs: dict[str, np.ndarray], goal: np.ndarray) -> np.ndarray:
    """Proportional-derivative command toward ``goal``: (2,) in [-1, 1]."""
    pos, vel = obs["policy"][:2], obs["policy"][2:]
    return np.clip(4.0 * (goal - pos) - 0.5 * vel, -1.0, 1.0).astype(np.float32)


def rollout_p_controller(env_target: str, controller_target: str, seed: int) -> tuple[bool, float]:
    """Run one PointReach episode; return (final is_success, return)."""
    env = gym.make(POINT_REACH_ID, target=env_target)
    obs, _ = env.reset(seed=seed)
    goal, total, done, info = resolve_target(controller_target), 0.0, False, {}
    while not done:
        obs, reward, terminated, truncated, info = env.step(p_controller(obs, goal))
        total += float(reward)
        done = terminated or truncated
    env.close()
    return bool(info["is_success"]), total


def test_register_envs_is_idempotent() -> None:
    policydistill_envs.register_envs()
    policydistill_envs.register_envs()
    for env_id, steps in EPISODE_STEPS.items():
        assert env_id in gym.registry
        assert gym.spec(env_id).max_episode_steps == steps


@pytest.mark.filterwarnings("ignore:.*infinity:UserWarning")
@pytest.mark.parametrize("env_id", [POINT_REACH_ID, CHEETAH_SPEED_ID])
def test_env_checker(env_id: str) -> None:
    env = gym.make(env_id)
    check_env(env.unwrapped, skip_render_check=True)
    env.close()


@pytest.mark.parametrize("env_id", [POINT_REACH_ID, CHEETAH_SPEED_ID])
def test_observation_groups(env_id: str) -> None:
    env = gym.make(env_id)
    assert set(env.observation_space.spaces) == {"policy", "privileged"}
    obs, info = env.reset(seed=3)
    assert isinstance(info["is_success"], bool)
    for _ in range(3):
        assert set(obs) == {"policy", "privileged"}
        for key, shape in SHAPES[env_id].items():
            assert env.observation_space[key].dtype == np.float32
            assert env.observation_space[key].shape == shape
            assert obs[key].dtype == np.float32 and obs[key].shape == shape
        assert env.observation_space.contains(obs)
        obs, _, _, _, info = env.step(env.action_space.sample())
        assert isinstance(info["is_success"], bool)
    env.close()


@pytest.mark.parametrize("env_id", [POINT_REACH_ID, CHEETAH_SPEED_ID])
def test_fixed_length_episodes_truncate(env_id: str) -> None:
    env = gym.make(env_id)
    env.reset(seed=0)
    env.action_space.seed(0)
    for t in range(1, EPISODE_STEPS[env_id] + 1):
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        assert not terminated
        assert truncated == (t == EPISODE_STEPS[env_id])
    env.close()


@pytest.mark.parametrize("env_id", [POINT_REACH_ID, CHEETAH_SPEED_ID])
def test_deterministic_under_seed(env_id: str) -> None:
    actions = np.random.default_rng(0).uniform(
        -1, 1, size=(50, gym.spec(env_id).make().action_space.shape[0])
    )

    def trace(seed: int) -> list[np.ndarray]:
        env = gym.make(env_id)
        obs, _ = env.reset(seed=seed)
        out = [np.concatenate([obs["policy"], obs["privileged"]])]
        for action in actions:
            obs, reward, _, _, info = env.step(action.astype(np.float32))
            out.append(np.concatenate([obs["policy"], obs["privileged"], [reward, info["is_success"]]]))
        env.close()
        return out

    first, second, other = trace(7), trace(7), trace(8)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], other[0])


@pytest.mark.parametrize("env_id", [POINT_REACH_ID, CHEETAH_SPEED_ID])
def test_render_rgb_array(env_id: str) -> None:
    env = gym.make(env_id, render_mode="rgb_array")
    env.reset(seed=0)
    frame = env.render()
    assert frame.shape == (120, 160, 3) and frame.dtype == np.uint8
    assert frame.std() > 0
    env.close()


def test_point_reach_targets() -> None:
    assert np.allclose(resolve_target("east"), [0.5, 0.0])
    assert np.allclose(resolve_target((0.1, -0.2)), [0.1, -0.2])
    env = PointReachEnv(target=(0.3, 0.4))
    obs, _ = env.reset(seed=0)
    np.testing.assert_allclose(obs["privileged"], [0.3, 0.4])
    for bad in ("up", (1.0, 2.0, 3.0), (np.nan, 0.0)):
        with pytest.raises(ValueError):
            PointReachEnv(target=bad)


def test_point_reach_tasks_share_the_start_distribution() -> None:
    starts = {}
    for target in TARGETS:
        env = gym.make(POINT_REACH_ID, target=target)
        starts[target] = np.stack([env.reset(seed=seed)[0]["policy"] for seed in range(20)])
        env.close()
    reference = starts["north"]
    assert np.all(np.abs(reference[:, :2]) <= 0.05) and np.all(reference[:, 2:] == 0.0)
    assert reference[:, :2].std() > 0.01
    for target, policy_obs in starts.items():
        np.testing.assert_array_equal(policy_obs, reference, err_msg=target)


def test_point_reach_needs_task_specific_behaviour() -> None:
    for env_target in ("north", "east"):
        own_success, own_return = rollout_p_controller(env_target, env_target, seed=1)
        assert own_success
        for other in TARGETS:
            if other == env_target:
                continue
            success, other_return = rollout_p_controller(env_target, other, seed=1)
            assert not success
            assert other_return < own_return - 20.0


def test_point_reach_success_tracks_distance() -> None:
    env = gym.make(POINT_REACH_ID, target="east")
    obs, info = env.reset(seed=2)
    assert not info["is_success"]
    goal, flags = resolve_target("east"), []
    for _ in range(60):
        obs, _, _, _, info = env.step(p_controller(obs, goal))
        dist = np.linalg.norm(obs["policy"][:2] - goal)
        assert info["is_success"] == (dist < 0.05)
        flags.append(info["is_success"])
    assert flags[-1] and not flags[0]
    for _ in range(40):
        obs, _, _, _, info = env.step(np.array([-1.0, 0.0], dtype=np.float32))
    assert not info["is_success"]
    env.close()


def test_cheetah_randomisation_in_range_and_varies() -> None:
    env = CheetahSpeedEnv(mass_range=(0.8, 1.2), friction_range=(0.5, 0.9), strength_range=(1.1, 1.3))
    nominal_mass, nominal_friction = env.model.body_mass.copy(), env.model.geom_friction.copy()
    nominal_gear = env.model.actuator_gear.copy()
    seen = []
    for seed in range(8):
        obs, _ = env.reset(seed=seed)
        mass, friction, strength = obs["privileged"][:3].astype(np.float64)
        assert 0.8 <= mass <= 1.2 and 0.5 <= friction <= 0.9 and 1.1 <= strength <= 1.3
        np.testing.assert_allclose(env.model.body_mass, nominal_mass * mass, rtol=1e-6)
        np.testing.assert_allclose(
            env.model.geom_friction[:, 0], nominal_friction[:, 0] * friction, rtol=1e-6
        )
        np.testing.assert_allclose(env.model.geom_friction[:, 1:], nominal_friction[:, 1:])
        np.testing.assert_allclose(env.model.actuator_gear[:, 0], nominal_gear[:, 0] * strength, rtol=1e-6)
        seen.append((mass, friction, strength))
    assert np.all(np.ptp(np.array(seen), axis=0) > 0.05)
    env.close()


def test_cheetah_randomisation_does_not_compound() -> None:
    fresh, used = CheetahSpeedEnv(), CheetahSpeedEnv()
    for seed in range(10):
        used.reset(seed=seed)
        used.step(used.action_space.sample())
    fresh.reset(seed=42)
    used.reset(seed=42)
    for name in ("body_mass", "body_inertia", "geom_friction", "actuator_gear"):
        np.testing.assert_array_equal(getattr(fresh.model, name), getattr(used.model, name), err_msg=name)
    fresh.close()
    used.close()


def test_cheetah_randomisation_changes_the_dynamics() -> None:
    def distance(strength: float) -> float:
        env = CheetahSpeedEnv(strength_range=(strength, strength), mass_range=(1, 1), friction_range=(1, 1))
        env.reset(seed=0)
        x0 = env.data.qpos[0]
        for t in range(60):
            env.step(np.sin(0.5 * t + np.arange(6)).astype(np.float32))
        moved = float(env.data.qpos[0] - x0)
        env.close()
        return moved

    assert abs(distance(0.7) - distance(1.3)) > 0.05


def test_cheetah_success_and_reward() -> None:
    def run(target_speed: float) -> tuple[list[bool], list[float], list[float]]:
        env = gym.make(CHEETAH_SPEED_ID, target_speed=target_speed)
        env.reset(seed=0)
        zero = np.zeros(6, dtype=np.float32)
        flags, errors, rewards, done = [], [], [], False
        while not done:
            obs, reward, terminated, truncated, info = env.step(zero)
            assert reward == pytest.approx(info["reward_tracking"] + info["reward_ctrl"])
            assert info["reward_tracking"] == pytest.approx(
                1 - info["speed_error"] / max(1, abs(target_speed))
            )
            flags.append(info["is_success"])
            errors.append(info["speed_error"])
            rewards.append(float(reward))
            done = terminated or truncated
        env.close()
        return flags, errors, rewards

    flags, errors, _ = run(0.0)
    assert not any(flags[:20])
    for t in range(20, len(flags)):
        assert flags[t] == (np.mean(errors[20 : t + 1]) < 0.25)
    assert flags[-1]
    flags, _, rewards = run(3.0)
    assert not any(flags) and np.mean(rewards) < 0.1


def test_cheetah_prints_no_mujoco_warning_and_restores_the_handler(capfd, caplog) -> None:
    """gymnasium's half_cheetah.xml uses ``settotalmass``, which MuJoCo 4 warns about on every compile: building the
    env logs that warning at debug level instead of printing it for every env, and leaves MuJoCo's warning handler
    as it was (MuJoCo 3.3, in the metaworld and robotics venvs, does not warn)."""
    import logging
    from pathlib import Path

    import mujoco

    before = mujoco.get_mju_user_warning()
    warned: list[str] = []
    mujoco.set_mju_user_warning(warned.append)
    try:
        mujoco.MjModel.from_xml_path(str(Path(gym.__file__).parent / "envs/mujoco/assets/half_cheetah.xml"))
    finally:
        mujoco.set_mju_user_warning(before)
    with caplog.at_level(logging.DEBUG, logger="policydistill_envs.cheetah_speed"):
        CheetahSpeedEnv().close()
    out, err = capfd.readouterr()
    assert "settotalmass" not in out + err
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG and "MuJoCo" in r.getMessage()]
    assert logged == [f"MuJoCo: {w}" for w in warned]
    assert mujoco.get_mju_user_warning() is before


def test_the_pit_sensor_reads_the_pit_within_its_range_only() -> None:
    """``extero`` exists only with the sensor, reads 0 without a pit and out of range, and points at the pit
    with a proximity that grows to 1 at its edge."""
    assert "extero" not in gym.make(POINT_REACH_ID, hazard_radius=0.1).observation_space.spaces
    blind = gym.make(POINT_REACH_ID, target="north", pit_sensor=0.1)
    obs, _ = blind.reset(seed=0)
    assert blind.observation_space["extero"].contains(obs["extero"]) and not obs["extero"].any()
    env = gym.make(POINT_REACH_ID, target="north", hazard_radius=0.1, pit_sensor=0.1)
    obs, _ = env.reset(seed=0)
    readings = [obs["extero"]]
    while True:  # drive north, into the pit (centre (0, 0.25), edge at y = 0.15)
        obs, _, terminated, _, info = env.step(np.array([0.0, 0.3], dtype=np.float32))
        readings.append(obs["extero"])
        if terminated:
            break
    assert info["hazard"]
    proximity = np.linalg.norm(readings, axis=1)
    assert proximity[0] == 0.0 and proximity[-1] == pytest.approx(1.0)
    assert np.all(np.diff(proximity) >= -1e-6), proximity  # it nears the pit all the way
    sensed = np.asarray(readings)[proximity > 0]
    assert np.all(sensed[:, 1] > 0) and np.all(np.abs(sensed[:, 0]) < sensed[:, 1])  # the pit lies north
    blind.close()
    env.close()
    east = PointReachEnv(target="east", hazard_radius=0.1, pit_sensor=0.1)  # mirrored about the x axis
    east.reset(seed=0)
    readings = []
    for y in (0.07, -0.07):
        east.set_state(np.array([0.2, y]), np.zeros(2))
        readings.append(east.sense_pit())
    assert np.linalg.norm(readings[0]) > 0
    np.testing.assert_allclose(east.mirror_maps()["extero"] @ readings[0], readings[1], atol=1e-6)
    east.close()
    with pytest.raises(ValueError, match="pit_sensor must be a range >= 0"):
        PointReachEnv(pit_sensor=-1.0)


@pytest.mark.parametrize("frame_skip", [0, -1, 2.5, True])
def test_a_frame_skip_that_is_not_a_positive_integer_is_refused(frame_skip) -> None:
    with pytest.raises(ValueError, match="frame_skip must be an integer >= 1"):
        PointReachEnv(frame_skip=frame_skip)
