"""Training diffusion policies from expert episodes and distilling them into one-step students."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import goal_seeker

from policydistill.bundle import load_bundle
from policydistill.cli import compose_config, main
from policydistill.data.chunks import chunk_windows
from policydistill.data.shards import EpisodeStore
from policydistill.distill.algorithm import Context
from policydistill.distill.collect import collect
from policydistill.distill.fit import fit
from policydistill.distill.onestep import ALGOS, OneStepAlgorithm, OneStepConfig
from policydistill.distill.runner import distill
from policydistill.eval.metrics import summarise
from policydistill.eval.rollout import run_episodes
from policydistill.files import read_json
from policydistill.models.diffusion import DiffusionPolicy
from policydistill.models.onestep import OneStepPolicy
from policydistill.models.students import StudentConfig
from policydistill.policy import RandomPolicy
from policydistill.suites import load_suite, suite_from_dict
from policydistill.teachers import policies_for_suite
from policydistill.teachers.bank import TeacherBank
from policydistill.teachers.routes import EpisodeMixture, MirroredPolicy, mirror_routes

ROOT = Path(__file__).resolve().parents[1]
TINY = ["method.hidden=[32,32]", "method.horizon=8", "method.n_action_steps=4", "method.sampler_steps=4",
        "method.episodes_per_task=2", "method.train_steps=40", "method.checkpoint_every=20", "eval_episodes=1",
        "method.batch_size=32"]


def tiny_cfg(out: Path, *extra: str):
    return compose_config("distill", ["method=diffusion", "teachers=unused", f"out={out}", *TINY, *extra])


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory, default_suite) -> Path:
    """A tiny diffusion policy trained on the scripted goal seeker's episodes (mirror routes)."""
    out = tmp_path_factory.mktemp("diffusion")
    seeker = goal_seeker()
    distill(tiny_cfg(out, "method.demos=mirror_routes"), default_suite, {n: seeker for n in default_suite.task_names})
    return out


def test_diffusion_run_writes_bundle_episodes_and_summary(teacher_run, default_suite) -> None:
    policy = load_bundle(teacher_run / "student", device="cpu")
    assert isinstance(policy, DiffusionPolicy) and policy.groups == ("policy", "task")
    assert policy.sampler == {"kind": "ddim", "steps": 4} and policy.n_action_steps == 4
    store = EpisodeStore(teacher_run / "episodes")
    assert len(store) == 2 * len(default_suite.tasks) and {m["round"] for m in store.episodes()} == {0}
    summary = read_json(teacher_run / "distill.json")
    assert summary["method"] == "diffusion" and len(summary["rounds"]) == 1
    row = summary["rounds"][0]
    assert row["dataset_steps"] == store.steps and np.isfinite(row["loss"]) and row["updates"] == 40
    assert set(row["tasks"]) == set(default_suite.task_names)
    assert not torch.equal(policy.obs_normalizer.var, torch.ones_like(policy.obs_normalizer.var))


def test_collection_steps_a_chunk_policy_on_every_step_even_where_the_teacher_acts(teacher_run, default_suite):
    """A chunk policy keeps an observation history and an action queue: collection must call it on every step
    (beta 1: the teacher executes every action), or its history and queue go stale."""
    policy = load_bundle(teacher_run / "student", device="cpu")
    bank = TeacherBank([goal_seeker() for _ in default_suite.tasks])
    records = collect(default_suite, [0], bank, policy, 1.0, 1, 1, seed=3, rng=np.random.default_rng(0))
    assert not records[0].steps["actor"].any()  # the teacher acted on every step
    assert policy._history is not None and policy._left.shape == (1,)  # yet the policy observed each step


def test_mirror_routes_mix_two_ways_per_episode(default_suite) -> None:
    env = default_suite.make_env("north")
    maps = env.unwrapped.mirror_maps()
    env.close()
    seeker = goal_seeker()
    obs = {"policy": np.array([[0.1, 0.2, 0.3, -0.1]], np.float32), "privileged": np.array([[0.0, 0.5]], np.float32),
           "task": np.eye(4, dtype=np.float32)[[0]]}
    mirrored = MirroredPolicy(seeker, maps).act(obs)
    flipped = {**obs, "policy": obs["policy"] * np.array([-1, 1, -1, 1], np.float32)}
    assert np.allclose(mirrored, seeker.act(flipped) * np.array([-1, 1], np.float32))
    mix = EpisodeMixture([seeker, MirroredPolicy(seeker, maps)], seed=0)
    batch = {k: np.repeat(v, 64, 0) for k, v in obs.items()}
    first = mix.act(batch)
    choice = mix.choice.copy()
    assert 10 < choice.sum() < 54  # both ways drawn
    assert np.allclose(mix.act(batch), first)  # kept within the episode
    mix.reset(np.arange(64) < 32)
    mix.act(batch)
    assert np.array_equal(mix.choice[32:], choice[32:])
    no_mirror = suite_from_dict({"tasks": ["Pendulum-v1"]}, "pendulum")
    with pytest.raises(ValueError, match="no mirror symmetry"):
        mirror_routes(no_mirror, {"Pendulum-v1": seeker})


