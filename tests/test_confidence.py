"""Confidence-weighted distillation: a teacher's state-dependent std or its critic becomes per-step loss weights."""

import logging

import numpy as np
import pytest
import torch
from conftest import goal_seeker
from gymnasium import spaces

from policydistill.bundle import save_bundle
from policydistill.cli import main
from policydistill.data.shards import EpisodeStore
from policydistill.distill.algorithm import Context
from policydistill.distill.confidence import advantage_weights, precision_weights
from policydistill.distill.dagger import DAgger, DAggerConfig
from policydistill.distill.runner import DistillConfig, distill
from policydistill.models.mlp import MLPPolicy
from policydistill.models.students import StudentConfig
from policydistill.teachers import policies_for_suite
from policydistill.teachers.ensemble import EnsembleTeacher
from policydistill.teachers.load import teacher_identities
from policydistill.types import ActionLabel


def sure_and_unsure_teacher(suite) -> MLPPolicy:
    """A SAC-shaped teacher (tanh-squashed, a log-std head, two Q networks): its std depends on the state."""
    torch.manual_seed(0)
    obs_space = suite.spaces[0][0]
    space = spaces.Dict({g: obs_space[g] for g in ("policy", "privileged")})
    teacher = MLPPolicy(("policy", "privileged"), space, suite.spaces[0][1], hidden=(16,), activation="relu",
                        post="tanh_unscale", std_head=True, critic=(16,))
    with torch.no_grad():
        teacher.std_head.weight.mul_(20.0)  # stds spread over orders of magnitude across states
    return teacher.frozen()


def test_precision_weights_average_one_on_labelled_steps_and_are_capped():
    std = np.array([[0.1, 0.1], [1.0, 1.0], [0.5, 0.5], [0.0, 0.0], [2.0, 2.0]], dtype=np.float32)
    labelled = np.array([True, True, True, True, False])
    w = precision_weights(std, labelled, cap=3.0)
    assert w[4] == 0.0 and w[3] == 3.0  # unlabelled: 0; a zero std would take over: capped
    raw = 1.0 / np.maximum(std[:4, 0], 1e-3) ** 2
    np.testing.assert_allclose(w[:3], raw[:3] / raw.mean(), rtol=1e-6)
    assert np.all(precision_weights(np.full((5, 2), 0.3), np.ones(5, bool), 10.0) == 1.0)  # state-independent std


def test_weights_from_the_teachers_std_reach_the_fit_job(default_suite, tmp_path):
    teacher = sure_and_unsure_teacher(default_suite)
    teachers = {n: teacher for n in default_suite.task_names}
    method = DAggerConfig(rounds=1, episodes_per_task=2, updates_per_round=5, confidence="teacher_std",
                          confidence_cap=5.0)
    cfg = DistillConfig(teachers="-", out=str(tmp_path / "run"), eval_episodes=1, final_episodes=0, method=method)
    distill(cfg, default_suite, teachers)
    store = EpisodeStore(tmp_path / "run" / "episodes")
    std = store.load(["label_std"])["label_std"]
    assert std.min() < 0.5 * std.max()  # the labels' stds differ from state to state
    expected = precision_weights(std, np.ones(len(std), bool), 5.0)
    assert expected.max() > 1.5 * expected.min()
    algo = DAgger.build(method, Context(default_suite, teachers, StudentConfig(), torch.device("cpu"), 0, "-"))
    job = algo.fit_job(store, 0)
    batch = job.batches.draw(np.random.default_rng(0), 0, 1)
    drawn = batch["weight"].numpy()
    assert np.isin(np.round(drawn, 5), np.round(expected, 5)).all() and drawn.std() > 0
    plain = DAgger.build(DAggerConfig(rounds=1, episodes_per_task=2, updates_per_round=5),
                         Context(default_suite, teachers, StudentConfig(), torch.device("cpu"), 0, "-"))
    assert "weight" not in plain.fit_job(store, 0).batches.draw(np.random.default_rng(0), 0, 1)


class Slipping:
    """A teacher labelling (and acting) with a random action on every other call's rows, as a noisy demonstrator."""

    def __init__(self, policy: MLPPolicy) -> None:
        self.policy, self.groups, self.critic, self.calls = policy, policy.groups, policy.critic, 0

    def label(self, obs):
        self.calls += 1
        mean = self.policy.act(obs)
        if self.calls % 2:
            mean = np.random.default_rng(self.calls).uniform(-1, 1, size=mean.shape).astype(np.float32)
        return ActionLabel(mean=mean)

    def act(self, obs, deterministic=True):
        return self.label(obs).mean

    def advantage(self, obs, actions):
        return self.policy.advantage(obs, actions)

    def reset(self, env_mask=None):
        """Stateless."""


def test_advantage_weights_favour_labels_the_critic_prefers():
    adv = np.array([0.0, -1.0, -2.0, 3.0, -1.5, 7.0])
    labelled = np.array([True, True, True, True, True, False])
    w = advantage_weights(adv, labelled, cap=3.0)
    assert w[5] == 0.0 and np.all(np.diff(w[[2, 4, 1, 0, 3]]) > 0)  # ordered as the advantages
    raw = np.exp(adv[:5] / adv[:5].std())
    expected = raw / raw.mean()
    assert expected.max() > 3.0 and w[3] == 3.0  # capped
    np.testing.assert_allclose(w[[0, 1, 2, 4]], expected[[0, 1, 2, 4]], rtol=1e-6)
    assert np.all(advantage_weights(np.zeros(4), np.ones(4, bool), 10.0) == 1.0)  # a teacher's own labels: 1


