"""The main job end to end on a two-task suite with a tiny budget."""

import json

from conftest import TINY

from policydistill.cli import main

TINY_DIFFUSION = ["diffusion.algos=[dmd_det,regression]", "diffusion.eval_episodes=1", "diffusion.latency_calls=5",
                  "diffusion.teacher.train_steps=30", "diffusion.teacher.episodes_per_task=1",
                  "diffusion.teacher.hidden=[32]", "diffusion.teacher.sampler_steps=4", "diffusion.onestep.steps=3",
                  "diffusion.onestep.pairs=16", "diffusion.onestep.episodes_per_task=1"]


def test_pipeline_trains_evaluates_and_reports(tmp_path):
    suite = tmp_path / "two.yaml"
    task = "  - {{name: {0}, env: policydistill/PointReach-v0, kwargs: {{target: {0}}}, train_steps: 2048}}\n"
    suite.write_text("name: two\ntasks:\n" + task.format("north") + task.format("south"))
    out = tmp_path / "run"
    assert main(["pipeline", f"suite={suite}", f"out={out}", "episodes=4", "video=true", *TINY,
                 "distill.rounds=2", "distill.updates_per_round=50", "distill.eval_episodes=2", *TINY_DIFFUSION,
                 "privileged.rounds=1", "privileged.episodes_per_task=1", "privileged.updates_per_round=10",
                 "privileged.eval_episodes=1", "privileged.kinds=[mlp,gru]"]) == 0
    report = (out / "report.md").read_text()
    for heading in ("## Experts", "## Does the suite need the task id?", "## DAgger generalist",
                    "## Diffusion policy and one-step students", "## Privileged-information students",
                    "## Stage times"):
        assert heading in report
    assert "| north | ppo |" in report and "(videos/north.mp4)" in report
    assert (out / "experts.png").stat().st_size > 10_000
    assert (out / "videos" / "south.mp4").stat().st_size > 1000
    assert (out / "distill.png").stat().st_size > 10_000 and (out / "distill" / "dagger" / "student").is_dir()
    assert "| gru | policy, task |" in report and (out / "privileged" / "gru" / "student").is_dir()
    matrix = json.loads((out / "cross_task_success.json").read_text())
    assert matrix["tasks"] == ["north", "south"] and len(matrix["success"]) == 2
    onestep = json.loads((out / "diffusion" / "onestep.json").read_text())
    assert list(onestep["results"]) == ["teacher ddim 100", "teacher ddim 10", "teacher ddim 1", "one-step dmd_det",
                                        "one-step regression"]
    assert all(r["latency"]["p50_ms"] > 0 for r in onestep["results"].values())
    assert "| one-step dmd_det |" in report and (out / "diffusion" / "onestep.png").stat().st_size > 10_000
