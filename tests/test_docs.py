"""The documentation builds, and every command it shows runs.

``mkdocs build --strict`` builds the site. Then every command in the ``bash`` blocks of README.md and of
the pages of ``mkdocs.yml`` runs, page after page in the order of the site, in one working folder where
``envs`` links to the repository's ``envs/`` (so ``envs/zoo/default`` resolves), ``bench/results`` to its stored
benchmark results (which ``label_efficiency --best-of`` reads; benchmarks write elsewhere), and where later commands
read what earlier ones wrote (``runs/diffusion`` then ``runs/onestep``), as a reader typing them would.
A ``yaml`` block whose first line is ``# <name>.yaml`` is written to that file first (the suite files the
pages show). Commands run on a tiny budget: ``policydistill`` commands in this process through
``policydistill.cli.main`` with overrides appended (Hydra lets a later override win), benchmarks with
``--smoke --results-dir <tmp>``, torchrun in a subprocess with few updates. A command already run with
the same arguments in the working folder is not run again. A command of an extra's venv
(``.venv-dmc/bin/policydistill``) runs in a subprocess of that venv, which ``.ci/run`` makes first (on a
machine without it, it is logged as not run). The Ray commands share one local Ray instance,
the session's (tests/conftest.py), started before the first of them. A command that
cannot run here is listed in ``NOT_RUN`` with the reason, and an unknown kind of command fails the test.
Besides the budget, two things differ from the pages: videos are off (``video=false``: software rendering
takes seconds per task; tests/test_evaluate.py records videos), and import-sb3
reads the checkpoint of the shorter SAC run (``REWRITES``).
The Python blocks of the API page run too. Running the commands takes minutes (the pipeline, expert
training in worker processes, Ray, torchrun): those tests are marked ``slow``; the site build and the
checks of the pages' text are not.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from policydistill.cli import main

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the environment running the tests: what .venv/bin is after setup.sh


def site_pages() -> list[str]:
    """README.md, then the site's pages in the order of its navigation."""
    nav = yaml.safe_load((REPO / "mkdocs.yml").read_text())["nav"]
    return ["README.md", *(f"docs/{next(iter(entry.values()))}" for entry in nav)]


# ---- what cannot run here ------------------------------------------------------------------------

NOT_RUN: list[tuple[str, str]] = [
    (r"^bash scripts/setup\.sh$", "installs the environment these tests run in (OSMesa with apt, pip installs)"),
    (r"^\.venv/bin/python -m pytest", "the test suite this test is part of"),
    (r"^bash scripts/setup_(dmc|robotics)\.sh$", "makes an extra's venv (.ci/run makes them before these tests)"),
    (r"^\.venv/bin/ray start", "starts a node of a multi-machine Ray cluster"),
    (r"ray\.address=auto", "joins an existing Ray cluster, with its run folder on a shared filesystem (/shared)"),
    (r"--nnodes=2", "torchrun across 2 machines (placeholder host <host0>, 4 GPUs each)"),
]
"""(regex over the command line, why it is not run)."""

REWRITES = {"ckpt-20000": "ckpt-300"}
"""The Pendulum SAC expert is trained for 300 steps here, not 20,000, so the SB3 checkpoint that import-sb3
reads is ckpt-300.zip."""

# ---- tiny budgets --------------------------------------------------------------------------------

PPO = ["expert.total_steps=512", "expert.n_envs=4", "expert.eval_every=512", "expert.eval_episodes=1",
       "expert.final_episodes=1", "expert.checkpoint_every=512", "expert.hyperparams.n_steps=128",
       "expert.hyperparams.batch_size=128",
       "expert.hyperparams.n_epochs=1"]
OFF_POLICY = ["expert.total_steps=300", "expert.hyperparams.learning_starts=200", "expert.hyperparams.batch_size=32",
              "expert.net=[32,32]", "expert.eval_every=300", "expert.eval_episodes=1", "expert.final_episodes=1",
              "expert.checkpoint_every=300"]
PIPELINE = [*PPO, "episodes=2", "video=false",
            "distill.method.rounds=1", "distill.method.updates_per_round=5", "distill.method.episodes_per_task=1",
            "distill.eval_episodes=1",
            "diffusion.algos=[dmd_det,regression]", "diffusion.eval_episodes=1", "diffusion.latency_calls=5",
            "diffusion.onestep.steps=3", "diffusion.onestep.pairs=16",
            "diffusion.onestep.episodes_per_task=1",
            "privileged.rounds=1", "privileged.episodes_per_task=1", "privileged.updates_per_round=5",
            "privileged.eval_episodes=1", "privileged.kinds=[mlp,gru]"]
"""Videos are off for the pipeline and evaluate (software rendering, seconds per task); tests/test_evaluate.py
records them."""


def _value(args: list[str], key: str, default: str) -> str:
    found = [a.split("=", 1)[1] for a in args if a.split("=", 1)[0] == key]
    return found[-1] if found else default


