"""The one command, ``policydistill <subcommand> key=value ...``, composed by Hydra from configs/.

Hydra lives only here: the config is composed, validated against its schema (an unknown key is an error
listing the valid keys; each dataclass checks its values and refuses keys its choices do not read), turned
into a plain dataclass and handed to the library. ``--cfg`` prints the composed config (even before the
required keys are given); ``-m`` runs a sweep (Hydra's sweep syntax, ``seed=0,1,2``), one job after the other,
and writes one summary table.
"""

from __future__ import annotations

import itertools
import logging
import re
import sys
from dataclasses import fields, is_dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from policydistill.cli.commands import COMMANDS
from policydistill.distill.methods import METHODS
from policydistill.files import atomic_write_json, atomic_write_text

log = logging.getLogger("policydistill")
OPTIONS = ("--cfg", "-m", "--multirun", "-h", "--help")
"""What may follow a command besides ``key=value`` overrides."""


def usage() -> str:
    width = max(len(c) for c in COMMANDS)
    lines = [f"  {name:<{width}}  {c.usage}" for name, c in COMMANDS.items()]
    return ("usage: policydistill <command> [key=value ...] [--cfg] [-m]\n\ncommands:\n" + "\n".join(lines) +
            "\n\n'policydistill <command> --cfg' prints the composed config with every valid key; '-m' sweeps "
            "(e.g. -m seed=0,1,2).")


def command_usage(command: str) -> str:
    """``policydistill <command> --help``: what the command does and where its keys are listed."""
    return (f"usage: policydistill {command} [key=value ...] [--cfg] [-m]\n\n  {COMMANDS[command].usage}\n\n"
            f"'policydistill {command} --cfg' prints its composed config with every valid key (and "
            f"'policydistill {command} <key>=<value> --cfg' the config that value gives).")


class ConfigError(ValueError):
    """A user's config or override is invalid; the message says what and what is valid."""


def _register(command: str) -> None:
    store = ConfigStore.instance()
    store.store(name=f"{command}_schema", node=COMMANDS[command].schema)
    if command == "distill":
        for name, method in METHODS.items():
            store.store(group="method", name=name, node=method.config)


def _node_type(schema: type, parts: list[str], method: str) -> type | None:
    """The dataclass at ``parts`` below ``schema`` (the chosen method's config under ``method``), or None."""
    node: Any = schema
    for part in parts:
        match = [f for f in fields(node) if f.name == part]
        if not match:
            return None
        if part == "method" and node is COMMANDS["distill"].schema:
            node = METHODS[method].config
            continue
        value = match[0].default_factory() if callable(match[0].default_factory) else match[0].default
        if not is_dataclass(value):
            return None
        node = type(value)
    return node


def _unknown_key(command: str, dotted: str, overrides: list[str]) -> str:
    """The message for an unknown key ``dotted``: what may stand there."""
    method = next((o.split("=", 1)[1] for o in overrides if o.startswith("method=")), "dagger")
    parts = dotted.split(".")
    for depth in range(len(parts) - 1, -1, -1):
        node = _node_type(COMMANDS[command].schema, parts[:depth], method)
        if node is not None:
            prefix = "".join(f"{p}." for p in parts[:depth])
            keys = ", ".join(prefix + f.name for f in fields(node))
            if depth < len(parts) - 1:
                return f"'{'.'.join(parts[:depth + 1])}' is a free-form mapping: add a new entry with '+{dotted}=...'"
            owner = f"method '{method}'" if parts[0] == "method" and depth == 1 else f"'{command}'"
            return f"{owner} has no key '{dotted}'; valid keys: {keys}"
    return f"unknown key '{dotted}'"