def test_weights_from_the_teachers_critic_reach_the_fit_job(default_suite, tmp_path):
    """Each stored label carries the critic's advantage; the fit job weighs it by advantage_weights."""
    policy = sure_and_unsure_teacher(default_suite)
    teachers = {n: Slipping(policy) for n in default_suite.task_names}
    method = DAggerConfig(rounds=1, episodes_per_task=2, updates_per_round=5, confidence="advantage")
    cfg = DistillConfig(teachers="-", out=str(tmp_path / "run"), eval_episodes=1, final_episodes=0, method=method)
    distill(cfg, default_suite, teachers)
    store = EpisodeStore(tmp_path / "run" / "episodes")
    raw = store.load(["label_advantage", "label_mean", "obs/policy", "obs/privileged"])
    judged = policy.advantage({g: raw[f"obs/{g}"] for g in policy.groups}, raw["label_mean"])
    np.testing.assert_allclose(raw["label_advantage"], judged, rtol=1e-5, atol=1e-6)
    own = np.isclose(raw["label_advantage"], 0.0, atol=1e-6)
    assert own.any() and (~own).any()  # the teacher's own labels and its slips
    expected = advantage_weights(raw["label_advantage"], np.ones(len(own), bool), method.confidence_cap)
    algo = DAgger.build(method, Context(default_suite, teachers, StudentConfig(), torch.device("cpu"), 0, "-"))
    drawn = algo.fit_job(store, 0).batches.draw(np.random.default_rng(0), 0, 1)["weight"].numpy()
    assert np.isin(np.round(drawn, 5), np.round(expected, 5)).all() and drawn.std() > 0


def test_confidence_needs_teachers_with_a_std(tmp_path, caplog):
    caplog.set_level(logging.ERROR)
    base = ["distill", "suite=default", "teachers=conftest:goal_seeker", f"out={tmp_path / 'run'}", "method=dagger"]
    assert main([*base, "method.confidence=teacher_std"]) == 2
    assert "weighs labels by the teachers' std; these teachers are deterministic" in caplog.text
    assert main([*base, "method.confidence=maybe"]) == 2
    assert main([*base, "method.confidence_cap=3"]) == 2
    assert "method.confidence_cap is read only with method.confidence=teacher_std" in caplog.text
    assert main([*base, "method.confidence=advantage"]) == 2
    assert "weighs labels by the teachers' critics as they label: it needs teachers that keep one" in caplog.text
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("post", ["clip", "tanh_unscale"])
def test_label_std_is_the_action_space_std(default_suite, post):
    """Sampled actions spread as the label std says (small stds, where the delta method is exact enough)."""
    teacher = sure_and_unsure_teacher(default_suite)
    teacher.post = post
    with torch.no_grad():
        teacher.std_head.weight.zero_()
        teacher.std_head.bias.fill_(np.log(0.01))
    env = default_suite.make_env(0)
    obs, _ = env.reset(seed=0)
    env.close()
    many = {g: np.repeat(np.asarray(obs[g], np.float32)[None], 20_000, axis=0) for g in teacher.groups}
    label = teacher.label({g: v[:1] for g, v in many.items()})
    torch.manual_seed(1)
    samples = teacher.act(many, deterministic=False)
    np.testing.assert_allclose(samples.std(0), label.std[0], rtol=0.05)
    np.testing.assert_allclose(samples.mean(0), label.mean[0], atol=3 * label.std[0].max())
    assert goal_seeker().label({g: v[:1] for g, v in many.items()}).std is None


def test_an_ensemble_of_teachers_labels_with_its_mean_and_weighs_by_agreement(default_suite, tmp_path):
    """A task folder of bundles is one teacher: the members' mean action, their spread its label std; with
    method.confidence=teacher_std the steps where they agree weigh more."""
    members = []
    for k in range(3):
        torch.manual_seed(k)
        space = spaces.Dict({"policy": default_suite.spaces[0][0]["policy"]})
        members.append(MLPPolicy(("policy",), space, default_suite.spaces[0][1], hidden=(8,)).frozen())
        for task in default_suite.task_names:
            save_bundle(members[-1], tmp_path / "zoo" / task / f"m{k}")
    teachers = policies_for_suite(tmp_path / "zoo", default_suite, device="cpu")
    teacher = teachers["north"]
    assert isinstance(teacher, EnsembleTeacher) and len(teacher.members) == 3
    obs = {"policy": np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)}
    acts = np.stack([m.act(obs) for m in members])
    label = teacher.label(obs)
    np.testing.assert_allclose(label.mean, acts.mean(0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(label.std, acts.std(0), rtol=1e-5, atol=1e-7)
    assert teacher_identities(tmp_path / "zoo", default_suite)["north"].startswith("ensemble bundle sha256:")
    method = DAggerConfig(rounds=1, episodes_per_task=1, updates_per_round=5, confidence="teacher_std")
    cfg = DistillConfig(teachers=str(tmp_path / "zoo"), out=str(tmp_path / "run"), eval_episodes=1,
                        final_episodes=0, method=method)
    distill(cfg, default_suite, teachers)
    stored = EpisodeStore(tmp_path / "run" / "episodes").load(["label_std", "obs/policy", "obs/task"])
    north = stored["obs/task"].argmax(1) == 0
    spread = teacher.label({"policy": stored["obs/policy"][north]}).std
    np.testing.assert_allclose(stored["label_std"][north], spread, rtol=1e-5, atol=1e-6)  # what the weights read
    assert np.ptp(spread) > 0
    save_bundle(members[0], tmp_path / "lonely" / "north" / "only")
    with pytest.raises(ValueError, match="no bundle \\(nor a folder of bundles\\) for tasks"):
        policies_for_suite(tmp_path / "lonely", default_suite, device="cpu")
