"""The runner, once for every method: a key the method does not read is refused with the keys it reads; a run
killed (a real process, SIGKILL) resumes and ends where an uninterrupted run ends; TensorBoard,
``stop_score`` and ``stop_success``; a changed config is refused with its diff."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from conftest import run_and_kill
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from policydistill.cli import ConfigError, compose_config, main
from policydistill.files import read_json

TINY_DIFFUSION = ["method.hidden=[32,32]", "method.horizon=8", "method.n_action_steps=4", "method.sampler_steps=4",
                  "method.episodes_per_task=1", "method.batch_size=32"]
METHODS = {
    "bc": ["method.rounds=3", "method.episodes_per_task=1", "method.updates_per_round=40"],
    "dagger": ["method.rounds=3", "method.episodes_per_task=1", "method.updates_per_round=40", "method.beta_rounds=2"],
    "onpolicy": ["method.rounds=3", "method.episodes_per_task=1", "method.updates_per_round=40"],
    "diffusion": [*TINY_DIFFUSION, "method.rounds=2", "method.schedule=step", "method.train_steps=300",
                  "method.checkpoint_every=40"],
    "onestep": ["method.algo=dmd_det", "method.steps=300", "method.checkpoint_every=40", "method.episodes_per_task=1",
                "method.pairs=32", "method.batch_size=16"],
}
"""Tiny runs of every method that collects, on the default suite with the scripted goal seeker (onestep: a tiny
diffusion policy trained on it)."""


@pytest.fixture(scope="module")
def diffusion_teacher(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("teacher")
    assert main(["distill", "method=diffusion", "teachers=conftest:goal_seeker", f"out={out}", "eval_episodes=1",
                 "final_episodes=0", *TINY_DIFFUSION, "method.train_steps=40"]) == 0
    return out / "student"


def args(method: str, out: Path, teacher: Path) -> list[str]:
    teachers = teacher if method == "onestep" else "conftest:goal_seeker"
    return ["distill", f"method={method}", "suite=default", f"teachers={teachers}", f"out={out}", "eval_episodes=1",
            "final_episodes=0", "n_envs=4", *METHODS[method]]


def weights(run: Path) -> dict:
    return load_file(run / "student" / "model.safetensors")


def killed(argv: list[str], out: Path, ready) -> int:
    """Run the CLI in a process of its own and SIGKILL it as soon as ``ready(out)``; returns the rounds
    ``distill.json`` held then."""
    run_and_kill(argv, lambda: ready(out))
    return len(read_json(out / "distill.json")["rounds"])


def mid_fit(out: Path) -> bool:
    return any((out / "checkpoint").glob("fit-*.pt"))


def after_round_0(out: Path) -> bool:
    return (out / "distill.json").exists() and len(read_json(out / "distill.json")["rounds"]) >= 1


@pytest.mark.parametrize("method", list(METHODS))
def test_a_killed_run_resumes_and_ends_where_an_uninterrupted_run_ends(method, diffusion_teacher, tmp_path, caplog):
    straight, interrupted = tmp_path / "straight", tmp_path / "killed"
    assert main(args(method, straight, diffusion_teacher)) == 0
    long_fit = method in ("diffusion", "onestep")
    rounds_at_kill = killed(args(method, interrupted, diffusion_teacher), interrupted,
                            mid_fit if long_fit else after_round_0)
    total = len(read_json(straight / "distill.json")["rounds"])
    assert rounds_at_kill < total and (interrupted / "checkpoint").is_dir()
    assert main(args(method, interrupted, diffusion_teacher)) == 0
    a, b = weights(straight), weights(interrupted)
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a), "the resumed run differs"
    rows_a, rows_b = (read_json(p / "distill.json")["rounds"] for p in (straight, interrupted))
    assert [r["labels_used"] for r in rows_a] == [r["labels_used"] for r in rows_b]
    assert [r["student_return"] for r in rows_a] == [r["student_return"] for r in rows_b]
    assert not mid_fit(interrupted) and sorted(p.name for p in (interrupted / "checkpoint").iterdir()) == \
        [f"round-{total - 1}"]
    # TensorBoard: every row's numbers and the fit loss
    tb = EventAccumulator(str(straight / "tb"))
    tb.Reload()
    assert {"distill/student_return", "train/loss"} <= set(tb.Tags()["scalars"])
    # stop_score: a longer run that already reached it adds no round (onestep has one round: nothing to add)
    if method != "onestep":
        more = [*args(method, straight, diffusion_teacher), "stop_score=-1e9", "method.rounds=4", "resume=extend"]
        assert main(more) == 0 and len(read_json(straight / "distill.json")["rounds"]) == total
    # a changed config is refused with its diff, nothing written
    before = (straight / "distill.json").read_bytes()
    assert main([*args(method, straight, diffusion_teacher), "seed=9"]) == 2
    assert "refusing to resume it: " in caplog.text and "seed: 0 -> 9" in caplog.text
    assert (straight / "distill.json").read_bytes() == before


def test_stop_score_ends_the_run_after_the_first_round_reaching_it(tmp_path):
    base = args("dagger", tmp_path / "low", Path())
    assert main([*base, "stop_score=-1e6"]) == 0
    assert len(read_json(tmp_path / "low" / "distill.json")["rounds"]) == 1  # round 0 already reached it
    assert main(args("dagger", tmp_path / "high", Path()) + ["stop_score=1e6"]) == 0
    assert len(read_json(tmp_path / "high" / "distill.json")["rounds"]) == 3  # never reached: every round runs
    with pytest.raises(ConfigError, match="stop_score must be a finite number"):
        compose_config("distill", ["teachers=x", "stop_score=nan"])


def test_stop_success_ends_the_run_on_the_success_ratio_on_suites_with_success(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    assert main([*args("dagger", tmp_path / "low", Path()), "stop_success=0"]) == 0
    rows = read_json(tmp_path / "low" / "distill.json")["rounds"]
    assert len(rows) == 1 and rows[0]["mean_success_ratio"] >= 0  # round 0 already reached it
    assert "stopping after round 0: mean success ratio " in caplog.text
    assert main([*args("dagger", tmp_path / "high", Path()), "stop_success=1e6"]) == 0
    assert len(read_json(tmp_path / "high" / "distill.json")["rounds"]) == 3
    out = tmp_path / "pendulum"  # no success defined: refused before anything is written
    assert main(["distill", "suite=pendulum_reacher", "teachers=envs/zoo/pendulum_reacher", f"out={out}",
                 "stop_success=0.9"]) == 2
    assert "stop_success: suite 'pendulum_reacher' defines no success for tasks ['pendulum'" in caplog.text
    assert not out.exists()


UNREAD = {
    "bc": (["method.schedule=step"], "method 'bc' has no key 'method.schedule'; valid keys: method.rounds"),
    "dagger": (["method.schedule=step", "method.beta_decay=0.3"],
               "schedule 'step' does not read method.beta_decay; it reads: method.balance_tasks"),
    "onpolicy": (["method.teacher_noise=0.5"], "method 'onpolicy' has no key 'method.teacher_noise'"),
    "kickstart": (["method.kd_decay=linear", "method.kd_decay_rate=0.5"],
                  "kd_decay 'linear' does not read method.kd_decay_rate; it reads: method.batch_size"),
    "diffusion": (["method.denoiser=unet", "method.hidden=[64]"],
                  "denoiser 'unet' with schedule 'constant' does not read method.hidden; it reads: "
                  "method.balance_tasks"),
    "onestep": (["method.algo=consistency", "method.pairs=10"],
                "onestep algo 'consistency' does not read method.pairs; it reads: method.algo"),
}


@pytest.mark.parametrize("method", list(UNREAD))
def test_a_key_the_method_does_not_read_is_refused_with_the_keys_it_reads(method):
    overrides, message = UNREAD[method]
    with pytest.raises(ConfigError) as err:
        compose_config("distill", [f"method={method}", "teachers=x", *overrides])
    assert message in str(err.value)
    valid = compose_config("distill", [f"method={method}", "teachers=x"])
    assert valid.method_name == method


@pytest.mark.parametrize("method, overrides, unread", [
    ("diffusion", ["student.hidden=[8]"], "method 'diffusion' does not read student.hidden"),
    ("onestep", ["student=gru"], "method 'onestep' does not read student.kind"),
    ("kickstart", ["collector=ray"], "method 'kickstart' does not read collector"),
])
def test_run_keys_a_method_does_not_read_are_refused(method, overrides, unread):
    with pytest.raises(ConfigError, match=unread):
        compose_config("distill", [f"method={method}", "teachers=x", *overrides])
