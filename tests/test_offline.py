"""Offline distillation (teachers=none): BC and diffusion from stored episodes alone, scored against the data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from policydistill.cli import main
from policydistill.data.shards import EpisodeStore
from policydistill.files import read_json

ZOO = Path(__file__).resolve().parents[1] / "envs" / "zoo" / "default"


@pytest.fixture(scope="module")
def teacher_episodes(tmp_path_factory) -> Path:
    """The default suite's PPO experts' own episodes: a BC run's store (6 episodes per task)."""
    out = tmp_path_factory.mktemp("offline") / "bc"
    assert main(["distill", f"teachers={ZOO}", "method=bc", "method.rounds=1", "method.episodes_per_task=6",
                 "method.updates_per_round=5", "eval_episodes=1", "final_episodes=0", f"out={out}"]) == 0
    return out / "episodes"


@pytest.mark.slow
def test_offline_bc_learns_from_the_store_alone(teacher_episodes, tmp_path):
    out = tmp_path / "offline"
    assert main(["distill", "teachers=none", "method=bc", f"method.data=[{teacher_episodes}]", "method.rounds=2",
                 "method.updates_per_round=600", "eval_episodes=5", "final_episodes=0", f"out={out}"]) == 0
    summary = read_json(out / "distill.json")
    assert summary["teachers"] == "none" and not (out / "episodes").exists()  # nothing collected
    assert all(row["labels_used"] == 0 and row["env_steps"] == 0 for row in summary["rounds"])
    store = EpisodeStore(teacher_episodes)
    for name, ref in summary["teacher"].items():  # the reference is the data's own episodes
        returns = [m["return"] for m in store.episodes() if m["task"] == name]
        assert ref["episodes"] == len(returns) and ref["return_mean"] == pytest.approx(np.mean(returns))
    assert summary["rounds"][-1]["mean_success"] >= 0.9 and summary["rounds"][-1]["mean_score"] > 0.8


def test_offline_diffusion_trains_on_the_store(teacher_episodes, tmp_path):
    out = tmp_path / "diffusion"
    assert main(["distill", "teachers=none", "method=diffusion", f"method.data=[{teacher_episodes}]",
                 "method.train_steps=20", "method.hidden=[32]", "method.sampler_steps=4", "eval_episodes=1",
                 "final_episodes=0", f"out={out}"]) == 0
    row = read_json(out / "distill.json")["rounds"][0]
    assert row["updates"] == 20 and row["env_steps"] == 0
    assert row["info"]["windows"] == EpisodeStore(teacher_episodes).steps


def test_offline_runs_refuse_what_they_cannot_do(teacher_episodes, tmp_path, caplog):
    base = ["distill", "teachers=none", f"out={tmp_path / 'x'}"]
    cases = {
        "method=dagger": "method 'dagger' asks its teachers for labels",
        "method=bc": "give method.data=[<episode store>, ...]",
        f"method=bc method.data=[{tmp_path}]": "is not an episode store",
        f"method=bc method.data=[{teacher_episodes}] method.relabel_noise=0.1":
            "an offline run (teachers=none) has none",
    }
    for args, message in cases.items():
        caplog.clear()
        assert main([*base, *args.split()]) == 2, args
        assert message in caplog.text, args
    caplog.clear()
    assert main(["distill", f"teachers={ZOO}", "method=bc", f"method.data=[{teacher_episodes}]",
                 f"out={tmp_path / 'y'}"]) == 2
    assert "method.data is read with teachers=none" in caplog.text
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
