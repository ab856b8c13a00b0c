"""Kickstarting on two tasks of the default suite with real envs and the committed PPO experts."""

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import goal_seeker

from policydistill.bundle import load_bundle
from policydistill.config import StudentConfig
from policydistill.distill.dagger import EVAL_SEED, build_student
from policydistill.distill.kickstart import (
    KickstartParams,
    ValueNet,
    _batch,
    _collect,
    _FinalObsSuite,
    gae,
    kd_weight,
    kickstart,
    kickstart_loss,
)
from policydistill.distill.losses import make_loss
from policydistill.eval.metrics import summarise
from policydistill.eval.rollout import run_episodes
from policydistill.policy import RandomPolicy
from policydistill.suite import Suite, suite_from_dict
from policydistill.teachers import TeacherBank

ZOO = Path(__file__).resolve().parents[1] / "envs" / "zoo" / "default"


@pytest.fixture(scope="module")
def two_tasks(default_suite) -> Suite:
    return suite_from_dict({"name": "two", "tasks": [asdict(t) for t in default_suite.tasks[:2]]}, "two")


def zoo_teachers(suite: Suite) -> dict:
    return {n: load_bundle(ZOO / n, device="cpu") for n in suite.task_names}


def quick(**kw) -> KickstartParams:
    return KickstartParams(**{"rounds": 2, "episodes_per_task": 4, "eval_episodes": 5, "device": "cpu", **kw})


@pytest.fixture(scope="module")
def runs(two_tasks, tmp_path_factory) -> dict:
    """Kickstarting and plain PPO (kd_weight_start=0) at the same budget and seed, and the teachers' weights."""
    teachers = zoo_teachers(two_tasks)
    before = {n: {k: v.clone() for k, v in t.state_dict().items()} for n, t in teachers.items()}
    out = tmp_path_factory.mktemp("kickstart")
    return {"teachers": teachers, "before": before, "out": out,
            "kd": kickstart(quick(), two_tasks, teachers, out / "kd"),
            "ppo": kickstart(quick(kd_weight_start=0.0), two_tasks, teachers, out / "ppo")}


def test_kd_weight_follows_each_decay_mode(runs, two_tasks, tmp_path):
    exp = KickstartParams(kd_weight_start=2.0, kd_decay="exponential", kd_decay_rate=0.5)
    assert [kd_weight(exp, r) for r in range(4)] == [2.0, 1.0, 0.5, 0.25]
    lin = KickstartParams(kd_weight_start=1.0, kd_decay="linear", kd_decay_rounds=4)
    assert [kd_weight(lin, r) for r in range(6)] == [1.0, 0.75, 0.5, 0.25, 0.0, 0.0]
    ratio = KickstartParams(kd_weight_start=2.0, kd_decay="return_ratio")
    assert kd_weight(ratio, 0) == 2.0 and kd_weight(ratio, 3, None, 80.0) == 2.0
    assert kd_weight(ratio, 3, 20.0, 80.0) == 1.5 and kd_weight(ratio, 3, 90.0, 80.0) == 0.0
    assert kd_weight(ratio, 3, -40.0, 80.0) == 2.0 and kd_weight(ratio, 3, 10.0, -5.0) == 2.0
    # the runs use these weights, and count labels only while the teacher is consulted
    assert [r["kd_weight"] for r in runs["kd"]["rounds"]] == [1.0, 0.7]
    assert [r["labels_used"] for r in runs["kd"]["rounds"]] == [800, 1600] == [r["env_steps"]
                                                                              for r in runs["kd"]["rounds"]]
    assert [r["labels_used"] for r in runs["ppo"]["rounds"]] == [0, 0]
    summary = kickstart(quick(rounds=3, episodes_per_task=1, eval_episodes=2, kd_decay="return_ratio"), two_tasks,
                        runs["teachers"], tmp_path / "ratio")
    rows, g_teacher = summary["rounds"], summary["teacher_return"]
    assert rows[0]["kd_weight"] == 1.0
    for prev, row in zip(rows, rows[1:], strict=False):
        assert row["kd_weight"] == pytest.approx(float(np.clip(1 - prev["student_return"] / g_teacher, 0, 1)))


def test_teacher_weights_never_change(runs):
    for n, t in runs["teachers"].items():
        assert all(torch.equal(v, t.state_dict()[k]) for k, v in runs["before"][n].items())
        assert not t.training and not any(p.requires_grad for p in t.parameters())


def test_gae_bootstraps_on_truncation_only():
    # episode 1 (steps 0-2) terminates, episode 2 (steps 3-4) is truncated with V(final state) = 2
    rewards, values = np.ones(5), np.full(5, 0.5)
    next_values = np.array([0.5, 0.5, 123.0, 0.5, 2.0])  # a terminated step ignores its next value
    terminated = np.array([False, False, True, False, False])
    episode_end = np.array([False, False, True, False, True])
    adv, ret = gae(rewards, values, next_values, terminated, episode_end, gamma=0.9, lam=0.8)
    np.testing.assert_allclose(adv, [0.95 + 0.72 * 1.31, 0.95 + 0.72 * 0.5, 0.5, 0.95 + 0.72 * 2.3, 2.3], rtol=1e-6)
    np.testing.assert_allclose(ret, adv + 0.5, rtol=1e-6)
    with pytest.raises(ValueError, match="terminated step must end its episode"):
        gae(rewards, values, next_values, ~episode_end, episode_end, 0.9, 0.8)


