"""Episode shards: round trips, appends, validation, integrity checks, kill leftovers and eviction."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from policydistill.data import EpisodeStore, ShardError, ShardWriter, evict
from policydistill.data.shards import MANIFEST


def make_episode(t: int, seed: int = 0, std: bool = True, terminated: bool = True) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ep = {
        "obs/policy": rng.normal(size=(t, 4)).astype(np.float32),
        "obs/privileged": rng.normal(size=(t, 2)).astype(np.float32),
        "action": rng.uniform(-1, 1, size=(t, 2)).astype(np.float32),
        "actor": rng.integers(0, 2, size=t).astype(np.uint8),
        "label_mean": rng.uniform(-1, 1, size=(t, 2)).astype(np.float32),
        "reward": rng.normal(size=t).astype(np.float32),
        "terminated": np.zeros(t, bool),
        "truncated": np.zeros(t, bool),
    }
    if std:
        ep["label_std"] = rng.uniform(0.1, 1, size=(t, 2)).astype(np.float32)
    ep["terminated" if terminated else "truncated"][-1] = True
    return ep


def make_meta(i: int, rnd: int = 0, **extra) -> dict:
    return {"task": "north" if i % 2 == 0 else "east", "task_index": i % 2, "seed": i, "success": bool(i % 3),
            "round": rnd, "beta": 0.5, **extra}


def write(root: Path, lengths: list[int], shard_steps: int = 1000, rnd: int = 0, first: int = 0) -> list[dict]:
    eps = []
    with ShardWriter(root, shard_steps=shard_steps) as w:
        for i, t in enumerate(lengths, start=first):
            ep = make_episode(t, seed=i)
            w.add(ep, make_meta(i, rnd))
            eps.append(ep)
    return eps


def test_round_trip_keeps_arrays_meta_and_dtypes(tmp_path: Path) -> None:
    eps = [make_episode(5, 0), make_episode(3, 1, terminated=False)]
    with ShardWriter(tmp_path) as w:
        w.add(eps[0], make_meta(0, note="first", gains=[1.0, 2.0]))
        w.add(eps[1], {**make_meta(1), "return": 7.5, "seed": None})
    store = EpisodeStore(tmp_path)
    assert len(store) == 2 and store.steps == 8
    data = store.load()
    for k, v in eps[0].items():
        assert data[k].dtype == v.dtype, k
        np.testing.assert_array_equal(data[k], np.concatenate([eps[0][k], eps[1][k]]))
    m0, m1 = store.episodes()
    assert m0["note"] == "first" and m0["gains"] == [1.0, 2.0] and m0["length"] == 5 and m0["offset"] == 0
    assert m0["return"] == pytest.approx(float(eps[0]["reward"].sum()))
    assert m1 == {**make_meta(1), "return": 7.5, "seed": None, "length": 3, "shard": m0["shard"], "offset": 5}
    got = list(store.iter_episodes(fields=["action", "terminated", "truncated"]))
    assert [m["offset"] for m, _ in got] == [0, 5]
    np.testing.assert_array_equal(got[1][1]["action"], eps[1]["action"])
    assert set(got[1][1]) == {"action", "terminated", "truncated"}


def test_terminated_and_truncated_stay_distinct(tmp_path: Path) -> None:
    write(tmp_path, [4, 4])  # two terminated episodes; then a truncated one and one that is both
    with ShardWriter(tmp_path) as w:
        w.add(make_episode(3, 9, terminated=False), make_meta(9))
        both = make_episode(2, 10)
        both["truncated"][-1] = True
        w.add(both, make_meta(10))
    data = EpisodeStore(tmp_path).load(fields=["terminated", "truncated"])
    assert np.flatnonzero(data["terminated"]).tolist() == [3, 7, 12]
    assert np.flatnonzero(data["truncated"]).tolist() == [10, 12]


def test_several_shards_and_reopening_appends(tmp_path: Path) -> None:
    eps = write(tmp_path, [30, 30, 30, 30, 30], shard_steps=50)
    eps += write(tmp_path, [10, 10], shard_steps=50, rnd=1, first=5)
    store = EpisodeStore(tmp_path)
    files = [s["file"] for s in store.manifest["shards"]]
    assert files == ["shard-000000.npz", "shard-000001.npz", "shard-000002.npz", "shard-000003.npz"]
    assert store.manifest["totals"] == {"shards": 4, "episodes": 7, "steps": 170}
    assert len(store) == 7 and store.steps == 170
    np.testing.assert_array_equal(store.load(fields=["obs/policy"])["obs/policy"],
                                  np.concatenate([e["obs/policy"] for e in eps]))
    assert all(s["steps"] >= 50 for s in store.manifest["shards"][:2])  # episodes are never split


def test_filtering_with_where(tmp_path: Path) -> None:
    eps = write(tmp_path, [3, 4, 5, 6], shard_steps=7)
    store = EpisodeStore(tmp_path)
    data = store.load(fields=["reward"], where=lambda m: m["task"] == "east")
    np.testing.assert_array_equal(data["reward"], np.concatenate([eps[1]["reward"], eps[3]["reward"]]))
    none = store.load(where=lambda m: False)
    assert none["action"].shape == (0, 2) and none["action"].dtype == np.float32
    assert [m["seed"] for m, _ in store.iter_episodes(where=lambda m: m["task_index"] == 0)] == [0, 2]
    with pytest.raises(KeyError, match="obs/policy"):
        store.load(fields=["obs/polcy"])


@pytest.mark.parametrize("field", ["obs/policy", "action", "label_mean", "label_std", "reward"])
def test_non_finite_refused_with_field_named(tmp_path: Path, field: str) -> None:
    ep = make_episode(4)
    ep[field] = ep[field].copy()
    ep[field][1] = np.nan if field != "reward" else np.inf
    with ShardWriter(tmp_path) as w, pytest.raises(ValueError, match=f"'{field}'.*non-finite"):
        w.add(ep, make_meta(0))
    assert len(EpisodeStore(tmp_path)) == 0


def test_invalid_episodes_refused(tmp_path: Path) -> None:
    w = ShardWriter(tmp_path)
    ep = make_episode(4)
    ep["action"] = ep["action"][:3]
    with pytest.raises(ValueError, match="'action'.*T=4"):
        w.add(ep, make_meta(0))
    ep = make_episode(4)
    ep["terminated"][1] = True
    with pytest.raises(ValueError, match="'terminated'.*before the last step"):
        w.add(ep, make_meta(0))
    ep = make_episode(4)
    ep["label_mean"] = ep["label_mean"][:, :1]
    with pytest.raises(ValueError, match="'label_mean'"):
        w.add(ep, make_meta(0))
    with pytest.raises(ValueError, match="unknown.*acton"):
        w.add({**make_episode(4), "acton": np.zeros((4, 2))}, make_meta(0))
    with pytest.raises(ValueError, match="missing keys.*beta"):
        w.add(make_episode(4), {k: v for k, v in make_meta(0).items() if k != "beta"})
    with pytest.raises(ValueError, match="'length'"):
        w.add(make_episode(4), {**make_meta(0), "length": 5})
    w.add(make_episode(4), make_meta(0))
    with pytest.raises(ValueError, match="label_std"):  # the first episode fixed the store's fields
        w.add(make_episode(4, std=False), make_meta(1))
    assert w.pending_steps == 4


def test_edited_or_missing_shard_is_a_clear_error(tmp_path: Path) -> None:
    write(tmp_path, [5, 5], shard_steps=5)
    shard = tmp_path / "shard-000001.npz"
    blob = bytearray(shard.read_bytes())
    blob[-30] ^= 0xFF
    shard.write_bytes(bytes(blob))
    store = EpisodeStore(tmp_path)
    assert store.load(where=lambda m: m["shard"] == "shard-000000.npz")["reward"].shape == (5,)
    with pytest.raises(ShardError, match="shard-000001.npz.*changed"):
        store.load()
    shard.unlink()
    with pytest.raises(ShardError, match="shard-000001.npz.*missing"):
        EpisodeStore(tmp_path).load()


def test_leftover_temp_files_are_ignored_and_cleaned(tmp_path: Path) -> None:
    write(tmp_path, [5])
    (tmp_path / ".shard-000001.npz.abc123.tmp").write_bytes(b"half a shard")
    (tmp_path / ".manifest.json.def456.tmp").write_text("{")
    (tmp_path / "shard-000001.npz").write_bytes(b"renamed but never listed")
    store = EpisodeStore(tmp_path)
    assert len(store) == 1 and store.load()["reward"].shape == (5,)
    write(tmp_path, [3], first=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == [MANIFEST, "shard-000000.npz", "shard-000001.npz"]
    assert EpisodeStore(tmp_path).steps == 8


def test_eviction_drops_oldest_shards_and_holds_the_cap(tmp_path: Path) -> None:
    for rnd in range(4):
        write(tmp_path, [10, 10], rnd=rnd, first=2 * rnd)
    removed = evict(tmp_path, max_steps=45)
    assert removed == ["shard-000000.npz", "shard-000001.npz"]
    store = EpisodeStore(tmp_path)
    assert store.steps == 40 <= 45 and {m["round"] for m in store.episodes()} == {2, 3}
    assert not (tmp_path / "shard-000000.npz").exists()
    with ShardWriter(tmp_path, shard_steps=100) as w:
        w.add(make_episode(10, 8), make_meta(8, rnd=4))
        assert w.evict(max_steps=20) == ["shard-000002.npz", "shard-000003.npz"]
    store = EpisodeStore(tmp_path)
    assert [s["file"] for s in store.manifest["shards"]] == ["shard-000004.npz"] and store.steps == 10
    assert json.loads((tmp_path / MANIFEST).read_text())["totals"]["steps"] == 10
    assert evict(tmp_path, max_steps=10) == []


def test_not_a_store(tmp_path: Path) -> None:
    with pytest.raises(ShardError, match="not an episode store"):
        EpisodeStore(tmp_path)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ShardError, match="not empty"):
        ShardWriter(tmp_path)


def test_reused_buffers_do_not_change_stored_episodes(tmp_path: Path) -> None:
    ep = make_episode(4)
    before = {k: v.copy() for k, v in ep.items()}
    with ShardWriter(tmp_path) as w:
        w.add(ep, make_meta(0))
        for v in ep.values():
            v[:] = 0  # a collector refilling its buffers before the flush
    data = EpisodeStore(tmp_path).load()
    for k, v in before.items():
        np.testing.assert_array_equal(data[k], v)
