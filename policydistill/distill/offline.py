"""Offline distillation: ``teachers=none``, the student learns from stored episodes alone (``method.data``),
collecting nothing. ``bc`` regresses the stored labels (a demonstration dataset imported with ``policydistill
dataset import`` is labelled with its own actions), ``diffusion`` the stored actions. Scores are measured
against the data: per task, the mean return and success of its episodes stand where the teachers' would."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from policydistill.data.shards import MANIFEST, EpisodeStore
from policydistill.eval.metrics import Episode, summarise
from policydistill.suites import Suite

NO_TEACHERS = "none"
"""``teachers=none``: an offline run."""


def check_data(roots: Sequence[str], method: str) -> list[str]:
    """``roots`` if each is an episode store, else an error saying what ``method.data`` takes."""
    if not roots:
        raise ValueError(f"teachers=none (offline) trains method={method} on stored episodes alone: give "
                         "method.data=[<episode store>, ...]")
    for root in roots:
        if not (Path(root) / MANIFEST).is_file():
            hint = (" (a Minari dataset: import it first with policydistill dataset import path=<dataset> "
                    "out=<store>)" if (Path(root) / "data" / "metadata.json").is_file() else "")
            raise ValueError(f"method.data={root} is not an episode store (no {MANIFEST}){hint}")
    return list(roots)


def load_stores(stores: Sequence[EpisodeStore], names: Sequence[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The fields ``names`` of every episode of ``stores``, concatenated ``{name: (N, ...)}``, and the episode
    lengths (E,). A store lacking a field is an error naming it."""
    raws, lengths = [], []
    for store in stores:
        missing = [n for n in names if n not in store.fields]
        if missing:
            raise ValueError(f"episodes at {store.root} lack fields {missing}; they have {sorted(store.fields)}")
        raws.append(store.load(names))
        lengths.append(store.lengths())
    return {n: np.concatenate([r[n] for r in raws]) for n in names}, np.concatenate(lengths)


def data_reference(suite: Suite, roots: Sequence[str | Path]) -> dict[str, dict[str, Any]]:
    """Per task, its stored episodes summarised as an evaluation row (:func:`~policydistill.eval.metrics.summarise`;
    success None where the suite defines none): what an offline student is scored against. A task without
    episodes is an error."""
    episodes: dict[str, list[Episode]] = {n: [] for n in suite.task_names}
    for root in roots:
        for m in EpisodeStore(root).episodes():
            if m["task"] in episodes:
                has_success = suite.has_success[suite.index(m["task"])]
                episodes[m["task"]].append(Episode(m["task"], m["seed"], float(m["return"]), m["length"],
                                                   bool(m["success"]) if has_success else None))
    empty = [n for n, eps in episodes.items() if not eps]
    if empty:
        raise ValueError(f"method.data holds no episodes of tasks {empty} of suite '{suite.name}'")
    return {name: summarise(eps) for name, eps in episodes.items()}
