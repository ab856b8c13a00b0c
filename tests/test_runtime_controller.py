"""The real-time wrapper: per-tick actions, chunk queue, fallbacks, async inference, the fixed-rate loop, CLI."""

from __future__ import annotations

import gc
import json
import logging
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import goal_seeker
from gymnasium import spaces
from runtime_fixtures import NoiseChunkFixture, record_default

from policydistill.bundle import load_bundle
from policydistill.cli import main
from policydistill.policy import CallablePolicy
from policydistill.runtime import Controller, FixedRateLoop, OnnxPolicy, export_policy, make_source
from policydistill.runtime.action_queue import ensemble_offline
from policydistill.runtime.controller import PolicySource
from policydistill.runtime.run import SimRobot, run_policy
from policydistill.suites import load_suite

ROOT = Path(__file__).resolve().parents[1]
NORTH = ROOT / "envs/zoo/default/north"

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")


@pytest.fixture(scope="module")
def north():
    return load_bundle(NORTH, device="cpu")


@pytest.fixture(scope="module")
def recorded(north):
    return record_default(north, episodes=1)[0]


@pytest.fixture(scope="module")
def chunk_onnx(tmp_path_factory) -> Path:
    return export_policy(NoiseChunkFixture().eval(), "onnx", tmp_path_factory.mktemp("chunk") / "chunk.onnx")


def test_controller_acts_as_the_policy_for_every_backend(north, recorded, tmp_path):
    sources = {"torch": make_source(north), "onnx": make_source(NORTH, backend="onnx"),
               "torchscript": make_source(NORTH, backend="torchscript")}
    for backend, source in sources.items():
        ctrl = Controller(source, 0.01)
        for obs in recorded[::7]:
            np.testing.assert_allclose(ctrl.step(obs), north.act(obs), rtol=0, atol=1e-4 if backend == "onnx" else 1e-6)
        s = ctrl.stats()
        assert s["ticks"] == len(recorded[::7]) and s["compute"]["count"] == s["ticks"] and s["overruns"] == 0
    scripted = goal_seeker()
    ctrl = Controller(make_source(scripted), 0.01, safe_action=[0.0, 0.0])
    assert isinstance(ctrl.source, PolicySource)
    batch = {g: np.concatenate([o[g] for o in recorded[:3]]) for g in recorded[0]}
    np.testing.assert_array_equal(ctrl.step(batch), scripted.act(batch))
    with pytest.raises(ValueError, match="unknown runtime backend 'tflite'"):
        make_source(NORTH, backend="tflite")
    with pytest.raises(FileNotFoundError, match="no bundle or exported model at"):
        make_source(tmp_path / "nothing.onnx")


def test_fallbacks_replace_non_finite_late_and_missed_actions(recorded):
    def act(x):
        out = np.tanh(x[:, :2]).astype(np.float32)
        out[1] = np.nan if x[1, 0] > 0 else out[1]  # env 1 fails whenever its first feature is positive
        return out

    bad = CallablePolicy(act, groups=("policy",), batched=True, action_space=spaces.Box(-1.0, 1.0, (2,)))
    obs = {"policy": np.array([[0.1, 0.2, 0.3, 0.4], [-0.5, 0.0, 0.0, 0.0]], np.float32)}
    for fallback, safe in (("hold", None), ("safe", [0.25, 0.75])):
        ctrl = Controller(PolicySource(bad), 0.01, fallback=fallback, safe_action=safe)
        first = ctrl.step(obs)
        np.testing.assert_allclose(first, np.tanh(obs["policy"][:, :2]), rtol=1e-6)
        flipped = {"policy": obs["policy"] * -1}
        second = ctrl.step(flipped)
        want1 = first[1] if fallback == "hold" else [0.25, 0.75]
        np.testing.assert_allclose(second[1], want1, rtol=1e-6)
        np.testing.assert_allclose(second[0], np.tanh(flipped["policy"][0, :2]), rtol=1e-6)
        late = ctrl.step(obs, deadline=time.perf_counter() - 1.0)  # ready after its deadline: not executed
        np.testing.assert_allclose(late, second if fallback == "hold" else [[0.25, 0.75]] * 2, rtol=1e-6)
        np.testing.assert_allclose(ctrl.skip(10), late, rtol=1e-6)
        s = ctrl.stats()
        assert (s["overruns"], s["missed"], s["nonfinite_env_ticks"], s["ticks"]) == (1, 1, 1, 3)
    with pytest.raises(ValueError, match=r"safe_action must be 2 finite numbers"):
        Controller(PolicySource(bad), 0.01, safe_action=[0.0])
    with pytest.raises(ValueError, match="unknown fallback 'brake'"):
        Controller(PolicySource(bad), 0.01, fallback="brake")
    with pytest.raises(ValueError, match="async inference needs a chunk policy"):
        Controller(PolicySource(bad), 0.01, async_inference=True)
    with pytest.raises(ValueError, match="blend_steps must be >= 0 and ensemble_m finite, got -1"):
        Controller(PolicySource(bad), 0.01, blend_steps=-1)
    with pytest.raises(ValueError, match="latency_budget_s must be a finite number of seconds > 0, got nan"):
        Controller(PolicySource(bad), 0.01, latency_budget_s=float("nan"))


