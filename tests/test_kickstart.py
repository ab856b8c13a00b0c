"""Kickstarting (method=kickstart of the distillation loop) on two default-suite tasks with real envs and the
committed PPO experts."""

import shutil
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import goal_seeker

from policydistill.bundle import load_bundle
from policydistill.cli import main
from policydistill.config import DistillConfig, KickstartConfig, StudentConfig
from policydistill.data.shards import EpisodeStore
from policydistill.distill.collect import task_spaces
from policydistill.distill.dagger import EVAL_SEED, build_student
from policydistill.distill.kickstart import (
    ValueNet,
    _batch,
    _collect,
    _FinalObsSuite,
    check_params,
    gae,
    kd_weight,
    kickstart_loss,
)
from policydistill.distill.loop import METHOD_STATE, distill
from policydistill.distill.losses import make_loss
from policydistill.eval.metrics import summarise
from policydistill.eval.rollout import run_episodes
from policydistill.io import read_json
from policydistill.models.generalist import SpaceLayout
from policydistill.policy import RandomPolicy
from policydistill.suite import Suite, suite_from_dict
from policydistill.teachers import TeacherBank

ZOO = Path(__file__).resolve().parents[1] / "envs" / "zoo" / "default"


@pytest.fixture(scope="module")
def two_tasks(default_suite) -> Suite:
    return suite_from_dict({"name": "two", "tasks": [asdict(t) for t in default_suite.tasks[:2]]}, "two")


def zoo_teachers(suite: Suite) -> dict:
    return {n: load_bundle(ZOO / n, device="cpu") for n in suite.task_names}


def quick(out: Path, **kickstart) -> DistillConfig:
    return DistillConfig(method="kickstart", teachers="-", out=str(out), rounds=2, episodes_per_task=4, eval_episodes=5,
                         device="cpu", loss="forward_kl", kickstart=KickstartConfig(**kickstart))


@pytest.fixture(scope="module")
def runs(two_tasks, tmp_path_factory) -> dict:
    """Kickstarting and plain PPO (kd_weight_start=0) at the same budget and seed, and the teachers' weights."""
    teachers = zoo_teachers(two_tasks)
    before = {n: {k: v.clone() for k, v in t.state_dict().items()} for n, t in teachers.items()}
    out = tmp_path_factory.mktemp("kickstart")
    return {"teachers": teachers, "before": before, "out": out,
            "kd": distill(quick(out / "kd"), two_tasks, teachers),
            "ppo": distill(quick(out / "ppo", kd_weight_start=0.0), two_tasks, teachers)}


def test_kd_weight_follows_each_decay_mode(runs, two_tasks, tmp_path):
    exp = KickstartConfig(kd_weight_start=2.0, kd_decay="exponential", kd_decay_rate=0.5)
    assert [kd_weight(exp, r) for r in range(4)] == [2.0, 1.0, 0.5, 0.25]
    lin = KickstartConfig(kd_weight_start=1.0, kd_decay="linear", kd_decay_rounds=4)
    assert [kd_weight(lin, r) for r in range(6)] == [1.0, 0.75, 0.5, 0.25, 0.0, 0.0]
    ratio = KickstartConfig(kd_weight_start=2.0, kd_decay="return_ratio")
    assert kd_weight(ratio, 0) == 2.0 and kd_weight(ratio, 3, None, 80.0) == 2.0
    assert kd_weight(ratio, 3, 20.0, 80.0) == 1.5 and kd_weight(ratio, 3, 90.0, 80.0) == 0.0
    assert kd_weight(ratio, 3, -40.0, 80.0) == 2.0 and kd_weight(ratio, 3, 10.0, -5.0) == 2.0
    # the runs use these weights, and count labels only while the teacher is consulted
    assert [r["kd_weight"] for r in runs["kd"]["rounds"]] == [1.0, 0.7]
    assert [r["labels_used"] for r in runs["kd"]["rounds"]] == [800, 1600] == [r["env_steps"]
                                                                              for r in runs["kd"]["rounds"]]
    assert [r["labels_used"] for r in runs["ppo"]["rounds"]] == [0, 0]
    summary = distill(replace(quick(tmp_path / "ratio", kd_decay="return_ratio"), rounds=3, episodes_per_task=1,
                              eval_episodes=2), two_tasks, runs["teachers"])
    rows, g_teacher = summary["rounds"], summary["teacher_return"]
    assert rows[0]["kd_weight"] == 1.0
    for prev, row in zip(rows, rows[1:], strict=False):
        assert row["kd_weight"] == pytest.approx(float(np.clip(1 - prev["student_return"] / g_teacher, 0, 1)))


