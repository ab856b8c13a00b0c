"""What the dataset formats share: a store's description, the record of its episodes that travels with an
export, and writing an import all at once.

An export carries ``policydistill.json`` (:data:`RECORD`): the suite, the store's fields (names, dtypes,
trailing shapes) and every episode's metadata, so an import restores the store exactly (same arrays, dtypes,
episode boundaries and metadata). A dataset written by another tool has no record; its import takes the
suite from the command and fills what the dataset does not say (see each format's module).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from policydistill.data.shards import (
    OBS_PREFIX,
    RESERVED_META,
    EpisodeArrays,
    EpisodeStore,
    Meta,
    ShardWriter,
    read_manifest,
)
from policydistill.files import atomic_write_json, read_json

RECORD = "policydistill.json"
RECORD_VERSION = 1


@dataclass(frozen=True)
class StoreInfo:
    """An episode store as the formats see it. ``fields``: ``{name: {dtype, shape}}`` (the manifest's);
    ``suite``: the suite its run was on (None when nothing says)."""

    root: Path
    suite: str | None
    fields: dict[str, dict[str, Any]]
    episodes: int
    steps: int
    tasks: tuple[str, ...]

    @property
    def groups(self) -> list[str]:
        return [k[len(OBS_PREFIX):] for k in self.fields if k.startswith(OBS_PREFIX)]

    @property
    def act_dim(self) -> int:
        return int(self.fields["action"]["shape"][0])


SOURCE = "source.json"
"""An imported store's ``{suite, format, source}``, beside its manifest."""


def run_suite(store: Path) -> str | None:
    """The suite a store's episodes were played on: its :data:`SOURCE` (an imported store) or the ``run.json``
    of the run whose ``episodes/`` it is; None when neither says."""
    if (store / SOURCE).is_file():
        suite = read_json(store / SOURCE).get("suite")
    elif (store.parent / "run.json").is_file():
        suite = read_json(store.parent / "run.json").get("config", {}).get("suite")
    else:
        return None
    return suite if isinstance(suite, str) else None


def store_info(store: EpisodeStore, suite: str | None = None) -> StoreInfo:
    """Describe ``store``; ``suite`` overrides the one its run recorded."""
    tasks = tuple(dict.fromkeys(m["task"] for m in store.episodes()))
    return StoreInfo(store.root, suite or run_suite(store.root), store.fields, len(store), store.steps, tasks)


def record(info: StoreInfo, metas: list[Meta], **extra: Any) -> dict[str, Any]:
    """The :data:`RECORD` of an export: suite, fields and episode metadata (without store positions)."""
    episodes = [{k: v for k, v in m.items() if k not in RESERVED_META} for m in metas]
    return {"version": RECORD_VERSION, "suite": info.suite, "fields": info.fields, "episodes": episodes, **extra}


def read_record(text: str | None, where: str) -> dict[str, Any] | None:
    """A :data:`RECORD` from its JSON text (None: the dataset has none); an unknown version is an error."""
    if text is None:
        return None
    rec = json.loads(text)
    if rec.get("version") != RECORD_VERSION:
        raise ValueError(f"{where}: {RECORD} version {rec.get('version')} is not supported (expected {RECORD_VERSION})")
    return rec


@contextlib.contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """A temp folder beside ``out``, renamed to ``out`` when the block succeeds, removed when it fails: a
    failed export or import writes nothing."""
    if out.exists():
        raise ValueError(f"out={out} exists: choose a new folder (nothing is written into an existing one)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_store(out: Path, episodes: Iterable[tuple[EpisodeArrays, Meta]], source: dict[str, Any]) -> EpisodeStore:
    """Write ``episodes`` (arrays, metadata) as a new store at ``out`` with its :data:`SOURCE`, all or nothing
    (each episode is validated as every store's is: fields, shapes, finite values)."""
    with staged_folder(out) as tmp:
        with ShardWriter(tmp) as writer:
            for arrays, meta in episodes:
                writer.add(arrays, meta)
        if not read_manifest(tmp)["totals"]["episodes"]:
            raise ValueError(f"{source.get('source')}: the dataset holds no episodes")
        atomic_write_json(tmp / SOURCE, source)
    return EpisodeStore(out)


def check_finite(name: str, x: np.ndarray, where: str) -> np.ndarray:
    """``x`` if every value is finite, else an error naming the field and where it was read."""
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        raise ValueError(f"{where}: field '{name}' has {int((~np.isfinite(x)).sum())} non-finite values")
    return x