def test_sync_chunks_execute_n_action_steps_as_the_exported_policy_does(chunk_onnx, recorded):
    ctrl = Controller(OnnxPolicy(chunk_onnx, seed=4), 0.01)
    policy = OnnxPolicy(chunk_onnx, seed=4)
    for obs in recorded[:30]:
        np.testing.assert_array_equal(ctrl.step(obs), policy.act(obs))
    s = ctrl.stats()
    assert (s["chunks"], s["stale_dropped"], s["starved_env_ticks"], s["inference"]["count"]) == (8, 0, 0, 8)
    assert (s["horizon"], s["n_action_steps"], s["queue"]) == (8, 4, "replace")


def test_temporal_ensembling_in_the_controller_equals_the_offline_average(chunk_onnx, recorded):
    ctrl = Controller(OnnxPolicy(chunk_onnx, seed=1), 0.01, queue="ensemble", ensemble_m=0.2, n_action_steps=1)
    replica = OnnxPolicy(chunk_onnx, seed=1)
    chunks = []
    for t, obs in enumerate(recorded[:25]):
        chunks.append((t, t, replica.predict(replica.prepare(obs))))
        np.testing.assert_allclose(ctrl.step(obs), ensemble_offline(chunks, t, 0.2), rtol=0, atol=1e-6)
    assert ctrl.stats()["chunks"] == 25


def test_reset_forgets_the_plan_of_the_masked_envs(chunk_onnx, recorded):
    ctrl = Controller(OnnxPolicy(chunk_onnx, seed=3), 0.01, fallback="hold")
    replica = Controller(OnnxPolicy(chunk_onnx, seed=3), 0.01, fallback="hold")
    two = [{g: np.concatenate([o[g], o[g]]) for g in o} for o in recorded[:8]]
    for obs in two[:2]:
        np.testing.assert_array_equal(ctrl.step(obs), replica.step(obs))
    ctrl.reset(np.array([False, True]))
    assert ctrl.skip(2)[1].tolist() == [0.0, 0.0]  # a reset env holds the safe action, not the old episode's
    got, want = ctrl.step(two[3]), replica.step(two[3], tick=3)
    np.testing.assert_array_equal(got[0], want[0])  # env 0 goes on with its plan
    assert not np.array_equal(got[1], want[1])  # env 1 had nothing queued: a new chunk, computed at once
    assert ctrl.stats()["chunks"] == 2 and ctrl.stats()["cold_start_env_ticks"] == 0
    with pytest.raises(ValueError, match=r"reset mask has shape \(3,\), expected \(2,\)"):
        ctrl.reset(np.array([True, False, True]))


class _SlowSource:
    """Test fixture: a real exported chunk policy whose inference takes ``latency_s`` longer."""

    def __init__(self, source, latency_s: float) -> None:
        self.source, self.latency_s = source, latency_s
        for name in ("kind", "groups", "horizon", "n_action_steps", "n_obs_steps", "action_low", "action_high",
                     "act_dim", "prepare", "reset", "describe"):
            setattr(self, name, getattr(source, name))

    def predict(self, x):
        time.sleep(self.latency_s)
        return self.source.predict(x)


@pytest.mark.slow
def test_async_inference_keeps_the_queue_from_running_dry_where_sync_stalls(chunk_onnx, caplog):
    suite = load_suite("default")
    period, ticks = 0.02, 60

    def run(latency_s: float, n_action_steps: int, async_inference: bool) -> dict:
        robot = SimRobot(suite, 0, seed=1)
        source = _SlowSource(OnnxPolicy(chunk_onnx, seed=0), latency_s)
        with Controller(source, period, n_action_steps=n_action_steps, async_inference=async_inference) as ctrl:
            stats = FixedRateLoop(1 / period).run(ctrl, robot, ticks)
        robot.close()
        return stats

    within = run(0.03, 2, True)  # 30 ms inference, budget (8 - 2) x 20 ms = 120 ms
    c = within["controller"]
    assert c["latency_budget_ms"] == pytest.approx(120) and c["lead_ticks"] == 7
    assert c["chunks"] >= 20 and c["chunks_over_budget"] <= 2  # a loaded machine may pause the process
    if c["chunks_over_budget"] == 0:
        assert c["starved_env_ticks"] == 0  # within budget, the queue never ran dry
    assert c["cold_start_env_ticks"] >= 1 and c["stale_dropped"] > 0  # the first chunk; actions older than arrival
    sync = run(0.03, 2, False)  # the same inference on the control thread overruns the 20 ms period
    assert sync["deadline_misses"] >= 20 and sync["controller"]["inference_mode"] == "sync"
    with caplog.at_level(logging.WARNING, logger="policydistill.runtime.controller"):
        over = run(0.3, 6, True)  # 300 ms inference, budget (8 - 6) x 20 ms = 40 ms: the queue runs dry
    c = over["controller"]
    assert c["chunks_over_budget"] >= 1 and c["starved_env_ticks"] > 0
    assert any("action queue ran dry" in r.message for r in caplog.records)
    assert any("over the 40.0 ms budget" in r.message for r in caplog.records)