def test_teacher_weights_never_change(runs):
    for n, t in runs["teachers"].items():
        assert all(torch.equal(v, t.state_dict()[k]) for k, v in runs["before"][n].items())
        assert not t.training and not any(p.requires_grad for p in t.parameters())


def test_outputs_match_the_other_methods_and_a_rerun_resumes(runs, two_tasks, tmp_path):
    out = tmp_path / "kd"
    shutil.copytree(runs["out"] / "kd", out)
    assert (out / "tb").is_dir() and any((out / "tb").iterdir()) and (out / METHOD_STATE).is_file()
    store = EpisodeStore(out / "episodes")
    assert {m["round"] for m in store.episodes()} == {1}  # the last round's rollouts only
    data = store.load(["actor", "label_mean", "label_std"])
    assert data["actor"].all() and data["label_std"].shape == data["label_mean"].shape
    assert read_json(out / "distill.json")["rounds"] == runs["kd"]["rounds"]
    resumed = distill(replace(quick(out), rounds=3), two_tasks, runs["teachers"])
    assert resumed["rounds"][:2] == runs["kd"]["rounds"] and len(resumed["rounds"]) == 3
    assert resumed["rounds"][2]["env_steps"] == 3 * 800 and resumed["rounds"][2]["kd_weight"] == pytest.approx(0.49)


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


def _student_and_batch(suite: Suite):
    torch.manual_seed(0)
    params = KickstartConfig()
    student = build_student(suite, StudentConfig(learn_std=True), "cpu")
    value = ValueNet(student.obs_dim)
    capture = _FinalObsSuite(suite.name, suite.tasks)
    bank = TeacherBank(list(zoo_teachers(suite).values()))
    records = _collect(capture, student, bank, n_envs=8, episodes_per_task=1, seed=3)
    layout = SpaceLayout.from_spaces(*zip(*task_spaces(suite), strict=True))
    return params, student, value, capture, records, _batch(records, capture.finals, student, value, params, layout,
                                                            set_stats=True)


def test_final_observation_kept_for_bootstrapping_is_the_real_one(two_tasks):
    _, _, _, capture, records, batch = _student_and_batch(two_tasks)
    assert len(batch) == 200 and batch.label_std is not None and batch.mask is None
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
    params, student, value, _, _, batch = _student_and_batch(two_tasks)
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


def test_bad_params_give_clear_errors(two_tasks, tmp_path, caplog):
    with pytest.raises(ValueError, match=r"kickstart.epochs must be an int >= 1, got 0"):
        check_params(KickstartConfig(epochs=0))
    with pytest.raises(ValueError, match=r"unknown kickstart.kd_decay 'cosine'; expected one of \['exponential'"):
        check_params(KickstartConfig(kd_decay="cosine"))
    with pytest.raises(ValueError, match=r"gamma must be a number in \[0.0, 1.0\], got 1.5"):
        check_params(KickstartConfig(gamma=1.5))
    with pytest.raises(ValueError, match=r"clip_range must be a number in \(0.0, 1.0\]"):
        check_params(KickstartConfig(clip_range=0))
    with pytest.raises(ValueError, match="value_hidden must be a non-empty list"):
        check_params(KickstartConfig(value_hidden=[]))
    with pytest.raises(ValueError, match=r"no teacher for tasks \['east'\]"):
        distill(quick(tmp_path / "a"), two_tasks, {"north": goal_seeker()})
    scripted = {n: goal_seeker() for n in two_tasks.task_names}
    with pytest.raises(ValueError, match=r"needs a teacher std.*\['huber', 'mse'\]"):
        distill(quick(tmp_path / "b"), two_tasks, scripted)
    with pytest.raises(ValueError, match=r"has no params \['beta'\]"):
        distill(replace(quick(tmp_path / "c"), loss="huber", loss_params={"beta": 1.0}), two_tasks, scripted)
    assert main(["distill", "method=kickstart", f"teachers={ZOO}", f"out={tmp_path / 'd'}", "kickstart.gamma=2"]) == 2
    assert "kickstart.gamma must be a number in [0.0, 1.0], got 2" in caplog.text
    assert main(["distill", "method=kickstart", f"teachers={ZOO}", f"out={tmp_path / 'e'}", "kickstart.bogus=1"]) == 2
    assert "unknown config key 'kickstart.bogus'" in caplog.text and "kickstart.kd_decay" in caplog.text
