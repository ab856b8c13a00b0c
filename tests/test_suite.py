import json

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from policydistill.cli import main
from policydistill.suites import builtin_suites, load_suite, suite_from_dict
from policydistill.types import POLICY, PRIVILEGED, TASK


def test_builtin_suites_are_listed():
    assert {"default", "locomotion"} <= set(builtin_suites())


def test_default_suite_has_four_tasks_with_identical_spaces(default_suite):
    assert len(default_suite.tasks) >= 4
    envs = [default_suite.make_env(i) for i in range(len(default_suite.tasks))]
    assert all(e.observation_space == envs[0].observation_space for e in envs)
    assert all(e.action_space == envs[0].action_space for e in envs)
    for i, env in enumerate(envs):
        obs, _ = env.reset(seed=0)
        assert set(obs) == {POLICY, PRIVILEGED, TASK}
        assert np.argmax(obs["task"]) == i and obs["task"].sum() == 1


@pytest.mark.parametrize("suite", ["default", "locomotion"])
def test_suite_envs_pass_env_checker(suite):
    s = load_suite(suite)
    for i in range(len(s.tasks)):
        check_env(s.make_env(i), skip_render_check=True)


def test_gym_id_is_a_one_task_suite_with_groups():
    s = load_suite("Pendulum-v1")
    env = s.make_env(0)
    obs, _ = env.reset(seed=0)
    assert s.task_names == ["Pendulum-v1"] and set(obs) == {"policy", "task"}
    mujoco = load_suite("Hopper-v5").make_env(0)
    obs, _ = mujoco.reset(seed=0)
    assert set(obs) == {POLICY, PRIVILEGED, TASK}  # MuJoCo's full state becomes the privileged group


def test_suite_from_yaml_file(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("name: mine\ntasks:\n  - Pendulum-v1\n  - {name: p2, env: Pendulum-v1, kwargs: {g: 5.0}}\n")
    s = load_suite(str(f))
    assert s.name == "mine" and s.task_names == ["Pendulum-v1", "p2"]
    assert s.make_env("p2").unwrapped.g == 5.0


def test_env_factory_task():
    s = suite_from_dict({"tasks": [{"name": "f", "env": "faulty_envs:FaultyEnv", "kwargs": {"length": 4}}]}, "x")
    env = s.make_env("f")
    env.reset(seed=0)
    assert env.step(np.zeros(1, dtype=np.float32))[0]["policy"].shape == (1,)


def test_unknown_suite_lists_what_exists():
    with pytest.raises(ValueError, match="unknown suite 'nope': expected one of") as e:
        load_suite("nope")
    assert "default" in str(e.value) and "locomotion" in str(e.value)


def test_unknown_task_and_env_are_clear_errors(default_suite):
    with pytest.raises(KeyError, match=r"no task 'up'.*\['north', 'east', 'south', 'west'\]"):
        default_suite.make_env("up")
    bad = suite_from_dict({"tasks": [{"name": "t", "env": "policydistill/Nope-v0"}]}, "x")
    with pytest.raises(ValueError, match="unknown env id 'policydistill/Nope-v0'.*PointReach"):
        bad.make_env(0)


def test_suite_file_with_unknown_key_lists_valid_keys():
    with pytest.raises(ValueError, match="unknown keys \\['trian_steps'\\].*valid keys.*train_steps"):
        suite_from_dict({"tasks": [{"name": "t", "env": "Pendulum-v1", "trian_steps": 3}]}, "x")
    with pytest.raises(ValueError, match="unknown suite keys"):
        suite_from_dict({"tasks": ["Pendulum-v1"], "taks": []}, "x")


def test_suite_envs_are_deterministic_under_seed(default_suite):
    def run(seed):
        env = default_suite.make_env(1)
        obs, _ = env.reset(seed=seed)
        env.action_space.seed(seed)
        out = [obs["policy"]]
        for _ in range(10):
            obs, r, *_ = env.step(env.action_space.sample())
            out.append(np.append(obs["policy"], r))
        return np.concatenate(out)

    assert np.array_equal(run(3), run(3)) and not np.array_equal(run(3), run(4))


def test_a_module_env_id_imports_the_module_then_makes_the_id(tmp_path):
    """gymnasium's ``module:env-id`` form, as a suite name and as a task's env: the module registers the id on
    import; the task is named by the id. A module without that id or factory, or one that cannot be imported, is
    a one-line error naming it."""
    suite = load_suite("plugin_envs:plugin/Pendulum-v0")
    assert suite.task_names == ["plugin/Pendulum-v0"]
    obs, _ = suite.make_env(0).reset(seed=0)
    assert obs["policy"].shape == (3,) and "task" in obs
    listed = suite_from_dict({"name": "two", "tasks": ["plugin_envs:plugin/Pendulum-v0", "Pendulum-v1"]}, "two")
    assert listed.task_names == ["plugin/Pendulum-v0", "Pendulum-v1"]
    with pytest.raises(ValueError, match="module 'plugin_envs' has no factory 'plugin/Nope-v0' and registers no "
                                         "gymnasium id 'plugin/Nope-v0'"):
        load_suite("plugin_envs:plugin/Nope-v0")
    with pytest.raises(ValueError, match="module 'no_such_plugin' cannot be imported"):
        load_suite("no_such_plugin:plugin/Pendulum-v0")
    out = tmp_path / "eval.json"
    assert main(["evaluate", "suite=plugin_envs:plugin/Pendulum-v0", "policy=plugin_envs:damper", "episodes=2",
                 "video=false", f"out={out}"]) == 0
    assert json.loads(out.read_text())["tasks"]["plugin/Pendulum-v0"]["episodes"] == 2
