"""Honest scores: success where a suite defines it (a spec in the suite file, or the env's ``is_success``), "n/a"
where it does not; the best round chosen on the validation seeds and kept in ``best/``; regressions flagged."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from policydistill.bundle import read_bundle_info
from policydistill.cli import main
from policydistill.distill.runner import _regressions
from policydistill.eval.metrics import summarise, wilson_half_width
from policydistill.eval.rollout import run_episodes
from policydistill.files import read_json
from policydistill.policy import CallablePolicy
from policydistill.suites import load_suite


def still(obs: np.ndarray) -> np.ndarray:
    """A Pendulum policy that applies no torque."""
    return np.zeros(1, dtype=np.float32)


def pendulum_suite(tmp_path: Path, success: str | None) -> Path:
    path = tmp_path / "pendulum.yaml"
    line = f", success: {success}" if success else ""
    path.write_text(f"name: pendulum\ntasks:\n  - {{name: swing, env: Pendulum-v1{line}}}\n")
    return path


def test_a_task_without_success_says_n_a_never_zero(tmp_path, capsys):
    suite = load_suite("Pendulum-v1")
    assert suite.has_success == (False,)
    row = summarise(run_episodes(suite, 0, CallablePolicy(still), 2, n_envs=1))
    assert row["success_rate"] is None
    assert main(["evaluate", "suite=Pendulum-v1", "policy=test_scores:still", "episodes=2", "n_envs=1",
                 f"out={tmp_path / 'eval.json'}"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[2].split()[3] == "n/a"
    assert read_json(tmp_path / "eval.json")["tasks"]["Pendulum-v1"]["success_rate"] is None
    assert load_suite("default").has_success == (True,) * 4  # PointReach reports is_success


@pytest.mark.parametrize(("success", "expected"), [("{return_at_least: -1000000000}", 1.0),
                                                     ("{return_at_least: 0}", 0.0),
                                                     ("'test_scores:upright'", 0.0)])
def test_success_is_defined_in_the_suite_file(success, expected, tmp_path):
    suite = load_suite(str(pendulum_suite(tmp_path, success)))
    assert suite.has_success == (True,)
    row = summarise(run_episodes(suite, 0, CallablePolicy(still), 3, n_envs=1))
    assert row["success_rate"] == expected


def upright(info: dict, ret: float) -> bool:
    """Success for Pendulum: never, in this test (no torque never swings it up)."""
    return False


@pytest.mark.parametrize("success", ["{return_at_most: 3}", "{info_key: 3}", "'nowhere:nothing'", "7"])
def test_a_bad_success_spec_is_one_line(success, tmp_path, caplog):
    suite = pendulum_suite(tmp_path, success)
    assert main(["evaluate", f"suite={suite}", "policy=test_scores:still", "episodes=1"]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "task 'swing': success" in errors[0]


def test_the_best_round_on_the_validation_seeds_is_kept_in_best(tmp_path, caplog):
    out = tmp_path / "run"
    caplog.set_level(logging.INFO)
    assert main(["distill", "method=dagger", "teachers=conftest:goal_seeker", f"out={out}", "eval_episodes=2",
                 "eval_seed=777", "n_envs=2", "method.rounds=3", "method.episodes_per_task=1",
                 "method.updates_per_round=30"]) == 0
    summary = read_json(out / "distill.json")
    rows = summary["rounds"]
    best = max(rows, key=lambda r: (r["mean_success"], r["mean_score"]))
    assert summary["best_round"] == best["round"] == summary["best"]["round"]
    assert "validation seeds (777, 778, ...)" in summary["best"]["criterion"]
    assert read_bundle_info(out / "best")["meta"]["round"] == best["round"]
    assert read_bundle_info(out / "student")["meta"]["round"] == rows[-1]["round"]
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("round ") and "beta" in r.getMessage()]
    assert len(lines) == 3 and all("success" in ln and "(north " in ln and "score" in ln for ln in lines)
    assert all("student return" not in ln for ln in lines)  # no mean of raw returns across tasks
    flagged = [r.getMessage() for r in caplog.records if "regressed" in r.getMessage()]
    assert len(flagged) == sum(len(r["regressions"]) for r in rows)
    final = summary["final"]  # best/ on the held-out seeds, as many episodes as a ± 0.05 interval needs (<= 40 x 2)
    assert final["round"] == best["round"] and final["seeds"].startswith("9000, ")
    for t in final["tasks"].values():
        assert t["success_ci95"] <= 0.05 or t["episodes"] == 80
        assert t["success_ci95"] == pytest.approx(wilson_half_width(t["success_rate"], t["episodes"]))


def test_final_seeds_overlapping_the_validation_seeds_are_refused(tmp_path, caplog):
    assert main(["distill", "teachers=conftest:goal_seeker", f"out={tmp_path / 'run'}", "eval_seed=8990",
                 "eval_episodes=20"]) == 2
    assert "overlap the validation seeds 8990..9009 (eval_seed)" in caplog.text
    assert not (tmp_path / "run").exists()


def test_a_task_whose_success_drops_by_more_than_the_margin_is_flagged():
    prev = {"tasks": {"a": {"success_rate": 0.9, "score": 0.9}, "b": {"success_rate": None, "score": 1.0}}}
    now = {"a": {"success_rate": 0.1, "score": 0.2}, "b": {"success_rate": None, "score": 0.95}}
    assert _regressions(prev, now, 0.2) == [{"task": "a", "metric": "success", "from": 0.9, "to": 0.1}]
    now["b"]["score"] = 0.5
    assert [g["task"] for g in _regressions(prev, now, 0.2)] == ["a", "b"]
    assert _regressions(None, now, 0.2) == []
