"""The Metaworld suites (mt10, mt50 and their held-out variants) and the scripted teachers.

Runs only where metaworld is installed: the metaworld venv (``bash scripts/setup_metaworld.sh``, then
``.venv-metaworld/bin/python -m pytest -q -n 0 tests/test_metaworld.py``); the default venv skips it.
"""

from __future__ import annotations

import pickle
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("metaworld", reason="metaworld is not installed: it lives in its own venv "
                    "(bash scripts/setup_metaworld.sh; .venv-metaworld/bin/python -m pytest tests/test_metaworld.py)")

from gymnasium.utils.env_checker import check_env  # noqa: E402
from policydistill_envs.metaworld_tasks import (  # noqa: E402
    N_GOALS,
    MetaworldTask,
    benchmark_tasks,
    goal_index,
    goal_indices,
)

from policydistill import DAggerConfig, StudentConfig  # noqa: E402
from policydistill.cli import main  # noqa: E402
from policydistill.distill.runner import DistillConfig, distill  # noqa: E402
from policydistill.eval.rollout import run_episodes  # noqa: E402
from policydistill.policy import CallablePolicy  # noqa: E402
from policydistill.suites import load_suite, suite_from_dict  # noqa: E402
from policydistill.teachers import policies_for_suite  # noqa: E402

MT10 = ["reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-open-v3", "drawer-close-v3",
        "button-press-topdown-v3", "peg-insert-side-v3", "window-open-v3", "window-close-v3"]


@pytest.fixture(scope="module")
def mt10():
    return load_suite("mt10")


def test_suites_load_with_scripted_teachers(mt10):
    held_out = load_suite("mt10_heldout")
    assert mt10.task_names == held_out.task_names == MT10
    assert {t.kwargs["goals"] for t in mt10.tasks} == {"train"}
    assert {t.kwargs["goals"] for t in held_out.tasks} == {"held_out"}
    mt50, mt50_held_out = load_suite("mt50"), load_suite("mt50_heldout")  # files only: no env is built
    assert len(mt50.tasks) == 50 and mt50.task_names == mt50_held_out.task_names
    assert set(MT10) <= set(mt50.task_names)
    teachers = policies_for_suite("suite", mt10, device="cpu")
    assert set(teachers) == set(MT10)
    assert all(isinstance(p, CallablePolicy) and p.task == name for name, p in teachers.items())


def test_env_groups_spaces_and_checker(mt10):
    env = mt10.make_env("push-v3")
    obs, info = env.reset(seed=3)
    assert set(obs) == {"policy", "task"} and obs["policy"].shape == (39,) and obs["policy"].dtype == np.float32
    assert np.argmax(obs["task"]) == 1 and obs["task"].shape == (10,)
    assert env.action_space.shape == (4,)
    assert info["goal_index"] in goal_indices("train")
    np.testing.assert_allclose(obs["policy"][-3:], env.unwrapped.sim._target_pos, atol=1e-6)  # the goal is seen
    check_env(env.unwrapped, skip_render_check=True)
    env.close()


def test_goal_variation_is_drawn_from_the_reset_seed(mt10):
    a, b = mt10.make_env("reach-v3"), mt10.make_env("reach-v3")
    for seed in (0, 1, 17, 5000):
        (oa, ia), (ob, ib) = a.reset(seed=seed), b.reset(seed=seed)
        assert ia["goal_index"] == ib["goal_index"] == goal_index(seed, "train")
        np.testing.assert_array_equal(oa["policy"], ob["policy"])
    drawn = {a.reset(seed=s)[1]["goal_index"] for s in range(40)}
    assert len(drawn) > 10  # the seeds spread over the variations
    goals = {tuple(np.round(a.reset(seed=s)[0]["policy"][-3:], 6)) for s in range(40)}
    assert len(goals) > 10  # and so do the goals the policy sees
    a.close()
    b.close()


