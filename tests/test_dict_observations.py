"""Envs observing a Dict whose keys are not group names (as dm_control through shimmy): the keys map to
observation groups, by default all into ``policy``, or as the suite file assigns them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from policydistill.bundle import load_bundle
from policydistill.cli import main
from policydistill.distill.dagger import DAggerConfig
from policydistill.distill.runner import DistillConfig, distill
from policydistill.models.students import StudentConfig, build_student
from policydistill.runtime import Controller, OnnxPolicy, make_source
from policydistill.suites import load_suite, suite_from_dict
from policydistill.types import stack_obs

ASSIGNED = {"policy": ["position", "velocity"], "privileged": ["goal"]}


def task(**kw) -> dict:
    return {"name": "point", "env": "dict_envs:DictPointEnv", **kw}


def test_unassigned_keys_go_to_policy_in_sorted_order():
    env = suite_from_dict({"tasks": [task()]}, "t").make_env(0)
    assert env.observation_space["policy"].shape == (7,) and "privileged" not in env.observation_space.spaces
    obs, _ = env.reset(seed=3)
    raw = env.unwrapped._obs()
    want = np.concatenate([np.ravel(raw[k]) for k in ("goal", "height", "position", "velocity")])
    assert np.allclose(obs["policy"], want) and obs["policy"].dtype == np.float32


def test_the_suite_file_assigns_keys_to_groups_the_rest_going_to_policy():
    env = suite_from_dict({"tasks": [task(groups=ASSIGNED)]}, "t").make_env(0)
    obs, _ = env.reset(seed=3)
    raw = env.unwrapped._obs()
    assert np.allclose(obs["policy"], np.concatenate([raw["position"], raw["velocity"], [raw["height"]]]))
    assert np.allclose(obs["privileged"], raw["goal"]) and env.observation_space["privileged"].shape == (2,)


@pytest.mark.parametrize(("spec", "message"), [
    (task(kwargs={"extra": "nested"}), "observation key 'sensors' is a nested Dict; only one level of keys"),
    (task(kwargs={"extra": "discrete"}), "observation key 'mode' is a Discrete; groups hold Box values"),
    (task(groups={"policy": ["nope"]}), "'groups' lists ['nope']; the observation's keys are ['goal', 'height', "),
    (task(groups={"policy": ["goal"], "privileged": ["goal"]}), "'groups' lists a key twice"),
    (task(groups={"task": ["goal"]}), "'groups' names ['task']; an env's keys go to ['policy', 'privileged', "),
    ({"name": "p", "env": "Pendulum-v1", "groups": {"policy": ["x"]}}, "but the env observes a Box"),
])
def test_dicts_that_cannot_map_are_refused_naming_the_key(spec, message):
    suite = suite_from_dict({"tasks": [spec]}, "t")
    with pytest.raises(ValueError, match=None) as e:
        suite.make_env(0)
    assert message in str(e.value) and f"task '{spec['name']}'" in str(e.value)


def test_a_dict_env_suite_evaluates_and_distils(tmp_path):
    """A suite file with the mapping: the scripted teacher (reading the goal in ``privileged``) evaluated by the
    CLI, and a DAgger student reading both groups distilled from it; the bundle keeps the groups' sizes."""
    path = tmp_path / "dict_suite.yaml"
    path.write_text(yaml.safe_dump({"name": "dict_suite", "tasks": [task(groups=ASSIGNED)]}))
    out = tmp_path / "eval.json"
    assert main(["evaluate", f"suite={path}", "policy=dict_envs:seeker", "episodes=5", "video=false",
                 f"out={out}"]) == 0
    assert json.loads(out.read_text())["tasks"]["point"]["success_rate"] == 1.0
    suite = load_suite(str(path))
    from dict_envs import seeker

    cfg = DistillConfig(suite=str(path), teachers="-", out=str(tmp_path / "run"), device="cpu", eval_episodes=2,
                        final_episodes=0, method=DAggerConfig(rounds=2, episodes_per_task=4, beta_rounds=1),
                        student=StudentConfig(groups=["policy", "privileged", "task"]))
    summary = distill(cfg, suite, {"point": seeker()})
    assert summary["rounds"][-1]["labels_used"] == 2 * 4 * 50
    student = load_bundle(tmp_path / "run" / "student", device="cpu")
    assert student.observation_space["policy"].shape == (5,) and student.observation_space["privileged"].shape == (2,)


GOAL_TASK = {"name": "reach", "env": "dict_envs:GoalPointEnv"}


def test_a_goal_env_sends_desired_goal_to_goal_and_achieved_goal_to_privileged():
    env = suite_from_dict({"tasks": [GOAL_TASK]}, "g").make_env(0)
    obs, _ = env.reset(seed=1)
    raw = env.unwrapped._obs()
    assert sorted(obs) == ["goal", "policy", "privileged", "task"]
    assert np.allclose(obs["policy"], raw["observation"]) and np.allclose(obs["goal"], raw["desired_goal"])
    assert np.allclose(obs["privileged"], raw["achieved_goal"])


