"""Every action the runtime sends is safe: finite, within bounds, rate- and jerk-limited when asked; policy
faults execute the fallback and too many in a row stop the loop; bad observations and bad run/export
requests are clear errors."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
import pytest
from gymnasium import spaces

from policydistill.bundle import load_bundle
from policydistill.cli import main
from policydistill.runtime import Controller, FixedRateLoop, export_policy, make_source
from policydistill.runtime.controller import PolicySource
from policydistill.runtime.loop import format_stats
from policydistill.runtime.run import SimRobot
from policydistill.suites import load_suite

ROOT = Path(__file__).resolve().parents[1]
NORTH = ROOT / "envs/zoo/default/north"
OBS = {"policy": np.zeros((2, 4), np.float32), "privileged": np.zeros((2, 2), np.float32)}

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")


class Misbehaving:
    """A policy of the default suite's spaces (actions in [-1, 1]^2) whose ``act`` returns ``output(call, n)``,
    raising it when it is an exception; ``calls`` counts the calls."""

    groups = ("policy",)

    def __init__(self, output) -> None:
        self.observation_space = spaces.Dict({"policy": spaces.Box(-np.inf, np.inf, (4,), np.float32)})
        self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.output, self.calls = output, 0

    def act(self, obs, deterministic: bool = True):
        out = self.output(self.calls, len(obs["policy"]))
        self.calls += 1
        if isinstance(out, Exception):
            raise out
        return out

    def reset(self, env_mask=None) -> None:
        pass


class MisbehavingChunks(Misbehaving):
    """The same as a chunk policy: ``predict_chunk`` returns ``output(call, n)`` of shape (n, 4, 2)."""

    horizon = n_action_steps = 4

    def predict_chunk(self, obs, deterministic: bool = True):
        return self.act(obs)


class RecordingRobot(SimRobot):
    """The simulated robot of the default suite, recording every action it is sent."""

    def __init__(self, n_envs: int = 1) -> None:
        super().__init__(load_suite("default"), "north", n_envs=n_envs, seed=0)
        self.sent: list[np.ndarray] = []

    def actuate(self, actions):
        self.sent.append(np.array(actions, dtype=np.float64))
        return super().actuate(actions)


def drive(ctrl: Controller, ticks: int, n_envs: int = 1) -> tuple[dict, np.ndarray]:
    """Run ``ctrl`` on the recording robot through the fixed-rate loop; the stats and what was sent."""
    robot = RecordingRobot(n_envs)
    try:
        stats = FixedRateLoop(200).run(ctrl, robot, ticks)
    finally:
        robot.close()
        ctrl.close()
    return stats, np.stack(robot.sent)


def test_out_of_bounds_actions_are_clipped_or_replaced_and_counted():
    wild = Misbehaving(lambda k, n: np.array([[5.0, -3.0], [0.5, -0.25]][:n], np.float32))
    ctrl = Controller(PolicySource(wild), 0.01)
    for _ in range(3):
        np.testing.assert_array_equal(ctrl.step(OBS), [[1.0, -1.0], [0.5, -0.25]])
    s = ctrl.stats()
    assert (s["out_of_bounds"], s["out_of_bounds_env_ticks"], s["nonfinite_env_ticks"]) == ("clip", 3, 0)

    ctrl = Controller(PolicySource(wild), 0.01, out_of_bounds="fallback", fallback="safe", safe_action=[0.5, 0.5])
    np.testing.assert_array_equal(ctrl.step(OBS), [[0.5, 0.5], [0.5, -0.25]])
    assert ctrl.stats()["out_of_bounds_env_ticks"] == 1

    stats, sent = drive(Controller(PolicySource(wild), 0.005), 30)
    assert np.all(np.abs(sent) <= 1.0) and len(sent) == stats["ticks"] == 30  # nothing outside reached the robot
    assert "actions outside the bounds clipped into the bounds" in format_stats(stats) or stats["overruns"]


def test_a_policy_rewriting_one_array_has_every_ticks_actions_checked():
    """A tick's bounds check holds for that tick only: the actions of a policy that returns one array, rewritten in
    place each call, are checked on every tick, and the action held after a fault is the one sent, not that array's
    new values."""
    buffer = np.zeros((2, 2), np.float32)

    def rewrite(k: int, n: int) -> np.ndarray:
        buffer[:] = [[0.5, -0.25], [0.125, 0.25]] if k % 2 == 0 else [[5.0, -3.0], [0.125, 0.25]]
        return buffer

    ctrl = Controller(PolicySource(Misbehaving(rewrite)), 0.01)
    for k in range(4):
        want = [[0.5, -0.25], [0.125, 0.25]] if k % 2 == 0 else [[1.0, -1.0], [0.125, 0.25]]
        np.testing.assert_array_equal(ctrl.step(OBS), want)
    assert ctrl.stats()["out_of_bounds_env_ticks"] == 2

    def then_nan(k: int, n: int) -> np.ndarray:
        buffer[:] = [[0.5, -0.25], [0.125, 0.25]] if k == 0 else np.nan
        return buffer

    ctrl = Controller(PolicySource(Misbehaving(then_nan)), 0.01)
    ctrl.step(OBS)
    np.testing.assert_array_equal(ctrl.step(OBS), [[0.5, -0.25], [0.125, 0.25]])  # held: what was sent, not the array
    assert ctrl.stats()["policy_faults"] == 1


def test_nonfinite_actions_are_replaced_and_counted_as_such():
    nan = Misbehaving(lambda k, n: np.array([[np.nan, 0.0], [0.25, 0.25]], np.float32) if k == 1
                      else np.full((n, 2), 0.5, np.float32))
    ctrl = Controller(PolicySource(nan), 0.01)
    ctrl.step(OBS)
    np.testing.assert_array_equal(ctrl.step(OBS), [[0.5, 0.5], [0.25, 0.25]])  # env 0 holds its last action
    assert (ctrl.stats()["nonfinite_env_ticks"], ctrl.stats()["policy_faults"]) == (1, 0)

    always = Misbehaving(lambda k, n: np.full((n, 2), np.nan, np.float32))  # no finite action at all: a fault
    ctrl = Controller(PolicySource(always), 0.01, max_consecutive_faults=3)
    for _ in range(5):
        assert np.isfinite(ctrl.step(OBS)).all()
    s = ctrl.stats()
    assert s["policy_faults"] == 3 and s["stopped"]["last_fault"].endswith("no finite action for any env")

    def chunk(k: int, n: int) -> np.ndarray:
        out = np.full((n, 4, 2), -0.5, np.float32)
        out[1, :, 0] = np.nan  # env 1's plan is non-finite
        return out

    ctrl = Controller(PolicySource(MisbehavingChunks(chunk)), 0.01, fallback="safe")
    for _ in range(8):
        np.testing.assert_array_equal(ctrl.step(OBS), [[-0.5, -0.5], [0.0, 0.0]])
    s = ctrl.stats()
    assert (s["nonfinite_env_ticks"], s["starved_env_ticks"], s["cold_start_env_ticks"]) == (8, 0, 0)


def test_rate_and_jerk_limits_hold_on_every_action_sent():
    rng = np.random.default_rng(0)
    jumpy = Misbehaving(lambda k, n: rng.uniform(-3.0, 3.0, (n, 2)).astype(np.float32))

    def check(sent: np.ndarray, rate: float, jerk: float) -> None:
        path = np.concatenate([np.zeros((2, *sent.shape[1:])), sent])  # starts at rest at the safe action
        assert np.all(np.abs(sent) <= 1.0)
        assert np.abs(np.diff(path, axis=0)).max() <= rate + 1e-6
        assert np.abs(np.diff(path, n=2, axis=0)).max() <= jerk + 1e-6

    ctrl = Controller(PolicySource(jumpy), 0.01, max_rate=0.1, max_jerk=0.03)
    sent = np.stack([ctrl.step(OBS) for _ in range(200)])
    check(sent, 0.1, 0.03)
    s = ctrl.stats()
    assert s["rate_limited_env_ticks"] > 0 and s["jerk_limited_env_ticks"] > 0 and s["out_of_bounds_env_ticks"] > 0

    steady = Misbehaving(lambda k, n: np.full((n, 2), [0.8, -0.3], np.float32))
    ctrl = Controller(PolicySource(steady), 0.01, max_rate=0.1, max_jerk=0.02)
    sent = np.stack([ctrl.step(OBS)[0] for _ in range(60)])
    check(sent[:, None], 0.1, 0.02)
    assert np.all(np.diff(sent[:, 0]) >= -1e-6) and np.all(np.diff(sent[:, 1]) <= 1e-6)  # no overshoot
    np.testing.assert_array_equal(sent[-1], np.float32([0.8, -0.3]))  # the target is reached exactly

    _, sent = drive(Controller(PolicySource(jumpy), 0.005, max_rate=0.1, max_jerk=0.03, fallback="safe"), 60)
    check(sent, 0.1, 0.03)  # fallbacks of overruns and missed ticks too


def test_a_policy_fault_executes_the_fallback_and_the_loop_goes_on(caplog):
    def output(k: int, n: int):
        return RuntimeError("sensor glitch") if k in (3, 4) else np.full((n, 2), 0.1 * k, np.float32)

    flaky = Misbehaving(output)
    ctrl = Controller(PolicySource(flaky), 0.01)
    with caplog.at_level(logging.WARNING, logger="policydistill.runtime.controller"):
        sent = [ctrl.step(OBS) for _ in range(8)]
    for k in (3, 4):
        np.testing.assert_allclose(sent[k], sent[2])  # held the last action sent
    np.testing.assert_allclose(sent[5], 0.5, rtol=1e-6)
    s = ctrl.stats()
    assert (s["policy_faults"], s["stopped"], s["ticks"]) == (2, None, 8)
    assert s["first_fault"] == "tick 3: RuntimeError: sensor glitch" and s["last_fault"].startswith("tick 4:")
    faults = [r for r in caplog.records if "policy fault" in r.getMessage()]
    assert len(faults) == 1 and "policy fault on tick 3: RuntimeError: sensor glitch (1 so far" in faults[0].message

    flaky = Misbehaving(output)
    stats, _ = drive(Controller(PolicySource(flaky), 0.005), 20)
    assert stats["ticks"] == 20 and stats["controller"]["policy_faults"] == len({3, 4} & set(range(flaky.calls)))


def test_consecutive_faults_stop_the_loop_safely_with_a_clear_report(caplog):
    broken = Misbehaving(lambda k, n: ValueError("bad weights") if k >= 2 else np.full((n, 2), 0.9, np.float32))
    with caplog.at_level(logging.ERROR, logger="policydistill.runtime.controller"):
        stats, sent = drive(Controller(PolicySource(broken), 0.005, max_consecutive_faults=3, fallback="safe",
                                       safe_action=[0.0, -0.5]), 100)
    c = stats["controller"]
    assert c["stopped"]["consecutive_faults"] == 3 and c["stopped"]["last_fault"].endswith("ValueError: bad weights")
    assert stats["ticks"] == c["stopped"]["tick"] + 1 < 100 and broken.calls == 5  # not called after the stop
    np.testing.assert_array_equal(sent[-1], [[0.0, -0.5]])
    assert f"STOPPED at tick {c['stopped']['tick']} after 3 consecutive policy faults" in format_stats(stats)
    stops = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(stops) == 1 and "after 3 consecutive policy faults" in stops[0].message

    broken = Misbehaving(lambda k, n: ValueError("bad weights") if k >= 2 else np.full((n, 2), 0.9, np.float32))
    ctrl = Controller(PolicySource(broken), 0.01, max_consecutive_faults=2, max_rate=0.2)
    sent = [ctrl.step(OBS)[0] for _ in range(12)]
    assert ctrl.stopped["tick"] == 3 and ctrl.halted and broken.calls == 4
    np.testing.assert_allclose(np.abs(np.diff([[0.0, 0.0], *sent], axis=0)).max(), 0.2, rtol=1e-6)
    np.testing.assert_array_equal(sent[-1], [0.0, 0.0])  # ramped down to the safe action within the rate limit


def test_failing_background_inference_is_a_fault_and_stops_the_controller_safely():
    def chunk(k: int, n: int):
        return np.full((n, 4, 2), 0.75, np.float32) if k == 0 else RuntimeError(f"chunk {k} failed")

    broken = MisbehavingChunks(chunk)
    with Controller(PolicySource(broken), 0.01, async_inference=True, max_consecutive_faults=3) as ctrl:
        sent = []
        while ctrl.stopped is None and len(sent) < 100_000:
            sent.append(ctrl.step(OBS))
            time.sleep(0.0005)  # lets the inference thread run
        sent.append(ctrl.step(OBS))
    s = ctrl.stats()
    assert s["policy_faults"] == 3 and broken.calls == 4 and s["stopped"]["last_fault"].endswith("chunk 3 failed")
    assert s["first_fault"].endswith("RuntimeError: chunk 1 failed") and s["inference_mode"] == "async"
    assert np.isfinite(sent).all()
    np.testing.assert_array_equal(sent[-1], np.zeros((2, 2)))  # then the safe action


def test_wrong_width_or_none_actions_are_faults_naming_the_expected_shape():
    outputs = {1: np.zeros((2, 3), np.float32), 2: None}
    odd = Misbehaving(lambda k, n: outputs.get(k, np.full((n, 2), 0.2, np.float32)))
    ctrl = Controller(PolicySource(odd), 0.01, fallback="safe")
    sent = [ctrl.step(OBS) for _ in range(4)]
    assert [float(a[0, 0]) for a in sent] == pytest.approx([0.2, 0.0, 0.0, 0.2])
    s = ctrl.stats()
    assert s["policy_faults"] == 2
    assert s["first_fault"] == ("tick 1: ValueError: the policy returned actions of shape (2, 3), expected (2, 2) "
                                "(n envs, act_dim)")
    assert s["last_fault"] == ("tick 2: ValueError: Misbehaving.act returned None, expected an array of shape "
                               "(n, act_dim)")


@pytest.mark.parametrize("bad", [np.full((2, 2), 0.5 + 1j), np.ones((2, 2), bool), np.full((2, 2), "0.5")])
def test_actions_that_are_not_real_numbers_are_faults_not_cast(bad):
    """Complex, bool or text actions are a policy's bug: the fallback is sent, not what a cast would make of them."""
    odd = Misbehaving(lambda k, n: bad if k == 1 else np.full((n, 2), 0.2, np.float32))
    ctrl = Controller(PolicySource(odd), 0.01)
    sent = [ctrl.step(OBS) for _ in range(3)]
    np.testing.assert_array_equal(sent[1], sent[0])  # the held action
    assert ctrl.stats()["policy_faults"] == 1
    assert f"Misbehaving.act returned {bad.dtype} values, expected real numbers" in ctrl.stats()["first_fault"]


