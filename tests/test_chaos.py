"""Chaos: ``distill`` (DAgger, and gated DAgger whose gate is part of the checkpoint), ``train-student`` and
``train-experts`` SIGKILLed (a real signal to a real process group) at seeded random moments several times in a
row, then resumed to the end. Distillation and student training are deterministic, so they end bitwise where
an uninterrupted run ends (student, ``distill.json`` rows, the episode store). SB3 training is not (a resume
restarts its envs' episodes), so an expert run ends finished, loadable and consistent, with no file damaged or
left half-written."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, _quiet_main
from safetensors.torch import load_file

from policydistill.bundle import load_bundle
from policydistill.cli import main
from policydistill.data.shards import EpisodeStore
from policydistill.files import is_temp, read_json

pytestmark = pytest.mark.slow  # processes killed at random moments and resumed, several times each

KILLS = 3
ATTEMPTS = 3
TIMES = ("wall_time_s", "collect_time_s", "update_time_s", "eval_time_s")
DISTILL = ["distill", "method=dagger", "teachers=conftest:goal_seeker", "eval_episodes=2", "n_envs=2",
           "method.rounds=4", "method.episodes_per_task=1", "method.updates_per_round=300", "method.beta_rounds=2"]
GATED = ["distill", "method=gated", "teachers=conftest:goal_seeker", "eval_episodes=2", "n_envs=2", "method.rounds=4",
         "method.episodes_per_task=1", "method.updates_per_round=300", "method.gate_updates=300",
         "method.query_rate=0.3"]


def kill_after(argv: list[str], delay: float) -> bool:
    """``policydistill <argv>`` in a process group of its own, SIGKILLed after ``delay`` seconds; whether it was
    still running then (False: it had finished)."""
    proc = multiprocessing.get_context("fork").Process(target=_quiet_main, args=(argv,))
    proc.start()
    proc.join(delay)
    alive = proc.is_alive()
    if alive:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.join(30)
    return alive


def chaos(argv: list[str], out: Path, straight_s: float, seed: int) -> int:
    """Kill ``argv`` with ``out=<out>`` ``KILLS`` times at seeded moments within the time an uninterrupted run
    took, then run it to the end; returns how many kills hit a running process. When none did (the machine was
    slower while timing), ``out`` is cleared and the kills come twice as early, up to ``ATTEMPTS`` times."""
    rng = np.random.default_rng(seed)
    argv = [*argv, f"out={out}"]
    for attempt in range(ATTEMPTS):
        shutil.rmtree(out, ignore_errors=True)
        scale = straight_s / 2**attempt
        hits = sum(kill_after(argv, float(rng.uniform(0.1, 0.6) * scale)) for _ in range(KILLS))
        if hits:
            break
    assert main(argv) == 0
    return hits


def timed(argv: list[str]) -> float:
    t0 = time.perf_counter()
    assert main(argv) == 0
    return time.perf_counter() - t0


def rows(run: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMES} for row in read_json(run / "distill.json")["rounds"]]


def store(run: Path) -> list[tuple]:
    """The store's episodes (metadata) with the sha256 of the shard holding each, in store order."""
    manifest = read_json(run / "episodes" / "manifest.json")
    return [(s["sha256"], s["steps"], s["episodes"]) for s in manifest["shards"]] + \
        [len(EpisodeStore(run / "episodes"))]


def same_weights(a: Path, b: Path) -> bool:
    x, y = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return x.keys() == y.keys() and all(bool((x[k] == y[k]).all()) for k in x)


def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if is_temp(p.name) or ".tmp-" in p.name]


@pytest.mark.parametrize(("argv", "seed"), [(DISTILL, 0), (DISTILL, 1), (GATED, 0)],
                         ids=["dagger0", "dagger1", "gated0"])
def test_distill_killed_at_random_moments_ends_as_an_uninterrupted_run(argv, seed, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    took = timed([*argv, f"out={straight}"])
    hits = chaos(argv, killed, took, seed)
    assert hits >= 1
    assert same_weights(straight / "student", killed / "student")
    assert rows(straight) == rows(killed)
    assert store(straight) == store(killed)
    assert no_temp_files(killed)


def test_train_student_killed_at_random_moments_ends_as_an_uninterrupted_run(tmp_path):
    run = tmp_path / "run"
    assert main([*DISTILL, "method.rounds=1", f"out={run}"]) == 0
    argv = ["train-student", f"run={run}", "updates=1500", "batch_size=64", "checkpoint_every=100"]
    took = timed([*argv, f"out={tmp_path / 'straight'}"])
    hits = chaos(argv, tmp_path / "killed", took, seed=2)
    assert hits >= 1
    assert same_weights(tmp_path / "straight" / "bundle", tmp_path / "killed" / "bundle")
    a, b = (read_json(tmp_path / d / "train_student.json") for d in ("straight", "killed"))
    assert a["final_loss"] == b["final_loss"] and a["dataset_rows"] == b["dataset_rows"]
    assert no_temp_files(tmp_path / "killed")


def test_train_experts_killed_at_random_moments_ends_finished_and_loadable(tmp_path):
    out = tmp_path / "experts"
    argv = ["train-experts", "suite=default", "workers=2", "tasks=[north,east]", *TINY,
            "expert.total_steps=4096", "expert.checkpoint_every=512"]
    took = timed([*argv, f"out={tmp_path / 'straight'}"])
    hits = chaos(argv, out, took, seed=3)
    assert hits >= 1
    summary = read_json(out / "experts.json")
    assert sorted(summary["tasks"]) == ["east", "north"]
    for task in ("north", "east"):
        result = read_json(out / task / "result.json")
        assert result["env_steps"] >= 4096
        steps = [int(line.split(",")[0]) for line in (out / task / "curve.csv").read_text().splitlines()[1:]]
        assert steps == sorted(set(steps))
        load_bundle(out / task / "bundle", device="cpu")
        index = read_json(out / task / "checkpoint.json")
        assert all((out / task / f).stat().st_size > 0 for f in index["files"].values())
    assert no_temp_files(out)