def _student_and_batch(suite: Suite, weight_labels: bool):
    torch.manual_seed(0)
    params = quick(episodes_per_task=1)
    student = build_student(suite, StudentConfig(learn_std=True), "cpu")
    value = ValueNet(student.obs_dim)
    capture = _FinalObsSuite(suite.name, suite.tasks)
    bank = TeacherBank(list(zoo_teachers(suite).values())) if weight_labels else None
    records = _collect(capture, student, bank, params, seed=3)
    return params, student, value, capture, records, _batch(records, capture, student, value, params, set_stats=True)


def test_final_observation_kept_for_bootstrapping_is_the_real_one(two_tasks):
    _, _, _, capture, records, batch = _student_and_batch(two_tasks, weight_labels=False)
    assert len(batch) == 200 and batch.label_mean is None
    for rec in records:
        assert rec.steps["truncated"][-1] and not rec.steps["terminated"].any()
        env = two_tasks.make_env(rec.task_index)
        obs, _ = env.reset(seed=rec.episode.seed)
        np.testing.assert_array_equal(obs["policy"], rec.steps["obs/policy"][0])
        for a in rec.steps["action"]:
            obs, *_ = env.step(a)
        final = capture.finals[(rec.task_index, rec.episode.seed)]
        assert set(final) == set(obs) and all(np.array_equal(final[g], obs[g]) for g in obs)


@pytest.mark.parametrize("weight", [1.0, 0.0])
def test_every_student_parameter_gets_a_gradient(two_tasks, weight):
    params, student, value, _, _, batch = _student_and_batch(two_tasks, weight_labels=True)
    assert batch.label_mean is not None and batch.label_std is not None
    kd_fn = make_loss("forward_kl", teacher_has_std=True, student_has_std=True)
    loss, stats = kickstart_loss(student, value, batch, weight, kd_fn, params)
    loss.backward()
    assert (stats["kd"] > 0) == (weight > 0)
    for module in (student, value):
        for name, p in module.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_kickstarting_beats_random_and_pure_ppo_early(runs, two_tasks):
    kd, ppo = runs["kd"]["rounds"], runs["ppo"]["rounds"]

    def margin(row: dict) -> float:
        return float(np.mean([t["return_ci95"] for t in row["tasks"].values()]))

    # measured over seeds 0-8: kickstarting >= 70 after two rounds, plain PPO <= 52
    assert kd[1]["student_return"] > ppo[1]["student_return"] + margin(kd[1]) + margin(ppo[1]) + 10
    assert kd[0]["student_return"] > ppo[0]["student_return"]
    env = two_tasks.make_env(0)
    student = load_bundle(runs["out"] / "kd" / "student", device="cpu")
    for name in two_tasks.task_names:
        s = summarise(run_episodes(two_tasks, name, student, 5, seed=EVAL_SEED))
        assert s["return_mean"] == pytest.approx(kd[-1]["tasks"][name]["return_mean"])  # the bundle is the student
        r = summarise(run_episodes(two_tasks, name, RandomPolicy(env.action_space), 5, seed=EVAL_SEED))
        assert s["return_mean"] > r["return_mean"] + s["return_ci95"] + r["return_ci95"]
    assert kd[-1]["mean_score"] > 0.6
    assert set(kd[-1]["losses"]) >= {"policy", "value", "kd", "entropy", "approx_kl", "clip_fraction"}


def test_bad_params_give_clear_errors(two_tasks, tmp_path):
    with pytest.raises(ValueError, match=r"rounds must be an int >= 1, got 0"):
        KickstartParams(rounds=0)
    with pytest.raises(ValueError, match=r"unknown kd_decay 'cosine'; expected one of \['exponential'"):
        KickstartParams(kd_decay="cosine")
    with pytest.raises(ValueError, match=r"unknown kd_loss 'l1'; losses: \["):
        KickstartParams(kd_loss="l1")
    with pytest.raises(ValueError, match=r"gamma must be a number in \[0.0, 1.0\], got 1.5"):
        KickstartParams(gamma=1.5)
    with pytest.raises(ValueError, match=r"clip_range must be a number in \(0.0, 1.0\]"):
        KickstartParams(clip_range=0)
    with pytest.raises(ValueError, match="value_hidden must be a non-empty list"):
        KickstartParams(value_hidden=())
    with pytest.raises(ValueError, match=r"no teacher for tasks \['east'\]"):
        kickstart(quick(), two_tasks, {"north": goal_seeker()}, tmp_path / "a")
    scripted = {n: goal_seeker() for n in two_tasks.task_names}
    with pytest.raises(ValueError, match=r"needs a teacher std.*\['huber', 'mse'\]"):
        kickstart(quick(), two_tasks, scripted, tmp_path / "b")
    with pytest.raises(ValueError, match=r"has no params \['beta'\]"):
        kickstart(quick(kd_loss="huber", kd_loss_params={"beta": 1.0}), two_tasks, scripted, tmp_path / "c")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "kickstart.json").write_text("{}")
    with pytest.raises(FileExistsError, match="does not resume"):
        kickstart(quick(), two_tasks, scripted, tmp_path / "d")
