"""SB3 experts as MLP teachers, SB3 zip import, the task-routing bank, load_policy, frozen teachers."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from gymnasium.wrappers import RescaleAction
from stable_baselines3 import A2C, PPO, SAC, TD3
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from policydistill.bundle import load_bundle, save_bundle
from policydistill.eval.rollout import run_episodes
from policydistill.models.mlp import MLPPolicy
from policydistill.policy import CallablePolicy, Policy, Teacher
from policydistill.spaces import check_spaces
from policydistill.teachers import TeacherBank, import_sb3_zip, load_policy, policy_from_sb3
from policydistill.types import ActionLabel

LOW, HIGH = -1.0, 3.0  # asymmetric bounds so that unscaling errors show


def make_env() -> gym.Env:
    one = np.ones(1, dtype=np.float32)
    return RescaleAction(gym.make("Pendulum-v1"), LOW * one, HIGH * one)


OBS_SPACE = spaces.Dict({"policy": make_env().observation_space})
ALGOS = {"ppo": (PPO, {"n_steps": 128, "batch_size": 64, "n_epochs": 2}),
         "sac": (SAC, {"learning_starts": 64, "buffer_size": 1000}),
         "td3": (TD3, {"learning_starts": 64, "buffer_size": 1000})}
NORMALISED = {"ppo": True, "sac": True, "td3": False}


@pytest.fixture(scope="module")
def experts() -> dict[str, tuple[BaseAlgorithm, VecNormalize | None]]:
    """Real PPO/SAC/TD3 trained for 256 steps; PPO and SAC inside VecNormalize."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny networks: threads only contend
    out = {}
    try:
        for name, (cls, kwargs) in ALGOS.items():
            venv = DummyVecEnv([make_env])
            if NORMALISED[name]:
                venv = VecNormalize(venv, norm_obs=True, norm_reward=True, clip_obs=5.0)
            model = cls("MlpPolicy", venv, seed=0, device="cpu", policy_kwargs={"net_arch": [32, 32]},
                        **kwargs)
            model.learn(256)
            out[name] = (model, venv if NORMALISED[name] else None)
    finally:
        torch.set_num_threads(threads)
    return out


def recorded_obs(n: int = 64, seed: int = 0) -> np.ndarray:
    """Pendulum observations from random-action rollouts, plus out-of-range ones: (n + 8, 3) float32."""
    env = make_env()
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    rows = []
    for _ in range(n):
        rows.append(obs)
        obs, *_ = env.step(rng.uniform(LOW, HIGH, size=1).astype(np.float32))
    wild = rng.normal(0.0, 30.0, size=(8, 3))  # beyond VecNormalize's clip
    return np.concatenate([np.asarray(rows), wild]).astype(np.float32)


def sb3_actions(model: BaseAlgorithm, vecnormalize: VecNormalize | None, obs: np.ndarray) -> np.ndarray:
    x = vecnormalize.normalize_obs(obs) if vecnormalize is not None else obs
    return model.predict(x, deterministic=True)[0]


@pytest.mark.parametrize("algo", list(ALGOS))
def test_converted_expert_acts_like_sb3(experts, algo):
    model, vn = experts[algo]
    if vn is not None:  # the statistics must be non-trivial for the test to mean anything
        assert np.abs(vn.obs_rms.mean).max() > 0.1 and np.abs(vn.obs_rms.var - 1.0).max() > 1.0
    policy = policy_from_sb3(model, OBS_SPACE, ["policy"], vecnormalize=vn)
    obs = recorded_obs()
    ours = policy.act({"policy": obs})
    assert ours.dtype == np.float32 and ours.shape == (len(obs), 1)
    np.testing.assert_allclose(ours, sb3_actions(model, vn, obs), atol=1e-5, rtol=0)
    assert np.all(ours >= LOW) and np.all(ours <= HIGH)
    assert policy.normalizer.enabled is (vn is not None)
    assert isinstance(policy, Teacher) and isinstance(policy, Policy)


