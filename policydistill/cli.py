"""The one command, ``policydistill <subcommand> key=value ...``, composed by Hydra from configs/.

Hydra lives only here: the config is composed, validated against its schema (an unknown key is an
error listing the valid keys), turned into a plain dataclass and handed to the library.
"""

from __future__ import annotations

import logging
import re
import sys
from dataclasses import fields, is_dataclass
from importlib import resources
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from policydistill.config import COMMANDS

log = logging.getLogger("policydistill")

USAGE = """usage: policydistill <command> [key=value ...]

commands:
  pipeline       train experts on a suite, evaluate them, write report.md (the main job)
  train-experts  train one specialist per task: suite=<name> out=<dir> workers=N expert=ppo|sac|td3
  evaluate       seeded rollouts: policy=<bundle or folder> suite=<name> episodes=N out=<file.json>
  distill        teacher-student distillation: method=bc|dagger|onpolicy|kickstart suite=<name> teachers=<dir> out=<dir>
                 method=diffusion (diffusion policy from the teachers' episodes), method=onestep
                 teachers=<diffusion bundle> onestep.algo=dmd|dmd_det|consistency|regression
  import-sb3     turn a trusted SB3 .zip (+ VecNormalize .pkl) into a bundle
  run            fixed-rate control loop on a simulated robot: policy=<bundle|.onnx|.pt> suite=<name> rate_hz=<f>
  export         policy=<bundle> format=torchscript|onnx out=<path>, normalisation and post-processing inside
  train-student  student updates over a distill run's episodes, DDP on nproc processes: run=<distill out> nproc=N

'policydistill <command> --cfg' prints the composed config with every valid key."""


class ConfigError(ValueError):
    """A user's config or override is invalid; the message says what and what is valid."""


def _valid_keys(schema: type, dotted: str) -> str:
    """What may stand where the unknown key ``dotted`` was written, as a message fragment."""
    node: Any = schema
    parts = dotted.split(".")
    for depth, part in enumerate(parts[:-1]):
        match = [f for f in fields(node) if f.name == part]
        if not match:
            break
        value = match[0].default_factory() if callable(match[0].default_factory) else match[0].default
        if not is_dataclass(value):
            parent = ".".join(parts[: depth + 1])
            return f"'{parent}' is a free-form mapping: add a new entry with '+{dotted}=...'"
        node = type(value)
    else:
        prefix = ".".join(parts[:-1])
        return "valid keys: " + ", ".join(f"{prefix}.{f.name}" if prefix else f.name for f in fields(node))
    return "valid keys: " + ", ".join(f.name for f in fields(schema))


def compose_config(command: str, overrides: list[str]) -> Any:
    """Compose ``configs/<command>.yaml`` with ``overrides`` and return the schema dataclass."""
    if command not in COMMANDS:
        raise ConfigError(f"unknown command '{command}'; expected one of {sorted(COMMANDS)}")
    schema = COMMANDS[command]
    ConfigStore.instance().store(name=f"{command}_schema", node=schema)
    config_dir = str(resources.files("policydistill_configs"))
    try:
        with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
            cfg = compose(config_name=command, overrides=overrides)
        missing = sorted(OmegaConf.missing_keys(cfg))
        if missing:
            raise ConfigError(f"'{command}' needs {', '.join(f'{k}=...' for k in missing)}")
        return OmegaConf.to_object(cfg)
    except (HydraException, OmegaConfBaseException) as e:
        text = f"{e} {e.__cause__ or ''}"
        key = re.search(r"Could not override '([^']+)'|Key '([^']+)' (?:is )?not in struct", text)
        if key:
            name = key.group(1) or key.group(2)
            raise ConfigError(f"unknown config key '{name}' for '{command}'; "
                              f"{_valid_keys(schema, name)}") from None
        raise ConfigError(f"invalid config for '{command}': {text.strip()}") from None


def _run(command: str, cfg: Any) -> None:
    from policydistill import commands

    {"train-experts": commands.train_experts_cmd, "evaluate": commands.evaluate_cmd,
     "pipeline": commands.pipeline_cmd, "import-sb3": commands.import_sb3_cmd,
     "distill": commands.distill_cmd, "run": commands.run_cmd, "export": commands.export_cmd,
     "train-student": commands.train_student_cmd}[command](cfg)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    command, overrides = argv[0], argv[1:]
    # Policies here are small MLPs run at small batch sizes, where torch's intra-op thread pool costs
    # far more than it gives (measured 25x slower rollouts with 2 threads than with 1 on 2 cores).
    torch.set_num_threads(1)
    try:
        if "--cfg" in overrides:
            cfg = compose_config(command, [o for o in overrides if o != "--cfg"])
            print(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
            return 0
        _run(command, compose_config(command, overrides))
    except (ConfigError, ValueError, KeyError, FileNotFoundError) as e:
        log.error("%s", e.args[0] if e.args else e)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
