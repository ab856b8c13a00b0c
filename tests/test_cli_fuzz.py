"""Fuzz of the CLI: every command's keys (every method's, for ``distill``) set to wrong types, out-of-range numbers
and odd paths, drawn by a seeded generator over tiny runs. Every case ends with exit code 0, or with exit code 2,
one error line and nothing written; never a traceback."""

from __future__ import annotations

import logging
import os
from dataclasses import fields, is_dataclass
from pathlib import Path

import numpy as np
import pytest
from test_docs import PIPELINE

from policydistill.cli import main
from policydistill.cli.commands import COMMANDS
from policydistill.distill.methods import METHODS
from policydistill.files import read_json

VALUES_PER_KEY = 2
ODD = ["abc", "[1,2]", "'{a: 1}'", "-1", "0", "-0.5", "nan", "inf", "-inf", "1e12", "''", "/", "/dev/null",
       "'a b'", "'é'", "null", "true", "[]", "FILE", "DIR"]
"""Values every key gets tried with; FILE is an existing file, DIR an existing folder holding a file."""
ZOO = Path(__file__).resolve().parents[1] / "envs" / "zoo" / "default"
TINY_DIFFUSION = ["method.hidden=[32,32]", "method.horizon=8", "method.n_action_steps=4", "method.sampler_steps=4",
                  "method.episodes_per_task=1", "method.batch_size=16", "method.train_steps=20"]


