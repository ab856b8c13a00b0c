"""Episode stores as local Minari datasets (``minari`` 0.5, its HDF5 storage), and back.

A Minari dataset is the folder ``<root>/<id>`` (``<id>``: ``<name>-v<version>``) holding ``data/``; Minari
loads it with ``MINARI_DATASETS_PATH=<root>`` and ``minari.load_dataset("<id>")``. An export maps:

- observation groups -> a Dict observation space, one Box per group; Minari keeps T + 1 observations per
  episode and a store keeps the T before each action, so the last one is repeated (the record says so);
- ``action``, ``reward``, ``terminated``, ``truncated`` -> Minari's own, terminations and truncations apart;
- ``label_mean`` / ``label_std`` / ``label_advantage`` / ``actor`` / ``query`` and the episode's round -> step
  infos ``teacher_action``, ``teacher_action_std``, ``teacher_advantage``, ``actor``, ``query``, ``round`` (T + 1
  entries aligned with the observations, as Minari's ``DataCollector`` writes them; the last is padding);
- each episode's seed -> Minari's episode seed; its task, task index, round and success -> episode metadata;
  the suite, fields and every episode's metadata -> the dataset metadata ``policydistill`` (the record).

A dataset without the record (written by Minari's ``DataCollector`` or another tool) imports with the
suite's help: a Box observation is the ``policy`` group, a Dict maps its keys that are group names; the
``task`` group is the task's one-hot when the dataset has none; an episode's task is the ``task`` of its
Minari episode metadata, else the command's ``task``; the label is the executed action (a
demonstration), the actor the teacher; success is ``info["success"]`` or ``info["is_success"]`` at the last
step when the dataset has it.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from policydistill.data.shards import OBS_PREFIX, TEACHER, EpisodeArrays, EpisodeStore, Meta
from policydistill.datasets.store_io import (
    RECORD,
    StoreInfo,
    check_finite,
    read_record,
    record,
    staged_folder,
)
from policydistill.datasets.suite_check import SuiteCheck

INFO_FIELDS = {"label_mean": "teacher_action", "label_std": "teacher_action_std",
               "label_advantage": "teacher_advantage", "actor": "actor", "query": "query"}
"""Store field -> Minari step info."""
META_KEYS = ("task", "task_index", "round", "success")
BATCH_EPISODES = 64
"""Episodes handed to Minari per write or read (memory: one batch at a time)."""


def require_minari() -> Any:
    """The ``minari`` module, else an error saying how to get it."""
    try:
        import minari
    except ImportError:
        raise ValueError("the Minari format needs the minari extra, which lives in its own venv: bash "
                         "scripts/setup_datasets.sh, then .venv-datasets/bin/policydistill dataset ...") from None
    return minari


def check_dataset_id(out: Path) -> str:
    """The Minari id ``out``'s folder name is, else an error saying the form."""
    require_minari()
    from minari.dataset.minari_dataset import parse_dataset_id

    try:
        parse_dataset_id(out.name)
    except (ValueError, TypeError):  # TypeError: minari's parser on an id without a version
        raise ValueError(f"out={out}: a Minari dataset's folder is named by its id, <name>-v<version> (e.g. "
                         f"{out.parent / 'default-dagger-v0'}), and loaded from its parent with "
                         "MINARI_DATASETS_PATH") from None
    return out.name


def _buffer(meta: Meta, arrays: EpisodeArrays, groups: list[str], index: int) -> Any:
    from minari.data_collector.episode_buffer import EpisodeBuffer

    t = len(arrays["reward"])
    obs = {g: np.concatenate([arrays[OBS_PREFIX + g], arrays[OBS_PREFIX + g][-1:]]) for g in groups}
    infos = {name: np.concatenate([arrays[k], np.zeros_like(arrays[k][:1])])
             for k, name in INFO_FIELDS.items() if k in arrays}
    infos["round"] = np.full(t + 1, meta["round"], dtype=np.int64)
    return EpisodeBuffer(id=index, seed=meta["seed"], observations=obs, actions=arrays["action"],
                         rewards=arrays["reward"], terminations=arrays["terminated"],
                         truncations=arrays["truncated"], infos=infos)


def export_minari(store: EpisodeStore, info: StoreInfo, out: Path) -> Path:
    """Write the store as the Minari dataset ``out`` (see the module doc); nothing is written on failure."""
    minari = require_minari()
    dataset_id = check_dataset_id(out)
    groups = info.groups
    obs_space = gym.spaces.Dict({g: gym.spaces.Box(-np.inf, np.inf, tuple(info.fields[OBS_PREFIX + g]["shape"]),
                                                   np.float32) for g in groups})
    act_space = gym.spaces.Box(-np.inf, np.inf, (info.act_dim,), np.float32)
    old_root = os.environ.get("MINARI_DATASETS_PATH")
    with staged_folder(out) as tmp:
        try:  # Minari writes <MINARI_DATASETS_PATH>/<id>/data
            os.environ["MINARI_DATASETS_PATH"] = str(tmp.resolve())  # minari needs it absolute
            dataset, metas, batch = None, [], []
            for index, (meta, arrays) in enumerate(store.iter_episodes()):
                metas.append(meta)
                batch.append(_buffer(meta, arrays, groups, index))
                if len(batch) == BATCH_EPISODES:
                    dataset = _write(dataset, batch, dataset_id, obs_space, act_space)
                    batch = []
            if batch or dataset is None:
                dataset = _write(dataset, batch, dataset_id, obs_space, act_space)
            for start in range(0, len(metas), BATCH_EPISODES):  # a file opening per batch, as for the episodes
                chunk = metas[start:start + BATCH_EPISODES]
                dataset.storage.update_episode_metadata([{k: m[k] for k in META_KEYS} for m in chunk],
                                                        range(start, start + len(chunk)))
            dataset.storage.update_metadata({"policydistill": record(info, metas, final_observation="repeated")})
        finally:
            if old_root is None:
                os.environ.pop("MINARI_DATASETS_PATH", None)
            else:
                os.environ["MINARI_DATASETS_PATH"] = old_root
        (tmp / dataset_id / "data").rename(tmp / "data")  # staged_folder renames tmp to out: out/data
        (tmp / dataset_id).rmdir()
    minari.MinariDataset(out / "data")  # Minari reads it back
    return out


