"""Students without the privileged group: it never reaches them; history students collect and learn as
they deploy; the predictability diagnostic; the student kinds on the command line."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import goal_seeker
from policydistill_envs.point_reach import TARGETS
from test_distill import quick

from policydistill.bundle import load_bundle
from policydistill.cli import main
from policydistill.data.shards import EpisodeStore
from policydistill.distill.algorithm import Context
from policydistill.distill.collect import STUDENT, collect
from policydistill.distill.dagger import DAgger
from policydistill.distill.fit import fit
from policydistill.distill.predictability import predictability_of
from policydistill.distill.runner import distill
from policydistill.eval.metrics import summarise
from policydistill.eval.rollout import run_episodes
from policydistill.files import read_json
from policydistill.models.students import StudentConfig, build_student
from policydistill.policy import CallablePolicy, RandomPolicy
from policydistill.runtime import export_policy
from policydistill.suites import Suite, TaskSpec, load_suite
from policydistill.teachers import TeacherBank

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::UserWarning",
                                        "ignore:`torch.jit.load` is deprecated:DeprecationWarning")


def student_config(kind: str, **keys) -> StudentConfig:
    """A student of ``kind`` with those of ``keys`` its kind reads."""
    return StudentConfig(kind=kind, **{k: v for k, v in keys.items() if k in StudentConfig(kind=kind).reads()})


def blind_teachers(suite: Suite) -> dict[str, CallablePolicy]:
    """Per task, a PD controller to the task's goal that reads only ``policy`` (the goal is baked in)."""
    def to(goal):
        return lambda x: np.clip(8.0 * (np.asarray(goal) - x[:, :2]) - x[:, 2:4], -1, 1)
    return {n: CallablePolicy(to(TARGETS[n]), groups=("policy",), batched=True) for n in suite.task_names}


def noisy_suite(suite: Suite) -> Suite:
    """The same tasks, with the ``privileged`` group replaced by noise."""
    return Suite("default_noisy", tuple(TaskSpec(name=t.name, env="privileged_noise:make_env", kwargs=t.kwargs)
                                        for t in suite.tasks))


