"""dm_control through shimmy as a suite (the `dmc` extra, in `.venv-dmc`): gymnasium's `module:env-id` form and
its Dict observations mapped to groups, through expert training, evaluation, DAgger distillation and an ONNX
export acting on the env's own Dict."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import yaml

os.environ.setdefault("MUJOCO_GL", "osmesa")  # headless; nothing here renders
pytest.importorskip("shimmy", reason="dm_control through shimmy lives in its own venv (bash scripts/setup_dmc.sh; "
                                      ".venv-dmc/bin/python -m pytest tests/test_dmc.py)")

import gymnasium as gym  # noqa: E402

from policydistill.bundle import load_bundle  # noqa: E402
from policydistill.cli import main  # noqa: E402
from policydistill.runtime import OnnxPolicy  # noqa: E402
from policydistill.suites import load_suite  # noqa: E402
from policydistill.types import stack_obs  # noqa: E402

WALKER = "shimmy:dm_control/walker-walk-v0"
TINY_PPO = ["expert.total_steps=2048", "expert.n_envs=2", "expert.eval_every=2048", "expert.eval_episodes=1",
            "expert.final_episodes=1", "expert.checkpoint_every=2048", "expert.hyperparams.n_steps=512",
            "expert.hyperparams.batch_size=256", "expert.hyperparams.n_epochs=1"]


def test_walker_keys_go_to_policy_by_default():
    suite = load_suite(WALKER)
    assert suite.task_names == ["dm_control/walker-walk-v0"]
    env = suite.make_env(0)
    assert env.observation_space["policy"].shape == (24,)  # height 1 + orientations 14 + velocity 9, sorted


def test_walker_trains_evaluates_distils_and_exports(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    suite_file = tmp_path / "walker.yaml"
    groups = {"policy": ["orientations", "velocity"], "privileged": ["height"]}
    tasks = [{"name": "walk", "env": WALKER, "groups": groups}]
    suite_file.write_text(yaml.safe_dump({"name": "walker", "tasks": tasks}))
    suite = load_suite(str(suite_file))
    space = suite.make_env(0).observation_space
    assert space["policy"].shape == (23,) and space["privileged"].shape == (1,)
    assert main(["train-experts", f"suite={suite_file}", "out=experts", *TINY_PPO]) == 0
    shutil.copytree(tmp_path / "experts" / "walk" / "bundle", tmp_path / "teachers" / "walk")
    assert main(["evaluate", f"suite={suite_file}", "policy=teachers/walk", "episodes=1", "video=false",
                 "out=eval.json"]) == 0
    assert json.loads((tmp_path / "eval.json").read_text())["tasks"]["walk"]["episodes"] == 1
    assert main(["distill", f"suite={suite_file}", "teachers=teachers", "method=dagger", "method.rounds=1",
                 "method.episodes_per_task=1", "method.collect_steps=100", "eval_episodes=1", "final_episodes=0",
                 "student.groups=[policy,task]", "out=student"]) == 0
    assert main(["export", "policy=student/student", "format=onnx", "out=student.onnx"]) == 0
    policy = OnnxPolicy(tmp_path / "student.onnx")
    student = load_bundle(tmp_path / "student" / "student", device="cpu")
    env, raw = suite.make_env(0), gym.make(WALKER.split(":")[1])
    obs, _ = env.reset(seed=0)
    own, _ = raw.reset(seed=0)
    for _ in range(5):
        action = policy.act(own)  # the env's own Dict (height, orientations, velocity), as shimmy returns it
        assert action.shape == (1, 6) and np.isfinite(action).all()
        assert np.allclose(action, student.act(stack_obs([obs])), atol=1e-5)
        obs, *_ = env.step(action[0])
        own, *_ = raw.step(action[0])