def compose_raw(command: str, overrides: list[str]) -> DictConfig:
    """``configs/<command>.yaml`` composed with ``overrides`` (not yet validated into the schema dataclass)."""
    if command not in COMMANDS:
        raise ConfigError(f"unknown command '{command}'; expected one of {sorted(COMMANDS)}")
    _register(command)
    try:
        with initialize_config_dir(config_dir=str(resources.files("policydistill_configs")), version_base="1.3"):
            cfg = compose(config_name=command, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as e:
        raise _config_error(command, e, overrides) from None
    _check_booleans(cfg, overrides)
    return cfg


def _check_booleans(cfg: DictConfig, overrides: list[str]) -> None:
    """Refuse an override of a true/false key with anything but true or false (OmegaConf reads ``3`` or ``yes``
    as true)."""
    for o in OverridesParser.create().parse_overrides(overrides):
        if o.is_sweep_override() or o.is_delete():
            continue
        if isinstance(OmegaConf.select(cfg, o.key_or_group), bool) and not isinstance(o.value(), bool):
            raise ConfigError(f"{o.key_or_group}={o.get_value_element_as_str()}: expected true or false")


def _config_error(command: str, e: Exception, overrides: list[str]) -> ConfigError:
    text = f"{e} {e.__cause__ or ''}"
    key = re.search(r"Could not override '([^']+)'|Key '([^']+)' (?:is )?not in struct", text)
    if key:
        return ConfigError(f"unknown config key '{key.group(1) or key.group(2)}' for '{command}': "
                           f"{_unknown_key(command, key.group(1) or key.group(2), overrides)}")
    sweep = re.search(r"Ambiguous value for argument '([^=']+)=([^']*)'", text)
    if sweep:
        name, value = sweep.groups()
        hint = f" or join env ids with '+' ({name}={value.replace(',', '+')})" if name == "suite" else ""
        return ConfigError(f"{name}={value} is a sweep over {len(value.split(','))} values: add -m to run one job "
                           f"per value{hint}, or write a list as {name}=[{value}]")
    option = re.search(r"Could not find '([^']+)/([^']*)'", text)
    if option:
        group, name = option.groups()
        valid = sorted(METHODS) if group == "method" else \
            sorted(p.stem for p in Path(str(resources.files("policydistill_configs") / group)).glob("*.yaml"))
        what = f"unknown {group} '{name}'" if name else f"{group}= needs a value"
        return ConfigError(f"{what}; expected one of {valid}")
    convert = re.search(r"Value '(.*?)' of type '\w+' could not be converted to (\w+)\s+full_key: (\S+)", text)
    if convert:
        value, kind, key = convert.groups()
        expected = {"Integer": "an integer", "Float": "a number"}.get(kind, kind.lower())
        return ConfigError(f"{key}={value}: expected {expected}")
    listed = re.search(r"is not a ListConfig, list or tuple\.\s+full_key: (\S+)", text)
    if listed:
        key = listed.group(1)
        value = next((o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0].lstrip("+~") == key), "")
        return ConfigError(f"{key}={value}: expected a list, as {key}=[a,b]")
    lexer = re.search(r"LexerNoViableAltException: (\S+?)=(\S*)", text)
    if lexer:
        key, value = lexer.groups()
        return ConfigError(f"cannot read '{key}={value}': a value with spaces or characters other than letters, "
                           f"digits and _-./ must be quoted, as {key}='{value}'")
    return ConfigError(f"invalid config for '{command}': {' '.join(text.split())}")


def compose_config(command: str, overrides: list[str]) -> Any:
    """``configs/<command>.yaml`` composed with ``overrides``, as the command's schema dataclass (validated)."""
    cfg = compose_raw(command, overrides)
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"'{command}' needs {', '.join(f'{k}=...' for k in missing)}")
    try:
        return OmegaConf.to_object(cfg)
    except ValueError as e:  # a schema's own check (__post_init__)
        raise ConfigError(str(e.args[0] if e.args else e)) from None
    except (HydraException, OmegaConfBaseException) as e:
        cause = e.__cause__ or e
        if isinstance(cause, ValueError):
            raise ConfigError(str(cause.args[0] if cause.args else cause)) from None
        raise _config_error(command, e, overrides) from None


def sweep_jobs(overrides: list[str]) -> tuple[list[list[str]], list[str]]:
    """Every combination of the sweep overrides (``key=a,b``, ``key=range(0,3)``), and the swept keys."""
    axes, swept = [], []
    for o in OverridesParser.create().parse_overrides(overrides):
        if o.is_sweep_override():
            key = o.get_key_element()
            axes.append([f"{key}={v}" for v in o.sweep_string_iterator()])
            swept.append(key)
        else:
            axes.append([o.input_line])
    return [list(combo) for combo in itertools.product(*axes)], swept


