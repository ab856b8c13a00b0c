"""gymnasium-robotics' goal envs as a suite (the `robotics` extra, in `.venv-robotics`): the point maze's
``observation`` / ``achieved_goal`` / ``desired_goal`` mapped to ``policy`` / ``privileged`` / ``goal``, through
expert training, evaluation, DAgger distillation of a goal-conditioned student and an ONNX export acting on the
env's own Dict."""

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

MAZE = "gymnasium_robotics:PointMaze_UMazeDense-v3"
TASK = {"name": "umaze", "env": MAZE, "kwargs": {"continuing_task": False}, "success": {"info_key": "success"}}
TINY_PPO = ["expert.total_steps=2048", "expert.n_envs=2", "expert.eval_every=2048", "expert.eval_episodes=1",
            "expert.final_episodes=1", "expert.checkpoint_every=2048", "expert.hyperparams.n_steps=512",
            "expert.hyperparams.batch_size=256", "expert.hyperparams.n_epochs=1"]


def test_the_maze_keys_go_to_policy_goal_and_privileged():
    suite = load_suite(MAZE)
    space = suite.make_env(0).observation_space
    assert {g: s.shape for g, s in space.spaces.items()} == {"privileged": (2,), "goal": (2,), "policy": (4,),
                                                             "task": (1,)}
    assert suite.keymap == {"goal": [{"key": "desired_goal", "shape": [2]}],
                            "privileged": [{"key": "achieved_goal", "shape": [2]}],
                            "policy": [{"key": "observation", "shape": [4]}]}


def test_the_maze_trains_evaluates_distils_and_exports_acting_on_its_own_dict(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    suite_file = tmp_path / "pointmaze.yaml"
    suite_file.write_text(yaml.safe_dump({"name": "pointmaze", "tasks": [TASK]}))
    assert main(["train-experts", f"suite={suite_file}", "out=experts", *TINY_PPO]) == 0
    expert = load_bundle(tmp_path / "experts" / "umaze" / "bundle", device="cpu")
    assert set(expert.groups) == {"policy", "privileged", "goal"} and expert.obs_keys == load_suite(MAZE).keymap
    assert main(["evaluate", f"suite={suite_file}", "policy=experts/umaze/bundle", "episodes=1", "video=false",
                 "out=eval.json"]) == 0
    assert json.loads((tmp_path / "eval.json").read_text())["tasks"]["umaze"]["episodes"] == 1
    assert main(["distill", f"suite={suite_file}", "teachers=experts", "method=dagger", "method.rounds=1",
                 "method.episodes_per_task=1", "eval_episodes=1", "final_episodes=0", "out=student"]) == 0
    student = load_bundle(tmp_path / "student" / "student", device="cpu")
    assert student.groups == ("policy", "goal", "task")  # goal-conditioned, without the achieved goal
    assert main(["export", "policy=student/student", "format=onnx", "out=student.onnx"]) == 0
    policy = OnnxPolicy(tmp_path / "student.onnx")
    wrapped = load_suite(str(suite_file)).make_env(0)
    raw = gym.make(MAZE.split(":")[1], continuing_task=False)
    groups, _ = wrapped.reset(seed=0)
    own, _ = raw.reset(seed=0)
    for _ in range(5):
        action = policy.act(own)  # the env's own Dict, as gymnasium-robotics returns it
        assert action.shape == (1, 2) and np.isfinite(action).all()
        assert np.allclose(action, student.act(stack_obs([groups])), atol=1e-5)
        groups, *_ = wrapped.step(action[0])
        own, *_ = raw.step(action[0])