class _RecordingRobot(SimRobot):
    """Test fixture: the simulated robot, recording what it was sent, slow to step every 25th tick."""

    def __init__(self, *args, stall_s: float, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sent, self.stall_s = [], stall_s

    def actuate(self, actions):
        self.sent.append(actions.copy())
        if len(self.sent) % 25 == 0:
            time.sleep(self.stall_s)
        return super().actuate(actions)


def test_fixed_rate_loop_counts_missed_ticks_and_sends_the_held_action(north):
    suite = load_suite("default")
    robot = _RecordingRobot(suite, 0, seed=2, stall_s=0.035)  # 3.5 periods of 10 ms every 25 ticks
    with Controller(make_source(north), 0.01) as ctrl:
        stats = FixedRateLoop(100).run(ctrl, robot, 100)
    robot.close()
    assert stats["ticks"] == 100 == len(robot.sent) == stats["executed"] + stats["missed"]
    assert stats["missed"] >= 6 and stats["controller"]["missed"] == stats["missed"]
    held = [k for k in range(1, 100) if np.array_equal(robot.sent[k], robot.sent[k - 1])]
    assert len(held) >= stats["missed"]  # every missed tick re-sent the previous action
    lat = stats["latency"]
    assert lat["count"] == stats["executed"] and lat["p50_us"] <= lat["p95_us"] <= lat["p99_us"] <= lat["max_us"]
    machine = stats["machine"]
    assert machine["own_cpu"] > 0 and machine["involuntary_switches"] >= 0 and len(machine["loadavg_before"]) == 3
    assert set(machine["cpu_busy"]) and all(0 <= v <= 1.5 for v in machine["cpu_busy"].values())


def test_fixed_rate_loop_pauses_the_garbage_collector_only_while_it_runs(north):
    class GcWatchingRobot(SimRobot):
        seen: list[bool] = []

        def actuate(self, actions):
            self.seen.append(gc.isenabled())
            return super().actuate(actions)

    robot = GcWatchingRobot(load_suite("default"), "north", seed=0)
    assert gc.isenabled()
    with Controller(make_source(north), 0.002) as ctrl:
        FixedRateLoop(500).run(ctrl, robot, 20)
        assert robot.seen == [False] * 20 and gc.isenabled()  # paused during the ticks, back after
        gc.disable()
        try:
            FixedRateLoop(500).run(ctrl, robot, 5)
            assert not gc.isenabled()  # a caller's own choice is kept
        finally:
            gc.enable()
    robot.close()


def test_run_drives_the_simulated_robot_and_finishes_episodes(north):
    stats = run_policy(NORTH, "default", rate_hz=200, ticks=300, n_envs=2, progress=False)
    assert stats["ticks"] == 300 and stats["controller"]["kind"] == "action"
    assert stats["episodes"]["count"] >= 2 and stats["episodes"]["success_rate"] > 0.5
    with pytest.raises(ValueError, match="observation group 'policy' differs"):
        run_policy(NORTH, "Pendulum-v1", rate_hz=100, ticks=10, progress=False)


def test_run_and_export_commands(tmp_path, capsys):
    out = tmp_path / "north.onnx"
    assert main(["export", f"policy={NORTH}", "format=onnx", f"out={out}"]) == 0
    assert out.is_file() and json.loads(Path(f"{out}.json").read_text())["format"] == "onnx"
    stats = tmp_path / "run.json"
    assert main(["run", f"policy={out}", "suite=default", "rate_hz=200", "ticks=200", f"out={stats}",
                 "runtime.fallback=safe"]) == 0
    printed = capsys.readouterr().out
    assert "fixed-rate loop: 200 Hz, 200 ticks" in printed and "deadline misses" in printed and "p99" in printed
    doc = json.loads(stats.read_text())
    assert doc["ticks"] == 200 and doc["controller"]["fallback"] == "safe" and doc["config"]["rate_hz"] == 200
    assert main(["run", f"policy={NORTH}", "runtime.queue=average", "ticks=5"]) == 2
    assert main(["export", f"policy={NORTH}", "format=tflite", f"out={tmp_path / 'x'}"]) == 2
    assert main(["run", f"policy={NORTH}", "rate=5"]) == 2


def test_controller_is_a_policy_for_rollouts(north, default_suite):
    from policydistill.eval.rollout import run_episodes

    ctrl = Controller(make_source(north), 0.01)
    ctrl.observation_space, ctrl.action_space = north.observation_space, north.action_space
    eps = run_episodes(default_suite, "north", ctrl, episodes=2, n_envs=2, seed=5)
    want = run_episodes(default_suite, "north", north, episodes=2, n_envs=2, seed=5)
    assert [e.ret for e in eps] == pytest.approx([e.ret for e in want], abs=1e-3)
    torch.set_num_threads(1)
