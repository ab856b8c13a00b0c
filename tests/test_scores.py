"""Honest scores: success where a suite defines it (a spec in the suite file, or the env's ``is_success``), "n/a"
where it does not; the random-normalised score, defined for negative returns; the success ratio as the headline
where there is success; the best round chosen on the validation seeds and kept in ``best/``; regressions flagged."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from policydistill.bundle import read_bundle_info
from policydistill.cli import main
from policydistill.distill.runner import _regressions
from policydistill.eval.metrics import headline, ordering, summarise, teacher_normalised, wilson_half_width
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


def reacher_pd(obs: np.ndarray) -> np.ndarray:
    """Reacher-v5: Jacobian-transpose control of the fingertip towards the target, with damping (return about -10
    per episode where a uniform random policy gets about -43 and no torque about -12)."""
    q1, q2 = np.arctan2(obs[2], obs[0]), np.arctan2(obs[3], obs[1])
    s1, s12, c1, c12 = np.sin(q1), np.sin(q1 + q2), np.cos(q1), np.cos(q1 + q2)
    jacobian = np.array([[-0.1 * s1 - 0.11 * s12, -0.11 * s12], [0.1 * c1 + 0.11 * c12, 0.11 * c12]])
    return np.clip(jacobian.T @ (-5.0 * obs[8:10]) - 0.1 * obs[6:8], -1, 1).astype(np.float32)


def reacher_still(obs: np.ndarray) -> np.ndarray:
    """Reacher-v5: no torque."""
    return np.zeros(2, dtype=np.float32)


def test_a_negative_return_task_gets_a_random_normalised_score(tmp_path, capsys):
    """Reacher's returns are all negative: student / teacher return means nothing there, (student - random) /
    (teacher - random) is 0 for random and 1 for the teacher."""
    out = tmp_path / "eval.json"
    assert main(["evaluate", "suite=Reacher-v5", "policy=test_scores:reacher_still", "teachers=test_scores:reacher_pd",
                 "episodes=4", "n_envs=2", f"out={out}"]) == 0
    row = read_json(out)["tasks"]["Reacher-v5"]
    t = row["teacher"]
    student, teacher, random = row["return_mean"], t["teacher_return_mean"], t["random_return_mean"]
    assert random < student < teacher < 0
    assert t["score"] == pytest.approx((student - random) / (teacher - random)) and 0 < t["score"] < 1
    assert t["return_ratio"] is None and t["success_ratio"] is None
    assert f"{t['score']:.3f}" in capsys.readouterr().out
    assert teacher_normalised({"return_mean": teacher, "success_rate": None},
                              {"return_mean": teacher, "success_rate": None},
                              {"return_mean": random, "success_rate": None})["score"] == pytest.approx(1.0)


def test_the_headline_is_the_success_ratio_where_there_is_success():
    assert headline(0.97, 1.4) == {"metric": "success ratio", "value": 0.97}
    assert headline(None, 0.8) == {"metric": "score", "value": 0.8}


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
    best = max(rows, key=lambda r: (r["mean_success"], r["round"]))  # ties: the later round, never the score
    assert summary["best_round"] == best["round"] == summary["best"]["round"]
    assert "validation seeds (777, 778, ...)" in summary["best"]["criterion"]
    assert read_bundle_info(out / "best")["meta"]["round"] == best["round"]
    assert read_bundle_info(out / "student")["meta"]["round"] == rows[-1]["round"]
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("round ") and "beta" in r.getMessage()]
    assert len(lines) == 3 and all("success" in ln and "(north " in ln and "score" in ln for ln in lines)
    assert all(f"success ratio {r['mean_success_ratio']:.3f}; success" in ln for r, ln in zip(rows, lines, strict=True))
    assert all(r["headline"] == {"metric": "success ratio", "value": r["mean_success_ratio"]} for r in rows)
    assert set(summary["random"]) == {"north", "east", "south", "west"}
    for name, task in rows[-1]["tasks"].items():
        assert task["random_return_mean"] == summary["random"][name]["return_mean"]
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


def test_methods_are_ordered_by_what_they_win_on_most_seeds():
    """The order counts the seeds: a method ahead on two of three seeds ranks above one with a higher mean from a
    single lucky seed, and each step says on how many seeds the upper method was ahead."""
    scores = {"lucky": [0.1, 0.2, 1.5], "steady": [0.5, 0.6, 0.4], "best": [0.9, 0.9, 0.95]}
    assert ordering(scores) == "best >(3/3) steady >(2/3) lucky"
    assert ordering({"a": [0.2], "b": [0.7]}) == "b > a"
