"""Kickstarting (``method=kickstart``): stable-baselines3's PPO plus the distillation term, on two default-suite
tasks with real envs and the committed PPO experts."""

from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from policydistill.bundle import load_bundle
from policydistill.cli import ConfigError, compose_config
from policydistill.distill.kickstart import Kickstart, KickstartConfig, kd_weight
from policydistill.distill.runner import DistillConfig, distill
from policydistill.eval.metrics import summarise
from policydistill.eval.rollout import run_episodes
from policydistill.models.students import StudentConfig
from policydistill.policy import RandomPolicy
from policydistill.suites import Suite, suite_from_dict

ZOO = Path(__file__).resolve().parents[1] / "envs" / "zoo" / "default"


@pytest.fixture(scope="module")
def two_tasks(default_suite) -> Suite:
    return suite_from_dict({"name": "two", "tasks": [asdict(t) for t in default_suite.tasks[:2]]}, "two")


def zoo_teachers(suite: Suite) -> dict:
    return {n: load_bundle(ZOO / n, device="cpu") for n in suite.task_names}


def quick(out: Path, rounds: int = 2, **method) -> DistillConfig:
    """200 steps in each of 4 envs (two per task) per round: 800 env steps, 10 epochs of 16 minibatches."""
    return DistillConfig(teachers=str(ZOO), out=str(out), eval_episodes=5, final_episodes=0, device="cpu",
                         method=KickstartConfig(**{"rounds": rounds, "n_envs": 4, "batch_size": 50, **method}))


@pytest.fixture(scope="module")
def runs(two_tasks, tmp_path_factory) -> dict:
    """Kickstarting and plain PPO (kd_weight_start=0) at the same budget and seed, and the teachers' weights."""
    teachers = zoo_teachers(two_tasks)
    before = {n: {k: v.clone() for k, v in t.state_dict().items()} for n, t in teachers.items()}
    out = tmp_path_factory.mktemp("kickstart")
    return {"teachers": teachers, "before": before, "out": out,
            "kd": distill(quick(out / "kd"), two_tasks, teachers),
            "ppo": distill(quick(out / "ppo", kd_weight_start=0.0), two_tasks, teachers)}


def test_kd_weight_follows_each_decay_mode(runs):
    exp = KickstartConfig(kd_weight_start=2.0, kd_decay="exponential", kd_decay_rate=0.5)
    assert [kd_weight(exp, r) for r in range(4)] == [2.0, 1.0, 0.5, 0.25]
    lin = KickstartConfig(kd_weight_start=1.0, kd_decay="linear", kd_decay_rounds=4)
    assert [kd_weight(lin, r) for r in range(6)] == [1.0, 0.75, 0.5, 0.25, 0.0, 0.0]
    ratio = KickstartConfig(kd_weight_start=2.0, kd_decay="return_ratio")
    assert kd_weight(ratio, 0) == 2.0 and kd_weight(ratio, 3, None, 80.0) == 2.0
    assert kd_weight(ratio, 3, 20.0, 80.0) == 1.5 and kd_weight(ratio, 3, 90.0, 80.0) == 0.0
    # the runs use these weights, and count labels only while the teacher is consulted
    assert [r["info"]["kd_weight"] for r in runs["kd"]["rounds"]] == [1.0, 0.7]
    assert [r["labels_used"] for r in runs["kd"]["rounds"]] == [800, 1600] == [r["env_steps"]
                                                                              for r in runs["kd"]["rounds"]]
    assert [r["labels_used"] for r in runs["ppo"]["rounds"]] == [0, 0]


def test_teacher_weights_never_change(runs):
    for n, t in runs["teachers"].items():
        assert all(torch.equal(v, t.state_dict()[k]) for k, v in runs["before"][n].items())
        assert not t.training and not any(p.requires_grad for p in t.parameters())


