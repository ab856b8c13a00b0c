"""Episode stores to Minari datasets and back, with the real ``minari`` (run in .venv-datasets by .ci/run)."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

minari = pytest.importorskip("minari")

from policydistill.cli.main import main  # noqa: E402
from policydistill.data.shards import EpisodeStore, ShardWriter  # noqa: E402
from policydistill.suites import load_suite  # noqa: E402


def played_store(root: Path, episodes_per_task: int = 2, steps: int = 30) -> EpisodeStore:
    """Real episodes of the ``default`` suite (random actions, labelled by a fixed linear map) in a store
    beside a run.json that names the suite."""
    suite = load_suite("default")
    rng = np.random.default_rng(0)
    with ShardWriter(root / "episodes", shard_steps=100) as writer:
        for task in range(len(suite.tasks)):
            env = suite.make_env(task)
            for k in range(episodes_per_task):
                obs, _ = env.reset(seed=10 * task + k)
                rows: dict[str, list] = {}
                for t in range(steps):
                    action = rng.uniform(-1, 1, 2).astype(np.float32)
                    for g, v in obs.items():
                        rows.setdefault(f"obs/{g}", []).append(v)
                    obs, reward, terminated, truncated, _ = env.step(action)
                    truncated = truncated or t == steps - 1
                    for name, value in (("action", action), ("label_mean", -0.5 * action),
                                        ("label_std", np.full(2, 0.1 + t / 100, np.float32)),
                                        ("actor", t % 2), ("reward", reward), ("terminated", terminated),
                                        ("truncated", truncated and not terminated)):
                        rows.setdefault(name, []).append(value)
                    if terminated or truncated:
                        break
                writer.add({k: np.asarray(v) for k, v in rows.items()},
                           {"task": suite.task_names[task], "task_index": task, "seed": 10 * task + k,
                            "success": bool(k % 2), "round": k, "beta": 0.5, "note": [1, "x"]})
            env.close()
    (root / "run.json").write_text(json.dumps({"command": "distill", "config": {"suite": "default"}}))
    return EpisodeStore(root / "episodes")


def test_export_loads_in_minari_and_imports_back_exactly(tmp_path, monkeypatch):
    store = played_store(tmp_path / "run")
    out = tmp_path / "minari" / "default-dagger-v0"
    assert main(["dataset", "export", f"episodes={store.root}", "format=minari", f"out={out}"]) == 0

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(out.parent))
    dataset = minari.load_dataset("default-dagger-v0")
    assert dataset.total_episodes == len(store) and dataset.total_steps == store.steps
    (meta, arrays), episode = next(store.iter_episodes()), dataset[0]
    t = meta["length"]
    assert set(episode.observations) == {"policy", "privileged", "task"}
    assert len(episode.observations["policy"]) == t + 1  # Minari's T + 1 observations
    np.testing.assert_array_equal(episode.actions, arrays["action"])
    np.testing.assert_array_equal(episode.infos["teacher_action"][:t], arrays["label_mean"])
    np.testing.assert_array_equal(episode.infos["actor"][:t], arrays["actor"])
    assert list(dataset.storage.get_episode_metadata([0]))[0]["task"] == meta["task"]

    back = tmp_path / "back"
    assert main(["dataset", "import", f"path={out}", f"out={back}"]) == 0
    again = EpisodeStore(back)
    assert again.fields == store.fields and len(again) == len(store)
    for (m1, a1), (m2, a2) in zip(store.iter_episodes(), again.iter_episodes(), strict=True):
        assert {k: v for k, v in m1.items() if k not in ("shard", "offset")} == \
            {k: v for k, v in m2.items() if k not in ("shard", "offset")}
        for k in a1:
            assert a1[k].dtype == a2[k].dtype, k
            np.testing.assert_array_equal(a1[k], a2[k], err_msg=k)


def collect_with_minari(tmp_path: Path, monkeypatch, env_id: str, dataset_id: str, episodes: int = 3) -> Path:
    """A dataset written by Minari's own DataCollector around a stock gymnasium env, random actions."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "foreign"))
    env = minari.DataCollector(gym.make(env_id, max_episode_steps=40))
    env.action_space.seed(0)
    for k in range(episodes):
        env.reset(seed=k)
        while True:
            _, _, terminated, truncated, _ = env.step(env.action_space.sample())
            if terminated or truncated:
                break
    with warnings.catch_warnings():  # no author, permalink, ...: a test's dataset
        warnings.simplefilter("ignore", UserWarning)
        env.create_dataset(dataset_id=dataset_id, algorithm_name="random")
    return tmp_path / "foreign" / dataset_id


