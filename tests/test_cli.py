"""The command line: composition into the schema dataclasses, clear errors, --cfg for every command, sweeps."""

import importlib.util
import json
import logging
from pathlib import Path

import pytest

from policydistill.cli import ConfigError, compose_config, main
from policydistill.cli.commands import COMMANDS
from policydistill.distill.diffusion import DiffusionConfig
from policydistill.experts import TrainExpertsConfig

ZOO = Path(__file__).resolve().parents[1] / "envs" / "zoo" / "default"


def test_compose_gives_the_schema_dataclass():
    cfg = compose_config("train-experts", ["suite=locomotion", "expert=sac", "workers=1"])
    assert isinstance(cfg, TrainExpertsConfig)
    assert (cfg.suite, cfg.expert.algo, cfg.workers, cfg.expert.n_envs) == ("locomotion", "sac", 1, 1)
    cfg = compose_config("distill", ["method=diffusion", "teachers=x", "method.train_steps=7"])
    assert isinstance(cfg.method, DiffusionConfig) and cfg.method.train_steps == 7 and cfg.method_name == "diffusion"


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError, match=r"unknown config key 'wrokers'.*valid keys: suite, out, workers"):
        compose_config("train-experts", ["wrokers=2"])
    with pytest.raises(ConfigError, match=r"unknown config key 'expert.lr'.*expert.total_steps"):
        compose_config("train-experts", ["expert.lr=1"])
    with pytest.raises(ConfigError, match=r"\+expert.hyperparams.clip_range"):
        compose_config("train-experts", ["expert.hyperparams.clip_range=0.1"])
    cfg = compose_config("train-experts", ["+expert.hyperparams.clip_range=0.1"])
    assert cfg.expert.hyperparams["clip_range"] == 0.1
    with pytest.raises(ConfigError, match=r"method 'diffusion' has no key 'method.lr_decay'; valid keys: .*"
                                          r"method.train_steps"):
        compose_config("distill", ["method=diffusion", "method.lr_decay=true"])
    with pytest.raises(ConfigError, match=r"unknown method 'ppo'; expected one of \['bc', 'dagger', 'diffusion', "
                                          r"'gated', 'kickstart', 'onestep', 'onpolicy'\]"):
        compose_config("distill", ["method=ppo"])


def test_wrong_type_and_missing_value_are_clear():
    with pytest.raises(ConfigError, match="workers"):
        compose_config("train-experts", ["workers=many"])
    with pytest.raises(ConfigError, match="'evaluate' needs policy="):
        compose_config("evaluate", [])
    with pytest.raises(ConfigError, match=r"unknown command 'train'.*train-experts"):
        compose_config("train", [])
    with pytest.raises(ConfigError, match=r"suite=Hopper-v5,Walker2d-v5 is a sweep over 2 values: add -m .*"
                                          r"suite=Hopper-v5\+Walker2d-v5"):
        compose_config("train-experts", ["suite=Hopper-v5,Walker2d-v5"])


def test_main_reports_errors_with_exit_code_2(caplog, tmp_path):
    caplog.set_level(logging.ERROR)
    assert main(["train-experts", "suite=nope", f"out={tmp_path}"]) == 2
    assert "unknown suite 'nope'" in caplog.text and "default" in caplog.text
    assert main(["evaluate", f"policy={tmp_path / 'missing'}"]) == 2
    assert "no policy bundle or folder of bundles" in caplog.text
    assert main(["distill", f"out={tmp_path / 'x'}"]) == 2
    assert "'distill' needs teachers=..." in caplog.text and not (tmp_path / "x").exists()
    assert main(["--help"]) == 0