def test_train_and_held_out_goals_are_disjoint():
    train, held_out = set(goal_indices("train")), set(goal_indices("held_out"))
    assert not train & held_out and train | held_out == set(range(N_GOALS)) and len(held_out) == 10
    assert all(goal_index(s, "held_out") in held_out for s in range(100))
    _, variations = benchmark_tasks("MT10", "pick-place-v3")
    vecs = [pickle.loads(v.data)["rand_vec"] for v in variations]
    train_vecs = {tuple(np.round(vecs[i], 8)) for i in train}
    held_vecs = {tuple(np.round(vecs[i], 8)) for i in held_out}
    assert len(train_vecs) == 40 and len(held_vecs) == 10 and not train_vecs & held_vecs
    env = MetaworldTask("pick-place-v3", goals="held_out")
    assert {env.reset(seed=s)[1]["goal_index"] for s in range(30)} <= held_out
    env.close()
    with pytest.raises(ValueError, match="goals must be one of"):
        goal_indices("test")


def test_scripted_teacher_succeeds_and_episodes_end_at_success(mt10):
    teacher = policies_for_suite("suite", mt10, device="cpu")["push-v3"]
    episodes = run_episodes(mt10, "push-v3", teacher, 4, n_envs=2, seed=0)
    assert all(e.success and e.error is None for e in episodes)
    assert all(e.length < 500 for e in episodes)  # ended at success, not at the step limit


def test_episode_is_truncated_at_the_step_limit():
    env = MetaworldTask("drawer-close-v3", max_episode_steps=5)
    env.reset(seed=0)
    for _ in range(4):
        _, _, terminated, truncated, info = env.step(np.zeros(4, dtype=np.float32))
        assert not terminated and not truncated and info["is_success"] is False
    assert env.step(np.zeros(4, dtype=np.float32))[3]
    env.close()


def test_dagger_runs_from_the_scripted_teachers(tmp_path, mt10):
    suite = suite_from_dict({"name": "mt10_pair", "tasks": [
        {**{k: getattr(t, k) for k in ("name", "env", "kwargs", "teacher")}, "max_episode_steps": 60}
        for t in mt10.tasks[:2]]}, "mt10_pair")
    cfg = DistillConfig(suite="mt10_pair", teachers="suite", out=str(tmp_path / "run"), device="cpu", n_envs=2,
                        eval_episodes=1, method=DAggerConfig(rounds=1, episodes_per_task=1, updates_per_round=5),
                        student=StudentConfig(hidden=[32]))
    summary = distill(cfg, suite, policies_for_suite("suite", suite, device="cpu"))
    assert len(summary["rounds"]) == 1 and summary["rounds"][0]["labels_used"] > 0
    assert summary["teacher"]["reach-v3"]["success_rate"] == 1.0


DOCS = Path(__file__).resolve().parents[1] / "docs" / "suites.md"
TINY = {
    "distill": ["method.rounds=1", "method.episodes_per_task=1", "method.updates_per_round=5", "eval_episodes=1",
                "student.hidden=[32]"],
    "evaluate": ["episodes=1"],
    "train-experts": ["expert.total_steps=256", "expert.n_envs=2", "expert.eval_every=256", "expert.eval_episodes=1",
                      "expert.final_episodes=1", "expert.checkpoint_every=256", "expert.hyperparams.n_steps=128",
                      "expert.hyperparams.batch_size=64", "expert.hyperparams.n_epochs=1"],
}
"""Overrides that make each documented command cheap: one key the command reads each."""


def metaworld_commands() -> list[str]:
    """The command lines of the ``console`` blocks of docs/suites.md's Metaworld section."""
    section = DOCS.read_text().split("## Metaworld", 1)[1].split("\n## ", 1)[0]
    lines = [ln for block in section.split("```console")[1:] for ln in block.split("```")[0].splitlines()]
    return [" ".join(shlex.split(ln, comments=True)) for ln in lines if ln.strip()]


def test_every_documented_metaworld_command_runs(tmp_path, monkeypatch):
    """The setup script and the pytest line are what CI runs (.ci/run); every other command runs here, on a
    tiny budget, in this venv."""
    monkeypatch.chdir(tmp_path)
    ran = 0
    for line in metaworld_commands():
        words = shlex.split(line)
        if words[0] == "bash" or words[1:3] == ["-m", "pytest"]:
            continue
        if words[0].endswith("/policydistill"):
            assert main([*words[1:], *TINY.get(words[1], [])]) == 0, line
        else:
            assert words[1:3] == ["-m", "bench"], line
            subprocess.run([sys.executable, *words[1:], "--smoke", "--results-dir", str(tmp_path / "bench")],
                           cwd=DOCS.parents[1], check=True)
        ran += 1
    assert ran == 7
