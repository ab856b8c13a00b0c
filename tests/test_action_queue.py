"""The action queue: stale actions never executed, temporal ensembling online = offline, blending."""

from __future__ import annotations

import numpy as np
import pytest

from policydistill.runtime.action_queue import ActionQueue, ensemble_offline


def _chunk(n: int, horizon: int, act_dim: int, rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(-1, 1, (n, horizon, act_dim)).astype(np.float32)


def test_a_chunk_plans_the_ticks_from_its_observation_and_drops_what_arrived_late():
    q = ActionQueue(2, 1, capacity=6)
    chunk = np.arange(12, dtype=np.float32).reshape(2, 6, 1)
    q.add(chunk, start=10, now=13)  # computed from tick 10's observation, ready at tick 13
    assert q.remaining(13).tolist() == [3, 3] and q.dropped.tolist() == [3, 3]
    a, ok = q.pop(13)
    assert ok.all() and a[:, 0].tolist() == [3.0, 9.0]
    a, ok = q.pop(15)  # tick 14 was missed by the loop: its action is stale, never executed
    assert ok.all() and a[:, 0].tolist() == [5.0, 11.0] and q.dropped.tolist() == [4, 4]
    a, ok = q.pop(16)
    assert not ok.any() and np.all(a == 0)
    q.add(chunk, start=20, now=26)  # arrived after its whole horizon: nothing executable
    assert q.remaining(26).tolist() == [0, 0] and q.dropped.tolist() == [10, 10]
    with pytest.raises(ValueError, match="cannot arrive earlier"):
        q.add(chunk, start=30, now=29)
    with pytest.raises(ValueError, match=r"chunk has shape \(2, 7, 1\), expected \(2, H <= 6, 1\)"):
        q.add(np.zeros((2, 7, 1)), start=30, now=30)


def test_replace_swaps_the_plan_and_only_for_the_envs_asked():
    q = ActionQueue(3, 2, capacity=4)
    old, new = np.ones((3, 4, 2)), np.full((3, 2, 2), 5.0)
    q.add(old, 0, 0)
    q.add(new, 1, 1, envs=np.array([True, False, True]))
    assert q.remaining(1).tolist() == [2, 3, 2]  # the old plan's later ticks are discarded with the plan
    a, ok = q.pop(1)
    assert ok.all() and a[:, 0].tolist() == [5.0, 1.0, 5.0]
    q.clear(np.array([False, True, False]))
    assert q.has(2).tolist() == [True, False, True]
    q.clear()
    assert not q.has(2).any()


def test_blending_crossfades_from_the_old_plan_over_blend_steps_ticks():
    B = 3
    q = ActionQueue(1, 1, capacity=8, blend_steps=B)
    q.add(np.zeros((1, 8, 1)), 0, 0)
    q.pop(0)
    q.add(np.ones((1, 8, 1)), start=1, now=2)  # first executable new action is at tick 2
    got = [q.pop(t)[0][0, 0] for t in range(2, 9)]
    alpha = [(k + 1) / (B + 1) for k in range(B)]
    np.testing.assert_allclose(got, alpha + [1.0] * 4, atol=1e-7)
    assert np.max(np.abs(np.diff([0.0, *got]))) <= 1 / (B + 1) + 1e-7  # no jump: steps of 1 / (B + 1)
    # where the old plan has no action (its horizon ended), the new chunk is taken as it is
    q = ActionQueue(1, 1, capacity=4, blend_steps=2)
    q.add(np.zeros((1, 2, 1)), 0, 0)
    q.add(np.ones((1, 4, 1)), 1, 1)
    np.testing.assert_allclose([q.pop(t)[0][0, 0] for t in range(1, 5)], [1 / 3, 1.0, 1.0, 1.0], atol=1e-7)


@pytest.mark.parametrize("m", [0.0, 0.1, 1.5, -0.4])
def test_temporal_ensembling_online_equals_the_offline_average(m):
    rng = np.random.default_rng(7)
    n, horizon, act_dim, ticks = 3, 10, 4, 120
    q = ActionQueue(n, act_dim, horizon, mode="ensemble", ensemble_m=m)
    chunks, online, offline = [], [], []
    pending: list[tuple[int, int, np.ndarray]] = []
    for t in range(ticks):
        if rng.random() < 0.6:  # requests at random ticks, each ready 0-3 ticks later
            pending.append((t, t + int(rng.integers(0, 4)), _chunk(n, horizon, act_dim, rng)))
        for item in sorted((p for p in pending if p[1] == t), key=lambda p: p[0]):
            q.add(item[2], start=item[0], now=t)
            chunks.append(item)
        pending = [p for p in pending if p[1] != t]
        if rng.random() < 0.05:  # a missed tick: nothing executes, its predictions go stale
            continue
        a, ok = q.pop(t)
        want = ensemble_offline(chunks, t, m)
        if want is None:
            assert not ok.any()
            continue
        assert ok.all()
        online.append(a)
        offline.append(want)
    assert len(online) > 80
    counts = [sum(1 for s, arr, c in chunks if arr <= t < s + horizon and s <= t) for t in range(ticks)]
    assert max(counts) >= 5  # many overlapping chunks per tick were averaged
    np.testing.assert_allclose(np.array(online), np.array(offline), rtol=0, atol=1e-6)


def test_ensembling_weights_are_exponential_oldest_first():
    q = ActionQueue(1, 1, capacity=3, mode="ensemble", ensemble_m=0.5)
    for k in range(3):  # three chunks all predicting tick 2: values 0, 10, 20 (oldest first)
        chunk = np.full((1, 3, 1), 10.0 * k)
        q.add(chunk, start=k, now=k)
    w = np.exp(-0.5 * np.arange(3))
    np.testing.assert_allclose(q.pop(2)[0][0, 0], np.dot(w, [0, 10, 20]) / w.sum(), rtol=1e-6)


def test_queue_refuses_bad_settings():
    with pytest.raises(ValueError, match="unknown action queue mode 'average'"):
        ActionQueue(1, 1, 4, mode="average")
    with pytest.raises(ValueError, match="finite ensemble_m"):
        ActionQueue(1, 1, 4, ensemble_m=float("nan"))