def _algo(name: str, teacher_run: Path, suite) -> OneStepAlgorithm:
    """The algorithm ``name`` over the teacher of ``teacher_run`` and its episodes, ready to update."""
    teacher = load_bundle(teacher_run / "student", device="cpu")
    cfg = OneStepConfig(pairs=64, steps=10, batch_size=16).for_algo(name)
    torch.manual_seed(0)
    algo = OneStepAlgorithm.build(cfg, Context(suite, dict.fromkeys(suite.task_names, teacher), StudentConfig(),
                                               torch.device("cpu"), 0))
    algo.windows(EpisodeStore(teacher_run / "episodes"))
    algo.prepare()
    return algo


@pytest.mark.parametrize("name", ALGOS)
def test_every_student_parameter_gets_a_gradient(teacher_run, default_suite, name: str) -> None:
    algo = _algo(name, teacher_run, default_suite)
    n, take, weights = algo.dataset()
    rng = np.random.default_rng(0)
    batch = {**take(torch.as_tensor(rng.integers(0, n, 16))), **algo.randoms(rng, 16)}
    aux = algo.aux()
    if aux is not None:  # dmd: the auxiliary network learns from the generator's chunks
        aux.loss(rng).backward()
        assert all(p.grad is not None for p in aux.module.parameters())
    loss, stats = algo.student_loss(algo.student, batch)
    loss.backward()
    params = dict(algo.student.named_parameters())
    assert params and all(v.requires_grad for v in params.values())
    dead = [k for k, v in params.items() if v.grad is None or not torch.any(v.grad != 0)]
    assert not dead, f"{name}: parameters without gradient: {dead}"
    assert all(np.isfinite(float(v)) for v in stats.values())


@pytest.mark.parametrize("name", ALGOS)
def test_teacher_stays_frozen(teacher_run, default_suite, name: str) -> None:
    algo = _algo(name, teacher_run, default_suite)
    teacher = algo.teacher
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student_before = [p.detach().clone() for p in algo.student.parameters()]
    fit(algo.fit_job(EpisodeStore(teacher_run / "episodes"), 0, steps=3), np.random.default_rng(0), progress=False)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert any(not torch.equal(a, b) for a, b in zip(student_before, algo.student.parameters(), strict=True))
    assert algo.teacher_calls > 0


def test_distill_commands_train_distil_and_evaluate(tmp_path) -> None:
    teach, student = tmp_path / "teacher", tmp_path / "onestep"
    assert main(["distill", "method=diffusion", "suite=default", f"teachers={ROOT / 'envs/zoo/default'}",
                 f"out={teach}", *TINY]) == 0
    assert main(["distill", "method=onestep", "suite=default", f"teachers={teach}/student", f"out={student}",
                 "method.algo=regression", "method.steps=5", "method.pairs=32", "method.episodes_per_task=1",
                 "eval_episodes=1", "final_episodes=0", "method.batch_size=16"]) == 0
    summary = read_json(student / "distill.json")
    assert summary["rounds"][0]["info"]["teacher_train_steps"] == 40 and summary["rounds"][0]["updates"] == 5
    assert summary["info"] == {"algo": "regression", "teacher_sampler": {"kind": "ddim", "steps": 4}}
    assert isinstance(load_bundle(student / "student", device="cpu"), OneStepPolicy)
    assert main(["evaluate", f"policy={teach}/student", "suite=default", "episodes=1", "sampler=ddim:1",
                 f"out={tmp_path / 'eval.json'}"]) == 0
    assert read_json(tmp_path / "eval.json")["sampler"] == "ddim:1"
    assert main(["distill", "method=onestep", "suite=default", f"teachers={ROOT / 'envs/zoo/default'}",
                 f"out={tmp_path / 'x'}"]) == 2
    assert main(["distill", "method=onestep", "suite=default", f"teachers={teach}/student", f"out={tmp_path / 'y'}",
                 "method.algo=dmd3"]) == 2
    with pytest.raises(ValueError, match="method.teacher_steps must be an int >= 1 or null"):
        OneStepConfig(algo="regression", teacher_steps=0)