def tiny(command: str, args: list[str]) -> list[str]:
    """Overrides that make ``policydistill <command> <args>`` cheap, each one a key the command reads."""
    if "--cfg" in args or command in ("--help", "export", "import-sb3"):
        return []
    if command == "pipeline":
        return PIPELINE
    if command == "train-experts":
        return OFF_POLICY if _value(args, "expert", "ppo") in ("sac", "td3") else PPO
    if command == "evaluate":
        return ["episodes=1", "video=false"]
    if command == "run":
        return ["ticks=20"]
    if command == "train-student":
        return ["updates=5", "batch_size=32", "checkpoint_every=5"]
    if command == "fit-monitor":
        return ["episodes=12", "updates=20"]  # 48 calibration episodes on the default suite: delta=0.1 needs 45
    if command != "distill":
        raise AssertionError(f"no tiny budget for 'policydistill {command}'")
    method = _value(args, "method", "dagger")
    rounds = f"method.rounds={2 if any(a.startswith('method.rounds=') for a in args) else 1}"
    out = ["eval_episodes=1"]
    if method in ("bc", "dagger", "onpolicy"):
        return [*out, rounds, "method.updates_per_round=5", "method.episodes_per_task=1"]
    if method == "gated":
        gate = [] if _value(args, "method.gate", "") == "intervention" else ["method.gate_updates=5"]
        return [*out, rounds, "method.updates_per_round=5", "method.episodes_per_task=1", *gate]
    if method == "kickstart":
        return [*out, rounds, "method.n_envs=4", "method.n_steps=16", "method.batch_size=16", "method.n_epochs=1"]
    if method == "diffusion":
        net = "method.hidden=[32]" if _value(args, "method.denoiser", "mlp") == "mlp" else "method.channels=[8,16]"
        return [*out, net, "method.train_steps=5", "method.episodes_per_task=1", "method.sampler_steps=4",
                "method.checkpoint_every=5"]
    if method == "onestep":
        pairs = ["method.pairs=16"] if _value(args, "method.algo", "dmd_det") != "consistency" else []
        return [*out, *pairs, "method.steps=3", "method.episodes_per_task=1", "method.checkpoint_every=3"]
    raise AssertionError(f"no tiny budget for distill method '{method}'")


# ---- reading the pages ---------------------------------------------------------------------------


def blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, re.S | re.M)