def test_a_datacollector_dataset_imports_as_demonstrations(tmp_path, monkeypatch):
    path = collect_with_minari(tmp_path, monkeypatch, "InvertedPendulum-v5", "pendulum-random-v0")
    dataset = minari.load_dataset("pendulum-random-v0")
    assert main(["dataset", "import", f"path={path}", f"out={tmp_path / 'store'}"]) == 2  # which suite?
    assert not (tmp_path / "store").exists()

    assert main(["dataset", "import", f"path={path}", f"out={tmp_path / 'store'}", "suite=InvertedPendulum-v5"]) == 0
    store = EpisodeStore(tmp_path / "store")
    assert len(store) == 3 and store.steps == dataset.total_steps
    data = store.load()
    first = dataset[0]
    t = len(first.rewards)
    np.testing.assert_array_equal(data["obs/policy"][:t], first.observations[:t].astype(np.float32))
    np.testing.assert_array_equal(data["label_mean"], data["action"])  # a demonstration: the label is the action
    assert (data["actor"] == 0).all()
    assert data["obs/task"].shape == (store.steps, 1)  # the suite's task group, added
    assert [m["seed"] for m in store.episodes()] == [0, 1, 2]

    # the same dataset said to come from a suite with other sizes is refused, naming the group
    assert main(["dataset", "import", f"path={path}", f"out={tmp_path / 'double'}",
                 "suite=InvertedDoublePendulum-v5"]) == 2
    assert not (tmp_path / "double").exists()


def test_bad_datasets_are_refused_and_nothing_is_written(tmp_path, monkeypatch, caplog):
    store = played_store(tmp_path / "run", episodes_per_task=1, steps=10)
    out = tmp_path / "m" / "default-v0"
    assert main(["dataset", "export", f"episodes={store.root}", "format=minari", f"out={out}"]) == 0
    assert main(["dataset", "export", f"episodes={store.root}", "format=minari", f"out={out}"]) == 2  # exists
    assert main(["dataset", "export", f"episodes={store.root}", "format=minari",
                 f"out={tmp_path / 'm' / 'no_version'}"]) == 2
    assert main(["dataset", "info", f"path={out}", "format=minari"]) == 2  # a key info does not read
    assert "'dataset info' does not read format" in caplog.text

    # another suite's tasks
    caplog.clear()
    assert main(["dataset", "import", f"path={out}", f"out={tmp_path / 'x'}", "suite=InvertedPendulum-v5"]) == 2
    assert "task 'north' is not a task of suite 'InvertedPendulum-v5'" in caplog.text

    # a non-finite value
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "m"))
    dataset = minari.load_dataset("default-v0")
    episode = dataset[0]
    from minari.data_collector.episode_buffer import EpisodeBuffer

    rewards = np.asarray(episode.rewards, dtype=np.float64)
    rewards[3] = np.nan
    buffer = EpisodeBuffer(observations=episode.observations, actions=episode.actions, rewards=rewards,
                           terminations=episode.terminations, truncations=episode.truncations, infos=episode.infos)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        minari.create_dataset_from_buffers("nan-v0", [buffer], observation_space=dataset.observation_space,
                                           action_space=dataset.action_space)
    caplog.clear()
    assert main(["dataset", "import", f"path={tmp_path / 'm' / 'nan-v0'}", f"out={tmp_path / 'y'}",
                 "suite=default", "task=north"]) == 2
    assert "field 'rewards' has 1 non-finite values" in caplog.text
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


TINY = {"bc": ["method.rounds=1", "method.updates_per_round=20", "eval_episodes=1", "final_episodes=0"],
        "diffusion": ["method.train_steps=10", "method.hidden=[32]", "method.sampler_steps=4", "eval_episodes=1",
                      "final_episodes=0"]}
"""Overrides that make each documented distill command cheap."""


def _method(words: list[str]) -> str:
    return next((w.split("=", 1)[1] for w in words if w.startswith("method=")), "")


def test_every_documented_dataset_command_runs(tmp_path, monkeypatch):
    """The console blocks of docs/datasets.md, in order, on a store of real episodes at runs/distill; the setup
    script and the pytest line are what CI runs (.ci/run)."""
    docs = Path(__file__).resolve().parents[1] / "docs" / "datasets.md"
    monkeypatch.chdir(tmp_path)
    played_store(tmp_path / "runs" / "distill")
    lines = [ln for block in docs.read_text().split("```console")[1:] for ln in block.split("```")[0].splitlines()]
    ran = 0
    for line in (" ".join(shlex.split(ln, comments=True)) for ln in lines if ln.strip()):
        words = shlex.split(line)
        if words[0] == "bash" or words[1:3] == ["-m", "pytest"]:
            continue
        if words[1:3] == ["-m", "bench"]:
            subprocess.run([sys.executable, *words[1:], "--smoke", "--results-dir", str(tmp_path / "bench")],
                           cwd=docs.parents[1], check=True, capture_output=True)
        else:
            assert words[0] == ".venv-datasets/bin/policydistill", line
            assert main([*words[1:], *TINY.get(_method(words), [])]) == 0, line
        ran += 1
    assert ran == 7
    python = next(b for b in docs.read_text().split("```python")[1:]).split("```")[0]
    monkeypatch.setenv("MINARI_DATASETS_PATH", "")  # the page's Python sets it; restored after the test
    exec(compile(textwrap.dedent(python), str(docs), "exec"), {})
    assert minari.load_dataset("default-dagger-v0").total_episodes == 8


