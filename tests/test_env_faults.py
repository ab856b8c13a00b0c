"""Episodes ended by an env fault count as failures, with the kind, seed and step of the fault."""

import json
import logging

import numpy as np
import pytest
from conftest import goal_seeker
from faulty_envs import FaultyEnv

from policydistill.cli import main
from policydistill.eval.metrics import summarise
from policydistill.eval.rollout import drive, rollout, run_episodes
from policydistill.policy import CallablePolicy
from policydistill.suites import load_suite, suite_from_dict
from policydistill.suites.batched import GymEnvs
from policydistill.suites.wrappers import BoxToGroups

UNSTABLE = "faulty_envs:unstable_point_reach"


def _faulty_suite(fault: str, batched: str | None = None):
    spec = {"tasks": [{"name": "f", "env": "faulty_envs:FaultyEnv", "kwargs": {"fault": fault}}]}
    return suite_from_dict({**spec, "batched": batched} if batched else spec, "faulty")


def _still() -> CallablePolicy:
    return CallablePolicy(lambda x: np.zeros((len(x), 1), np.float32), groups=("policy",), batched=True)


def test_a_simulator_that_blows_up_in_half_the_episodes_fails_them(caplog):
    """The project's MuJoCo env goes unstable (NaN velocities, which MuJoCo resets) at step 3 of odd seeds."""
    suite = suite_from_dict({"tasks": [{"name": "north", "env": UNSTABLE, "kwargs": {"target": "north"}}]}, "unstable")
    caplog.set_level(logging.WARNING)
    stats = summarise(run_episodes(suite, "north", goal_seeker(), episodes=6, n_envs=3, seed=0))
    assert stats["success_rate"] <= 0.5 and stats["dropped"] == 3 and stats["episodes"] == 6
    faults = [(f["seed"], f["step"], f["kind"]) for f in stats["faults"]]
    assert faults == [(s, 3, "nan_observation") for s in (1, 3, 5)]
    assert stats["faults"][0]["error"].startswith(f"task north (env {UNSTABLE}) seed 1 step 3: simulator state")
    assert "QVEL" in stats["faults"][0]["error"] and "seed 1 step 3" in caplog.text
    # the return of a failed episode is the reward of its steps before the fault
    clean = rollout(load_suite("default"), [0], lambda o: (goal_seeker().act(o), {}), 6, n_envs=3, record=True)
    expected = [r.episode.ret if r.episode.seed % 2 == 0 else float(r.steps["reward"][:2].sum()) for r in clean]
    assert stats["return_mean"] == pytest.approx(np.mean(expected), rel=1e-5)


@pytest.mark.parametrize("batched", [None, "gymnasium"])
@pytest.mark.parametrize("fault, kind, reason", [
    ("nan", "nan_observation", "env returned a non-finite observation in groups ['policy']"),
    ("nan_reward", "nan_reward", "env returned a non-finite reward (nan)"),
    ("raise", "env_exception", "env raised RuntimeError: simulator exploded"),
])
def test_fault_kinds_are_told_apart_with_seed_and_step(fault, kind, reason, batched):
    eps = run_episodes(_faulty_suite(fault, batched), "f", _still(), episodes=6, n_envs=2, seed=0)
    stats = summarise(eps)
    assert stats["dropped"] == 3 and stats["success_rate"] == 0.5
    assert stats["return_mean"] == pytest.approx((3 * 5.0 + 3 * 2.0) / 6)  # 2 rewards before the fault
    assert stats["length_mean"] == pytest.approx((3 * 5 + 3 * 3) / 6)
    assert stats["faults"] == [{"seed": s, "step": 3, "kind": kind,
                                "error": f"task f (env faulty_envs:FaultyEnv) seed {s} step 3: {reason}"}
                               for s in (1, 3, 5)]


@pytest.mark.parametrize("fault, kind", [("nan", "nan_observation"), ("nan_reward", "nan_reward"),
                                         ("nan_reset", "nan_observation")])
def test_the_loop_finds_non_finite_values_of_an_env_without_the_wrapper(fault, kind):
    env = GymEnvs([BoxToGroups(FaultyEnv(fault)) for _ in range(2)])
    records = drive(env, [0, 0], ["f"], lambda o: (np.zeros((2, 1), np.float32), {}), 4, env_ids=["bare"])
    faults = summarise([r.episode for r in records])["faults"]
    step = 0 if fault == "nan_reset" else 3
    assert [(f["seed"], f["step"], f["kind"]) for f in faults] == [(1, step, kind), (3, step, kind)]


@pytest.mark.parametrize("batched", [None, "gymnasium"])
def test_a_non_finite_observation_on_reset_names_task_and_seed(batched):
    eps = run_episodes(_faulty_suite("nan_reset", batched), "f", _still(), episodes=4, n_envs=2, seed=0)
    stats = summarise(eps)
    assert stats["dropped"] == 2 and stats["success_rate"] == 0.5
    assert stats["faults"][0] == {"seed": 1, "step": 0, "kind": "nan_observation", "error":
                                  "task f (env faulty_envs:FaultyEnv) seed 1: reset returned a non-finite "
                                  "observation in groups ['policy']"}
    assert [(e.ret, e.length) for e in eps if e.error] == [(0.0, 0), (0.0, 0)]


def test_non_finite_actions_fail_every_episode_without_an_error(caplog):
    nan = CallablePolicy(lambda x: np.full((len(x), 1), np.nan, np.float32), groups=("policy",), batched=True)
    caplog.set_level(logging.WARNING)
    stats = summarise(run_episodes(_faulty_suite("none"), "f", nan, episodes=3, n_envs=2, seed=0))
    assert stats["success_rate"] == 0.0 and stats["dropped"] == 3 and stats["return_mean"] == 0.0
    assert {(f["step"], f["kind"]) for f in stats["faults"]} == {(1, "nan_action")}
    assert "all 3 episodes ended in a fault" in caplog.text


def test_evaluate_command_reports_dropped_episodes(tmp_path, capsys):
    suite = tmp_path / "unstable.yaml"
    suite.write_text(f"name: unstable\ntasks:\n  - {{name: north, env: '{UNSTABLE}', kwargs: {{target: north}}}}\n")
    out = tmp_path / "eval.json"
    assert main(["evaluate", "policy=conftest:goal_seeker", f"suite={suite}", "episodes=4", "n_envs=2",
                 f"out={out}"]) == 0
    row = json.loads(out.read_text())["tasks"]["north"]
    assert row["dropped"] == 2 and row["success_rate"] == 0.5 and row["episodes"] == 4
    assert [f["seed"] for f in row["faults"]] == [1001, 1003]
    table = capsys.readouterr().out.splitlines()
    assert "dropped" in table[0] and next(line for line in table if line.startswith("north")).split()[-1] == "2"


def test_report_plots_mark_dropped_episodes():
    import matplotlib.pyplot as plt

    from policydistill.eval.report import label_dropped

    fig, ax = plt.subplots()
    label_dropped(ax, ax.bar([0, 1], [1.0, 2.0]), [{"dropped": 0}, {"dropped": 2}])
    assert [t.get_text() for t in ax.texts] == ["", "2 dropped"]
    plt.close(fig)