def page_commands(text: str) -> list[str]:
    """Every command line of the page's bash blocks: continuations joined, ``&&`` chains split."""
    out = []
    for block in blocks(text, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            while words:
                cut = words.index("&&") if "&&" in words else len(words)
                out.append(shlex.join(words[:cut]))
                words = words[cut + 1:]
    return out


def page_files(text: str) -> dict[str, str]:
    """The YAML files a page shows: blocks whose first line is ``# <name>.yaml``."""
    out = {}
    for block in blocks(text, "yaml"):
        first = re.match(r"# ([\w.-]+\.yaml)\b", block)
        if first:
            out[first.group(1)] = block
    return out


# ---- running -------------------------------------------------------------------------------------


class Runner:
    """Runs commands in one working folder; keeps what ran, what did not and why."""

    def __init__(self, root: Path, start_ray) -> None:
        self.root, self.work = root, root / "work"
        self.work.mkdir()
        (self.work / "envs").symlink_to(REPO / "envs")
        (self.work / "bench").mkdir()  # no package here: ``-m bench`` imports the repository's
        (self.work / "bench" / "results").symlink_to(REPO / "bench" / "results")
        self.done: set[str] = set()
        self.log: list[tuple[str, str, str]] = []  # (page, command, outcome)
        self.start_ray = start_ray  # the session's Ray instance, started when a Ray command first needs it

    def env(self) -> dict[str, str]:
        path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
        return {**os.environ, "PYTHONPATH": path}

    def subprocess(self, argv: list[str]) -> None:
        result = subprocess.run(argv, cwd=self.work, env=self.env(), capture_output=True, text=True, timeout=600)
        if result.returncode:
            raise AssertionError(f"exit code {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")

    def run(self, page: str, line: str) -> None:
        for pattern, reason in NOT_RUN:
            if re.search(pattern, line):
                self.log.append((page, line, f"not run: {reason}"))
                return
        if line in self.done:
            self.log.append((page, line, "already run above"))
            return
        for old, new in REWRITES.items():
            line = line.replace(old, new)
        words = shlex.split(line)
        prog, args = words[0], words[1:]
        t0 = time.perf_counter()
        if prog in (".venv/bin/policydistill", "policydistill"):
            if any(a in ("collector=ray", "launcher=ray") for a in args):
                self.start_ray()
            extra = tiny(args[0], args[1:]) if args else []
            rc = main([*args, *extra])
            assert rc == 0, f"'{line}' (+ {' '.join(extra)}) exited with {rc}"
        elif prog in (".venv/bin/python", "python") and args[:2] == ["-m", "bench"]:
            smoke = [] if args[2:3] == ["list"] else ["--smoke", "--results-dir", str(self.root / "bench")]
            self.subprocess([sys.executable, *args, *smoke])
        elif prog in (".venv/bin/python", "python") and args and args[0].startswith("scripts/"):
            self.subprocess([sys.executable, str(REPO / args[0]), *args[1:]])
        elif re.fullmatch(r"\.venv-\w+/bin/policydistill", prog):
            venv = REPO / prog.split("/")[0]
            if not venv.is_dir():
                assert not os.environ.get("CI"), f"'{line}' needs {venv.name}, which CI makes first"
                self.log.append((page, line, f"not run: {venv.name} is not set up"))
                return
            self.subprocess([str(REPO / prog), *args, *(tiny(args[0], args[1:]) if args else [])])
        elif prog == ".venv/bin/torchrun":
            cut = args.index("policydistill") + 1
            command = args[cut]
            self.subprocess([str(BIN / "torchrun"), *args, *tiny(command, args[cut + 1:])])
        else:
            raise AssertionError(f"the test does not know how to run '{line}': handle it or add it to NOT_RUN")
        self.done.add(line)
        self.log.append((page, line, f"ran in {time.perf_counter() - t0:.1f} s"))


@pytest.fixture(scope="module")
def runner(tmp_path_factory, request):
    r = Runner(tmp_path_factory.mktemp("docs"), lambda: request.getfixturevalue("ray_instance"))
    yield r
    lines = [f"{outcome:>16}  {page}: {cmd}" for page, cmd, outcome in r.log]
    print("\ndocumented commands:\n" + "\n".join(lines))


def test_the_site_builds_strictly(tmp_path):
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None:
        pytest.skip("mkdocs and mkdocs-material are not installed (pip install -e '.[docs]')")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                             str(REPO / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")],
                            capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "architecture" / "index.html").is_file()


def test_the_readme_starts_with_the_two_commands():
    first = blocks((REPO / "README.md").read_text(), "bash")[0].splitlines()
    assert first == ["bash scripts/setup.sh && .venv/bin/policydistill pipeline",
                     "bash scripts/setup.sh && .venv/bin/python -m pytest -q"]


def test_every_not_run_entry_is_needed():
    lines = [c for page in site_pages() for c in page_commands((REPO / page).read_text())]
    for pattern, reason in NOT_RUN:
        assert any(re.search(pattern, c) for c in lines), f"NOT_RUN entry '{pattern}' ({reason}) matches no command"


@pytest.mark.slow
@pytest.mark.parametrize("page", site_pages())
def test_every_command_of_the_page_runs(page, runner, monkeypatch):
    monkeypatch.chdir(runner.work)
    text = (REPO / page).read_text()
    for name, content in page_files(text).items():
        (runner.work / name).write_text(content)
    for line in page_commands(text):
        runner.run(page, line)
    if page == "README.md":
        check_the_main_job_report(runner.work / "runs" / "pipeline")


def check_the_main_job_report(out: Path) -> None:
    """What the README's first command (the pipeline, on its tiny budget) leaves behind."""
    report = (out / "report.md").read_text()
    for heading in ("## Experts", "## Does the suite need the task id?", "## DAgger generalist",
                    "## Diffusion policy and one-step students", "## Privileged-information students",
                    "## Stage times"):
        assert heading in report
    assert "| north | ppo |" in report and "| gru | policy, task |" in report and "| one-step dmd_det |" in report
    assert "The student it ships (`best/`, round " in report and "on held-out seeds 9000, 9001, ...: success" in report
    assert "final" not in json.loads((out / "privileged" / "gru" / "distill.json").read_text())  # compared side by side
    for plot in ("experts.png", "distill.png", "privileged.png", "diffusion/onestep.png"):
        assert (out / plot).stat().st_size > 10_000, plot
    assert (out / "distill" / "dagger" / "student").is_dir() and (out / "privileged" / "gru" / "student").is_dir()
    matrix = json.loads((out / "cross_task_success.json").read_text())
    assert matrix["tasks"] == ["north", "east", "south", "west"] and len(matrix["success"]) == 4
    onestep = json.loads((out / "diffusion" / "onestep.json").read_text())
    assert list(onestep["results"]) == ["teacher ddim 100", "teacher ddim 10", "teacher ddim 1", "one-step dmd_det",
                                        "one-step regression"]
    assert all(r["latency"]["p50_ms"] > 0 for r in onestep["results"].values())


@pytest.mark.slow
def test_the_python_api_page_runs(runner, monkeypatch):
    monkeypatch.chdir(runner.work)
    for code in blocks((REPO / "docs/api.md").read_text(), "python"):
        exec(compile(code, "docs/api.md", "exec"), {"__name__": "docs_api"})