@pytest.mark.parametrize("kind", ["mlp", "history_mlp", "gru"])
def test_a_student_without_privileged_never_receives_it(kind, default_suite, tmp_path):
    """Same run on the real suite and on one whose privileged group is noise: the privileged values are in
    the stored episodes, yet the student's collected actions, training, evaluation and export are identical."""
    runs = {}
    for name, suite in (("real", default_suite), ("noise", noisy_suite(default_suite))):
        cfg = quick(tmp_path / name, rounds=2, beta_rounds=1, device="cpu", updates_per_round=40,
                    student=student_config(kind, groups=["policy", "task"], hidden=[32], history=4, rnn_hidden=16,
                                           tbptt=8, check_predictable=False))
        summary = distill(cfg, suite, blind_teachers(suite))
        store = EpisodeStore(tmp_path / name / "run" / "episodes")
        data = store.load(["obs/policy", "obs/privileged", "action", "actor"])
        student = load_bundle(tmp_path / name / "run" / "student", device="cpu")
        path = export_policy(student, "torchscript", tmp_path / name / "student.pt")
        runs[name] = (summary, data, student, json.loads(Path(f"{path}.json").read_text()))
    (s_real, d_real, p_real, x_real), (s_noise, d_noise, p_noise, x_noise) = runs["real"], runs["noise"]
    assert np.abs(d_real["obs/privileged"] - d_noise["obs/privileged"]).min() > 0  # the groups did differ
    assert (d_real["actor"] == STUDENT).sum() > 100  # and the student acted in collection
    for k in ("obs/policy", "action", "actor"):
        np.testing.assert_array_equal(d_real[k], d_noise[k])
    assert [r["student_return"] for r in s_real["rounds"]] == [r["student_return"] for r in s_noise["rounds"]]
    for (k, a), b in zip(p_real.state_dict().items(), p_noise.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert p_real.groups == ("policy", "task")
    for info in (x_real, x_noise):
        assert [g["name"] for g in info["groups"]] == ["policy", "task"] and info["obs_dim"] == 4 + 4


def test_a_stateful_student_observes_every_step_it_would_at_deployment(default_suite):
    """Collected with beta 0.7, each episode's student-chosen actions are those the student takes when it
    replays that episode alone from its reset: it saw every step, and only its own env's."""
    cfg = StudentConfig(kind="gru", groups=["policy", "task"], hidden=[32], rnn_hidden=16)
    torch.manual_seed(0)
    student = build_student(default_suite, cfg, "cpu")
    x = np.random.default_rng(0).normal(size=(100, 8)).astype(np.float32)
    student.normalizer.set_stats(x.mean(0), x.var(0))
    bank = TeacherBank([goal_seeker() for _ in default_suite.tasks])
    records = collect(default_suite, [0, 1, 2, 3], bank, student, 0.7, 2, 3, seed=5, rng=np.random.default_rng(0))
    assert len(records) == 8
    for rec in records:
        student.reset(None)
        replay = np.concatenate([student.act({g: rec.steps[f"obs/{g}"][t:t + 1] for g in ("policy", "task")})
                                 for t in range(rec.episode.length)])
        mine = rec.steps["actor"] == STUDENT
        assert mine.any() and not mine.all()
        np.testing.assert_allclose(rec.steps["action"][mine], replay[mine], atol=1e-6)


def test_predictability_warns_when_the_groups_cannot_explain_the_teacher(default_suite, tmp_path, caplog):
    """The goal lives in 'privileged' (and follows from 'task'): without the task id the teacher's actions are
    unpredictable, and the run says so; with it they are, and it does not."""
    teachers = {n: goal_seeker() for n in default_suite.task_names}
    caplog.set_level(logging.INFO, logger="policydistill.distill.predictability")
    results = {}
    for groups in (["policy"], ["policy", "task"]):
        out = tmp_path / "_".join(groups)
        cfg = quick(out, rounds=1, episodes_per_task=5, updates_per_round=300, device="cpu",
                    student=StudentConfig(groups=groups, hidden=[64, 64]))
        caplog.clear()
        distill(cfg, default_suite, teachers)
        results["_".join(groups)] = (predictability_of(read_json(out / "run" / "distill.json")), caplog.text)
    blind, blind_log = results["policy"]
    told, told_log = results["policy_task"]
    assert blind["warning"] and blind["ratio"] > 5 and "hard to predict" in blind_log and "student=" in blind_log
    assert not told["warning"] and told["ratio"] < 2 and "hard to predict" not in told_log
    assert blind["held_out_episodes"] == 4 and blind["train_episodes"] == 16


def test_no_predictability_diagnostic_when_the_teachers_read_nothing_the_student_lacks(default_suite, tmp_path):
    """A teacher reading ``policy`` and ``task`` only labels a function of a ``[policy, task]`` student's inputs:
    the diagnostic (seconds of training) is not run; the same student of the goal seeker, which reads
    ``privileged``, gets it."""
    def toward_origin(x: np.ndarray) -> np.ndarray:
        return np.clip(-x[:, 0:2], -1, 1)

    teachers = {"plain": {n: CallablePolicy(toward_origin, groups=("policy", "task"), batched=True)
                          for n in default_suite.task_names},
                "privileged": {n: goal_seeker() for n in default_suite.task_names}}
    for name, bank in teachers.items():
        cfg = quick(tmp_path / name, rounds=1, episodes_per_task=3, updates_per_round=5, device="cpu",
                    student=StudentConfig(groups=["policy", "task"], hidden=[16]))
        distill(cfg, default_suite, bank)
        info = read_json(tmp_path / name / "run" / "distill.json")["rounds"][0]["info"]
        assert ("predictability" in info) == (name == "privileged"), name


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["gru", "tcn"])
def test_history_students_learn_the_default_suite(kind, default_suite, tmp_path):
    cfg = quick(tmp_path, rounds=4, episodes_per_task=4, updates_per_round=300, eval_episodes=5, device="cpu",
                beta_rounds=3, student=student_config(kind, groups=["policy", "task"], hidden=[64], history=8,
                                                      rnn_hidden=64, tbptt=16, check_predictable=False))
    summary = distill(cfg, default_suite, {n: goal_seeker() for n in default_suite.task_names})
    student = load_bundle(tmp_path / "run" / "student", device="cpu")
    env = default_suite.make_env(0)
    for name in default_suite.task_names:
        s = summarise(run_episodes(default_suite, name, student, 5, seed=77))
        r = summarise(run_episodes(default_suite, name, RandomPolicy(env.action_space), 5, seed=77))
        assert s["return_mean"] > r["return_mean"] + s["return_ci95"] + r["return_ci95"] + 20
    assert summary["rounds"][-1]["mean_score"] > 0.9


