import numpy as np
import pytest

from policydistill.eval.metrics import ci95, summarise, teacher_normalised
from policydistill.eval.rollout import run_episodes
from policydistill.policy import RandomPolicy
from policydistill.suites import suite_from_dict


def test_seeker_succeeds_and_random_fails(default_suite, seeker):
    good = summarise(run_episodes(default_suite, "north", seeker, episodes=6, n_envs=3, seed=0))
    env = default_suite.make_env(0)
    bad = summarise(run_episodes(default_suite, "north", RandomPolicy(env.action_space), episodes=6, seed=0))
    assert good["success_rate"] == 1.0 and bad["success_rate"] == 0.0
    assert good["return_mean"] > bad["return_mean"] + good["return_ci95"] + bad["return_ci95"]
    assert good["episodes"] == 6 and good["length_mean"] == env.spec.max_episode_steps


def test_episode_seeds_do_not_depend_on_n_envs(default_suite):
    env = default_suite.make_env(0)
    a = run_episodes(default_suite, 0, RandomPolicy(env.action_space, seed=1), episodes=5, n_envs=1, seed=7)
    b = run_episodes(default_suite, 0, RandomPolicy(env.action_space, seed=1), episodes=5, n_envs=5, seed=7)
    assert [e.seed for e in a] == [e.seed for e in b] == list(range(7, 12))


def test_deterministic_policy_gives_identical_results(default_suite, seeker):
    a = run_episodes(default_suite, 2, seeker, episodes=4, n_envs=2, seed=3)
    b = run_episodes(default_suite, 2, seeker, episodes=4, n_envs=4, seed=3)
    assert [e.ret for e in a] == pytest.approx([e.ret for e in b], abs=1e-9)


@pytest.mark.parametrize("fault, reason", [("nan", "non-finite"), ("raise", "simulator exploded")])
def test_faulty_env_episodes_are_dropped_and_the_run_goes_on(fault, reason):
    suite = suite_from_dict({"tasks": [{"name": "f", "env": "faulty_envs:FaultyEnv", "kwargs": {"fault": fault}}]},
                            "faulty")
    env = suite.make_env(0)
    eps = run_episodes(suite, "f", RandomPolicy(env.action_space), episodes=6, n_envs=2, seed=0)
    dropped = [e for e in eps if e.error]
    assert [e.seed for e in dropped] == [1, 3, 5] and all(reason in e.error for e in dropped)
    stats = summarise(eps)
    # dropped episodes count as failures, with the 2 rewards before the fault
    assert stats["episodes"] == 6 and stats["dropped"] == 3 and stats["success_rate"] == 0.5
    assert stats["return_mean"] == (3 * 5.0 + 3 * 2.0) / 6


def test_metrics():
    assert ci95([1.0]) == 0.0
    assert ci95([1.0, 3.0]) == pytest.approx(12.706 * np.std([1, 3], ddof=1) / np.sqrt(2))
    zero = {"return_mean": 0.0, "success_rate": 0.0}
    t = teacher_normalised({"return_mean": 9.0, "success_rate": 0.8}, {"return_mean": 10.0, "success_rate": 1.0}, zero)
    assert t["score"] == pytest.approx(0.9) and t["success_diff"] == pytest.approx(-0.2)
    assert t["return_ratio"] == pytest.approx(0.9) and t["success_ratio"] == pytest.approx(0.8)
    assert teacher_normalised({"return_mean": 1.0, "success_rate": 0}, {"return_mean": -1.0, "success_rate": 0},
                              zero)["score"] is None