def _write(dataset: Any, batch: list, dataset_id: str, obs_space: gym.Space, act_space: gym.Space) -> Any:
    import minari

    if dataset is None:
        with warnings.catch_warnings():  # no env spec and no eval env: a suite is not one gymnasium env
            warnings.simplefilter("ignore", UserWarning)
            return minari.create_dataset_from_buffers(dataset_id, batch, observation_space=obs_space,
                                                      action_space=act_space, algorithm_name="policydistill",
                                                      description="episodes of a policydistill run",
                                                      data_format="hdf5")
    dataset.update_dataset_from_buffer(batch)
    return dataset


def open_minari(path: Path) -> Any:
    """The Minari dataset at ``path`` (its folder or its ``data/``), else an error saying what was expected."""
    minari = require_minari()

    data = path / "data" if (path / "data").is_dir() else path
    if not (data / "metadata.json").is_file():
        raise FileNotFoundError(f"{path} is not a Minari dataset (expected {path}/data/metadata.json)")
    return minari.MinariDataset(data)


def minari_record(dataset: Any, where: str) -> dict[str, Any] | None:
    rec = dataset.storage.metadata.get("policydistill")
    return read_record(json.dumps(rec) if rec is not None else None, f"{where} ({RECORD})")


def _observation_groups(obs: Any, space: gym.Space, where: str) -> dict[str, np.ndarray]:
    if isinstance(space, gym.spaces.Box):
        return {"policy": np.asarray(obs).reshape(len(obs), -1)}
    if isinstance(space, gym.spaces.Dict):
        return {k: np.asarray(v).reshape(len(v), -1) for k, v in obs.items()}
    raise ValueError(f"{where}: observation space {space} is neither a Box nor a Dict of Boxes")


def _success(infos: dict[str, Any]) -> bool:
    for key in ("success", "is_success"):
        if key in infos:
            return bool(np.asarray(infos[key])[-1])
    return False


def _in_chunks(dataset: Any) -> Iterator[tuple[int, Any, dict[str, Any]]]:
    """(index, episode, episode metadata) of every episode, the file opened once per :data:`BATCH_EPISODES`
    episodes: HDF5's caches for one open file grow with the episodes read through it."""
    indices = dataset.episode_indices
    for start in range(0, len(indices), BATCH_EPISODES):
        chunk = indices[start:start + BATCH_EPISODES]
        metas = list(dataset.storage.get_episode_metadata(chunk))
        for k, (episode, meta) in enumerate(zip(dataset.iterate_episodes(chunk), metas, strict=True)):
            yield start + k, episode, meta


def read_minari(path: Path, suite: str | None, task: str | None = None
                ) -> tuple[str, Iterator[tuple[EpisodeArrays, Meta]]]:
    """The suite and the episodes of the Minari dataset at ``path`` as store episodes (see the module doc);
    ``suite`` and ``task`` for a dataset that does not say them."""
    dataset = open_minari(path)
    where = str(path)
    rec = minari_record(dataset, where)
    check = SuiteCheck.of(suite or (rec or {}).get("suite"), where, task)
    own = rec is not None
    if own and len(rec["episodes"]) != len(dataset):
        raise ValueError(f"{where}: {RECORD} lists {len(rec['episodes'])} episodes, the dataset holds {len(dataset)}")

    def episodes() -> Iterator[tuple[EpisodeArrays, Meta]]:
        for i, ep, episode_meta in _in_chunks(dataset):
            t = len(ep.rewards)
            step = f"{where} episode {i}"
            obs = _observation_groups(ep.observations, dataset.observation_space, step)
            arrays: EpisodeArrays = {OBS_PREFIX + g: check_finite(g, x[:t], step) for g, x in obs.items()}
            arrays["action"] = check_finite("actions", np.asarray(ep.actions).reshape(t, -1), step)
            arrays["reward"] = check_finite("rewards", np.asarray(ep.rewards), step)
            arrays["terminated"], arrays["truncated"] = np.asarray(ep.terminations), np.asarray(ep.truncations)
            infos = ep.infos or {}
            if own:
                meta = dict(rec["episodes"][i])
                for k, name in INFO_FIELDS.items():
                    if name in infos:
                        arrays[k] = check_finite(name, np.asarray(infos[name])[:t], step)
            else:
                arrays["label_mean"], arrays["actor"] = arrays["action"].copy(), np.full(t, TEACHER, np.uint8)
                meta = {"seed": episode_meta.get("seed"), "success": _success(infos), "round": 0, "beta": 1.0}
                if isinstance(episode_meta.get("task"), str):  # a task named in Minari's episode metadata
                    meta["task"] = episode_meta["task"]
            yield check.episode(arrays, meta, step)

    return check.name, episodes()
