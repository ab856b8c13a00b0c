"""Ray scale-out on a real local Ray instance (2 CPUs): expert tasks, DAgger rollout actors, a worker
killed mid-round."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY

from policydistill.bundle import find_bundles
from policydistill.cli import main
from policydistill.config import DistillConfig, RayConfig
from policydistill.data.shards import EpisodeStore, ShardWriter
from policydistill.distill.collectors import LocalCollector
from policydistill.distill.dagger import build_student
from policydistill.eval.evaluate import policies_for_suite
from policydistill.scale.ray_session import ray_session, require_ray
from policydistill.suite import load_suite
from policydistill.teachers import TeacherBank

ZOO = Path(__file__).resolve().parents[1] / "envs" / "zoo" / "default"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_instance():
    with ray_session(RayConfig(num_cpus=2)) as ray:
        yield ray


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and "tb" not in p.parts}


def test_ray_launcher_lands_experts_in_the_local_layout(ray_instance, tiny_experts, tmp_path):
    args = ["train-experts", "suite=default", f"out={tmp_path}", "launcher=ray", "tasks=[north,east]",
            "expert.total_steps=2048", *TINY]
    assert main(args) == 0
    assert _files(tmp_path) == _files(tiny_experts)
    assert main(args) == 0  # a rerun finds the tasks finished
    assert set(find_bundles(tmp_path)) == {"north", "east"}


def _setup(tmp_path: Path, episodes: int = 4) -> tuple:
    suite = load_suite("default")
    cfg = DistillConfig(suite="default", out=str(tmp_path), episodes_per_task=episodes, n_envs=8,
                        collector="ray", ray=RayConfig(workers=2))
    bank = TeacherBank([policies_for_suite(ZOO, suite)[n] for n in suite.task_names])
    student = build_student(suite, cfg.student, "cpu")
    return suite, cfg, bank, student


def test_a_worker_killed_mid_round_does_not_lose_the_round(ray_instance, tmp_path):
    from policydistill.scale.ray_collect import RayCollector

    suite, cfg, bank, student = _setup(tmp_path)
    ShardWriter(tmp_path / "ray")
    killed = []

    def kill_second_worker(kind: str, worker: int, item: dict) -> None:
        if kind == "submitted" and worker == 1 and not killed:
            pid = pids[1]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    collector = RayCollector(cfg, suite, bank, student, tmp_path / "ray", on_event=kill_second_worker)
    pids = collector.worker_pids()
    try:
        data = collector.round(0, 1.0, None, seed=500, attempt=1)
        assert killed and data.info["worker_failures"][0]["worker"] == 1
        assert data.episodes == 16 and data.kept == data.steps == 1600
        again = collector.round(1, 1.0, None, seed=600, attempt=1)  # the replacement worker carries on
        assert again.episodes == 16 and "worker_failures" not in again.info
    finally:
        collector.close()
    episodes = EpisodeStore(tmp_path / "ray").episodes()
    assert sorted((e["task"], e["seed"]) for e in episodes if e["round"] == 0) == \
        sorted((n, 500 + k) for n in suite.task_names for k in range(4))
    local = LocalCollector(cfg, suite, bank, ShardWriter(tmp_path / "local"), np.random.default_rng(0))
    local.round(0, 1.0, None, seed=500, attempt=1)
    by_key = lambda es: {(e["task"], e["seed"]): e["return"] for e in es if e["round"] == 0}  # noqa: E731
    ours, reference = by_key(episodes), by_key(EpisodeStore(tmp_path / "local").episodes())
    assert ours.keys() == reference.keys()
    assert [ours[k] for k in reference] == pytest.approx([reference[k] for k in reference], abs=1e-9)


def test_dagger_with_ray_collector_end_to_end(ray_instance, tmp_path):
    args = ["distill", "suite=default", f"teachers={ZOO}", f"out={tmp_path}", "collector=ray", "ray.workers=2",
            "rounds=2", "episodes_per_task=2", "eval_episodes=2", "updates_per_round=50",
            "schedule_params.rounds=1"]
    assert main(args) == 0
    import json

    summary = json.loads((tmp_path / "distill.json").read_text())
    assert [r["collector"] for r in summary["rounds"]] == ["ray", "ray"]
    assert [r["beta"] for r in summary["rounds"]] == [1.0, 0.0]
    store = EpisodeStore(tmp_path / "episodes")
    assert len(store) == 16 and {e["round"] for e in store.episodes()} == {0, 1}
    actors = store.load(["actor"], where=lambda m: m["round"] == 1)["actor"]
    assert actors.all()  # beta 0: the student, with the weights sent that round, acted on every step


def test_missing_ray_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match=r"policydistill\[ray\]"):
        require_ray()
