"""Collection semantics: every recorded step belongs to its episode, terminated and truncated stay apart."""

from pathlib import Path

import numpy as np
from conftest import goal_seeker

from policydistill.data.shards import EpisodeStore, ShardWriter
from policydistill.distill.collect import collect
from policydistill.policy import CallablePolicy, RandomPolicy
from policydistill.suites import load_suite
from policydistill.teachers import TeacherBank


def test_recorded_steps_replay_exactly_from_their_episode_reset(default_suite):
    """No observation (or label) is ever taken from another episode: replaying each episode's
    executed actions from its seeded reset reproduces every recorded observation."""
    bank = TeacherBank([goal_seeker() for _ in default_suite.tasks])
    env = default_suite.make_env(0)
    student = RandomPolicy(env.action_space, groups=("policy", "task"), seed=3)
    records = collect(default_suite, [0, 1, 2, 3], bank, student, beta=0.5, episodes_per_task=2, n_envs=3, seed=10,
                      rng=np.random.default_rng(0))
    assert len(records) == 8
    for rec in records:
        env = default_suite.make_env(rec.task_index)
        obs, _ = env.reset(seed=rec.episode.seed)
        for t in range(rec.episode.length):
            for g in ("policy", "privileged", "task"):
                np.testing.assert_array_equal(rec.steps[f"obs/{g}"][t], obs[g])
            obs, *_ = env.step(rec.steps["action"][t])
        label = bank.label({g: rec.steps[f"obs/{g}"] for g in ("policy", "privileged", "task")})
        np.testing.assert_array_equal(rec.steps["label_mean"], label.mean)
        assert set(np.unique(rec.steps["actor"])) <= {0, 1}


def test_terminated_and_truncated_stay_distinct_to_the_store(tmp_path):
    suite = load_suite("InvertedPendulum-v5")
    idle = CallablePolicy(lambda x: np.full((len(x), 1), 3.0), groups=("policy",), batched=True)
    records = collect(suite, [0], TeacherBank([idle]), None, beta=1.0, episodes_per_task=3, n_envs=3, seed=0,
                      rng=np.random.default_rng(0))
    with ShardWriter(tmp_path) as writer:
        for rec in records:
            assert rec.steps["terminated"][-1] and not rec.steps["truncated"].any()  # it falls over
            assert not rec.steps["terminated"][:-1].any() and rec.episode.length < 1000
            writer.add(rec.steps, {"task": rec.episode.task, "task_index": 0, "seed": rec.episode.seed,
                                   "success": rec.episode.success, "round": 0, "beta": 1.0})
    data = EpisodeStore(tmp_path).load(["terminated", "truncated"])
    assert data["terminated"].sum() == 3 and data["truncated"].sum() == 0
    pointreach = collect(load_suite("default"), [0], TeacherBank([goal_seeker()] * 4), None, 1.0, 1, 1, 0,
                         np.random.default_rng(0))[0]
    assert pointreach.steps["truncated"][-1] and not pointreach.steps["terminated"].any()


def test_envs_reused_from_a_pool_give_the_same_episodes(default_suite):
    from policydistill.eval.rollout import EnvPool

    bank = TeacherBank([goal_seeker() for _ in default_suite.tasks])
    pool = EnvPool(default_suite)
    runs = [collect(default_suite, [0, 3], bank, None, 1.0, 2, 4, seed=5, rng=np.random.default_rng(0), pool=p)
            for p in (None, pool, pool)]  # fresh envs, then the pool's envs twice (the second time reused)
    assert sum(len(v) for v in pool.free.values()) == 4
    for a, b in zip(runs[0], runs[2], strict=True):
        assert a.episode == b.episode and all(np.array_equal(a.steps[k], b.steps[k]) for k in a.steps)
    pool.close()
    assert not pool.free


def test_teacher_noise_perturbs_executed_actions_not_labels(default_suite):
    import pytest

    from policydistill.teachers import policies_for_suite

    zoo = policies_for_suite(Path(__file__).resolve().parents[1] / "envs/zoo/default", default_suite, device="cpu")
    bank = TeacherBank([zoo[n] for n in default_suite.task_names])
    rec = collect(default_suite, [1], bank, None, 1.0, 1, 1, seed=0, rng=np.random.default_rng(0),
                  teacher_noise=0.5)[0]
    steps = rec.steps
    label = bank.label({g: steps[f"obs/{g}"] for g in ("policy", "privileged", "task")})
    np.testing.assert_allclose(steps["label_mean"], label.mean, atol=1e-6)  # labels: the teacher's mean
    deviation = np.abs(steps["action"] - steps["label_mean"])
    assert deviation.mean() > 0.05 and np.all(np.abs(steps["action"]) <= 1.0) and not steps["actor"].any()
    with pytest.raises(ValueError, match="teacher_noise needs teachers with a label std"):
        collect(default_suite, [0], TeacherBank([goal_seeker()] * 4), None, 1.0, 1, 1, 0, np.random.default_rng(0),
                teacher_noise=0.5)