@pytest.mark.slow
def test_latent_student_regresses_the_teachers_latent_and_never_reads_privileged(tmp_path):
    """On the locomotion suite with its zoo teachers: the student's inputs are policy + task only (checked
    on every call into its network), and training brings the latent it acts with (replayed step by step
    from each episode's reset) far closer to the teachers' latent."""
    suite = load_suite("locomotion")
    zoo = ROOT / "envs/zoo/locomotion"
    teachers = {n: load_bundle(zoo / n, device="cpu") for n in suite.task_names}
    cfg = quick(tmp_path, rounds=1, episodes_per_task=2, updates_per_round=300, device="cpu",
                student=StudentConfig(kind="latent", groups=["policy", "task"], hidden=[64], history=8))
    torch.manual_seed(0)
    algo = DAgger(cfg.method, Context(suite, teachers, cfg.student, torch.device("cpu"), 0))
    student = algo.student
    widths = set()
    student.normalizer.register_forward_pre_hook(lambda m, args: widths.add(args[0].shape[-1]))
    records = collect(suite, [0, 1, 2], algo.ctx.bank, None, 1.0, 2, 3, seed=0, rng=np.random.default_rng(0))
    keys = ["obs/policy", "obs/task", "obs/privileged", "label_mean"]
    raw = {k: np.concatenate([r.steps[k] for r in records]) for k in keys}
    lengths = np.array([r.episode.length for r in records])
    task = raw["obs/task"].argmax(1)
    assert algo.regresses_latent(0)
    data = algo.student_data(raw, task, 0)
    assert set(data) >= {"x", "z"} and data["x"].shape[1] == 9 + 3  # targets: the teachers' latent

    def latent_mse() -> float:
        with torch.no_grad():
            x = torch.as_tensor(data["x"])
            feats = []
            for s, n in zip(np.cumsum(lengths) - lengths, lengths, strict=True):
                state = student.init_state(1)
                for t in range(n):
                    f, state = student.encode(x[s + t:s + t + 1], state)
                    feats.append(f)
            return float(((student.latent(torch.cat(feats)) - torch.as_tensor(data["z"])) ** 2).mean())

    student.fit_normalizer(data["x"])
    before = latent_mse()
    fit(algo.job(data, lengths, task), np.random.default_rng(0), progress=False)
    after = latent_mse()
    assert after < 0.5 * before
    assert widths == {9 + 3}
    run_episodes(suite, 0, student, 1)
    assert widths == {9 + 3}


def test_student_kinds_on_the_command_line(tmp_path, caplog):
    assert main(["distill", "suite=default", "teachers=x", "student=transformer"]) == 2
    assert "student" in caplog.text and "gru" in caplog.text and "history_mlp" in caplog.text
    caplog.clear()
    assert main(["distill", "suite=default", f"teachers={ROOT / 'envs/zoo/default'}", f"out={tmp_path}",
                 "student.kind=transformer"]) == 2
    assert "unknown student kind 'transformer'; expected one of ['mlp', 'history_mlp', 'tcn', 'gru', 'latent']" \
        in caplog.text
    caplog.clear()
    assert main(["distill", "suite=default", f"teachers={ROOT / 'envs/zoo/default'}", f"out={tmp_path}",
                 "student=gru", "student.tbptt=0"]) == 2
    assert "student.tbptt must be an int >= 1, got 0" in caplog.text
    caplog.clear()
    assert main(["distill", "suite=default", f"teachers={ROOT / 'envs/zoo/default'}", f"out={tmp_path}",
                 "student=mlp", "student.history=4"]) == 2
    assert "student kind 'mlp' does not read student.history" in caplog.text
    from policydistill.cli import compose_config

    cfg = compose_config("distill", ["teachers=x", "student=gru", "student.groups=[policy,task]", "student.tbptt=4"])
    assert (cfg.student.kind, cfg.student.groups, cfg.student.tbptt) == ("gru", ["policy", "task"], 4)
    assert compose_config("distill", ["teachers=x"]).student == StudentConfig()
    with pytest.raises(ValueError, match="latent regression needs MLPPolicy teachers"):
        build_student(load_suite("default"), replace(StudentConfig(), kind="latent"), "cpu",
                      list(blind_teachers(load_suite("default")).values()))
