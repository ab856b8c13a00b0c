"""The failure monitor: fitted to a real distillation run, conformally calibrated, run by the controller."""

import dataclasses
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import goal_seeker

from policydistill import load_bundle, save_bundle
from policydistill.cli import main
from policydistill.data.shards import INTERVENTION, STUDENT, TEACHER, EpisodeStore
from policydistill.distill.dagger import DAggerConfig
from policydistill.distill.gates import fit_gate_model
from policydistill.distill.monitor import START_TICKS, episode_scores, fit_monitor, start_profile, student_episodes
from policydistill.distill.runner import DistillConfig, distill
from policydistill.runtime.controller import Controller, PolicySource
from policydistill.runtime.monitor import KINDS, FailureMonitor, conformal_threshold, load_monitor


@pytest.fixture(scope="module")
def run(tmp_path_factory, default_suite) -> Path:
    """A small DAgger run of the default suite from scripted teachers: its student and episode store."""
    out = tmp_path_factory.mktemp("monitor") / "run"
    cfg = DistillConfig(teachers="-", out=str(out), eval_episodes=2, final_episodes=0,
                        method=DAggerConfig(rounds=2, episodes_per_task=4, updates_per_round=300, beta_rounds=2))
    distill(cfg, default_suite, {n: goal_seeker() for n in default_suite.task_names})
    return out


def test_conformal_threshold_takes_the_right_rank():
    scores = np.arange(1.0, 20.0)  # 19 episodes: at alpha 0.05 the 19th smallest, ceil(20 * 0.95)
    assert conformal_threshold(scores[::-1], 0.05) == 19.0
    assert conformal_threshold(scores, 0.25) == 15.0  # ceil(20 * 0.75)
    with pytest.raises(ValueError, match="needs at least 19 calibration episodes, got 18"):
        conformal_threshold(scores[:18], 0.05)


def test_a_confident_threshold_holds_its_rate_on_all_but_delta_of_calibration_sets():
    """Uniform scores: a threshold's false-alarm rate is 1 - threshold. Over 4,000 calibration sets of 60 episodes
    the average rate stays within alpha, but single sets exceed it often; with delta 0.1, at most 10% do."""
    rng = np.random.default_rng(0)
    sets = rng.uniform(size=(4000, 60))
    plain = 1 - np.array([conformal_threshold(s, 0.05) for s in sets])
    confident = 1 - np.array([conformal_threshold(s, 0.05, delta=0.1) for s in sets])
    assert plain.mean() <= 0.05 + 0.002 and (plain > 0.05).mean() > 0.3
    assert (confident > 0.05).mean() <= 0.1 + 3 * np.sqrt(0.1 * 0.9 / 4000)
    with pytest.raises(ValueError, match="at confidence 0.9 needs at least 45 calibration episodes, got 44"):
        conformal_threshold(sets[0, :44], 0.05, delta=0.1)


def test_numpy_monitor_equals_the_torch_networks():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(500, 7)).astype(np.float32), rng.normal(size=(500, 3)).astype(np.float32)
    model = fit_gate_model(x, y, 5, 50, rng, hidden=32)
    monitor = FailureMonitor(("policy",), model.arrays(), dict.fromkeys(KINDS, 1.0), 1.0, 0.05, 19)
    probe = np.concatenate([x[:20], 5 * rng.normal(size=(20, 7)).astype(np.float32)])
    with torch.no_grad():  # the scores as the torch networks the gate trained define them
        t = model.normalise(torch.as_tensor(probe))
        theirs = {"disagreement": model.heads(t).var(0).mean(-1).numpy(),
                  "novelty": ((model.predictor(t) - model.target(t)) ** 2).mean(-1)[0].numpy()}
    ours = monitor.raw_scores(probe)
    alone = [monitor.raw_scores(row[None]) for row in probe]  # one env: the controller's usual tick
    for k in KINDS:
        np.testing.assert_allclose(ours[k], theirs[k], rtol=2e-4, atol=1e-7)
        np.testing.assert_allclose(np.concatenate([a[k] for a in alone]), ours[k], rtol=1e-5, atol=1e-9)


def test_an_input_that_never_varied_in_training_is_novel_once_it_does():
    """A sensor that read 0 all through training (PointReach's pit sensor without a pit): the student's
    normaliser reads it as 0 whatever it says, the monitor must not. A small reading scores far above any
    training input's novelty."""
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(size=(500, 4)), np.zeros((500, 2))], axis=1).astype(np.float32)
    model = fit_gate_model(x, rng.normal(size=(500, 2)).astype(np.float32), 5, 200, rng, hidden=32)
    monitor = FailureMonitor(("policy",), model.arrays(), dict.fromkeys(KINDS, 1.0), 1.0, 0.05, 19)
    sensed = x[:50].copy()
    sensed[:, 4:] = rng.uniform(-0.05, 0.05, size=(50, 2))
    seen, novel = monitor.raw_scores(x)["novelty"], monitor.raw_scores(sensed)["novelty"]
    assert novel.min() > 10 * seen.max(), (novel.min(), seen.max())


