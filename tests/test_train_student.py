"""``train-student``: the fit loop of a finished run's method, on one process or under torchrun/DDP (2 CPU
processes, gloo): N processes match one, rank 0 alone writes, a killed run resumes from its checkpoint."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from conftest import run_and_kill
from safetensors.torch import load_file

from policydistill.cli import main
from policydistill.distill.retrain import TrainStudentConfig, train_student
from policydistill.files import read_json

ZOO = Path(__file__).resolve().parents[1] / "envs" / "zoo" / "default"
# Every row of the global batch gets the same data row and noise on 1 or 2 processes; what differs is the order
# in which DDP sums the two halves' gradients, float32 rounding that Adam carries on. Measured: at most 5e-8
# (max abs weight difference) after 40 updates, for every kind here.
WEIGHT_TOLERANCE = 1e-5
TINY_DIFFUSION = ["method.hidden=[32,32]", "method.horizon=8", "method.n_action_steps=4", "method.sampler_steps=4",
                  "method.episodes_per_task=2", "method.train_steps=40", "method.batch_size=32",
                  "method.demos=mirror_routes"]
RUNS = {
    "dagger": ["method=dagger", f"teachers={ZOO}", "method.rounds=1", "method.episodes_per_task=2",
               "method.updates_per_round=5"],
    "gru": ["method=dagger", "teachers=conftest:goal_seeker", "method.rounds=1", "method.episodes_per_task=2",
            "method.updates_per_round=5", "student=gru", "student.rnn_hidden=16", "student.tbptt=8",
            "student.check_predictable=false"],
    "diffusion": ["method=diffusion", "teachers=conftest:goal_seeker", *TINY_DIFFUSION],
}
ONESTEP = ["method.steps=5", "method.episodes_per_task=1", "method.batch_size=16"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A tiny finished run of each kind train-student trains: a DAgger MLP and GRU student, a diffusion policy
    and one-step students distilled from it."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for kind, args in RUNS.items():
        out[kind] = root / kind
        assert main(["distill", "suite=default", f"out={out[kind]}", "eval_episodes=1", "final_episodes=0", *args]) == 0
    teacher = out["diffusion"] / "student"
    for algo, extra in (("consistency", []), ("dmd_det", ["method.pairs=64", "method.teacher_steps=2"]),
                        ("dmd", ["method.pairs=64", "method.teacher_steps=2"])):
        out[algo] = root / algo
        assert main(["distill", "method=onestep", "suite=default", f"teachers={teacher}", f"out={out[algo]}",
                     "eval_episodes=1", "final_episodes=0", f"method.algo={algo}", *ONESTEP, *extra]) == 0
    return out


def _weights(bundle: Path) -> dict[str, torch.Tensor]:
    return load_file(bundle / "model.safetensors")


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["dagger", "gru", "consistency"])
def test_two_processes_match_one_process(runs, kind, tmp_path, monkeypatch):
    """Independent rows (dagger: constant learning rate, so its two processes stop at 20 updates and a rerun
    resumes them to 40 from the checkpoint rank 0 wrote), truncated-BPTT sequences (gru: each process its share
    of the episodes) and rows with random inputs and a target network (consistency)."""
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))  # the processes import the runs' teachers
    cfg = TrainStudentConfig(run=str(runs[kind]), updates=40, batch_size=32, checkpoint_every=20)
    one = train_student(dataclasses.replace(cfg, out=str(tmp_path / "one")))
    args = ["train-student", f"run={runs[kind]}", f"out={tmp_path / 'two'}", "batch_size=32", "checkpoint_every=20",
            "nproc=2"]
    if kind == "dagger":
        assert main([*args, "updates=20"]) == 0
    assert main([*args, "updates=40", "resume=extend"]) == 0
    two = read_json(tmp_path / "two" / "train_student.json")
    assert (one["world_size"], two["world_size"], two["method"]) == (1, 2, one["method"])
    assert two["resumed_from"] == (20 if kind == "dagger" else 0)
    a, b = _weights(tmp_path / "one" / "bundle"), _weights(tmp_path / "two" / "bundle")
    moved, gap = _max_diff(a, _weights(runs[kind] / "student")), _max_diff(a, b)
    assert gap < WEIGHT_TOLERANCE and moved > 100 * gap  # trained far more than the two runs differ
    assert two["final_loss"] == pytest.approx(one["final_loss"], rel=1e-3)
    files = sorted(str(p.relative_to(tmp_path / "two")) for p in (tmp_path / "two").rglob("*") if p.is_file())
    assert [f for f in files if not f.startswith("tb/")] == [".lock", "bundle/model.safetensors", "bundle/policy.json",
                                                            "checkpoint.pt", "run.json", "train_student.json"]
    events = [f for f in files if f.startswith("tb/")]  # rank 0 alone logged: one event file per invocation
    assert len(events) == (2 if kind == "dagger" else 1) and all(f.startswith("tb/events") for f in events)


def test_a_rerun_resumes_exactly_from_the_last_checkpoint(runs, tmp_path):
    """Constant learning rate: 20 updates, then a rerun asking 30, end where 30 straight updates end."""
    cfg = TrainStudentConfig(run=str(runs["dagger"]), updates=30, batch_size=16, checkpoint_every=10)
    straight = train_student(dataclasses.replace(cfg, out=str(tmp_path / "straight")))
    train_student(dataclasses.replace(cfg, out=str(tmp_path / "resumed"), updates=20))
    resumed = train_student(dataclasses.replace(cfg, out=str(tmp_path / "resumed"), resume="extend"))
    assert straight["resumed_from"] == 0 and resumed["resumed_from"] == 20
    a, b = _weights(tmp_path / "straight" / "bundle"), _weights(tmp_path / "resumed" / "bundle")
    assert all(torch.equal(a[k], b[k]) for k in a) and _max_diff(a, _weights(runs["dagger"] / "student")) > 0
    assert straight["final_loss"] < read_json(runs["dagger"] / "distill.json")["rounds"][0]["loss"]  # it trained


@pytest.mark.parametrize("kind", ["consistency", "dmd_det", "dmd"])
def test_a_killed_run_resumes_exactly(runs, kind, tmp_path):
    """A one-process train-student killed (SIGKILL) after a checkpoint ends, rerun, bitwise where an uninterrupted
    run ends: the checkpoint holds the student, optimiser, generator, target network (consistency) and
    auxiliary network with its optimiser (dmd)."""
    args = [f"run={runs[kind]}", "updates=300", "batch_size=16", "checkpoint_every=10"]
    out = tmp_path / "killed"
    run_and_kill(["train-student", *args, f"out={out}"], lambda: (out / "checkpoint.pt").exists())
    assert main(["train-student", *args, f"out={out}"]) == 0
    assert main(["train-student", *args, f"out={tmp_path / 'straight'}"]) == 0
    resumed = read_json(out / "train_student.json")
    assert 10 <= resumed["resumed_from"] < 300
    a, b = _weights(tmp_path / "straight" / "bundle"), _weights(out / "bundle")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_what_cannot_be_trained_is_refused_with_the_reason(runs, tmp_path, caplog):
    assert main(["train-student", f"run={runs['dmd']}", "nproc=2", f"out={tmp_path / 'dmd'}"]) == 2
    assert "auxiliary score network" in caplog.text and not (tmp_path / "dmd").exists()
    assert main(["train-student", f"run={tmp_path}"]) == 2
    assert "is not a distill run" in caplog.text
    for key in ("updates", "batch_size", "checkpoint_every", "nproc"):
        assert main(["train-student", f"run={runs['dagger']}", f"{key}=0"]) == 2
        assert f"{key} must be an int >= 1, got 0" in caplog.text
    kick = tmp_path / "kick"
    assert main(["distill", "method=kickstart", f"teachers={ZOO}", f"out={kick}", "method.rounds=1", "method.n_envs=4",
                 "method.n_steps=16", "method.batch_size=32", "method.n_epochs=1", "eval_episodes=1"]) == 0
    assert main(["train-student", f"run={kick}"]) == 2
    assert "method 'kickstart' does not train from stored episodes" in caplog.text