def test_labels_carry_the_experts_std(experts):
    """PPO: exp(log_std); SAC: its state-dependent std carried through the tanh to the action space (from SB3's
    own distribution parameters); TD3: none."""
    obs = {"policy": recorded_obs(16)}
    model, vn = experts["ppo"]
    ppo = policy_from_sb3(model, OBS_SPACE, ["policy"], vecnormalize=vn)
    label = ppo.label(obs)
    np.testing.assert_array_equal(label.mean, ppo.act(obs))
    expected_std = np.exp(model.policy.log_std.detach().numpy())
    np.testing.assert_allclose(label.std, np.broadcast_to(expected_std, label.mean.shape), rtol=1e-6)
    model, vn = experts["sac"]
    sac = policy_from_sb3(model, OBS_SPACE, ["policy"], vecnormalize=vn)
    label = sac.label(obs)
    with torch.no_grad():
        mean, log_std, _ = model.policy.actor.get_action_dist_params(torch.as_tensor(vn.normalize_obs(obs["policy"])))
    slope = (1.0 - np.tanh(mean.numpy()) ** 2) * (HIGH - LOW) / 2
    np.testing.assert_allclose(label.std, slope * np.exp(log_std.numpy()), rtol=1e-5)
    np.testing.assert_array_equal(label.mean, sac.act(obs))
    assert label.std.std() > 0  # it varies with the state
    model, vn = experts["td3"]
    assert policy_from_sb3(model, OBS_SPACE, ["policy"], vecnormalize=vn).label(obs).std is None


def test_stochastic_ppo_samples_around_the_mean_within_bounds(experts):
    model, vn = experts["ppo"]
    policy = policy_from_sb3(model, OBS_SPACE, ["policy"], vecnormalize=vn)
    obs = {"policy": np.repeat(recorded_obs(1)[:1], 2000, axis=0)}
    torch.manual_seed(0)
    samples = policy.act(obs, deterministic=False)
    assert samples.std() > 0.1 and np.all(samples >= LOW) and np.all(samples <= HIGH)
    mean = policy.act(obs)[0]
    std = float(np.exp(model.policy.log_std.detach().numpy())[0])
    if LOW + 2 * std < mean[0] < HIGH - 2 * std:
        assert abs(np.median(samples) - mean[0]) < 0.1 * std


def saved(model: BaseAlgorithm, vn: VecNormalize | None, folder) -> tuple:
    """``model`` saved as ``folder/model.zip`` and its VecNormalize, if any, as ``folder/vecnormalize.pkl``."""
    model.save(folder / "model.zip")
    if vn is None:
        return folder / "model.zip", None
    vn.save(str(folder / "vecnormalize.pkl"))
    return folder / "model.zip", folder / "vecnormalize.pkl"


@pytest.mark.parametrize("algo", list(ALGOS))
def test_import_sb3_zip_round_trip(experts, algo, tmp_path):
    model, vn = experts[algo]
    _, pkl = saved(model, vn, tmp_path)
    out = import_sb3_zip(tmp_path / "model.zip", tmp_path / "bundle", OBS_SPACE, ["policy"],
                         vecnormalize_path=pkl)
    policy = load_bundle(out, device="cpu")
    obs = recorded_obs(32, seed=1)
    np.testing.assert_allclose(policy.act({"policy": obs}), sb3_actions(model, vn, obs), atol=1e-5, rtol=0)
    direct = policy_from_sb3(model, OBS_SPACE, ["policy"], vecnormalize=vn)
    np.testing.assert_array_equal(policy.act({"policy": obs}), direct.act({"policy": obs}))
    ours, theirs = policy.label({"policy": obs}).std, direct.label({"policy": obs}).std
    assert (ours is None) == (algo == "td3") and (ours is None or np.array_equal(ours, theirs))