def test_false_alarms_on_held_out_episodes_stay_within_the_calibration_bound(run, default_suite, tmp_path):
    student = load_bundle(run / "student", device="cpu")
    monitor = fit_monitor(default_suite, student, EpisodeStore(run / "episodes"), alpha=0.1, episodes=10,
                          updates=300)
    assert monitor.episodes == 40 and np.isfinite(monitor.threshold)
    held_out = student_episodes(default_suite, student, 50, seed=77_000)  # 200 episodes, seeds of their own
    alarms = episode_scores(monitor, held_out) > monitor.threshold
    assert alarms.mean() <= 0.1 + 3 * np.sqrt(0.1 * 0.9 / len(alarms))  # alpha, with 3 binomial stds of slack
    saved = FailureMonitor.load(monitor.save(tmp_path / "monitor"))
    obs = {g: held_out[0].steps[f"obs/{g}"] for g in monitor.groups}
    np.testing.assert_array_equal(saved.score(obs), monitor.score(obs))


def student_monitor_and_two_envs(run, suite):
    """The run's student, a quickly fitted monitor and one reset observation batched for two envs."""
    student = load_bundle(run / "student", device="cpu")
    monitor = fit_monitor(suite, student, EpisodeStore(run / "episodes"), alpha=0.25, episodes=1, updates=100)
    env = suite.make_env(0)
    obs, _ = env.reset(seed=0)
    env.close()
    return student, monitor, {g: np.repeat(np.asarray(v, np.float32)[None], 2, axis=0) for g, v in obs.items()}


def test_controller_acts_on_alarms(run, default_suite, caplog):
    student, monitor, normal = student_monitor_and_two_envs(run, default_suite)
    strange = {g: v.copy() for g, v in normal.items()}
    strange["policy"][1] = 1e3  # env 1 far outside anything trained on
    assert monitor.score(strange)[1] > monitor.threshold
    caplog.set_level(logging.WARNING)
    with Controller(PolicySource(student), 0.01, monitor=monitor, on_alarm="fallback", fallback="safe") as ctrl:
        first = ctrl.step(normal)
        acted = ctrl.step(strange)
        assert (acted[1] == 0).all() and np.allclose(acted[0], first[0])  # env 1 gets the safe action
        again = ctrl.step(normal)
        assert (again[1] == 0).all()  # latched until its reset
        ctrl.reset(np.array([False, True]))
        assert np.allclose(ctrl.step(normal)[1], first[1])
        stats = ctrl.stats()
    assert stats["monitor_alarms"] == 1 and stats["monitor"]["alarms"] == 1
    assert stats["monitor"]["compute"]["count"] == 4
    assert "failure monitor alarm at tick 1 on envs [1]" in caplog.text
    with Controller(PolicySource(student), 0.01, monitor=monitor, on_alarm="stop") as ctrl:
        ctrl.step(normal)
        ctrl.step(strange)
        assert ctrl.stopped is not None and ctrl.stopped["reason"] == "failure monitor alarm"
    teacher = goal_seeker()
    with Controller(PolicySource(student), 0.01, monitor=monitor, on_alarm="teacher", teacher=teacher) as ctrl:
        ctrl.step(normal)
        acted = ctrl.step(strange)
        np.testing.assert_allclose(acted[1], np.clip(teacher.act(strange)[1], -1, 1), rtol=1e-6)
        assert ctrl.stats()["teacher_env_ticks"] == 1
    with pytest.raises(ValueError, match="on_alarm='teacher' needs a teacher policy"):
        Controller(PolicySource(student), 0.01, monitor=monitor, on_alarm="teacher")
    with pytest.raises(ValueError, match="unknown on_alarm 'panic'"):
        Controller(PolicySource(student), 0.01, monitor=monitor, on_alarm="panic")


