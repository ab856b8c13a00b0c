import logging

import pytest

from policydistill.cli import ConfigError, compose_config, main
from policydistill.config import TrainExpertsConfig


def test_compose_gives_the_schema_dataclass():
    cfg = compose_config("train-experts", ["suite=locomotion", "expert=sac", "workers=1"])
    assert isinstance(cfg, TrainExpertsConfig)
    assert (cfg.suite, cfg.expert.algo, cfg.workers, cfg.expert.n_envs) == ("locomotion", "sac", 1, 1)


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError, match=r"unknown config key 'wrokers'.*valid keys: suite, out, workers"):
        compose_config("train-experts", ["wrokers=2"])
    with pytest.raises(ConfigError, match=r"unknown config key 'expert.lr'.*expert.total_steps"):
        compose_config("train-experts", ["expert.lr=1"])
    with pytest.raises(ConfigError, match=r"\+expert.hyperparams.clip_range"):
        compose_config("train-experts", ["expert.hyperparams.clip_range=0.1"])
    cfg = compose_config("train-experts", ["+expert.hyperparams.clip_range=0.1"])
    assert cfg.expert.hyperparams["clip_range"] == 0.1


def test_wrong_type_and_missing_value_are_clear():
    with pytest.raises(ConfigError, match="workers"):
        compose_config("train-experts", ["workers=many"])
    with pytest.raises(ConfigError, match="'evaluate' needs policy="):
        compose_config("evaluate", [])
    with pytest.raises(ConfigError, match=r"unknown command 'train'.*train-experts"):
        compose_config("train", [])


def test_main_reports_errors_with_exit_code_2(caplog, tmp_path):
    caplog.set_level(logging.ERROR)
    assert main(["train-experts", "suite=nope", f"out={tmp_path}"]) == 2
    assert "unknown suite 'nope'" in caplog.text and "default" in caplog.text
    assert main(["evaluate", f"policy={tmp_path / 'missing'}"]) == 2
    assert "no policy bundle or folder of bundles" in caplog.text
    assert main(["--help"]) == 0
