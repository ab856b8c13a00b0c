"""torchrun/DDP student training: 2 CPU processes (gloo) match one process; rank 0 writes; reruns resume."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from safetensors.torch import load_file

from policydistill.cli import main
from policydistill.config import TrainStudentConfig
from policydistill.io import read_json
from policydistill.scale.ddp_train import launch, train_student

ZOO = Path(__file__).resolve().parents[1] / "envs" / "zoo" / "default"
# DDP sums the two halves' gradients in another order than one process does: weights may differ by
# float32 rounding, amplified a little by Adam over the updates. Measured ~5e-7 after 100 updates.
WEIGHT_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dagger")
    assert main(["distill", "suite=default", f"teachers={ZOO}", f"out={out}", "rounds=1", "episodes_per_task=2",
                 "eval_episodes=1", "updates_per_round=5"]) == 0
    return out


def _weights(out: Path) -> dict:
    return load_file(out / "bundle" / "model.safetensors")


@pytest.mark.slow
def test_two_processes_match_one_process(run, tmp_path):
    cfg = TrainStudentConfig(run=str(run), updates=80, batch_size=128, checkpoint_every=40)
    one = train_student(replace(cfg, out=str(tmp_path / "one")))
    launch(replace(cfg, out=str(tmp_path / "two"), nproc=2))
    two = read_json(tmp_path / "two" / "train_student.json")
    assert one["world_size"] == 1 and two["world_size"] == 2
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < WEIGHT_TOLERANCE
    assert two["final_loss"] == pytest.approx(one["final_loss"], rel=1e-3)
    first = read_json(run / "distill.json")["rounds"][0]["loss"]
    assert one["final_loss"] < 0.5 * first  # the updates really trained the student further
    written = sorted(p.relative_to(tmp_path / "two").parts[0] for p in (tmp_path / "two").rglob("*") if p.is_file())
    assert written.count("tb") == 1 and written.count("bundle") == 2  # rank 0 alone wrote logs and the bundle


def test_a_rerun_resumes_from_the_last_checkpoint(run, tmp_path):
    cfg = TrainStudentConfig(run=str(run), updates=60, batch_size=64, checkpoint_every=20)
    straight = train_student(replace(cfg, out=str(tmp_path / "straight")))
    train_student(replace(cfg, out=str(tmp_path / "resumed"), updates=40))
    resumed = train_student(replace(cfg, out=str(tmp_path / "resumed")))
    assert straight["resumed_from"] == 0 and resumed["resumed_from"] == 40
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert all(bool((a[k] == b[k]).all()) for k in a)


def test_bad_input_is_refused(run, tmp_path):
    import torch

    from policydistill.scale.ddp import FitConfig, fit

    with pytest.raises(ValueError, match="at least one"):
        launch(TrainStudentConfig(run=str(run), nproc=0))
    for key in ("updates", "batch_size", "checkpoint_every"):
        with pytest.raises(ValueError, match=f"{key} must be an int of at least one, got 0"):
            train_student(TrainStudentConfig(run=str(run), **{key: 0}))
    with pytest.raises(FileNotFoundError, match="not a distill run"):
        train_student(TrainStudentConfig(run=str(tmp_path)))
    with pytest.raises(ValueError, match="common, non-zero length"):
        fit(torch.nn.Linear(1, 1), lambda m, b: m(b["x"]).mean(), {"x": [[1.0]], "y": [1.0, 2.0]}, FitConfig())