def test_an_episode_start_is_scored_against_the_starts_it_was_calibrated_on(run, default_suite):
    rng = np.random.default_rng(0)
    episodes = [rng.uniform(0.5, 1.5, size=300) for _ in range(40)]
    for e in episodes:
        e[:5] *= 10.0  # a settling transient: five ticks at ten times the steady score
    profile = start_profile(episodes)
    assert len(profile) == 5 and all(8.0 < v < 12.0 for v in profile)  # the steady ticks after it are dropped
    assert start_profile([rng.uniform(0.5, 1.5, size=300) for _ in range(40)]) == ()
    assert start_profile([np.ones(START_TICKS)]) == ()  # no tick past the start: nothing to compare with

    student, monitor, strange = student_monitor_and_two_envs(run, default_suite)
    strange["policy"][:] = 1e3
    raw = monitor.score(strange)
    assert (raw > monitor.threshold).all()
    forgiving = dataclasses.replace(monitor, start_scale=(float(raw.max()) / monitor.threshold * 2,))
    np.testing.assert_allclose(forgiving.score(strange, np.array([0, 1])), raw / [forgiving.start_scale[0], 1.0],
                               rtol=1e-6)
    with Controller(PolicySource(student), 0.01, monitor=forgiving) as ctrl:
        ctrl.step(strange)  # each env's first tick: divided below the threshold
        assert not ctrl.alarmed.any()
        ctrl.step(strange)
        assert ctrl.alarmed.all()
        ctrl.reset(np.array([False, True]))
        ctrl.step(strange)  # env 1 starts again; env 0 goes on
        assert ctrl.alarmed.tolist() == [True, False]


@pytest.mark.parametrize("statistic", ["tick", "mean"])
def test_the_controller_alarms_where_the_episode_trace_first_passes_the_threshold(run, default_suite, statistic):
    """Online (the controller, tick by tick) and offline (trace over a recorded episode) agree on the first alarm."""
    student, monitor, _ = student_monitor_and_two_envs(run, default_suite)
    monitor = dataclasses.replace(monitor, statistic=statistic, start_scale=(4.0, 2.0))
    episode = student_episodes(default_suite, student, 1, seed=31_000)[0]
    obs = {g: episode.steps[f"obs/{g}"] for g in monitor.groups}
    trace = monitor.trace(monitor.score(obs))
    assert len(trace) > 20 and np.ptp(trace[5:]) > 0
    monitor = dataclasses.replace(monitor, threshold=float(np.quantile(trace, 0.6)))
    first = int(np.argmax(trace > monitor.threshold))
    with Controller(PolicySource(student), 0.01, monitor=monitor) as ctrl:
        for t in range(len(trace)):
            ctrl.step({g: v[t:t + 1] for g, v in obs.items()})
            if ctrl.alarmed[0]:
                break
    assert t == first
    with pytest.raises(ValueError, match="unknown monitor statistic 'median'"):
        dataclasses.replace(monitor, statistic="median")


def test_fit_monitor_stores_it_in_the_bundle_and_run_reads_it(run, tmp_path, caplog):
    assert main(["fit-monitor", f"run={run}", "policy=student", "episodes=5", "updates=100"]) == 0
    stored = load_monitor(run / "student")
    assert json.loads((run / "student" / "policy.json").read_text())["monitor"]["threshold"] == stored.threshold
    load_bundle(run / "student", device="cpu")  # the bundle's hash covers the monitor's entry
    out = tmp_path / "run.json"
    assert main(["run", f"policy={run}/student", "suite=default", "rate_hz=500", "ticks=50",
                 "runtime.monitor=policy", f"out={out}"]) == 0
    assert json.loads(out.read_text())["controller"]["monitor"]["threshold"] == stored.threshold
    caplog.set_level(logging.ERROR)
    assert main(["fit-monitor", f"run={tmp_path / 'nothing'}"]) == 2
    assert "is not a finished distillation run" in caplog.text
    assert main(["fit-monitor", f"run={run}", "alpha=0.01", "episodes=5"]) == 2
    assert "alpha=0.01 needs at least 99 calibration episodes, got 20" in caplog.text
    assert main(["fit-monitor", f"run={run}", "delta=0.1", "episodes=5"]) == 2
    assert "alpha=0.05 delta=0.1 needs at least 45 calibration episodes, got 20 (5 per task)" in caplog.text
    assert main(["fit-monitor", f"run={run}", "policy=student", "delta=0.1", "episodes=12", "updates=100"]) == 0
    assert load_monitor(run / "student").delta == 0.1
    assert main(["fit-monitor", f"run={run}", "policy=student", "episodes=5", "updates=100", "start_ticks=0"]) == 0
    assert load_monitor(run / "student").start_scale == ()
    assert main(["fit-monitor", f"run={run}", "start_ticks=-1"]) == 2
    assert "start_ticks" in caplog.text
    assert main(["fit-monitor", f"run={run}", "policy=student", "episodes=5", "updates=100", "statistic=mean"]) == 0
    assert load_monitor(run / "student").statistic == "mean"
    assert main(["fit-monitor", f"run={run}", "statistic=median"]) == 2
    assert main(["run", f"policy={run}/student", "suite=default", "runtime.on_alarm=stop"]) == 2
    assert "runtime.on_alarm is read only with a runtime.monitor" in caplog.text
    assert main(["run", f"policy={run}/best", "suite=default", "runtime.monitor=policy"]) == 2
    assert "holds no failure monitor" in caplog.text


