"""Nothing lost: a run folder is resumed only with its own config and teachers, is locked while a run writes,
refuses what is not its run, writes files atomically with the user's umask, keeps a killed round's episodes out
of what later reads the run; bad input is one line, exit code 2, nothing written."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY, run_and_kill

from policydistill.cli import main
from policydistill.data.shards import EpisodeStore
from policydistill.files import read_json

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT / "envs" / "zoo" / "default"
BC = ["distill", "method=bc", "eval_episodes=1", "final_episodes=0", "n_envs=2", "method.rounds=2",
      "method.episodes_per_task=1", "method.updates_per_round=20"]


def bc(out: Path, *extra: str, teachers: str = "conftest:goal_seeker") -> list[str]:
    return [*BC, f"teachers={teachers}", f"out={out}", *extra]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (but the lock) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def error_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(bc(out)) == 0
    return out


def test_a_changed_config_is_refused_with_its_diff_and_nothing_changes(finished, caplog):
    before = snapshot(finished)
    assert main(bc(finished, "method.lr=0.5", "seed=9", "method.loss=huber")) == 2
    (line,) = error_lines(caplog)
    assert "refusing to resume it: method.loss: mse -> huber; method.lr: 0.001 -> 0.5; seed: 0 -> 9" in line
    caplog.clear()
    assert main(bc(finished, "student.hidden=[32,32]")) == 2
    (line,) = error_lines(caplog)
    assert "student.hidden: [256, 256] -> [32, 32]" in line
    caplog.clear()
    assert main(bc(finished, "method.rounds=3")) == 2
    assert "resume=extend lets method.rounds change" in error_lines(caplog)[0]
    assert snapshot(finished) == before


def test_resume_extend_adds_rounds_and_resume_false_starts_over(tmp_path, caplog):
    out = tmp_path / "run"
    assert main(bc(out)) == 0
    assert main(bc(out, "method.rounds=3", "resume=extend")) == 0
    summary = read_json(out / "distill.json")
    assert len(summary["rounds"]) == 3 and summary["config"]["method"]["rounds"] == 3
    assert read_json(out / "run.json")["config"]["method"]["rounds"] == 3
    assert main(bc(out, "seed=4", "resume=false")) == 0
    summary = read_json(out / "distill.json")
    assert len(summary["rounds"]) == 2 and summary["config"]["seed"] == 4
    assert "removing the previous 'distill' run" in caplog.text


def test_a_resume_with_other_teachers_is_refused(tmp_path, caplog):
    teachers = tmp_path / "zoo"
    shutil.copytree(ZOO, teachers)
    out = tmp_path / "run"
    assert main(bc(out, "method.rounds=1", teachers=str(teachers))) == 0
    shutil.rmtree(teachers / "east")
    shutil.copytree(ZOO / "north", teachers / "east")  # same path, another policy
    before = snapshot(out)
    assert main(bc(out, "method.rounds=1", teachers=str(teachers))) == 2
    (line,) = error_lines(caplog)
    assert "teacher_identity.east: bundle sha256:" in line and "teacher_identity.north" not in line
    assert snapshot(out) == before


@pytest.mark.slow
def test_two_runs_on_one_out_one_runs_the_other_is_refused_and_the_folder_resumes(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests")}
    argv = [sys.executable, "-m", "policydistill", *bc(out, "method.rounds=3", "method.updates_per_round=400")]
    procs = [subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    assert "is in use by another run (distill pid" in refused and "Traceback" not in refused
    rows = read_json(out / "distill.json")["rounds"]
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert main(bc(out, "method.rounds=3", "method.updates_per_round=400")) == 0  # resumable: nothing to add
    assert len(read_json(out / "distill.json")["rounds"]) == 3


@pytest.mark.slow
def test_the_lock_of_a_killed_run_is_gone_and_the_run_resumes(tmp_path):
    out = tmp_path / "run"
    argv = bc(out, "method.rounds=3", "method.updates_per_round=400")
    run_and_kill(argv, lambda: (out / "distill.json").exists() and len(read_json(out / "distill.json")["rounds"]))
    assert (out / ".lock").exists()
    assert main(argv) == 0 and len(read_json(out / "distill.json")["rounds"]) == 3


def group(pgid: int) -> dict[int, str]:
    """The live processes (pid: command line) of process group ``pgid``, from ``/proc``."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _, pgrp = stat.read_text().rsplit(")", 1)[1].split()[:3]
            cmd = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:  # ended while read
            continue
        if int(pgrp) == pgid and state != "Z":
            found[int(stat.parent.name)] = cmd
    return found


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="workers die with their parent on Linux (PR_SET_PDEATHSIG)")
def test_the_workers_of_a_run_killed_alone_die_with_it(tmp_path):
    argv = [sys.executable, "-m", "policydistill", "train-experts", "suite=default", f"out={tmp_path / 'experts'}",
            "workers=2", "tasks=[north,east]", "expert.total_steps=1000000", *TINY]
    proc = subprocess.Popen(argv, cwd=tmp_path, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while sum("spawn_main" in cmd for cmd in group(proc.pid).values()) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)  # two workers and the manager of their progress queue
        time.sleep(2)  # the workers are into their tasks
        assert proc.poll() is None and sum("spawn_main" in cmd for cmd in group(proc.pid).values()) == 3
        os.kill(proc.pid, signal.SIGKILL)  # the parent alone, as `kill -9 <pid>` does
        proc.wait(10)
        deadline = time.monotonic() + 10
        while group(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert group(proc.pid) == {}
    finally:
        with contextlib.suppress(ProcessLookupError):  # the group is gone
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


@pytest.mark.parametrize("content", ["notes.txt", "store", "distill.json"])
def test_a_folder_holding_something_else_is_refused_and_left_as_it_is(content, tmp_path, finished, caplog):
    out = tmp_path / "mine"
    if content == "store":
        shutil.copytree(finished / "episodes", out / "episodes")
    else:
        out.mkdir()
        (out / content).write_text('{"a": 1}\n')
    before = snapshot(out)
    assert main(bc(out)) == 2
    (line,) = error_lines(caplog)
    assert f"out={out} is not empty and is not a 'distill' run (it holds" in line
    assert snapshot(out) == before and not (out / ".lock").exists()


def test_files_are_written_with_the_users_umask(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests")}
    code = f"import os, sys; os.umask(0o022); from policydistill.cli import main; sys.exit(main({bc(out)!r}))"
    assert subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path).returncode == 0
    modes = {str(p.relative_to(out)): p.stat().st_mode & 0o777 for p in out.rglob("*") if p.is_file()}
    assert {"distill.json", "student/model.safetensors", "student/policy.json", "episodes/manifest.json"} <= set(modes)
    assert set(modes.values()) == {0o644}, {k: oct(v) for k, v in modes.items() if v != 0o644}


@pytest.mark.slow
def test_a_killed_rounds_episodes_are_not_read_and_are_removed_on_resume(tmp_path):
    out = tmp_path / "run"
    argv = bc(out, "method.rounds=3", "method.updates_per_round=3000")
    run_and_kill(argv, lambda: (out / "checkpoint" / "collected-1.json").exists())
    committed = len(read_json(out / "distill.json")["rounds"])
    stored = {m["round"] for m in EpisodeStore(out / "episodes").episodes()}
    assert committed == 1 and stored == {0, 1}  # round 1 collected, not committed
    assert {m["round"] for m in EpisodeStore(out / "episodes", max_round=committed - 1).episodes()} == {0}
    assert main(["train-student", f"run={out}", "updates=5", "batch_size=8"]) == 0
    rows = read_json(out / "student_ddp" / "train_student.json")["dataset_rows"]
    assert rows == sum(m["length"] for m in EpisodeStore(out / "episodes").episodes() if m["round"] == 0)


@pytest.mark.slow
def test_a_damaged_expert_checkpoint_falls_back_to_the_one_before(tmp_path, capfd):
    out = tmp_path / "experts"
    args = ["train-experts", "suite=default", f"out={out}", "workers=1", "tasks=[south]", *TINY,
            "expert.checkpoint_every=512", "expert.total_steps=2048"]
    assert main(args) == 0
    index = read_json(out / "south" / "checkpoint.json")
    assert index["previous"] is not None
    (out / "south" / index["files"]["model"]).write_bytes(b"")  # what a kill inside a non-atomic write leaves
    (out / "south" / "result.json").unlink()
    assert main(args) == 0
    logged = capfd.readouterr().err  # the expert trains in a worker process
    assert "cannot be loaded" in logged and "falling back to the one before it" in logged
    assert read_json(out / "south" / "result.json")["resumed_from"] == [index["previous"]["env_steps"]]


@pytest.mark.slow
def test_an_expert_killed_inside_a_checkpoint_write_resumes_from_an_intact_checkpoint(tmp_path):
    for attempt in range(5):  # the kill lands a moment after the temp file is seen: the write may be done by then
        out = tmp_path / f"experts{attempt}"
        args = ["train-experts", "suite=default", f"out={out}", "workers=1", "tasks=[south]", *TINY,
                "expert.checkpoint_every=128", "expert.total_steps=200000"]
        task = out / "south"

        def writing(task: Path = task) -> bool:  # a later checkpoint's file half-written under its temp name
            return (task / "checkpoint.json").exists() and any(n.startswith(".ckpt-") for n in os.listdir(task))

        run_and_kill(args, writing, timeout=300)
        if any(p.name.startswith(".ckpt-") for p in task.iterdir()):
            break
    else:
        pytest.fail("in 5 runs no kill landed inside a checkpoint write")
    assert all(p.stat().st_size > 0 for p in task.glob("ckpt-*"))
    steps = read_json(task / "checkpoint.json")["env_steps"]
    assert main([*args[:-1], f"expert.total_steps={steps + 256}", "resume=extend"]) == 0
    assert read_json(task / "result.json")["resumed_from"] == [steps]
    assert not any(p.name.startswith(".") and p.name != ".lock" for p in out.rglob("*"))


BAD = [
    (["method.rounds=0"], "rounds must be an int >= 1"),
    (["method.rounds=-1"], "rounds must be an int >= 1"),
    (["method.updates_per_round=0"], "updates_per_round must be an int >= 1"),
    (["method.batch_size=0"], "batch_size must be an int >= 1"),
    (["eval_episodes=0"], "eval_episodes must be an int >= 1"),
    (["method.lr=1e12"], "lr must be a finite number in (0.0, 1.0]"),
    (["out=é"], "must be quoted, as out='é'"),
    (["resume=maybe"], "unknown resume 'maybe'"),
]


@pytest.mark.parametrize(("extra", "message"), BAD, ids=[" ".join(e) for e, _ in BAD])
def test_bad_distill_input_is_one_line_exit_2_nothing_written(extra, message, tmp_path, caplog, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(bc(tmp_path / "out", *extra)) == 2
    (line,) = error_lines(caplog)
    assert message in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("case", ["file as out", "evaluate out is a folder", "train-experts bad activation",
                                  "train-experts n_envs=0", "empty manifest", "invalid distill.json",
                                  "read-only out"])
def test_bad_paths_and_files_are_one_line_exit_2(case, tmp_path, finished, caplog):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    broken = tmp_path / "broken"
    if case in ("empty manifest", "invalid distill.json"):
        shutil.copytree(finished, broken)
        (broken / ("episodes/manifest.json" if case == "empty manifest" else "distill.json")).write_text("")
    argv = {
        "file as out": bc(a_file),
        "evaluate out is a folder": ["evaluate", "policy=conftest:goal_seeker", "episodes=1", f"out={tmp_path}"],
        "train-experts bad activation": ["train-experts", "expert.activation=gelu", f"out={tmp_path / 'e'}"],
        "train-experts n_envs=0": ["train-experts", "expert.n_envs=0", f"out={tmp_path / 'e'}"],
        "empty manifest": ["train-student", f"run={broken}", "updates=2"],
        "invalid distill.json": ["train-student", f"run={broken}", "updates=2"],
        "read-only out": bc(tmp_path / "ro" / "out"),
    }[case]
    if case == "read-only out":
        (tmp_path / "ro").mkdir(mode=0o555)
    before = snapshot(tmp_path)
    code = _without_override(argv, tmp_path) if case == "read-only out" else main(argv)
    assert code == 2
    if case != "read-only out":
        (line,) = error_lines(caplog)
        expected = {"file as out": "is a file; expected a folder", "evaluate out is a folder": "is a directory",
                    "train-experts bad activation": "unknown expert.activation 'gelu'",
                    "train-experts n_envs=0": "expert.n_envs must be an int >= 1",
                    "empty manifest": "manifest.json is not valid JSON",
                    "invalid distill.json": "distill.json is not valid JSON"}[case]
        assert expected in line
    assert snapshot(tmp_path) == before


def _without_override(argv: list[str], cwd: Path) -> int:
    """``main(argv)`` in a child process that may not override file permissions (root may write anywhere; this one
    is root without CAP_DAC_OVERRIDE); its exit code, after checking that it wrote one line naming the folder."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests")}
    caps = "-dac_override,-dac_read_search"
    code = f"import sys; from policydistill.cli import main; sys.exit(main({argv!r}))"
    drop = ["setpriv", "--bounding-set", caps, "--inh-caps", caps] if os.geteuid() == 0 else []
    proc = subprocess.run([*drop, sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True)
    assert "is not writable by this user" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode
