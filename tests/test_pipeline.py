"""The main job end to end on a two-task suite with a tiny budget."""

import json

from conftest import TINY

from policydistill.cli import main


def test_pipeline_trains_evaluates_and_reports(tmp_path):
    suite = tmp_path / "two.yaml"
    task = "  - {{name: {0}, env: policydistill/PointReach-v0, kwargs: {{target: {0}}}, train_steps: 2048}}\n"
    suite.write_text("name: two\ntasks:\n" + task.format("north") + task.format("south"))
    out = tmp_path / "run"
    assert main(["pipeline", f"suite={suite}", f"out={out}", "episodes=4", "video=true", *TINY,
                 "distill.rounds=2", "distill.updates_per_round=50", "distill.eval_episodes=2",
                 "privileged.rounds=1", "privileged.episodes_per_task=1", "privileged.updates_per_round=10",
                 "privileged.eval_episodes=1", "privileged.kinds=[mlp,gru]"]) == 0
    report = (out / "report.md").read_text()
    for heading in ("## Experts", "## Does the suite need the task id?", "## DAgger generalist",
                    "## Privileged-information students", "## Stage times"):
        assert heading in report
    assert "| north | ppo |" in report and "(videos/north.mp4)" in report
    assert (out / "experts.png").stat().st_size > 10_000
    assert (out / "videos" / "south.mp4").stat().st_size > 1000
    assert (out / "distill.png").stat().st_size > 10_000 and (out / "distill" / "dagger" / "student").is_dir()
    assert "| gru | policy, task |" in report and (out / "privileged" / "gru" / "student").is_dir()
    matrix = json.loads((out / "cross_task_success.json").read_text())
    assert matrix["tasks"] == ["north", "south"] and len(matrix["success"]) == 2
