"""torchrun/DDP training of diffusion policies and one-step students (``train-student`` on their runs):
2 CPU processes (gloo) match one process, rank 0 alone writes, a killed run resumes from its checkpoint."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import goal_seeker
from safetensors.torch import load_file

from policydistill.cli import compose_config
from policydistill.config import TrainStudentConfig
from policydistill.distill.diffusion import distill_diffusion
from policydistill.distill.onestep import distill_onestep
from policydistill.eval.evaluate import policies_for_suite
from policydistill.io import atomic_write_json, read_json
from policydistill.scale.ddp_train import launch, train_student

# Every row of the global batch gets the same data row and noise on 1 or 2 processes; what differs is
# the order in which DDP sums the two halves' gradients, float32 rounding that Adam carries on.
# Measured: at most 5e-8 (max abs weight difference) after 40 and after 300 updates, for every kind here.
WEIGHT_TOLERANCE = 1e-5
TINY_DIFFUSION = ["diffusion.hidden=[32,32]", "diffusion.horizon=8", "diffusion.n_action_steps=4",
                  "diffusion.sampler_steps=4", "diffusion.episodes_per_task=2", "diffusion.train_steps=40",
                  "diffusion.checkpoint_every=20", "diffusion.demos=mirror_routes", "eval_episodes=1", "batch_size=32"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, default_suite) -> dict[str, Path]:
    """A tiny diffusion run (scripted goal-seeker demos) and one-step runs distilled from it."""
    root = tmp_path_factory.mktemp("ddp_diffusion")
    seeker = goal_seeker()
    cfg = compose_config("distill", ["method=diffusion", "teachers=unused", f"out={root / 'diffusion'}",
                                     *TINY_DIFFUSION])
    distill_diffusion(cfg, default_suite, {n: seeker for n in default_suite.task_names})
    teacher = str(root / "diffusion" / "student")
    teachers = policies_for_suite(teacher, default_suite, device="cpu")
    out = {"diffusion": root / "diffusion"}
    for algo in ("consistency", "dmd_det", "regression"):
        out[algo] = root / algo
        cfg = compose_config("distill", ["method=onestep", f"teachers={teacher}", f"out={out[algo]}",
                                         f"onestep.algo={algo}", "onestep.steps=5", "onestep.episodes_per_task=1",
                                         "onestep.pairs=64", "onestep.teacher_steps=2", "eval_episodes=1",
                                         "batch_size=16"])
        distill_onestep(cfg, default_suite, teachers)
    return out


def _weights(bundle: Path) -> dict[str, torch.Tensor]:
    return load_file(bundle / "model.safetensors")


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["diffusion", "consistency", "dmd_det"])
def test_two_processes_match_one_process(runs, kind, tmp_path):
    cfg = TrainStudentConfig(run=str(runs[kind]), updates=40, batch_size=32, checkpoint_every=20)
    one = train_student(replace(cfg, out=str(tmp_path / "one")))
    launch(replace(cfg, out=str(tmp_path / "two"), nproc=2))
    two = read_json(tmp_path / "two" / "train_student.json")
    method = "diffusion" if kind == "diffusion" else "onestep"
    assert (one["method"], one["world_size"], two["method"], two["world_size"]) == (method, 1, method, 2)
    a, b = _weights(tmp_path / "one" / "bundle"), _weights(tmp_path / "two" / "bundle")
    start = _weights(runs[kind] / "student")
    moved, gap = _max_diff(a, start), _max_diff(a, b)
    assert gap < WEIGHT_TOLERANCE
    assert moved > 100 * gap  # the updates changed the weights far more than the two runs differ
    assert two["final_loss"] == pytest.approx(one["final_loss"], rel=1e-3)
    files = sorted(str(p.relative_to(tmp_path / "two")) for p in (tmp_path / "two").rglob("*") if p.is_file())
    assert [f for f in files if not f.startswith("tb/")] == ["bundle/model.safetensors", "bundle/policy.json",
                                                            "checkpoint.pt", "train_student.json"]
    assert sum(f.startswith("tb/") for f in files) == 1  # rank 0 alone logged


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_last_checkpoint(runs, tmp_path):
    """torchrun with two processes is stopped with SIGTERM (as a scheduler preempts a job: torchrun ends its
    workers) after the first checkpoint; the rerun continues from the last checkpoint and ends where an
    uninterrupted one-process run ends."""
    cfg = TrainStudentConfig(run=str(runs["diffusion"]), updates=300, batch_size=32, checkpoint_every=30)
    out = tmp_path / "killed"
    args = [f"{k}={v}" for k, v in {"run": cfg.run, "out": out, "updates": cfg.updates, "batch_size": cfg.batch_size,
                                    "checkpoint_every": cfg.checkpoint_every}.items()]
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "-m", "policydistill.scale.ddp_train", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (out / "checkpoint.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert proc.returncode != 0 and (out / "checkpoint.pt").exists() and not (out / "bundle").exists()
    launch(replace(cfg, out=str(out), nproc=2))
    resumed = read_json(out / "train_student.json")
    assert resumed["world_size"] == 2 and cfg.checkpoint_every <= resumed["resumed_from"] < cfg.updates
    straight = train_student(replace(cfg, out=str(tmp_path / "straight")))
    assert straight["resumed_from"] == 0
    assert _max_diff(_weights(out / "bundle"), _weights(tmp_path / "straight" / "bundle")) < WEIGHT_TOLERANCE


@pytest.mark.parametrize("kind", ["consistency", "dmd_det", "regression"])
def test_an_interrupted_one_step_run_resumes_exactly(runs, kind, tmp_path, monkeypatch):
    """Interrupted between checkpoints, a one-step run restarts from the last one (student, target network,
    optimiser, generator) and ends bitwise where an uninterrupted run ends."""
    from policydistill.distill.onestep_consistency import ConsistencyDistillation
    from policydistill.distill.onestep_dmd import DistributionMatching
    from policydistill.distill.onestep_regression import Regression

    algo = {"consistency": ConsistencyDistillation, "dmd_det": DistributionMatching, "regression": Regression}[kind]
    cfg = TrainStudentConfig(run=str(runs[kind]), updates=30, batch_size=16, checkpoint_every=10)
    straight = train_student(replace(cfg, out=str(tmp_path / "straight")))
    real, calls = algo.student_loss, {"n": 0}

    def interrupted_at_update_25(self, student, batch):
        calls["n"] += 1
        if calls["n"] == 25:
            raise KeyboardInterrupt
        return real(self, student, batch)

    monkeypatch.setattr(algo, "student_loss", interrupted_at_update_25)
    with pytest.raises(KeyboardInterrupt):
        train_student(replace(cfg, out=str(tmp_path / "resumed")))
    monkeypatch.setattr(algo, "student_loss", real)
    resumed = train_student(replace(cfg, out=str(tmp_path / "resumed")))
    assert resumed["resumed_from"] == 20 and resumed["final_loss"] == straight["final_loss"]
    a, b = _weights(tmp_path / "straight" / "bundle"), _weights(tmp_path / "resumed" / "bundle")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _max_diff(a, _weights(runs[kind] / "student")) > 0  # trained


def test_dmd_with_its_auxiliary_network_is_refused(runs, tmp_path):
    run = tmp_path / "dmd"
    run.mkdir()
    summary = read_json(runs["consistency"] / "distill.json")
    summary["config"]["onestep"]["algo"] = "dmd"
    atomic_write_json(run / "distill.json", summary)
    with pytest.raises(ValueError, match="does not run onestep.algo=dmd.*dmd_det, consistency or regression"):
        train_student(TrainStudentConfig(run=str(run)))


def test_fit_refuses_random_inputs_of_the_wrong_length():
    from policydistill.scale.ddp import FitConfig, fit

    with pytest.raises(ValueError, match="B rows per field"):
        fit(torch.nn.Linear(1, 1), lambda m, b: m(b["x"]).mean(), {"x": [[1.0], [2.0]]}, FitConfig(steps=1),
            draw_random=lambda rng, n: {"noise": torch.zeros(n + 1)})