def test_kickstarting_beats_random_and_pure_ppo_early(runs, two_tasks):
    kd, ppo = runs["kd"]["rounds"], runs["ppo"]["rounds"]

    def margin(row: dict) -> float:
        return float(np.mean([t["return_ci95"] for t in row["tasks"].values()]))

    assert kd[1]["student_return"] > ppo[1]["student_return"] + margin(kd[1]) + margin(ppo[1]) + 10
    env = two_tasks.make_env(0)
    student = load_bundle(runs["out"] / "kd" / "student", device="cpu")
    for name in two_tasks.task_names:
        s = summarise(run_episodes(two_tasks, name, student, 5, seed=5000))
        assert s["return_mean"] == pytest.approx(kd[-1]["tasks"][name]["return_mean"])  # the bundle is the student
        r = summarise(run_episodes(two_tasks, name, RandomPolicy(env.action_space), 5, seed=5000))
        assert s["return_mean"] > r["return_mean"] + s["return_ci95"] + r["return_ci95"]
    assert kd[-1]["mean_score"] > 0.6
    assert set(kd[-1]["losses"]) >= {"policy", "value", "kd", "entropy", "approx_kl", "clip_fraction"}
    assert runs["kd"]["rounds"][0]["losses"]["kd"] > 0 == runs["ppo"]["rounds"][0]["losses"]["kd"]


def test_the_distillation_term_reaches_the_gradient_sb3_clips_and_applies(two_tasks):
    """SB3's PPO update zeroes the gradient, then back-propagates its loss: the optimiser's zero_grad puts
    the weighted distillation term's gradient there first, so the step follows ppo + w * kd."""
    from policydistill.distill.algorithm import Context

    cfg = KickstartConfig(n_envs=2, n_steps=8, batch_size=16)
    algo = Kickstart(cfg, Context(two_tasks, zoo_teachers(two_tasks), StudentConfig(), torch.device("cpu"), 0))
    policy = algo.model.policy
    obs = torch.as_tensor(algo.venv.reset())
    actions = torch.zeros(len(obs), 2)
    policy.kd_weight = 0.5
    policy.set_training_mode(True)
    policy.evaluate_actions(obs, actions)
    w, a = algo.student.obs_dim, algo.student.act_dim
    kd = policy.kd_fn(algo.student.raw(obs[:, :w]), obs[:, w:w + a], student_log_std=algo.student.log_std,
                      teacher_std=obs[:, w + a:])
    want = torch.autograd.grad(0.5 * kd, algo.student.head.weight)[0]
    policy.optimizer.zero_grad()
    assert torch.allclose(algo.student.head.weight.grad, want) and want.abs().sum() > 0
    assert policy.optimizer.pending is None
    algo.close()


def test_a_rerun_resumes_with_the_critic_and_optimiser(runs, two_tasks, tmp_path):
    import shutil

    out = tmp_path / "kd"
    shutil.copytree(runs["out"] / "kd", out)
    resumed = distill(replace(quick(out, rounds=3), resume="extend"), two_tasks, runs["teachers"])
    assert resumed["rounds"][:2] == runs["kd"]["rounds"] and len(resumed["rounds"]) == 3
    assert resumed["rounds"][2]["env_steps"] == 3 * 800 and resumed["rounds"][2]["info"]["kd_weight"] == \
        pytest.approx(0.49)


def test_bad_settings_give_clear_errors(default_suite, tmp_path):
    with pytest.raises(ValueError, match=r"method.n_epochs must be an int >= 1, got 0"):
        KickstartConfig(n_epochs=0)
    with pytest.raises(ValueError, match=r"unknown method.kd_decay 'cosine'; expected one of \['exponential'"):
        KickstartConfig(kd_decay="cosine")
    with pytest.raises(ValueError, match=r"method.gamma must be a finite number in \[0.0, 1.0\], got 1.5"):
        KickstartConfig(gamma=1.5)
    with pytest.raises(ValueError, match="value_hidden must be a non-empty list"):
        KickstartConfig(value_hidden=[])
    with pytest.raises(ConfigError, match="kickstart trains MLP students|method 'kickstart' does not read"):
        compose_config("distill", ["method=kickstart", "teachers=x", "collector=ray"])
    with pytest.raises(ValueError, match="kickstart trains MLP students"):
        distill(DistillConfig(teachers="-", out=str(tmp_path / "g"), method=KickstartConfig(),
                              student=StudentConfig(kind="gru")), default_suite,
                zoo_teachers(default_suite))
    assert not (tmp_path / "g").exists()