def test_a_safe_action_outside_the_bounds_is_refused_not_clipped():
    odd = Misbehaving(lambda k, n: np.full((n, 2), np.nan, np.float32))
    with pytest.raises(ValueError, match=r"safe_action \[1.5, 0.0\] is outside the action bounds: expected each "
                                         r"value within low \[-1.0, -1.0\] and high \[1.0, 1.0\]"):
        Controller(PolicySource(odd), 0.01, fallback="safe", safe_action=[1.5, 0.0])
    ctrl = Controller(PolicySource(odd), 0.01, fallback="safe", safe_action=[1.0, -0.5])  # on the bound: taken
    np.testing.assert_array_equal(ctrl.step(OBS), [[1.0, -0.5], [1.0, -0.5]])


def test_an_export_graph_reads_each_ticks_groups_whatever_came_before():
    """The per-tick copy into the graph's input: new values every tick, a new batch size, float64 groups, a bad tick
    between good ones."""
    source = make_source(load_bundle(NORTH, device="cpu"))
    rng = np.random.default_rng(0)
    for n, dtype in ((3, np.float32), (3, np.float32), (5, np.float64), (3, np.float64), (3, np.float32)):
        obs = {"policy": rng.normal(size=(n, 4)).astype(dtype), "privileged": rng.normal(size=(n, 2)).astype(dtype)}
        np.testing.assert_array_equal(source.prepare(obs),
                                      np.concatenate([obs["policy"], obs["privileged"]], axis=1).astype(np.float32))
        with pytest.raises(ValueError, match="'privileged' has shape"):
            source.prepare({**obs, "privileged": np.zeros((n, 3))})


