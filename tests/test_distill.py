"""Teacher-student distillation on the default suite with real envs, teachers, shards and training."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import goal_seeker

from policydistill.bundle import load_bundle
from policydistill.cli import main
from policydistill.data.shards import EpisodeStore
from policydistill.distill.collect import collect
from policydistill.distill.dagger import BCConfig, DAggerConfig, OnPolicyConfig
from policydistill.distill.runner import DistillConfig, Runner, distill
from policydistill.eval.metrics import summarise
from policydistill.eval.rollout import run_episodes
from policydistill.files import read_json
from policydistill.models.students import StudentConfig, build_student
from policydistill.policy import CallablePolicy, RandomPolicy
from policydistill.teachers import TeacherBank
from policydistill.types import stack_obs

ZOO = Path(__file__).resolve().parents[1] / "envs" / "zoo" / "default"


METHOD_CONFIGS = {"bc": BCConfig, "dagger": DAggerConfig, "onpolicy": OnPolicyConfig}


def quick(tmp_path: Path, method: str = "dagger", student: StudentConfig | None = None, **kw) -> DistillConfig:
    """A tiny run of the DAgger family: ``kw`` are method keys, or run keys (device, stop_score, ...)."""
    run_keys = {"device", "stop_score", "eval_episodes", "n_envs", "seed"}
    method_kw = {"rounds": 2, "episodes_per_task": 2, "updates_per_round": 50,
                 **({"beta_rounds": 2} if method == "dagger" and kw.get("schedule", "linear") == "linear" else {}),
                 **{k: v for k, v in kw.items() if k not in run_keys}}
    return DistillConfig(teachers="-", out=str(tmp_path / "run"), method=METHOD_CONFIGS[method](**method_kw),
                         student=student or StudentConfig(),
                         **{"eval_episodes": 2, "final_episodes": 0, **{k: v for k, v in kw.items() if k in run_keys}})


def scripted_teachers(suite) -> dict:
    return {n: goal_seeker() for n in suite.task_names}


@pytest.mark.slow
def test_dagger_generalist_learns_every_task_and_beats_random(default_suite, tmp_path):
    cfg = replace(quick(tmp_path, rounds=4, episodes_per_task=4, updates_per_round=400, beta_rounds=3),
                  eval_episodes=5)
    summary = distill(cfg, default_suite, scripted_teachers(default_suite))
    student = load_bundle(tmp_path / "run" / "student", device="cpu")
    env = default_suite.make_env(0)
    for name in default_suite.task_names:
        s = summarise(run_episodes(default_suite, name, student, 5, seed=77))
        r = summarise(run_episodes(default_suite, name, RandomPolicy(env.action_space), 5, seed=77))
        assert s["success_rate"] >= 0.8 and r["success_rate"] == 0.0
        assert s["return_mean"] > r["return_mean"] + s["return_ci95"] + r["return_ci95"]
    last = summary["rounds"][-1]
    assert last["mean_score"] > 0.9 and last["labels_used"] == 4 * 4 * 4 * 100


def test_rounds_follow_the_schedule_and_count_labels(default_suite, tmp_path):
    summary = distill(quick(tmp_path, rounds=3, beta_rounds=2), default_suite, scripted_teachers(default_suite))
    assert [r["beta"] for r in summary["rounds"]] == [1.0, 0.5, 0.0]
    assert [r["labels_used"] for r in summary["rounds"]] == [800, 1600, 2400]
    store = EpisodeStore(tmp_path / "run" / "episodes")
    actors = {m["round"]: m for m in store.episodes()}
    assert set(actors) == {0, 1, 2}
    data = store.load(["actor"], where=lambda m: m["round"] == 0)
    assert not data["actor"].any()  # beta 1: the teacher acted on every step
    data = store.load(["actor"], where=lambda m: m["round"] == 2)
    assert data["actor"].all()  # beta 0: the student acted on every step


def test_updates_per_round_by_default_scale_with_the_round_data(default_suite, tmp_path):
    """Unset, a round takes 10 passes over its training rows at the batch size, between 50 and 500 updates."""
    summary = distill(quick(tmp_path, rounds=3, beta_rounds=2, updates_per_round=None), default_suite,
                      scripted_teachers(default_suite))
    rounds = summary["rounds"]
    assert [r["dataset_steps"] for r in rounds] == [800, 1600, 2400]
    assert [r["updates"] for r in rounds] == [50, 63, 94]  # ceil(10 * rows / 256), at least 50
    assert DAggerConfig().round_updates(100_000) == 500 and DAggerConfig(updates_per_round=7).round_updates(10) == 7


def test_teacher_weights_never_change_and_labels_match_the_teacher(default_suite, tmp_path):
    teachers = {n: load_bundle(ZOO / n, device="cpu") for n in default_suite.task_names}
    before = {n: {k: v.clone() for k, v in t.state_dict().items()} for n, t in teachers.items()}
    distill(quick(tmp_path), default_suite, teachers)
    for n, t in teachers.items():
        assert all(torch.equal(v, t.state_dict()[k]) for k, v in before[n].items())
        assert not t.training and not any(p.requires_grad for p in t.parameters())
    data = EpisodeStore(tmp_path / "run" / "episodes").load()
    obs = {g: data[f"obs/{g}"] for g in ("policy", "privileged", "task")}
    label = TeacherBank([teachers[n] for n in default_suite.task_names]).label(obs)
    np.testing.assert_allclose(data["label_mean"], label.mean, atol=1e-6)
    np.testing.assert_allclose(data["label_std"], label.std, atol=1e-6)
    executed_by_teacher = data["actor"] == 0
    np.testing.assert_array_equal(data["action"][executed_by_teacher], data["label_mean"][executed_by_teacher])


class _GroupSpy:
    """Wraps a student and records which observation groups it is handed."""

    def __init__(self, student):
        self.student, self.groups, self.seen = student, student.groups, set()
        self.observation_space, self.action_space = student.observation_space, student.action_space

    def act(self, obs, deterministic=True):
        self.seen |= set(obs)
        return self.student.act(obs, deterministic)

    def reset(self, env_mask=None):
        self.student.reset(env_mask)


def test_student_without_privileged_never_receives_it(default_suite, tmp_path):
    student = build_student(default_suite, StudentConfig(groups=["policy", "task"]), "cpu")
    assert student.obs_dim == 4 + 4  # policy (4) + task one-hot (4): no privileged input at all
    spy = _GroupSpy(student)
    bank = TeacherBank(list(scripted_teachers(default_suite).values()))
    collect(default_suite, [0, 1], bank, spy, beta=0.0, episodes_per_task=1, n_envs=2, seed=0,
            rng=np.random.default_rng(0))
    run_episodes(default_suite, "south", spy, episodes=1)
    assert spy.seen == {"policy", "task"}


def test_onpolicy_keeps_only_the_last_round_and_the_cap_evicts_oldest(default_suite, tmp_path):
    distill(quick(tmp_path / "on", method="onpolicy", rounds=2), default_suite, scripted_teachers(default_suite))
    store = EpisodeStore(tmp_path / "on" / "run" / "episodes")
    assert {m["round"] for m in store.episodes()} == {1} and store.steps == 800
    distill(quick(tmp_path / "cap", rounds=3, max_steps=1000), default_suite, scripted_teachers(default_suite))
    store = EpisodeStore(tmp_path / "cap" / "run" / "episodes")
    assert {m["round"] for m in store.episodes()} == {2} and store.steps <= 1000


def test_a_schedule_is_chosen_alone_and_its_keys_are_its_own(default_suite, tmp_path):
    summary = distill(quick(tmp_path, rounds=3, schedule="step", switch_round=2), default_suite,
                      scripted_teachers(default_suite))
    assert [r["beta"] for r in summary["rounds"]] == [1.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="schedule 'step' does not read method.beta_rounds"):
        DAggerConfig(schedule="step", beta_rounds=3)


def test_distill_cli_and_bad_input(tmp_path, caplog):
    out = tmp_path / "cli"
    assert main(["distill", "suite=default", f"teachers={ZOO}", f"out={out}", "method.rounds=1",
                 "method.updates_per_round=20", "eval_episodes=1", "method.episodes_per_task=1"]) == 0
    assert read_json(out / "distill.json")["rounds"][0]["labels_used"] == 400
    load_bundle(out / "student", device="cpu").act(stack_obs([
        {"policy": np.zeros(4, np.float32), "task": np.eye(4, dtype=np.float32)[0]}]))
    assert main(["distill", "method=ppo", f"teachers={ZOO}", f"out={tmp_path / 'x'}"]) == 2
    assert "unknown method 'ppo'" in caplog.text
    assert main(["distill", "teachers=conftest:goal_seeker", "method.loss=forward_kl", f"out={tmp_path / 'y'}"]) == 2
    assert "needs a teacher std and a student std" in caplog.text and "['huber', 'mse']" in caplog.text
    assert main(["distill", f"out={tmp_path / 'z'}"]) == 2
    assert "'distill' needs teachers=" in caplog.text
    assert main(["distill", "teachers=conftest:goal_seeker", "method.teacher_noise=0.5", f"out={tmp_path / 'n'}"]) == 2
    assert "teacher_noise needs teachers with a label std" in caplog.text and not (tmp_path / "n").exists()


@pytest.mark.slow
def test_success_filter_keeps_only_successful_teacher_episodes(default_suite, tmp_path):
    idle = CallablePolicy(lambda x: np.zeros((len(x), 2)), groups=("policy",), batched=True)
    teachers = {**scripted_teachers(default_suite), "west": idle}  # never reaches the west goal
    for name, keep in (("filtered", True), ("all", False)):
        distill(quick(tmp_path / name, method="bc", rounds=1, success_filter=keep), default_suite, teachers)
    kept = EpisodeStore(tmp_path / "filtered" / "run" / "episodes").episodes()
    assert {m["task"] for m in kept} == {"north", "east", "south"} and all(m["success"] for m in kept)
    assert "west" in {m["task"] for m in EpisodeStore(tmp_path / "all" / "run" / "episodes").episodes()}


def test_collect_steps_cuts_collected_episodes_only(default_suite, tmp_path):
    summary = distill(quick(tmp_path, rounds=1, collect_steps=30), default_suite, scripted_teachers(default_suite))
    assert summary["rounds"][0]["labels_used"] == 4 * 2 * 30
    data = EpisodeStore(tmp_path / "run" / "episodes").load(["truncated"])
    assert len(data["truncated"]) == 240 and data["truncated"].sum() == 8
    student = load_bundle(tmp_path / "run" / "student", device="cpu")
    assert {e.length for e in run_episodes(default_suite, "north", student, 2)} == {100}  # evaluation: full episodes
    with pytest.raises(ValueError, match="collect_steps must be an int >= 1"):
        quick(tmp_path / "bad", collect_steps=0)


def test_relabel_noise_trains_on_perturbed_copies_labelled_by_the_teacher(default_suite, tmp_path):
    cfg = quick(tmp_path, rounds=1, relabel_noise=0.5, relabel_copies=2)
    runner = Runner(cfg, default_suite, scripted_teachers(default_suite))
    runner.run()
    algo, store = runner.algo, EpisodeStore(tmp_path / "run" / "episodes")
    raw, lengths, task = algo.training_data(store, 0)
    data = algo.student_data(raw, task, 0)
    out, out_lengths, out_task = algo.relabelled(store, data, lengths, task, 0)
    n, policy = len(data["x"]), slice(0, 4)  # x: policy (4) then the task one-hot (4)
    assert out["x"].shape == (3 * n, 8) and np.array_equal(out_task, np.tile(task, 3))
    assert len(out_lengths) == 3 * len(lengths)
    assert np.array_equal(out["x"][:n], data["x"]) and np.array_equal(out["label_mean"][:n], data["label_mean"])
    for copy in (out["x"][n:2 * n], out["x"][2 * n:]):
        noise = copy[:, policy] - data["x"][:, policy]
        assert np.allclose(noise.std(0) / data["x"][:, policy].std(0), 0.5, rtol=0.1)
        assert np.array_equal(copy[:, 4:], data["x"][:, 4:])  # the task id is never perturbed
    privileged = store.load(["obs/privileged"])["obs/privileged"]
    expected = goal_seeker().act({"policy": out["x"][n:2 * n, policy], "privileged": privileged})
    assert np.allclose(out["label_mean"][n:2 * n], expected, atol=1e-5)


def test_relabel_noise_is_refused_where_it_cannot_work(default_suite, tmp_path):
    with pytest.raises(ValueError, match="relabel_noise must be"):
        DAggerConfig(relabel_noise=-0.1)
    cfg = quick(tmp_path, relabel_noise=0.3, student=StudentConfig(kind="gru", groups=["policy", "task"]))
    with pytest.raises(ValueError, match="needs an MLP student"):
        distill(cfg, default_suite, scripted_teachers(default_suite))
    assert not (tmp_path / "run").exists()