@pytest.mark.slow
def test_diffusion_policy_and_one_step_student_learn_to_reach(tmp_path) -> None:
    """From the zoo experts' episodes on two tasks: the diffusion policy beats a random policy by far,
    and the deterministic distribution-matching student keeps most of its return."""
    suite = suite_from_dict({"name": "two", "tasks": [
        {"name": "north", "env": "policydistill/PointReach-v0", "kwargs": {"target": "north"}},
        {"name": "east", "env": "policydistill/PointReach-v0", "kwargs": {"target": "east"}}]}, "two")
    experts = {n: load_bundle(ROOT / "envs/zoo/default" / n, device="cpu") for n in suite.task_names}
    cfg = compose_config("distill", ["method=diffusion", "teachers=x", f"out={tmp_path / 'teacher'}",
                                     "method.hidden=[128,128]", "method.episodes_per_task=10",
                                     "method.train_steps=1500", "method.sampler_steps=10", "eval_episodes=4"])
    distill(cfg, suite, experts)
    teacher = load_bundle(tmp_path / "teacher" / "student", device="cpu")
    cfg = replace(cfg, out=str(tmp_path / "student"), teachers=str(tmp_path / "teacher" / "student"),
                  method=OneStepConfig(algo="dmd_det", steps=150, episodes_per_task=4))
    distill(cfg, suite, policies_for_suite(cfg.teachers, suite, device="cpu"))
    student = load_bundle(tmp_path / "student" / "student", device="cpu")

    def mean_return(policies: dict) -> float:
        return float(np.mean([summarise(run_episodes(suite, n, policies[n], 8, seed=7000))["return_mean"]
                              for n in suite.task_names]))

    env = suite.make_env(0)
    g_random = mean_return(dict.fromkeys(suite.task_names, RandomPolicy(env.action_space, groups=("policy", "task"))))
    g_teacher, g_student = (mean_return(dict.fromkeys(suite.task_names, p)) for p in (teacher, student))
    g_expert = mean_return(experts)
    assert g_teacher > 0.8 * g_expert and g_teacher > g_random + 50, (g_teacher, g_expert, g_random)
    assert g_student > 0.8 * g_teacher, (g_student, g_teacher)


def test_load_suite_default_hazard_keeps_the_default_tasks_and_spaces() -> None:
    hazard, default = load_suite("default_hazard"), load_suite("default")
    assert hazard.task_names == default.task_names
    for i in range(len(default.tasks)):
        a, b = hazard.make_env(i), default.make_env(i)
        assert a.observation_space == b.observation_space and a.action_space == b.action_space
        a.close()
        b.close()


def test_diffusion_trains_on_given_episode_stores_too(tmp_path, teacher_run, default_suite) -> None:
    """DAgger-aggregated (or any) episode stores given in ``diffusion.data`` join the collected episodes."""
    seeker = goal_seeker()
    cfg = tiny_cfg(tmp_path, f"method.data=[{teacher_run / 'episodes'}]", "method.episodes_per_task=1")
    summary = distill(cfg, default_suite, {n: seeker for n in default_suite.task_names})
    own, given = EpisodeStore(tmp_path / "episodes").steps, EpisodeStore(teacher_run / "episodes").steps
    assert summary["rounds"][0]["info"]["windows"] == own + given and summary["rounds"][0]["dataset_steps"] == own
    with pytest.raises(ValueError, match="lack fields"):
        chunk_windows([teacher_run / "episodes"], ("policy", "privileged", "task", "missing"), 1, 4)


def test_the_pipeline_stage_trains_its_teacher_when_told(tmp_path) -> None:
    """``diffusion.teacher_from=train``: the stage trains a diffusion teacher from the expert zoo in the run (with
    ``diffusion.teacher.*``) and distils from it; the report says so."""
    from policydistill.eval.report import Report
    from policydistill.pipeline.diffusion import stage_diffusion

    keys = ["diffusion.teacher_from=train", "diffusion.teacher.train_steps=5", "diffusion.teacher.episodes_per_task=1",
            "diffusion.teacher.hidden=[32]", "diffusion.algos=[dmd_det]", "diffusion.eval_episodes=1",
            "diffusion.latency_calls=5", "diffusion.onestep.steps=3", "diffusion.onestep.pairs=16",
            "diffusion.onestep.episodes_per_task=1"]
    cfg = compose_config("pipeline", [f"out={tmp_path}", *keys])
    report = Report("stage")
    stage_diffusion(cfg, load_suite(cfg.diffusion.suite), tmp_path, report)
    assert read_json(tmp_path / "diffusion" / "teacher" / "distill.json")["rounds"][-1]["updates"] == 5
    text = report.write(tmp_path / "report.md").read_text()
    assert "Teacher: a diffusion policy, trained in this run from the expert zoo (5 updates)" in text
    assert read_json(tmp_path / "diffusion" / "onestep.json")["teacher"] == str(tmp_path / "diffusion/teacher/student")
    assert "The one-step students by mean score: dmd_det." in text
    assert read_json(tmp_path / "diffusion" / "onestep.json")["ordering"] == "dmd_det"