@pytest.mark.parametrize("make", ["bundle", "export graph"])
def test_act_rejects_nan_none_and_flat_observations(make):
    north = load_bundle(NORTH, device="cpu")
    policy = north if make == "bundle" else make_source(north)
    good = {"policy": np.zeros((3, 4), np.float32), "privileged": np.zeros((3, 2), np.float32)}
    assert policy.act(good).shape == (3, 2)
    nan = {**good, "privileged": good["privileged"].copy()}
    nan["privileged"][2, 1] = np.nan
    with pytest.raises(ValueError, match=r"observation group 'privileged' has a non-finite value \(nan at row 2, "
                                         r"column 1\), expected finite numbers"):
        policy.act(nan)
    with pytest.raises(ValueError, match=r"observation group 'policy' is None, expected an array of shape \(n, 4\)"):
        policy.act({**good, "policy": None})
    with pytest.raises(ValueError, match=r"observation group 'policy' has shape \(4,\), expected \(n, 4\)"):
        policy.act({**good, "policy": np.zeros(4, np.float32)})
    with pytest.raises(ValueError, match=r"observation must be a dict of groups \['policy', 'privileged'\] -> "
                                         r"\(n, dim\) arrays, got ndarray of shape \(6,\)"):
        policy.act(np.zeros(6, np.float32))
    ctrl = Controller(make_source(north), 0.01)
    ctrl.step(good)
    assert np.isfinite(ctrl.step(nan)).all() and ctrl.stats()["policy_faults"] == 1  # a fault, not NaN actions