def test_a_goal_key_the_suite_assigns_goes_where_it_says():
    env = suite_from_dict({"tasks": [{**GOAL_TASK, "groups": {"policy": ["observation", "achieved_goal"]}}]},
                          "g").make_env(0)
    assert {g: s.shape for g, s in env.observation_space.spaces.items()} == {"policy": (6,), "goal": (2,),
                                                                            "task": (1,)}


def test_a_student_of_a_goal_suite_reads_its_goal_as_it_reads_its_task():
    goal = suite_from_dict({"tasks": [GOAL_TASK]}, "g")
    assert build_student(goal, StudentConfig(), device="cpu").groups == ("policy", "goal", "task")
    plain = suite_from_dict({"tasks": [task()]}, "t")
    assert build_student(plain, StudentConfig(), device="cpu").groups == ("policy", "task")


def test_a_goal_student_deployed_takes_the_envs_own_dict(tmp_path):
    """DAgger from a scripted goal seeker; the bundle and its ONNX export record the key map, and both act on the
    env's own Dict (no suite wrappers) exactly as on the suite's groups."""
    suite = suite_from_dict({"tasks": [GOAL_TASK]}, "goal_point")
    from dict_envs import GoalPointEnv, goal_seeker

    cfg = DistillConfig(suite="goal_point", teachers="-", out=str(tmp_path / "run"), device="cpu", eval_episodes=10,
                        final_episodes=0, method=DAggerConfig(rounds=3, episodes_per_task=8, beta_rounds=1))
    summary = distill(cfg, suite, {"reach": goal_seeker()})
    student = load_bundle(tmp_path / "run" / "student", device="cpu")
    assert student.groups == ("policy", "goal", "task")
    assert student.obs_keys == {"policy": [{"key": "observation", "shape": [4]}],
                                "goal": [{"key": "desired_goal", "shape": [2]}],
                                "privileged": [{"key": "achieved_goal", "shape": [2]}]}
    assert main(["export", f"policy={tmp_path / 'run' / 'student'}", "format=onnx",
                 f"out={tmp_path / 'student.onnx'}"]) == 0
    onnx = OnnxPolicy(tmp_path / "student.onnx")
    controller = Controller(make_source(tmp_path / "run" / "student"), period_s=0.05)
    wrapped, raw = suite.make_env(0), GoalPointEnv()
    successes = 0
    for seed in range(10):
        groups, _ = wrapped.reset(seed=seed)
        own, _ = raw.reset(seed=seed)
        controller.reset()
        for _ in range(50):
            action = onnx.act(own)  # one env's Dict, in its own shapes
            assert action.shape == (1, 2)
            assert np.allclose(action, student.act(stack_obs([groups])), atol=1e-5)
            assert np.allclose(controller.step(stack_obs([own])), action, atol=1e-5)  # batched keys
            groups, *_ = wrapped.step(action[0])
            own, _, _, truncated, info = raw.step(action[0])
            if truncated:
                break
        successes += info["is_success"]
    assert successes >= 7, (successes, summary["rounds"])
    with pytest.raises(KeyError, match="lacks the env key 'desired_goal' \\(group 'goal'\\)"):
        onnx.act({"observation": own["observation"][None]})


def test_a_padded_goal_student_takes_each_tasks_own_dict(tmp_path):
    """Two goal envs observing 4 and 6 values: one key map per task in the bundle and the export, and the padded
    student's ONNX export acts on either env's own Dict given its task, as the torch student on its groups."""
    tasks = [{"name": "near", "env": "dict_envs:GoalPointEnv"},
             {"name": "wide", "env": "dict_envs:GoalPointEnv", "kwargs": {"extra": 2}}]
    suite = suite_from_dict({"tasks": tasks}, "goal_two")
    assert [m["policy"][0]["shape"] for m in suite.keymap] == [[4], [6]]
    from dict_envs import GoalPointEnv, goal_seeker

    cfg = DistillConfig(suite="goal_two", teachers="-", out=str(tmp_path / "run"), device="cpu", eval_episodes=2,
                        final_episodes=0, method=DAggerConfig(rounds=2, episodes_per_task=4, beta_rounds=1))
    distill(cfg, suite, {"near": goal_seeker(), "wide": goal_seeker()})
    student = load_bundle(tmp_path / "run" / "student", device="cpu")
    assert student.obs_keys == suite.keymap
    assert main(["export", f"policy={tmp_path / 'run' / 'student'}", "format=onnx",
                 f"out={tmp_path / 'student.onnx'}"]) == 0
    onnx = OnnxPolicy(tmp_path / "student.onnx")
    assert onnx.groups == ("task", "observation")  # the padded export
    for t, raw in enumerate([GoalPointEnv(), GoalPointEnv(extra=2)]):
        wrapped = suite.make_env(t)
        groups, _ = wrapped.reset(seed=t)
        own, _ = raw.reset(seed=t)
        for _ in range(3):
            action = onnx.act({**own, "task": np.eye(2, dtype=np.float32)[t]})
            assert np.allclose(action, student.act(stack_obs([groups])), atol=1e-5)
            groups, *_ = wrapped.step(action[0])
            own, *_ = raw.step(action[0])
    with pytest.raises(KeyError, match="lacks 'task': a policy of 2 tasks whose spaces or keys differ"):
        onnx.act(own)