@pytest.mark.parametrize("command", ["distill", "dataset", "run"])
def test_help_after_a_command_prints_its_usage(command, capsys):
    assert main([command, "method=bc", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: policydistill {command} ") and COMMANDS[command].usage in out
    assert f"'policydistill {command} --cfg'" in out


def test_video_without_a_renderer_is_one_clear_error(caplog, tmp_path):
    """Classic-control envs render with pygame, which the default install lacks: refused before any episode."""
    if importlib.util.find_spec("pygame") is not None:
        pytest.skip("pygame is installed: Pendulum renders")
    caplog.set_level(logging.ERROR)
    out = tmp_path / "eval" / "result.json"
    assert main(["evaluate", "policy=suite", "suite=Pendulum-v1", "video=true", f"out={out}"]) == 2
    assert "video=true cannot render task 'Pendulum-v1': pygame is not installed" in caplog.text
    assert not (tmp_path / "eval").exists()


@pytest.mark.parametrize("command", list(COMMANDS))
def test_cfg_prints_the_composed_config_before_required_keys_are_given(command, capsys):
    assert main([command, "--cfg"]) == 0
    printed = capsys.readouterr().out
    assert "suite:" in printed or "policy:" in printed or "run:" in printed or "model:" in printed


def test_a_plus_joined_suite_is_one_suite_of_its_env_ids():
    from policydistill.suites import load_suite

    suite = load_suite("Hopper-v5+Walker2d-v5")
    assert suite.task_names == ["Hopper-v5", "Walker2d-v5"]


def test_a_sweep_runs_one_job_per_value_and_writes_one_table(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["evaluate", f"policy={ZOO}", "suite=default", "episodes=1", f"out={out}.json", "-m",
                 "seed=1000,2000"]) == 0
    table = json.loads((out / "sweep.json").read_text())
    assert [job["seed"] for job in table["jobs"]] == ["1000", "2000"]
    assert all(job["return"] > 0 for job in table["jobs"])
    assert (out / "seed=1000.json").is_file() and (out / "seed=2000.json").is_file()
    assert "| job | seed | return | success |" in (out / "sweep.md").read_text()


def test_a_torch_module_named_as_module_attr_is_a_teacher(tmp_path, monkeypatch):
    """``module:attr`` naming a plain torch module ``(n, obs_dim) -> (n, act_dim)`` over the ``policy`` group."""
    module = tmp_path / "mymodule.py"
    module.write_text("import torch\ncontroller = torch.nn.Sequential(torch.nn.Linear(4, 2), torch.nn.Tanh())\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["evaluate", "policy=mymodule:controller", "suite=default", "episodes=1",
                 f"out={tmp_path / 'eval.json'}"]) == 0
    assert json.loads((tmp_path / "eval.json").read_text())["tasks"]["north"]["episodes"] == 1


@pytest.mark.parametrize(("args", "message"), [
    (["pipeline", "diffusion.algos=[nope]"], "unknown diffusion.algos entry 'nope'; expected one of ['dmd', "),
    (["pipeline", "diffusion.teacher.train_steps=5"], "diffusion.teacher_from=zoo does not read diffusion.teacher; "
                                                      "set diffusion.teacher_from=train to train the teacher"),
    (["pipeline", "diffusion.suite=default"], "there is no committed diffusion teacher for suite 'default' (there is "
                                              "one for: default_hazard); set diffusion.teacher_from=train or the path"),
    (["pipeline", f"diffusion.teacher_from={ZOO / 'north'}"], "holds a MLPPolicy, not a diffusion policy"),
    (["pipeline", "privileged.kinds=[mlp,nope]"], "unknown privileged.kinds entry 'nope'; expected one of ['mlp', "),
    (["pipeline", "privileged.rounds=0"], "privileged.rounds must be an int >= 1, got 0"),
    (["pipeline", "ray.workers=3"], "launcher=local does not read ray.workers: the ray.* keys are read with "
                                    "launcher=ray"),
    (["train-experts", "tasks=[nope]"], "suite 'default' has no task 'nope'"),
    (["distill", "suite=default", "method=gated", "method.cap_rate=3"], "method.cap_rate=3: expected true or false"),
    (["distill", "suite=default", "method.lr_decay=yes"], "method.lr_decay=yes: expected true or false"),
    (["evaluate", "policy=x", "-m", "seed=[1,2"], "invalid config for 'evaluate': no viable alternative"),
    (["import-sb3", "model=MODEL", "groups=[nope]"], "groups=['nope'] does not fit task 'north' of suite 'default'"),
    (["import-sb3", "model=MODEL"], "is not a stable-baselines3 model zip"),
    (["distill", "-x"], "unknown option '-x'; expected key=value overrides and the options --cfg, -m"),
    (["distill", "method="], "method= needs a value; expected one of ['bc', 'dagger', "),
    (["distill", "method=gated", "method.query_rate=high"], "method.query_rate=high: expected a number"),
    (["distill", "seed=1.5"], "seed=1.5: expected an integer"),
    (["distill", "student.hidden=64"], "student.hidden=64: expected a list, as student.hidden=[a,b]"),
])
def test_bad_input_is_one_line_exit_2_nothing_written(args, message, caplog, tmp_path):
    """Refused before any stage runs: one line naming the key and what is valid, exit code 2, no out folder."""
    caplog.set_level(logging.ERROR)
    (tmp_path / "model.zip").write_text("not a zip")
    out = tmp_path / "out"
    args = [a.replace("MODEL", str(tmp_path / "model.zip")) for a in args]
    assert main([*args, f"out={out}"]) == 2
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "\n" not in lines[0] and message in lines[0], lines
    assert not out.exists()