def _one_error(caplog) -> str:
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is None and "\n" not in errors[0].getMessage()
    return errors[0].getMessage()


@pytest.mark.parametrize(("override", "message"), [
    ("n_envs=0", "n_envs must be an int >= 1, got 0"),
    ("runtime.max_rate=0", "runtime.max_rate must be a finite number > 0"),
    ("runtime.out_of_bounds=wrap", "unknown runtime.out_of_bounds 'wrap'; expected one of ['clip', 'fallback']"),
    ("runtime.max_consecutive_faults=0", "runtime.max_consecutive_faults must be an int >= 1, got 0"),
    ("runtime.safe_action=[0,2]", "safe_action [0.0, 2.0] is outside the action bounds"),
    (f"policy={NORTH.parent}", f"policy '{NORTH.parent}' is a folder of 4 bundles (east, north, south, west), "
                               f"not one bundle: expected a bundle directory such as {NORTH.parent / 'east'}"),
])
def test_bad_run_requests_are_one_clear_line(override, message, tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.INFO)
    assert main(["run", f"policy={NORTH}", "ticks=5", "out=run.json", override]) == 2
    assert message in _one_error(caplog) and list(tmp_path.iterdir()) == []


def test_export_to_an_existing_directory_is_one_clear_line(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    assert main(["export", f"policy={NORTH}", "format=onnx", f"out={tmp_path}"]) == 2
    assert f"out '{tmp_path}' is a directory; expected the path of the model file to write" in _one_error(caplog)
    assert list(tmp_path.iterdir()) == []


def test_exported_model_file_respects_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        out = export_policy(NORTH, "torchscript", tmp_path / "north.pt", check=False)
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o640
