"""Expert training end to end with real SB3: summary, bundles, resume after a kill, SB3 parity."""

import time
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, run_and_kill
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from policydistill.bundle import load_bundle
from policydistill.cli import main
from policydistill.files import read_json
from policydistill.suites import load_suite
from policydistill.suites.wrappers import FlattenGroups
from policydistill.types import stack_obs


@pytest.fixture
def trained(tiny_experts) -> Path:
    return tiny_experts


def test_summary_bundles_curves_and_logs(trained):
    summary = read_json(trained / "experts.json")
    assert summary["suite"] == "default" and list(summary["tasks"]) == ["north", "east"]
    for name, row in summary["tasks"].items():
        assert row["algo"] == "ppo" and row["env_steps"] >= 2048 and row["wall_time_s"] > 0
        assert {"return_mean", "return_std", "success_rate", "steps_to_threshold"} <= set(row)
        policy = load_bundle(trained / name / "bundle", device="cpu")
        assert policy.groups == ("policy", "privileged")
        curve = (trained / name / "curve.csv").read_text().splitlines()
        assert curve[0].startswith("env_steps") and len(curve) >= 3
        assert any((trained / name / "tb").rglob("events.out.tfevents.*"))


def test_rerun_skips_finished_tasks(trained):
    before = (trained / "north" / "result.json").stat().st_mtime_ns
    t0 = time.perf_counter()
    args = ["train-experts", "suite=default", f"out={trained}", "tasks=[north]", "expert.total_steps=2048", *TINY]
    assert main(args) == 0
    assert time.perf_counter() - t0 < 15
    assert (trained / "north" / "result.json").stat().st_mtime_ns == before


def test_bundle_acts_exactly_like_the_sb3_model(trained):
    """The last checkpoint holds the same weights as the bundle: compare their actions."""
    suite = load_suite("default")
    task_dir = trained / "east"
    files = read_json(task_dir / "checkpoint.json")["files"]
    flat_env = DummyVecEnv([lambda: FlattenGroups(suite.make_env(1), ["policy", "privileged"])])
    venv = VecNormalize.load(str(task_dir / files["vecnormalize"]), flat_env)
    model = PPO.load(task_dir / files["model"], device="cpu")
    bundle = load_bundle(task_dir / "bundle", device="cpu")
    env = suite.make_env(1)
    obs_list = []
    obs, _ = env.reset(seed=0)
    for _ in range(50):
        obs_list.append(obs)
        obs, *_ = env.step(env.action_space.sample())
    batch = stack_obs(obs_list)
    flat = np.concatenate([batch["policy"], batch["privileged"]], axis=1)
    expected, _ = model.predict(venv.normalize_obs(flat), deterministic=True)
    np.testing.assert_allclose(bundle.act(batch), expected, atol=1e-5)


def test_mismatched_suite_in_out_dir_is_refused(trained, caplog):
    assert main(["train-experts", "suite=locomotion", f"out={trained}"]) == 2
    assert "refusing to resume it: " in caplog.text and "suite: default -> locomotion" in caplog.text


@pytest.mark.slow
def test_killed_training_resumes_from_its_checkpoint(tmp_path):
    out = tmp_path / "kill"
    args = ["train-experts", "suite=default", f"out={out}", "workers=1", "tasks=[south]", *TINY]
    index = out / "south" / "checkpoint.json"
    run_and_kill([*args, "expert.total_steps=200000"],
                 lambda: index.exists() and read_json(index)["env_steps"] >= 2048)
    killed_at = read_json(index)["env_steps"]
    assert not (out / "south" / "result.json").exists()
    assert main([*args, f"expert.total_steps={killed_at + 1024}", "resume=extend"]) == 0
    result = read_json(out / "south" / "result.json")
    assert result["resumed_from"] == [killed_at]
    assert killed_at + 1024 <= result["env_steps"] < killed_at + 2 * 1024
    steps = [int(line.split(",")[0]) for line in (out / "south" / "curve.csv").read_text().splitlines()[1:]]
    assert steps == sorted(set(steps))
    load_bundle(out / "south" / "bundle", device="cpu")


def test_env_faults_during_training_are_dropped_and_reported(tmp_path):
    suite = tmp_path / "faulty.yaml"
    suite.write_text("name: faulty\ntasks:\n  - {name: f, env: 'faulty_envs:FaultyEnv', "
                     "kwargs: {fault: raise, length: 10, every: 3}, train_steps: 1024}\n")
    out = tmp_path / "out"
    assert main(["train-experts", f"suite={suite}", f"out={out}", "workers=1", *TINY]) == 0
    row = read_json(out / "experts.json")["tasks"]["f"]
    assert row["env_steps"] >= 1024 and row["dropped_episodes"] > 0
    load_bundle(out / "f" / "bundle", device="cpu")


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["sac", "td3"])
def test_sac_and_td3_experts_train_checkpoint_and_bundle(algo, tmp_path):
    out = tmp_path / algo
    args = ["train-experts", "suite=Pendulum-v1", f"out={out}", "workers=1", f"expert={algo}",
            "expert.total_steps=600", "expert.eval_every=300", "expert.checkpoint_every=300", "expert.eval_episodes=2",
            "expert.final_episodes=2", "expert.hyperparams.learning_starts=100", "expert.hyperparams.batch_size=32",
            "expert.net=[32,32]"]  # groups: the default
    assert main(args) == 0
    row = read_json(out / "experts.json")["tasks"]["Pendulum-v1"]
    assert row["algo"] == algo and row["env_steps"] == 600
    files = read_json(out / "Pendulum-v1" / "checkpoint.json")["files"]
    assert "replay_buffer" in files and (out / "Pendulum-v1" / files["replay_buffer"]).exists()
    policy = load_bundle(out / "Pendulum-v1" / "bundle", device="cpu")
    obs = stack_obs([load_suite("Pendulum-v1").make_env(0).reset(seed=0)[0]])
    assert np.all(np.abs(policy.act(obs)) <= 2.0)