def keys_of(schema: type, prefix: str = "", method: str | None = None) -> list[str]:
    """Every dotted key of a command's schema (the chosen method's under ``method``)."""
    out = []
    for f in fields(schema):
        if f.name == "method" and method is not None:
            out += keys_of(METHODS[method].config, "method.")
            continue
        value = f.default_factory() if callable(f.default_factory) else f.default
        if is_dataclass(value):
            out += keys_of(type(value), f"{prefix}{f.name}.")
        else:
            out.append(prefix + f.name)
    return out


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A tiny finished bc run (for train-student, and its student for run and export) and, beside it, a tiny
    diffusion run (its student: the teacher of onestep)."""
    root = tmp_path_factory.mktemp("fuzz")
    assert main(["distill", "method=bc", "teachers=conftest:goal_seeker", f"out={root / 'bc'}", "eval_episodes=1",
                 "final_episodes=0", "n_envs=2", "method.rounds=1", "method.episodes_per_task=1",
                 "method.updates_per_round=5"]) == 0
    assert main(["distill", "method=diffusion", "teachers=conftest:goal_seeker", f"out={root / 'diffusion'}",
                 "eval_episodes=1", "final_episodes=0", "n_envs=2", *TINY_DIFFUSION]) == 0
    return root / "bc"


KINDS = ("distill bc", "distill dagger", "distill onpolicy", "distill kickstart", "distill diffusion",
         "distill onestep", "train-experts", "train-student", "evaluate", "run", "export", "import-sb3", "pipeline")
SHARED = ("expert.", "ray.", "distill.method.", "distill.student.", "diffusion.teacher.")
"""Pipeline keys of the configs other kinds fuzz (train-experts' expert and ray, distill dagger's method and
student, distill diffusion's method): the pipeline's own keys are fuzzed there, its runs being the longest."""


def bases(run: Path, experts: Path) -> dict[str, tuple[list[str], str | None]]:
    """Per case kind: the command line of a tiny run, and the method (for distill)."""
    student = run / "student"
    files = read_json(experts / "east" / "checkpoint.json")["files"]
    distill = ["distill", "teachers=conftest:goal_seeker", "out=out", "eval_episodes=1", "final_episodes=0", "n_envs=2"]
    return {
        "distill bc": ([*distill, "method=bc", "method.rounds=1", "method.episodes_per_task=1",
                        "method.updates_per_round=5"], "bc"),
        "distill dagger": ([*distill, "method=dagger", "method.rounds=2", "method.episodes_per_task=1",
                            "method.updates_per_round=5"], "dagger"),
        "distill onpolicy": ([*distill, "method=onpolicy", "method.rounds=1", "method.episodes_per_task=1",
                              "method.updates_per_round=5"], "onpolicy"),
        "distill kickstart": (["distill", f"teachers={ZOO}", "out=out", "eval_episodes=1", "final_episodes=0",
                               "method=kickstart", "method.rounds=1", "method.n_envs=4", "method.n_steps=16",
                               "method.batch_size=16", "method.n_epochs=1"], "kickstart"),
        "distill diffusion": ([*distill, "method=diffusion", "method.rounds=1", *TINY_DIFFUSION], "diffusion"),
        "distill onestep": (["distill", f"teachers={run.parent / 'diffusion' / 'student'}", "out=out",
                             "eval_episodes=1", "final_episodes=0", "n_envs=2", "method=onestep", "method.steps=3",
                             "method.pairs=16", "method.episodes_per_task=1", "method.batch_size=8"], "onestep"),
        "train-experts": (["train-experts", "out=out", "tasks=[north]", "workers=1", "expert.total_steps=128",
                           "expert.n_envs=2", "expert.eval_every=128", "expert.eval_episodes=1",
                           "expert.final_episodes=1", "expert.checkpoint_every=128", "expert.hyperparams.n_steps=64",
                           "expert.hyperparams.batch_size=64", "expert.hyperparams.n_epochs=1"], None),
        "train-student": (["train-student", f"run={run}", "out=out", "updates=5", "batch_size=8"], None),
        "evaluate": (["evaluate", "policy=conftest:goal_seeker", "episodes=1", "n_envs=1", "out=out.json"], None),
        "run": (["run", f"policy={student}", "ticks=10", "rate_hz=1000", "out=out.json"], None),
        "export": (["export", f"policy={student}", "out=out.onnx"], None),
        "pipeline": (["pipeline", "out=out", *PIPELINE], None),
        "import-sb3": (["import-sb3", f"model={experts / 'east' / files['model']}", "out=out", "task=east",
                        f"vecnormalize={experts / 'east' / files['vecnormalize']}", "groups=[policy,privileged]"],
                       None),
    }


def cases(kind: str, run: Path, experts: Path, seed: int = 0) -> list[list[str]]:
    """Command lines of ``kind``: every key set to ``VALUES_PER_KEY`` odd values drawn from a seeded generator
    (the pipeline's own keys: one, as its runs are the longest; see ``SHARED``)."""
    rng = np.random.default_rng([seed, list(KINDS).index(kind)])
    base, method = bases(run, experts)[kind]
    per_key = 1 if kind == "pipeline" else VALUES_PER_KEY
    keys = [k for k in keys_of(COMMANDS[base[0]].schema, method=method)
            if k != "method" and not (kind == "pipeline" and k.startswith(SHARED))]
    return [[*[a for a in base if a.split("=", 1)[0] != key], f"{key}={value}"]
            for key in keys for value in rng.choice(ODD, per_key, replace=False)]


def listing(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*")}


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_every_odd_value_of_every_key_is_one_line_and_exit_2_or_a_success(kind, finished, tiny_experts, tmp_path,
                                                                         caplog):
    failures, ran = [], 0
    for i, argv in enumerate(cases(kind, finished, tiny_experts)):
        work = tmp_path / f"case{i}"
        (work / "DIR").mkdir(parents=True)
        (work / "DIR" / "x").write_text("x")
        (work / "FILE").write_text("x")
        before = listing(work)
        os.chdir(work)
        caplog.clear()
        try:
            with caplog.at_level(logging.INFO):
                code = main(argv)
        except BaseException as e:  # noqa: BLE001 - any escape is a failure of the case
            failures.append(f"{argv[0]} ... {argv[-1]}: {type(e).__name__}: {e}")
            continue
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        ran += code == 0
        if code not in (0, 2):
            failures.append(f"{argv[0]} ... {argv[-1]}: exit code {code}: {errors}")
        elif code == 2 and (len(errors) != 1 or listing(work) != before):
            failures.append(f"{argv[0]} ... {argv[-1]}: {errors}, wrote "
                            f"{sorted(set(listing(work)) - set(before))}")
    assert not failures, f"{len(failures)} cases failed:\n" + "\n".join(failures)
    assert 0 < ran < i, "every case was refused, or none"  # the base runs are valid and most odd values are not
