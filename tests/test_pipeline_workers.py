"""The pipeline's stages distil their students on ``workers`` processes: the same students as one after the
other, reported in the order of the stage's config (here the privileged-students stage, its ``privileged.kinds``),
with one progress bar (the workers draw none)."""

from __future__ import annotations

from pathlib import Path

import pytest

from policydistill.cli.main import compose_config
from policydistill.eval.report import Report
from policydistill.files import read_json
from policydistill.pipeline.privileged import stage_privileged
from policydistill.suites import load_suite

pytestmark = pytest.mark.slow  # two stages of two learning runs each, if on a tiny budget
TINY = ["privileged.rounds=2", "privileged.episodes_per_task=1", "privileged.updates_per_round=5",
        "privileged.eval_episodes=1", "privileged.kinds=[mlp,gru]"]


def run_stage(out: Path, workers: int) -> str:
    cfg = compose_config("pipeline", [f"out={out}", f"workers={workers}", *TINY])
    report = Report("stage")
    stage_privileged(cfg, load_suite(cfg.suite), out, report)
    return report.write(out / "report.md").read_text()


def test_students_on_two_workers_are_those_of_one(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    text = {workers: run_stage(tmp_path / str(workers), workers) for workers in (1, 2)}
    err = capfd.readouterr().err
    for kind in ("mlp", "gru"):
        one, two = (read_json(tmp_path / str(w) / "privileged" / kind / "distill.json")["rounds"] for w in (1, 2))
        assert [r["losses"] for r in one] == [r["losses"] for r in two]
        assert [r["tasks"] for r in one] == [r["tasks"] for r in two]
    rows = [line.split(" | ")[0] for line in text[2].splitlines() if line.startswith("| ")]
    assert rows[2:] == ["| mlp", "| gru"]  # after the header and the teacher, as privileged.kinds lists them
    assert "privileged student: 100%" in err and "upd/s" not in err  # the stage's bar, none of the workers' fits