def run_sweep(command: str, overrides: list[str]) -> int:
    """One job per combination of the sweep's values, in this process, each writing under its own ``out``;
    then ``<out>/sweep.json`` and ``sweep.md``: the swept values and each job's numbers. Returns the exit code."""
    from policydistill.eval.report import markdown_table  # imports matplotlib: not on every command's path

    try:
        jobs, swept = sweep_jobs(overrides)
    except (HydraException, OmegaConfBaseException) as e:  # an override Hydra cannot parse
        raise _config_error(command, e, overrides) from None
    base = compose_raw(command, jobs[0]).get("out")
    root = Path(str(base)) if base not in (None, "???") else Path("multirun") / command
    root = root.parent / root.stem if root.suffix else root
    rows, failed = [], 0
    for k, job in enumerate(jobs):
        values = [o for o in job if o.split("=", 1)[0].lstrip("+~") in swept]
        name = re.sub(r"[^\w.=+-]+", "_", ",".join(values)) or f"job{k}"
        if "out" not in swept and base not in (None, "???"):
            suffix = Path(str(base)).suffix
            job = [*job, f"out='{root / (name + suffix)}'"]
        log.info("sweep job %d/%d: %s", k + 1, len(jobs), " ".join(values))
        try:
            numbers = COMMANDS[command].run(compose_config(command, job), job)
            rows.append({"job": name, **{v.split("=", 1)[0]: v.split("=", 1)[1] for v in values}, **numbers})
        except (ValueError, KeyError, FileNotFoundError, RuntimeError) as e:
            failed += 1
            log.error("sweep job %s failed: %s", name, _one_line(e))
            rows.append({"job": name, "error": _one_line(e)})
    header = list(dict.fromkeys(k for row in rows for k in row))
    table = markdown_table(header, [[row.get(h) for h in header] for row in rows])
    atomic_write_json(root / "sweep.json", {"command": command, "overrides": overrides, "jobs": rows})
    atomic_write_text(root / "sweep.md", table + "\n")
    print(table)
    log.info("sweep of %d jobs (%d failed): %s", len(jobs), failed, root / "sweep.md")
    return 1 if failed else 0


def _one_line(e: BaseException) -> str:
    text = str(e) if isinstance(e, OSError) or len(e.args) != 1 else str(e.args[0])
    return " ".join(text.split())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    command, args = argv[0], argv[1:]
    if command in COMMANDS and any(a in ("-h", "--help") for a in args):
        print(command_usage(command))
        return 0
    if command == "dataset" and args and "=" not in args[0] and not args[0].startswith("-"):
        args = [f"action={args[0]}", *args[1:]]  # policydistill dataset <action> key=value ...
    unknown = [a for a in args if a.startswith("-") and a not in OPTIONS]
    if unknown:
        log.error("unknown option '%s'; expected key=value overrides and the options %s", unknown[0],
                  ", ".join(OPTIONS))
        return 2
    multirun = any(a in ("-m", "--multirun") for a in args)
    args = [a for a in args if a not in ("-m", "--multirun")]
    # Policies here are small MLPs run at small batch sizes, where torch's intra-op thread pool costs
    # far more than it gives (measured 25x slower rollouts with 2 threads than with 1 on 2 cores).
    torch.set_num_threads(1)
    try:
        if "--cfg" in args:
            print(OmegaConf.to_yaml(compose_raw(command, [a for a in args if a != "--cfg"])))
            return 0
        if multirun:
            return run_sweep(command, args)
        cfg = compose_config(command, args)
        COMMANDS[command].run(cfg, args)
    except (ConfigError, ValueError, KeyError, FileNotFoundError) as e:
        log.error("%s", _one_line(e))
        return 2
    except (FloatingPointError, RuntimeError, OSError) as e:  # the work failed: diverged, a worker died, a disk
        log.error("%s failed: %s", command, _one_line(e))
        return 1
    return 0
