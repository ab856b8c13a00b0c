"""gymnasium-robotics' goal envs as suites (the `robotics` extra, in `.venv-robotics`): Fetch's and the point
maze's ``observation`` / ``achieved_goal`` / ``desired_goal`` mapped to ``policy`` / ``privileged`` / ``goal``,
through expert training, evaluation, DAgger distillation of a goal-conditioned student and an ONNX export acting
on the env's own Dict."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import yaml

os.environ.setdefault("MUJOCO_GL", "osmesa")  # headless; nothing here renders
pytest.importorskip("gymnasium_robotics", reason="gymnasium-robotics lives in its own venv (bash "
                                                 "scripts/setup_robotics.sh; .venv-robotics/bin/python -m pytest "
                                                 "tests/test_robotics.py)")

import gymnasium as gym  # noqa: E402

from policydistill.bundle import load_bundle  # noqa: E402
from policydistill.cli import main  # noqa: E402
from policydistill.runtime import OnnxPolicy  # noqa: E402
from policydistill.suites import load_suite  # noqa: E402
from policydistill.types import stack_obs  # noqa: E402

FETCH = {"name": "reach", "env": "gymnasium_robotics:FetchReach-v4", "success": {"info_key": "is_success"}}
MAZE = {"name": "umaze", "env": "gymnasium_robotics:PointMaze_UMazeDense-v3", "kwargs": {"continuing_task": False},
        "success": {"info_key": "success"}}
TINY_PPO = ["expert.total_steps=2048", "expert.n_envs=2", "expert.eval_every=2048", "expert.eval_episodes=1",
            "expert.final_episodes=1", "expert.checkpoint_every=2048", "expert.hyperparams.n_steps=512",
            "expert.hyperparams.batch_size=256", "expert.hyperparams.n_epochs=1"]


def test_fetch_keys_go_to_policy_goal_and_privileged():
    suite = load_suite(FETCH["env"])
    space = suite.make_env(0).observation_space
    assert {g: s.shape for g, s in space.spaces.items()} == {"privileged": (3,), "goal": (3,), "policy": (10,),
                                                             "task": (1,)}
    assert suite.keymap == {"goal": [{"key": "desired_goal", "shape": [3]}],
                            "privileged": [{"key": "achieved_goal", "shape": [3]}],
                            "policy": [{"key": "observation", "shape": [10]}]}


@pytest.mark.parametrize("task", [FETCH, MAZE], ids=["fetch_reach", "point_maze"])
def test_a_goal_env_trains_evaluates_distils_and_exports_acting_on_its_own_dict(task, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    suite_file = tmp_path / "goal.yaml"
    suite_file.write_text(yaml.safe_dump({"name": "goal", "tasks": [task]}))
    name = task["name"]
    assert main(["train-experts", f"suite={suite_file}", "out=experts", *TINY_PPO]) == 0
    expert = load_bundle(tmp_path / "experts" / name / "bundle", device="cpu")
    assert set(expert.groups) == {"policy", "privileged", "goal"} and expert.obs_keys == load_suite(task["env"]).keymap
    assert main(["evaluate", f"suite={suite_file}", f"policy=experts/{name}/bundle", "episodes=2", "video=false",
                 "out=eval.json"]) == 0
    result = json.loads((tmp_path / "eval.json").read_text())["tasks"][name]
    assert result["episodes"] == 2 and result["success_rate"] is not None  # the suite's success, not "n/a"
    assert main(["distill", f"suite={suite_file}", "teachers=experts", "method=dagger", "method.rounds=1",
                 "method.episodes_per_task=1", "eval_episodes=1", "final_episodes=0", "out=student"]) == 0
    student = load_bundle(tmp_path / "student" / "student", device="cpu")
    assert student.groups == ("policy", "goal", "task")  # goal-conditioned, without the achieved goal
    assert main(["export", "policy=student/student", "format=onnx", "out=student.onnx"]) == 0
    policy = OnnxPolicy(tmp_path / "student.onnx")
    wrapped = load_suite(str(suite_file)).make_env(0)
    raw = gym.make(task["env"].split(":")[1], **task.get("kwargs", {}))
    groups, _ = wrapped.reset(seed=0)
    own, _ = raw.reset(seed=0)
    for _ in range(5):
        action = policy.act(own)  # the env's own Dict, as gymnasium-robotics returns it
        assert action.shape == (1, raw.action_space.shape[0]) and np.isfinite(action).all()
        assert np.allclose(action, student.act(stack_obs([groups])), atol=1e-5)
        groups, *_ = wrapped.step(action[0])
        own, *_ = raw.step(action[0])


def test_a_fetch_generalist_acts_on_either_envs_own_dict_given_its_task(tmp_path, monkeypatch):
    """Reach and push observe 10 and 25 values: one key map per task, a padded student, and its ONNX export acting
    on either env's own Dict beside the task's one-hot (as docs/suites.md shows)."""
    monkeypatch.chdir(tmp_path)
    push = {**FETCH, "name": "push", "env": "gymnasium_robotics:FetchPush-v4"}
    (tmp_path / "fetch.yaml").write_text(yaml.safe_dump({"name": "fetch", "tasks": [FETCH, push]}))
    assert main(["train-experts", "suite=fetch.yaml", "out=experts", *TINY_PPO]) == 0
    assert main(["distill", "suite=fetch.yaml", "teachers=experts", "method=dagger", "method.rounds=1",
                 "method.episodes_per_task=1", "eval_episodes=1", "final_episodes=0", "out=student"]) == 0
    assert main(["export", "policy=student/student", "format=onnx", "out=fetch.onnx"]) == 0
    policy, student = OnnxPolicy(tmp_path / "fetch.onnx"), load_bundle(tmp_path / "student" / "student", device="cpu")
    suite = load_suite(str(tmp_path / "fetch.yaml"))
    for t, task in enumerate((FETCH, push)):
        groups, _ = suite.make_env(t).reset(seed=0)
        own, _ = gym.make(task["env"].split(":")[1]).reset(seed=0)
        action = policy.act({**own, "task": np.eye(2, dtype=np.float32)[t]})
        assert np.allclose(action, student.act(stack_obs([groups])), atol=1e-5)
