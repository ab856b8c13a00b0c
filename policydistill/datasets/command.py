"""``policydistill dataset info|validate|export|import``: episode stores in and out of the formats the field
shares (Minari, see :mod:`policydistill.datasets.minari_format`)."""

from __future__ import annotations

import collections
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from policydistill.configs import require_choice
from policydistill.data.shards import (
    MANIFEST,
    OBS_PREFIX,
    RESERVED_META,
    EpisodeArrays,
    EpisodeStore,
    Meta,
    prepare_episode,
)
from policydistill.datasets.store_io import store_info, write_store

log = logging.getLogger(__name__)

ACTIONS = ("info", "validate", "export", "import")
FORMATS = ("minari",)
READS = {"info": ("path", "suite", "task"), "validate": ("path", "suite", "task"),
         "export": ("episodes", "format", "out", "suite"), "import": ("path", "out", "suite", "task")}
"""The keys each action reads (besides ``action``); setting another is an error."""


@dataclass
class DatasetConfig:
    """``policydistill dataset <action>``. ``path``: an episode store or a dataset (its format is detected);
    ``episodes``: the store to export; ``format``: the format to export to; ``out``: the new dataset or store
    (must not exist); ``suite``: the suite the episodes were played on, when the store's run or the dataset
    does not say; ``task``: the task of a dataset's episodes that name none."""

    action: str = "???"
    path: str = ""
    episodes: str = ""
    format: str = ""
    out: str = ""
    suite: str = ""
    task: str = ""

    def __post_init__(self) -> None:
        require_choice("dataset action", self.action, ACTIONS)
        given = [k for k in ("path", "episodes", "format", "out", "suite", "task") if getattr(self, k)]
        unread = [k for k in given if k not in READS[self.action]]
        if unread:
            raise ValueError(f"'dataset {self.action}' does not read {', '.join(unread)}; it reads: "
                             f"{', '.join(READS[self.action])}")
        needed = {"info": ("path",), "validate": ("path",), "export": ("episodes", "format", "out"),
                  "import": ("path", "out")}[self.action]
        missing = [k for k in needed if not getattr(self, k)]
        if missing:
            raise ValueError(f"'dataset {self.action}' needs {', '.join(f'{k}=...' for k in missing)}")
        if self.action == "export":
            require_choice("format", self.format, FORMATS)


def detect_format(path: Path) -> str:
    """``store``, ``minari`` (or a clear error) for what ``path`` holds."""
    if (path / MANIFEST).is_file():
        return "store"
    if (path / "data" / "metadata.json").is_file() or ((path / "metadata.json").is_file() and path.name == "data"):
        return "minari"
    raise FileNotFoundError(f"{path} is neither an episode store ({MANIFEST}) nor a Minari dataset "
                            "(data/metadata.json)")


def read_dataset(path: Path, suite: str | None,
                 task: str | None) -> tuple[str, str, Iterator[tuple[EpisodeArrays, Meta]]]:
    """(format, suite, episodes) of the dataset or store at ``path``; each dataset episode is checked against the
    suite as it is read (a store's as it is written)."""
    fmt = detect_format(path)
    if fmt == "store":
        store = EpisodeStore(path)
        episodes = ((arrays, {k: v for k, v in meta.items() if k not in RESERVED_META})  # not its store positions
                    for meta, arrays in store.iter_episodes())
        return fmt, store_info(store, suite).suite or "?", episodes
    from policydistill.datasets.minari_format import read_minari

    name, episodes = read_minari(path, suite, task)
    return fmt, name, episodes


def summary(fmt: str, suite: str, episodes: Iterator[tuple[EpisodeArrays, Meta]]) -> dict[str, Any]:
    """What ``dataset info`` prints: counts per task, steps, success, who acted, groups and fields."""
    tasks: collections.Counter[str] = collections.Counter()
    steps = successes = teacher = 0
    fields: dict[str, list[int]] = {}
    for arrays, meta in episodes:
        tasks[meta["task"]] += 1
        steps += len(arrays["reward"])
        successes += bool(meta["success"])
        teacher += int((arrays["actor"] == 0).sum())
        fields = fields or {k: [*v.shape[1:]] for k, v in sorted(arrays.items())}
    n = sum(tasks.values())
    return {"format": fmt, "suite": suite, "episodes": n, "steps": steps, "tasks": dict(tasks),
            "success_rate": successes / n if n else None, "teacher_steps": teacher,
            "groups": {k[len(OBS_PREFIX):]: v[0] for k, v in fields.items() if k.startswith(OBS_PREFIX)},
            "fields": fields}


def dataset_command(cfg: DatasetConfig) -> dict[str, Any]:
    """Run one dataset action; returns the numbers it logged."""
    suite, task = cfg.suite or None, cfg.task or None
    if cfg.action in ("info", "validate"):
        fmt, name, episodes = read_dataset(Path(cfg.path), suite, task)
        info = summary(fmt, name, (prepare_episode(arrays, meta) for arrays, meta in episodes))  # as a store checks
        if cfg.action == "validate":
            log.info("%s: valid %s dataset of suite '%s': %d episodes, %d steps", cfg.path, fmt, name,
                     info["episodes"], info["steps"])
        else:
            for key, value in info.items():
                print(f"{key}: {value}")
        return info
    if cfg.action == "export":
        from policydistill.datasets.minari_format import export_minari

        store = EpisodeStore(cfg.episodes)
        info = store_info(store, suite)
        out = export_minari(store, info, Path(cfg.out))
        log.info("exported %d episodes (%d steps) of %s to the Minari dataset %s: load it with "
                 "MINARI_DATASETS_PATH=%s and minari.load_dataset('%s')", info.episodes, info.steps, cfg.episodes,
                 out, out.parent, out.name)
        return {"episodes": info.episodes, "steps": info.steps}
    fmt, name, episodes = read_dataset(Path(cfg.path), suite, task)
    store = write_store(Path(cfg.out), episodes, {"suite": name, "format": fmt, "source": str(cfg.path)})
    log.info("imported %d episodes (%d steps) of suite '%s' from %s into the episode store %s", len(store),
             store.steps, name, cfg.path, cfg.out)
    return {"episodes": len(store), "steps": int(np.int64(store.steps))}
