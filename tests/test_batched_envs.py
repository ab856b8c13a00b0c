"""Conformance suite of the batched tensor env protocol: every adapter passes the same tests on real envs
(plain gymnasium envs, one per row, as every suite without a batched factory is rolled out; gymnasium's
SyncVectorEnv over the default suite; PointReach in VecTask style with MuJoCo underneath; and the rsl_rl
VecEnv adapters both ways)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from conftest import goal_seeker
from policydistill_envs.point_reach_vectask import make_batched

from policydistill.distill.collect import collect
from policydistill.eval.rollout import drive, rollout, run_episodes
from policydistill.policy import CallablePolicy, RandomPolicy
from policydistill.suites import load_suite, suite_from_dict
from policydistill.suites.batched import BatchedEnv, GymEnvs, from_suite
from policydistill.teachers import TeacherBank

SLOTS = [0, 1, 2, 3, 0, 1]


def _gym_envs() -> BatchedEnv:
    suite = load_suite("default")
    return GymEnvs([suite.make_env(t) for t in SLOTS])


def _gymnasium() -> BatchedEnv:
    return from_suite(load_suite("default"), SLOTS)


def _vectask() -> BatchedEnv:
    return make_batched(load_suite("default_vectask"), SLOTS)


def _rsl_rl() -> BatchedEnv:
    from policydistill.suites.batched.rsl_rl import FromRslRl, to_rsl_rl

    return FromRslRl(to_rsl_rl(make_batched(load_suite("default_vectask"), SLOTS)))


ADAPTERS = {"gym_envs": _gym_envs, "gymnasium": _gymnasium, "vectask": _vectask, "rsl_rl": _rsl_rl}


@pytest.fixture(params=list(ADAPTERS))
def env(request):
    env = ADAPTERS[request.param]()
    yield env
    env.close()


def _seeker_act(obs):
    return goal_seeker().act(obs), {}


def test_conforms_to_the_protocol(env):
    assert isinstance(env, BatchedEnv)
    obs = env.reset()
    n = env.num_envs
    assert set(obs) == set(env.single_observation_space.spaces) >= {"policy", "task"}
    for g, v in obs.items():
        assert isinstance(v, torch.Tensor) and v.dtype == torch.float32 and v.device == env.device
        assert v.shape == (n, *env.single_observation_space[g].shape)
    assert torch.equal(obs["task"].argmax(1), torch.tensor(SLOTS))
    actions = torch.zeros(n, *env.single_action_space.shape)
    obs, reward, terminated, truncated, extras = env.step(actions)
    assert reward.shape == (n,) and reward.dtype.is_floating_point and torch.isfinite(reward).all()
    assert terminated.dtype == truncated.dtype == torch.bool and terminated.shape == truncated.shape == (n,)
    assert isinstance(extras, dict) and all(torch.isfinite(v).all() for v in obs.values())


def test_episode_end_and_masked_reset(env):
    env.reset()
    n, act = env.num_envs, torch.full((env.num_envs, 2), 0.3)
    for t in range(1, env.max_episode_length + 1):
        obs, _, terminated, truncated, _ = env.step(act)
        done = terminated | truncated
        assert not (terminated & truncated).any()
        if t < env.max_episode_length:
            assert not done.any(), f"episode ended early at step {t}"
    assert truncated.all() and not terminated.any()  # PointReach only ends at its time limit
    mask = torch.zeros(n, dtype=torch.bool)
    mask[:3] = True
    fresh = env.reset(mask, [11, 12, 13])
    assert fresh["policy"][:3, 2:].abs().max() == 0  # new episodes start at rest
    if env.seeded_reset:  # rows outside the mask keep their observation
        torch.testing.assert_close(fresh["policy"][3:], obs["policy"][3:])


def test_seeded_resets_are_reproducible(env):
    if not env.seeded_reset:
        pytest.skip(f"{type(env).__name__} resets its rows itself: seeds are not applied")
    rng = np.random.default_rng(0)
    actions = torch.as_tensor(rng.uniform(-1, 1, size=(5, env.num_envs, 2)), dtype=torch.float32)
    runs = []
    for _ in range(2):
        obs = [env.reset(None, list(range(100, 100 + env.num_envs)))["policy"]]
        obs += [env.step(a)[0]["policy"] for a in actions]
        runs.append(torch.stack(obs))
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)
    assert not torch.equal(runs[0][0, 0], runs[0][0, 1])


def test_driver_gives_the_episodes_of_rollout(env):
    """The batched path and the per-env gymnasium loop give the same episodes on the same seeds."""
    suite = load_suite("default")
    records = drive(env, SLOTS, suite.task_names, _seeker_act, episodes_per_task=3, seed=40)
    assert [(r.task_index, r.episode.seed) for r in records] == [(t, 40 + k) for t in range(4) for k in range(3)]
    assert all(r.episode.length == env.max_episode_length and r.episode.error is None for r in records)
    if not env.seeded_reset:
        return
    reference = rollout(suite, [0, 1, 2, 3], _seeker_act, episodes_per_task=3, n_envs=6, seed=40)
    for a, b in zip(records, reference, strict=True):
        assert a.episode.success == b.episode.success and a.episode.length == b.episode.length
        assert a.episode.ret == pytest.approx(b.episode.ret, rel=1e-6)


@pytest.mark.parametrize("suite_name", ["gymnasium", "default_vectask"])
def test_collection_never_labels_a_post_reset_observation(suite_name):
    """collect() through a batched suite: replaying each episode's actions from its seeded reset in
    the gymnasium env reproduces every recorded observation and label."""
    default = load_suite("default")
    suite = dataclasses.replace(default, batched="gymnasium") if suite_name == "gymnasium" else load_suite(suite_name)
    bank = TeacherBank([goal_seeker() for _ in suite.tasks])
    student = RandomPolicy(default.make_env(0).action_space, groups=("policy", "task"), seed=3)
    records = collect(suite, [0, 1, 2, 3], bank, student, beta=0.5, episodes_per_task=2, n_envs=3, seed=10,
                      rng=np.random.default_rng(0))
    assert len(records) == 8 and {r.episode.length for r in records} == {100}
    for rec in records:
        env = default.make_env(rec.task_index)
        obs, _ = env.reset(seed=rec.episode.seed)
        for t in range(rec.episode.length):
            np.testing.assert_allclose(rec.steps["obs/policy"][t], obs["policy"], atol=1e-6)
            obs, *_ = env.step(rec.steps["action"][t])
        label = bank.label({g: rec.steps[f"obs/{g}"] for g in ("policy", "privileged", "task")})
        np.testing.assert_array_equal(rec.steps["label_mean"], label.mean)


def test_evaluation_runs_through_the_batched_env():
    a = run_episodes(load_suite("default"), "south", goal_seeker(), episodes=4, n_envs=2, seed=3)
    b = run_episodes(load_suite("default_vectask"), "south", goal_seeker(), episodes=4, n_envs=2, seed=3)
    assert [e.ret for e in b] == pytest.approx([e.ret for e in a], rel=1e-6)
    assert [e.success for e in a] == [e.success for e in b] == [True] * 4


def test_terminated_and_truncated_stay_apart():
    suite = dataclasses.replace(load_suite("InvertedPendulum-v5"), batched="gymnasium")
    push = CallablePolicy(lambda x: np.full((len(x), 1), 3.0), groups=("policy",), batched=True)
    records = rollout(suite, [0], lambda o: (push.act(o), {}), episodes_per_task=3, n_envs=2, record=True)
    assert len(records) == 3
    for rec in records:
        assert rec.steps["terminated"][-1] and not rec.steps["truncated"].any() and rec.episode.length < 1000


@pytest.mark.parametrize("fault, reason", [("nan", "non-finite"), ("raise", "simulator exploded")])
def test_faulty_episodes_are_dropped_as_in_rollout(fault, reason):
    suite = suite_from_dict({"tasks": [{"name": "f", "env": "faulty_envs:FaultyEnv", "kwargs": {"fault": fault}}],
                             "batched": "gymnasium"}, "faulty")
    eps = run_episodes(suite, "f", RandomPolicy(suite.make_env(0).action_space), episodes=6, n_envs=2, seed=0)
    dropped = [e for e in eps if e.error]
    assert [e.seed for e in dropped] == [1, 3, 5] and all(reason in e.error for e in dropped)
    assert all(e.ret == 5.0 for e in eps if not e.error)


def test_non_finite_actions_end_the_episode():
    def act(obs):
        a = goal_seeker().act(obs)
        a[0] = np.nan
        return a, {}

    records = rollout(load_suite("default_vectask"), [0], act, episodes_per_task=2, n_envs=2)
    assert records[0].episode.error == "policy returned a non-finite action" and records[0].episode.length == 1
    assert records[1].episode.error is None


def test_rsl_rl_side_of_the_adapter():
    from rsl_rl.env import VecEnv
    from tensordict import TensorDict

    from policydistill.suites.batched.rsl_rl import to_rsl_rl

    vec = to_rsl_rl(_vectask(), seed=0)
    assert isinstance(vec, VecEnv) and isinstance(vec.get_observations(), TensorDict)
    assert vec.num_actions == 2 and vec.max_episode_length == 100
    for _ in range(100):
        obs, reward, dones, extras = vec.step(torch.zeros(vec.num_envs, 2))
    assert dones.all() and extras["time_outs"].all() and (vec.episode_length_buf == 0).all()
    assert obs["policy"][:, 2:].abs().max() == 0  # rows were reset at once, as rsl_rl expects


def test_isaacgym_absent_gives_a_clear_error():
    from policydistill.suites.batched.vectask import load_isaacgym_task

    with pytest.raises(ImportError, match="IsaacGym is not available"):
        load_isaacgym_task("Ant", {})


@pytest.mark.slow
def test_rsl_rl_ppo_learns_on_a_protocol_env():
    """rsl_rl's own PPO runner trains through to_rsl_rl on the VecTask-style PointReach."""
    from rsl_rl.runners import OnPolicyRunner

    from policydistill.suites.batched.rsl_rl import to_rsl_rl

    def mean_reward(policy) -> float:
        env = to_rsl_rl(make_batched(load_suite("default_vectask"), [0] * 32), seed=123)
        obs, total = env.get_observations(), 0.0
        with torch.inference_mode():
            for _ in range(100):
                obs, reward, _, _ = env.step(policy(obs))
                total += reward.mean().item()
        return total / 100

    torch.manual_seed(0)
    groups = ["policy", "privileged"]
    cfg = {"num_steps_per_env": 24, "save_interval": 1000, "obs_groups": {"actor": groups, "critic": groups},
           "algorithm": {"class_name": "PPO", "learning_rate": 1e-3, "num_learning_epochs": 4, "num_mini_batches": 4},
           "actor": {"class_name": "MLPModel", "hidden_dims": [64, 64],
                     "distribution_cfg": {"class_name": "GaussianDistribution", "init_std": 0.5}},
           "critic": {"class_name": "MLPModel", "hidden_dims": [64, 64]}, "multi_gpu": None}
    runner = OnPolicyRunner(to_rsl_rl(make_batched(load_suite("default_vectask"), [0] * 64), seed=0), cfg,
                            log_dir=None, device="cpu")
    before = mean_reward(runner.get_inference_policy())
    runner.learn(30)
    assert mean_reward(runner.get_inference_policy()) > before + 0.2