@pytest.mark.parametrize("algo", ["sac", "td3"])
def test_sac_and_td3_teachers_keep_their_critic(experts, algo, tmp_path):
    """Q(s, a) of a converted teacher (converted from the model or imported from its zip) is SB3's: the minimum of
    its Q networks on the normalised observation and the action scaled to [-1, 1]; the advantage of the
    teacher's own action is 0. PPO's critic is a state value: none is kept."""
    model, vn = experts[algo]
    _, pkl = saved(model, vn, tmp_path)
    direct = policy_from_sb3(model, OBS_SPACE, ["policy"], vecnormalize=vn)
    imported = load_bundle(import_sb3_zip(tmp_path / "model.zip", tmp_path / "bundle", OBS_SPACE, ["policy"],
                                          vecnormalize_path=pkl), device="cpu")
    obs = recorded_obs(32, seed=2)
    actions = np.random.default_rng(0).uniform(LOW, HIGH, size=(len(obs), 1)).astype(np.float32)
    seen = vn.normalize_obs(obs) if vn is not None else obs
    with torch.no_grad():
        qs = model.critic(torch.as_tensor(seen), torch.as_tensor(model.policy.scale_action(actions)))
    expected = torch.min(torch.cat(qs, dim=1), dim=1).values.numpy()
    for policy in (direct, imported):
        np.testing.assert_allclose(policy.q_value({"policy": obs}, actions), expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(policy.advantage({"policy": obs}, policy.act({"policy": obs})), 0.0, atol=1e-6)
    assert np.ptp(direct.advantage({"policy": obs}, actions)) > 0
    model, vn = experts["ppo"]
    with pytest.raises(ValueError, match="has no critic"):
        policy_from_sb3(model, OBS_SPACE, ["policy"], vecnormalize=vn).q_value({"policy": obs}, actions)


def test_converted_expert_bundle_round_trip_is_exact(experts, tmp_path):
    model, vn = experts["sac"]
    policy = policy_from_sb3(model, OBS_SPACE, ["policy"], vecnormalize=vn)
    loaded = load_bundle(save_bundle(policy, tmp_path / "b", meta={"algo": "sac"}), device="cpu")
    obs = {"policy": recorded_obs(16)}
    np.testing.assert_array_equal(loaded.act(obs), policy.act(obs))
    assert loaded.config() == policy.config()


def test_unsupported_sb3_models_are_refused():
    with pytest.raises(ValueError, match="not a Box"):
        model = PPO("MlpPolicy", "CartPole-v1", device="cpu")
        policy_from_sb3(model, spaces.Dict({"policy": model.observation_space}), ["policy"])
    with pytest.raises(ValueError, match="algorithm A2C"):
        policy_from_sb3(A2C("MlpPolicy", make_env(), device="cpu"), OBS_SPACE, ["policy"])
    with pytest.raises(ValueError, match="gSDE"):
        policy_from_sb3(PPO("MlpPolicy", make_env(), use_sde=True, device="cpu"), OBS_SPACE, ["policy"])
    wide = spaces.Dict({"policy": spaces.Box(-1, 1, (5,), dtype=np.float32)})
    with pytest.raises(ValueError, match="5 dims"):
        policy_from_sb3(SAC("MlpPolicy", make_env(), device="cpu"), wide, ["policy"])


def test_teacher_weights_are_frozen(experts, tmp_path):
    model, vn = experts["ppo"]
    before = {k: v.clone() for k, v in model.policy.state_dict().items()}
    converted = policy_from_sb3(model, OBS_SPACE, ["policy"], vecnormalize=vn)
    save_bundle(converted, tmp_path / "ppo")
    for teacher in (converted, load_bundle(tmp_path / "ppo"), load_policy(str(tmp_path / "ppo"))):
        assert not teacher.training
        assert all(not p.requires_grad for p in teacher.parameters())
        out = teacher(torch.as_tensor(recorded_obs(4)))
        assert not out.requires_grad
        teacher.label({"policy": recorded_obs(4)})
    assert all(torch.equal(v, model.policy.state_dict()[k]) for k, v in before.items())
    trainable = load_bundle(tmp_path / "ppo", frozen=False)
    assert all(p.requires_grad for p in trainable.parameters())


# ---- bank --------------------------------------------------------------------------------------

def constant(k: float, groups=("policy",)) -> CallablePolicy:
    return CallablePolicy(lambda x: np.full(2, k, dtype=np.float32), groups=groups)


def task_obs(tasks: list[int], n_tasks: int = 3, dim: int = 3, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"policy": rng.normal(size=(len(tasks), dim)).astype(np.float32),
            "privileged": rng.normal(size=(len(tasks), 4)).astype(np.float32),
            "task": np.eye(n_tasks, dtype=np.float32)[tasks]}


def test_bank_routes_each_env_to_its_task_teacher():
    bank = TeacherBank([constant(10.0), constant(20.0, ("policy", "privileged")), constant(30.0)])
    assert bank.groups == ("policy", "privileged", "task")
    tasks = [2, 0, 1, 1, 2, 0, 0]
    actions = bank.act(task_obs(tasks))
    np.testing.assert_array_equal(actions, np.repeat(10.0 * (np.array(tasks)[:, None] + 1), 2, axis=1))
    label = bank.label(task_obs(tasks))
    np.testing.assert_array_equal(label.mean, actions)
    assert label.std is None
    np.testing.assert_array_equal(bank.act(task_obs([1, 1])), np.full((2, 2), 20.0))


def test_bank_refuses_a_task_without_teacher():
    bank = TeacherBank([constant(1.0), constant(2.0)])
    with pytest.raises(ValueError, match=r"no teacher for task index \[2\]"):
        bank.act(task_obs([0, 2, 1]))
    with pytest.raises(KeyError, match="task"):
        bank.act({"policy": np.zeros((2, 3), dtype=np.float32)})


class CountingTeacher:
    """Records how many rows each call received (one call per teacher per batch)."""

    def __init__(self, inner: MLPPolicy) -> None:
        self.inner, self.groups, self.calls = inner, inner.groups, []

    def act(self, obs, deterministic=True):
        self.calls.append(len(obs["policy"]))
        return self.inner.act(obs, deterministic)

    def label(self, obs) -> ActionLabel:
        self.calls.append(len(obs["policy"]))
        return self.inner.label(obs)

    def reset(self, env_mask=None) -> None:
        self.inner.reset(env_mask)


def test_bank_labels_match_each_teacher_on_recorded_obs(experts):
    ppo = policy_from_sb3(experts["ppo"][0], OBS_SPACE, ["policy"], vecnormalize=experts["ppo"][1])
    td3 = policy_from_sb3(experts["td3"][0], OBS_SPACE, ["policy"], vecnormalize=None)
    obs = recorded_obs(40)
    rng = np.random.default_rng(3)
    tasks = rng.integers(0, 2, size=len(obs))
    batch = {"policy": obs, "task": np.eye(2, dtype=np.float32)[tasks]}
    counted = [CountingTeacher(ppo), CountingTeacher(td3)]
    bank = TeacherBank(counted)
    label = bank.label(batch)
    for i, teacher in enumerate((ppo, td3)):
        rows = tasks == i
        np.testing.assert_array_equal(label.mean[rows], teacher.label({"policy": obs[rows]}).mean)
        assert counted[i].calls == [rows.sum()]
    assert label.std is None  # TD3 has no std, so the mixed bank gives none
    np.testing.assert_array_equal(bank.act(batch), label.mean)
    both_ppo = TeacherBank([ppo, ppo]).label(batch)  # stacked
    np.testing.assert_allclose(both_ppo.std, ppo.label({"policy": obs}).std, rtol=1e-6)


@pytest.mark.parametrize("algo", list(ALGOS))
def test_frozen_mlp_teachers_of_one_shape_are_stacked_and_label_as_each_alone(experts, algo):
    """PPO (log std, normaliser, clip), SAC (std head, tanh) and TD3 (tanh output, no std): the bank runs them as
    one batched network, and each row's label is its own teacher's, up to float rounding."""
    model, vn = experts[algo]
    first = policy_from_sb3(model, OBS_SPACE, ["policy"], vecnormalize=vn)
    second = policy_from_sb3(model, OBS_SPACE, ["policy"], vecnormalize=vn)
    with torch.no_grad():
        for p in second.parameters():
            p.add_(0.3 * torch.randn_like(p))
        second.normalizer.mean.add_(0.5)
    obs = recorded_obs(40)
    tasks = np.random.default_rng(4).integers(0, 2, size=len(obs))
    batch = {"policy": obs, "task": np.eye(2, dtype=np.float32)[tasks]}
    bank = TeacherBank([first, second])
    assert bank.stacked is not None
    label = bank.label(batch)
    for i, teacher in enumerate((first, second)):
        alone = teacher.label({"policy": obs[tasks == i]})
        np.testing.assert_allclose(label.mean[tasks == i], alone.mean, rtol=0, atol=1e-5)
        assert (label.std is None) == (alone.std is None) == (algo == "td3")
        if alone.std is not None:
            np.testing.assert_allclose(label.std[tasks == i], alone.std, rtol=1e-5, atol=1e-6)
    assert not np.array_equal(label.mean[tasks == 0], second.label({"policy": obs[tasks == 0]}).mean)
    np.testing.assert_array_equal(bank.act(batch), label.mean)
    one_task = {"policy": obs[:5], "task": np.eye(2, dtype=np.float32)[[1] * 5]}  # a teacher without rows
    np.testing.assert_allclose(bank.label(one_task).mean, second.label({"policy": obs[:5]}).mean, atol=1e-5)
    bad = {**batch, "policy": np.where(np.arange(3) == 1, np.nan, obs).astype(np.float32)}
    with pytest.raises(ValueError, match="group 'policy' has a non-finite value"):
        bank.label(bad)


def test_teachers_of_different_shapes_or_trainable_are_not_stacked(experts):
    ppo = policy_from_sb3(experts["ppo"][0], OBS_SPACE, ["policy"], vecnormalize=experts["ppo"][1])
    td3 = policy_from_sb3(experts["td3"][0], OBS_SPACE, ["policy"], vecnormalize=None)
    trainable = policy_from_sb3(experts["ppo"][0], OBS_SPACE, ["policy"], vecnormalize=experts["ppo"][1])
    trainable.requires_grad_(True)
    assert TeacherBank([ppo, td3]).stacked is None
    assert TeacherBank([ppo, trainable]).stacked is None
    assert TeacherBank([ppo]).stacked is None
    assert TeacherBank([ppo, ppo]).stacked is not None


def test_bank_reset_reaches_teachers_rows():
    seen: list = []

    class Stateful(CallablePolicy):
        def reset(self, env_mask=None) -> None:
            seen.append((self.fn(np.zeros(1))[0], None if env_mask is None else env_mask.tolist()))

    bank = TeacherBank([Stateful(lambda x: np.zeros(2)), Stateful(lambda x: np.ones(2))])
    bank.act(task_obs([0, 1, 1, 0], n_tasks=2))
    bank.reset(np.array([False, False, True, True]))
    assert seen == [(0.0, [False, True]), (1.0, [False, True])]
    seen.clear()
    bank.reset(None)
    assert seen == [(0.0, None), (1.0, None)]


# ---- load_policy -------------------------------------------------------------------------------

def scripted(x: np.ndarray) -> np.ndarray:
    return -x[:1]


def make_constant_policy() -> Policy:
    return constant(7.0)


NOT_A_POLICY = 3


def test_load_policy_specs(tmp_path):
    obs = {"policy": np.ones((2, 3), dtype=np.float32)}
    np.testing.assert_array_equal(load_policy("test_teachers:scripted").act(obs), -np.ones((2, 1)))
    made = load_policy("test_teachers:make_constant_policy")
    np.testing.assert_array_equal(made.act(obs), np.full((2, 2), 7.0))
    with pytest.raises(ValueError, match="neither a Policy nor callable"):
        load_policy("test_teachers:NOT_A_POLICY")
    with pytest.raises(ValueError, match="cannot be imported"):
        load_policy("no_such_module_xyz:f")
    with pytest.raises(ValueError, match="neither a bundle directory"):
        load_policy(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="not a policy bundle"):
        load_policy(str(tmp_path))


# ---- spaces ------------------------------------------------------------------------------------

def test_space_mismatch_names_the_group():
    env_obs = spaces.Dict({"policy": spaces.Box(-np.inf, np.inf, (3,)), "privileged": spaces.Box(-1, 1, (8,)),
                           "task": spaces.Box(0, 1, (2,))})
    act = spaces.Box(-1.0, 1.0, (2,), dtype=np.float32)
    check_spaces(spaces.Dict({"policy": spaces.Box(-1, 1, (3,))}), act, env_obs, act, "ok")  # subset is fine
    with pytest.raises(ValueError, match=r"X: observation group 'privileged' differs.*\(6,\).*\(8,\)"):
        check_spaces(spaces.Dict({"privileged": spaces.Box(-1, 1, (6,))}), act, env_obs, act, "teacher X")
    with pytest.raises(ValueError, match="reads observation group 'privileged' which the env lacks"):
        check_spaces(spaces.Dict({"privileged": spaces.Box(-1, 1, (6,))}), act,
                     spaces.Dict({"policy": env_obs["policy"]}), act, "t")
    with pytest.raises(ValueError, match="action space differs"):
        check_spaces(spaces.Dict({"policy": spaces.Box(-1, 1, (3,))}), spaces.Box(-2.0, 2.0, (2,)), env_obs,
                     act, "t")


def test_mismatched_teacher_is_refused_before_any_rollout(default_suite):
    env = default_suite.make_env(0)
    dim = env.observation_space["privileged"].shape[0] + 1
    wrong = spaces.Dict({"privileged": spaces.Box(-np.inf, np.inf, (dim,), dtype=np.float32)})
    teacher = MLPPolicy(["privileged"], wrong, env.action_space, hidden=[8]).frozen()
    with pytest.raises(ValueError, match="observation group 'privileged' differs"):
        run_episodes(default_suite, 0, teacher, episodes=1)
