"""The evaluate command on real trained experts: per-task numbers, teacher scores, videos, bad input."""

import json
import logging

import numpy as np
import pytest
from gymnasium import spaces

from policydistill.bundle import save_bundle
from policydistill.cli import main
from policydistill.eval.evaluate import evaluate
from policydistill.models.mlp import MLPPolicy
from policydistill.suites import load_suite
from policydistill.teachers import policies_for_suite


@pytest.fixture
def two_tasks(tmp_path):
    path = tmp_path / "two.yaml"
    path.write_text("name: two\ntasks:\n"
                    "  - {name: north, env: policydistill/PointReach-v0, kwargs: {target: north}}\n"
                    "  - {name: east, env: policydistill/PointReach-v0, kwargs: {target: east}}\n")
    return str(path)


@pytest.mark.slow
def test_evaluate_writes_per_task_numbers_and_teacher_scores(tiny_experts, two_tasks, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert main(["evaluate", f"policy={tiny_experts}", f"suite={two_tasks}", "episodes=6", f"out={out}",
                 f"teachers={tiny_experts}", "video=true"]) == 0
    result = json.loads(out.read_text())
    assert list(result["tasks"]) == ["north", "east"]
    for row in result["tasks"].values():
        assert row["episodes"] == 6 and row["length_mean"] == 100
        assert {"return_mean", "return_std", "return_ci95", "success_rate"} <= set(row)
        # same policy, same seeds: the teacher's numbers are the student's (the score is None while
        # barely trained experts still have negative returns, 1.0 otherwise)
        assert row["teacher"]["teacher_return_mean"] == row["return_mean"] and row["teacher"]["success_diff"] == 0
        assert row["teacher"]["score"] in (None, pytest.approx(1.0))
        video = tmp_path / "videos" / ("north.mp4" if row is result["tasks"]["north"] else "east.mp4")
        assert video.stat().st_size > 1000
    table = capsys.readouterr().out
    assert "north" in table and "score" in table


def test_one_bundle_serves_every_task(tiny_experts, two_tasks):
    suite = load_suite(two_tasks)
    policies = policies_for_suite(tiny_experts / "north" / "bundle", suite, device="cpu")
    assert policies["north"] is policies["east"]
    result = evaluate(suite, policies, episodes=3)
    assert set(result["tasks"]) == {"north", "east"}


def test_folder_missing_a_task_is_a_clear_error(tiny_experts, caplog):
    caplog.set_level(logging.ERROR)
    assert main(["evaluate", f"policy={tiny_experts}", "suite=default"]) == 2
    assert "no bundle (nor a folder of bundles) for tasks ['south', 'west']" in caplog.text and "north" in caplog.text


def test_bundle_whose_spaces_do_not_match_is_refused_before_any_rollout(tmp_path, caplog):
    obs = spaces.Dict({"policy": spaces.Box(-np.inf, np.inf, (3,), np.float32)})
    pendulum = MLPPolicy(("policy",), obs, spaces.Box(-2.0, 2.0, (1,), np.float32))
    save_bundle(pendulum, tmp_path / "pendulum")
    caplog.set_level(logging.ERROR)
    assert main(["evaluate", f"policy={tmp_path / 'pendulum'}", "suite=default", "episodes=1"]) == 2
    assert "policy" in caplog.text and "(3,)" in caplog.text and "(4,)" in caplog.text


def test_suite_teachers_and_callables_evaluate_like_bundles(tmp_path, capsys):
    """A suite file names a scripted teacher per task; ``teachers=suite`` scores a policy against them."""
    suite = tmp_path / "scripted.yaml"
    suite.write_text("name: scripted\ntasks:\n"
                     "  - {name: west, env: policydistill/PointReach-v0, kwargs: {target: west}, "
                     "teacher: 'conftest:goal_seeker'}\n")
    out = tmp_path / "e.json"
    assert main(["evaluate", "policy=conftest:goal_seeker", f"suite={suite}", "teachers=suite", "episodes=4",
                 f"out={out}"]) == 0
    row = json.loads(out.read_text())["tasks"]["west"]
    assert row["success_rate"] == 1.0 and row["teacher"]["score"] == pytest.approx(1.0)


def test_import_sb3_zip_gives_the_same_policy_as_the_trained_bundle(tiny_experts, tmp_path):
    from policydistill.bundle import load_bundle
    from policydistill.files import read_json
    from policydistill.types import stack_obs

    files = read_json(tiny_experts / "east" / "checkpoint.json")["files"]
    out = tmp_path / "imported"
    assert main(["import-sb3", f"model={tiny_experts / 'east' / files['model']}", f"out={out}", "suite=default",
                 "task=east", f"vecnormalize={tiny_experts / 'east' / files['vecnormalize']}",
                 "groups=[policy,privileged]"]) == 0
    imported, trained = load_bundle(out, device="cpu"), load_bundle(tiny_experts / "east" / "bundle", device="cpu")
    env = load_suite("default").make_env("east")
    obs = stack_obs([env.reset(seed=s)[0] for s in range(16)])
    np.testing.assert_allclose(imported.act(obs), trained.act(obs), atol=1e-6)


def test_envs_reused_from_a_pool_evaluate_as_fresh_envs():
    """A run validates on envs built once; an env that ran other episodes (other body masses and frictions drawn)
    gives the same seeded episodes as a fresh one."""
    from pathlib import Path

    from policydistill.eval.evaluate import evaluate_per_task
    from policydistill.suites.batched import EnvPool

    suite = load_suite("locomotion")
    teachers = policies_for_suite(Path(__file__).resolve().parents[1] / "envs/zoo/locomotion", suite, device="cpu")
    fresh = evaluate_per_task(suite, teachers, 2, seed=7, n_envs=2)
    pool = EnvPool(suite)
    evaluate_per_task(suite, teachers, 2, seed=11, n_envs=2, pool=pool)  # other episodes first
    pooled = evaluate_per_task(suite, teachers, 2, seed=7, n_envs=2, pool=pool)
    assert sum(len(v) for v in pool.free.values()) == 2 * len(suite.tasks)
    assert pooled == fresh
    pool.close()
