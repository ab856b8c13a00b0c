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
from policydistill.data.shards import EpisodeStore, ShardWriter
from policydistill.distill.collect import CollectPlan, LocalCollector
from policydistill.files import read_json
from policydistill.models.students import StudentConfig, build_student
from policydistill.scale.ray_session import RayConfig, require_ray
from policydistill.suites import load_suite
from policydistill.teachers import TeacherBank, policies_for_suite

ZOO = Path(__file__).resolve().parents[1] / "envs" / "zoo" / "default"
pytestmark = pytest.mark.slow


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and "tb" not in p.parts}


def test_ray_launcher_lands_experts_in_the_local_layout(ray_instance, tiny_experts, tmp_path):
    args = ["train-experts", "suite=default", f"out={tmp_path}", "launcher=ray", "tasks=[north,east]",
            "expert.total_steps=2048", *TINY]
    assert main(args) == 0
    assert _files(tmp_path) == _files(tiny_experts)
    assert main(args) == 0  # a rerun finds the tasks finished
    assert set(find_bundles(tmp_path)) == {"north", "east"}


def test_a_worker_killed_mid_round_does_not_lose_the_round(ray_instance, tmp_path):
    from policydistill.scale.ray_collect import RayCollector

    suite = load_suite("default")
    bank = TeacherBank([policies_for_suite(ZOO, suite)[n] for n in suite.task_names])
    student = build_student(suite, StudentConfig(), "cpu")
    plan = CollectPlan(1.0, 4, student)
    ShardWriter(tmp_path / "ray")
    killed = []

    def kill_second_worker(kind: str, worker: int, item: dict) -> None:
        if kind == "submitted" and worker == 1 and not killed:
            pid = pids[1]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    collector = RayCollector(RayConfig(workers=2), suite, 8, tmp_path / "ray", on_event=kill_second_worker)
    collector._start_workers(plan, bank)
    pids = collector.worker_pids()
    try:
        data = collector.round(plan, bank, 0, seed=500, rng=np.random.default_rng(0))
        assert killed and data.info["worker_failures"][0]["worker"] == 1
        assert data.episodes == 16 and data.kept == data.steps == 1600
        again = collector.round(plan, bank, 1, seed=600, rng=np.random.default_rng(1))  # the replacement carries on
        assert again.episodes == 16 and "worker_failures" not in again.info
    finally:
        collector.close()
    episodes = EpisodeStore(tmp_path / "ray").episodes()
    assert sorted((e["task"], e["seed"]) for e in episodes if e["round"] == 0) == \
        sorted((n, 500 + k) for n in suite.task_names for k in range(4))
    local = LocalCollector(suite, 8, tmp_path / "local")
    local.round(plan, bank, 0, seed=500, rng=np.random.default_rng(0))
    by_key = lambda es: {(e["task"], e["seed"]): e["return"] for e in es if e["round"] == 0}  # noqa: E731
    ours, reference = by_key(episodes), by_key(EpisodeStore(tmp_path / "local").episodes())
    assert ours.keys() == reference.keys()
    assert [ours[k] for k in reference] == pytest.approx([reference[k] for k in reference], abs=1e-9)


@pytest.mark.parametrize("method, extra", [
    ("dagger", ["method.beta_rounds=1"]), ("bc", []), ("onpolicy", []),
    ("diffusion", ["method.hidden=[32]", "method.horizon=8", "method.sampler_steps=2", "method.train_steps=5",
                   "method.batch_size=16", "method.rounds=2", "method.schedule=step"])])
def test_every_collecting_method_collects_on_ray_actors(ray_instance, tmp_path, method, extra):
    """The runner's collector is the same for every method: rounds on Ray rollout actors, the acting policy's
    weights sent each round, the shards in the run's store."""
    args = ["distill", f"method={method}", "suite=default", f"teachers={ZOO}", f"out={tmp_path}", "collector=ray",
            "ray.workers=1", "method.episodes_per_task=2", "eval_episodes=1", "final_episodes=0", *extra]
    if method != "diffusion":
        args += ["method.rounds=2", "method.updates_per_round=20"]
    assert main(args) == 0
    summary = read_json(tmp_path / "distill.json")
    assert [r["info"]["collector"] for r in summary["rounds"]] == ["ray", "ray"]
    store = EpisodeStore(tmp_path / "episodes")
    rounds = {e["round"] for e in store.episodes()}
    assert rounds == ({1} if method == "onpolicy" else {0, 1}) and len(store) == 8 * len(rounds)
    student_acted = store.load(["actor"], where=lambda m: m["round"] == 1)["actor"]
    assert student_acted.all() == (method != "bc") and student_acted.any() == (method != "bc")


def test_one_step_distillation_collects_on_ray_actors(ray_instance, tmp_path):
    teacher = tmp_path / "teacher"
    assert main(["distill", "method=diffusion", "suite=default", f"teachers={ZOO}", f"out={teacher}",
                 "method.hidden=[32]", "method.horizon=8", "method.sampler_steps=2", "method.train_steps=5",
                 "method.batch_size=16", "method.episodes_per_task=1", "eval_episodes=1", "final_episodes=0"]) == 0
    out = tmp_path / "onestep"
    assert main(["distill", "method=onestep", "suite=default", f"teachers={teacher / 'student'}", f"out={out}",
                 "collector=ray", "ray.workers=1", "method.algo=regression", "method.steps=3", "method.pairs=16",
                 "method.episodes_per_task=2", "method.batch_size=8", "eval_episodes=1",
                 "final_episodes=0"]) == 0
    assert read_json(out / "distill.json")["rounds"][0]["info"]["collector"] == "ray"
    assert len(EpisodeStore(out / "episodes")) == 8


def test_missing_ray_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match=r"policydistill\[ray\]"):
        require_ray()