def test_the_monitor_exports_with_the_policy_and_runs_torch_free(run, default_suite, tmp_path, caplog):
    student = load_bundle(run / "student", device="cpu")
    monitor = fit_monitor(default_suite, student, EpisodeStore(run / "episodes"), alpha=0.25, episodes=1,
                          updates=100)
    bundle = tmp_path / "bundle"
    save_bundle(student, bundle, monitor=monitor)
    model = tmp_path / "student.onnx"
    assert main(["export", f"policy={bundle}", "format=onnx", f"out={model}"]) == 0
    exported = load_monitor(model)
    held_out = student_episodes(default_suite, student, 1, seed=99_000)
    obs = {g: np.concatenate([r.steps[f"obs/{g}"] for r in held_out]) for g in monitor.groups}
    np.testing.assert_array_equal(exported.score(obs), monitor.score(obs))
    assert exported.threshold == monitor.threshold
    code = (f"from policydistill.runtime.monitor import load_monitor; import sys; load_monitor({str(model)!r}); "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    assert main(["run", f"policy={model}", "suite=default", "rate_hz=500", "ticks=20",
                 "runtime.monitor=policy"]) == 0
    save_bundle(student, bundle)  # saved again: the monitor was calibrated on the old policy
    assert not (bundle / "monitor.json").exists()
    assert main(["export", f"policy={bundle}", "format=onnx", f"out={model}"]) == 0
    assert not Path(f"{model}.monitor").exists()  # the stale monitor is gone with the export it belonged to
    save_bundle(student, bundle, monitor=monitor)
    assert main(["export", f"policy={bundle}", "format=onnx", f"out={model}"]) == 0
    settings = Path(f"{model}.monitor") / "monitor.json"
    settings.write_text(settings.read_text().replace('"alpha": 0.25', '"alpha": 0.5'))
    caplog.set_level(logging.ERROR)
    assert main(["run", f"policy={model}", "suite=default", "runtime.monitor=policy"]) == 2
    assert "do not match the sha256 recorded" in caplog.text


def test_alarm_episodes_are_recorded_and_taught_in_the_next_distillation(run, default_suite, tmp_path):
    student = load_bundle(run / "student", device="cpu")
    monitor = fit_monitor(default_suite, student, EpisodeStore(run / "episodes"), alpha=0.25, episodes=1,
                          updates=100)
    steps = student_episodes(default_suite, student, 2, seed=5)
    scores = np.concatenate([monitor.score({g: r.steps[f"obs/{g}"] for g in monitor.groups}) for r in steps])
    monitor.threshold = float(np.quantile(scores, 0.7))  # alarms part-way through most episodes
    monitor.save(tmp_path / "monitor")
    deploy = tmp_path / "deployment"
    assert main(["run", f"policy={run}/student", "suite=default", "rate_hz=200", "ticks=600", "n_envs=2",
                 f"runtime.monitor={tmp_path / 'monitor'}", "runtime.on_alarm=teacher",
                 "runtime.teacher=conftest:goal_seeker", f"runtime.record_alarms={deploy}"]) == 0
    store = EpisodeStore(deploy)
    assert len(store) >= 1
    teacher = goal_seeker()
    for meta, ep in store.iter_episodes():
        first, asked = meta["first_alarm"], ep["query"] == INTERVENTION
        assert not asked[:first].any() and (ep["actor"][:first] == STUDENT).all()
        assert asked[first:].mean() > 0.8  # the teacher acts from the alarm on (not on ticks the loop missed)
        assert (ep["actor"][asked] == TEACHER).all() and not ep["label_mean"][~asked].any()
        taught = {g: ep[f"obs/{g}"][asked] for g in ("policy", "privileged")}
        np.testing.assert_allclose(ep["label_mean"][asked], teacher.act(taught), atol=1e-5)
    out = tmp_path / "next"
    assert main(["distill", "method=dagger", "teachers=conftest:goal_seeker", "eval_episodes=2", "final_episodes=0",
                 "method.rounds=1", "method.episodes_per_task=1", "method.updates_per_round=20",
                 f"method.extra_episodes={deploy}", f"out={out}"]) == 0
    row = json.loads((out / "distill.json").read_text())["rounds"][0]
    assert row["labels_used"] == row["env_steps"] + store.steps  # the teachers labelled every deployment step
    assert main(["distill", "method=dagger", "teachers=conftest:goal_seeker", f"out={tmp_path / 'bad'}",
                 f"method.extra_episodes={tmp_path / 'nowhere'}"]) == 2
    assert not (tmp_path / "bad").exists()