def test_offline_students_from_the_round_trip_equal_those_from_the_store(tmp_path):
    """BC and diffusion trained (teachers=none) on the exported-then-imported dataset are the students trained on
    the original store: same weights, same scores."""
    from policydistill.files import read_json

    store = played_store(tmp_path / "run", episodes_per_task=3, steps=40)
    out = tmp_path / "minari" / "played-v0"
    assert main(["dataset", "export", f"episodes={store.root}", "format=minari", f"out={out}"]) == 0
    assert main(["dataset", "import", f"path={out}", f"out={tmp_path / 'back'}"]) == 0
    runs = {}
    for name, data in (("store", store.root), ("back", tmp_path / "back")):
        for method, keys in (("bc", ["method.rounds=1", "method.updates_per_round=50"]),
                             ("diffusion", ["method.train_steps=20", "method.hidden=[32]", "method.sampler_steps=4"])):
            run = tmp_path / f"{method}_{name}"
            assert main(["distill", "teachers=none", f"method={method}", f"method.data=[{data}]", *keys,
                         "eval_episodes=2", "final_episodes=0", f"out={run}"]) == 0
            runs[method, name] = run
    for method in ("bc", "diffusion"):
        a, b = (read_json(runs[method, n] / "distill.json") for n in ("store", "back"))
        assert a["teacher"] == b["teacher"] and a["rounds"][-1]["tasks"] == b["rounds"][-1]["tasks"]
        weights = [(runs[method, n] / "student" / "model.safetensors").read_bytes() for n in ("store", "back")]
        assert weights[0] == weights[1]


def test_dagger_warm_starts_from_an_imported_dataset(tmp_path):
    """An imported dataset's steps join a DAgger run with teachers, labelled by them (method.extra_episodes)."""
    from policydistill.files import read_json

    store = played_store(tmp_path / "run", episodes_per_task=1, steps=20)
    out = tmp_path / "minari" / "warm-v0"
    assert main(["dataset", "export", f"episodes={store.root}", "format=minari", f"out={out}"]) == 0
    assert main(["dataset", "import", f"path={out}", f"out={tmp_path / 'back'}"]) == 0
    zoo = Path(__file__).resolve().parents[1] / "envs" / "zoo" / "default"
    assert main(["distill", f"teachers={zoo}", "method=dagger", f"method.extra_episodes={tmp_path / 'back'}",
                 "method.rounds=1", "method.episodes_per_task=1", "method.updates_per_round=5", "eval_episodes=1",
                 "final_episodes=0", f"out={tmp_path / 'dagger'}"]) == 0
    row = read_json(tmp_path / "dagger" / "distill.json")["rounds"][0]
    assert row["labels_used"] == 4 * 100 + store.steps  # its own episodes, then every imported step


def test_a_foreign_dataset_names_its_tasks_in_minaris_episode_metadata(tmp_path, monkeypatch):
    """Without the record, each episode's task comes from Minari's episode metadata (``task``)."""
    from minari.data_collector.episode_buffer import EpisodeBuffer

    store = played_store(tmp_path / "run", episodes_per_task=1, steps=10)
    out = tmp_path / "m" / "ours-v0"
    assert main(["dataset", "export", f"episodes={store.root}", "format=minari", f"out={out}"]) == 0
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "m"))
    ours = minari.load_dataset("ours-v0")
    buffers = [EpisodeBuffer(observations=e.observations, actions=e.actions, rewards=e.rewards,
                             terminations=e.terminations, truncations=e.truncations) for e in ours]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        foreign = minari.create_dataset_from_buffers("foreign-v0", buffers, observation_space=ours.observation_space,
                                                     action_space=ours.action_space)
    tasks = [m["task"] for m in store.episodes()]
    foreign.storage.update_episode_metadata([{"task": t} for t in tasks])
    assert main(["dataset", "import", f"path={tmp_path / 'm' / 'foreign-v0'}", f"out={tmp_path / 'back'}",
                 "suite=default"]) == 0
    back = EpisodeStore(tmp_path / "back")
    assert [m["task"] for m in back.episodes()] == tasks
    assert [m["task_index"] for m in back.episodes()] == [0, 1, 2, 3]
    np.testing.assert_array_equal(back.load(["label_mean"])["label_mean"], store.load(["action"])["action"])
