"""Shared by the benchmarks: the command line (``--smoke``, ``--results-dir``), CPU pinning and timing, the
distillation runs they make and the policies they measure, cached under ``runs/bench``.

Policies (each trained on first use, then reused; a ``--smoke`` run uses tiny budgets and its own cache under
``runs/bench/smoke``, so it never stands in for a full one):

- :func:`student_bundle`: a DAgger MLP student of the default suite (256x256 ReLU over ``policy`` + ``task``),
  distilled from the committed zoo;
- :func:`chunk_bundles`: a diffusion teacher (DDPM chunk policy, DDIM 100 steps) trained on the mirror-route
  demonstrations of the ``default_hazard`` zoo and its ``dmd_det`` one-step student: the runs of seed 0 of
  ``bench onestep_fidelity``, shared with it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import statistics
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch

from policydistill import (
    DAggerConfig,
    DiffusionConfig,
    DistillConfig,
    OneStepConfig,
    StudentConfig,
    Suite,
    load_suite,
    policies_for_suite,
    zoo_dir,
)
from policydistill import run_distill as distill
from policydistill.eval import latency

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench/results"
RUNS = ROOT / "runs/bench"
log = logging.getLogger("bench")

# ---- command line ------------------------------------------------------------------------------


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, ``<prog>: <what was wrong>``, exit code 2 (``--help`` lists
    the arguments)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message}\n")


def parser(name: str, doc: str) -> argparse.ArgumentParser:
    """Benchmark ``name``'s parser (description: the first line of ``doc``) with ``--smoke`` and ``--results-dir``."""
    p = OneLineParser(prog=f"python -m bench {name}", description=doc.splitlines()[0])
    p.add_argument("--smoke", action="store_true",
                   help="the same code path on a tiny budget (seconds): caps the budget arguments, keeps its "
                        "policies apart (runs/bench/smoke, temporary folders) and never writes into bench/results")
    p.add_argument("--results-dir", default=None,
                   help="where the result JSON goes (default: bench/results; with --smoke runs/bench/smoke/results)")
    return p


def json_object(text: str) -> dict[str, Any]:
    """An argument's JSON object (an argparse ``type``: anything else is a one-line usage error)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON ({e.msg} at character {e.pos}): {text}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object ({{\"key\": value, ...}}), got {text}")
    return value


def timing_args(p: argparse.ArgumentParser, iters: int, rounds: int = 5) -> None:
    """``--iters`` calls per variant per round, ``--rounds`` alternating rounds, ``--cpu`` to pin to."""
    p.add_argument("--iters", type=int, default=iters, help="calls per variant per round")
    p.add_argument("--rounds", type=int, default=rounds)
    p.add_argument("--cpu", type=int, default=None, help="pin to this CPU (default: the last one)")


def _cap(value: Any, tiny: Any) -> Any:
    if isinstance(tiny, list):
        return list(value)[:len(tiny)] if value else tiny
    return tiny if value is None or tiny is None else min(value, tiny)


def parse(p: argparse.ArgumentParser, argv: list[str] | None, smoke: dict[str, Any]) -> argparse.Namespace:
    """Parse ``argv``. With ``--smoke`` every argument named in ``smoke`` is capped at its value there (numbers:
    the smaller one; lists: the first entries), so a documented command plus ``--smoke`` runs in seconds."""
    args = p.parse_args(argv)
    unknown = [k for k in smoke if not hasattr(args, k)]
    if unknown:
        raise ValueError(f"smoke budget names unknown arguments {unknown}")
    if args.smoke:
        for key, tiny in smoke.items():
            setattr(args, key, _cap(getattr(args, key), tiny))
    results = Path(args.results_dir or (RUNS / "smoke/results" if args.smoke else RESULTS)).resolve()
    if args.smoke and results == RESULTS.resolve():
        p.error("--smoke never writes into bench/results (the committed results): give another --results-dir")
    args.results_dir = str(results)
    return args


def runs_dir(smoke: bool, name: str) -> Path:
    """Where benchmark runs of ``name`` are cached: ``runs/bench/<name>`` (``runs/bench/smoke/<name>``)."""
    return RUNS / "smoke" / name if smoke else RUNS / name


@contextmanager
def cache_dir(given: str | None, smoke: bool, name: str) -> Iterator[Path]:
    """Where a benchmark caches its pieces: ``given``, else ``runs/bench/<name>``; a smoke run without ``given``
    uses a fresh temporary folder (so that it runs every piece each time)."""
    if given or not smoke:
        yield Path(given) if given else runs_dir(False, name)
        return
    with tempfile.TemporaryDirectory(prefix=f"bench_{name}_") as tmp:
        yield Path(tmp)


def shown(path: str | Path) -> str:
    """``path`` relative to the repository when it lies inside it (results never name this machine's paths)."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def setup_logging(fmt: str = "%(message)s", root: int = logging.WARNING) -> None:
    """The benchmarks' own messages (logger ``bench.*``) at INFO, everything else at ``root``."""
    logging.basicConfig(level=root, format=fmt, datefmt="%H:%M:%S")
    log.setLevel(logging.INFO)


def random_obs(policy: Any, seed: int = 0) -> dict[str, np.ndarray]:
    """One observation (batch 1) of standard-normal values for every group ``policy`` reads: ``{group: (1, dim)}``."""
    rng = np.random.default_rng(seed)
    return {g: rng.normal(size=(1, policy.observation_space[g].shape[0])).astype(np.float32) for g in policy.groups}


# ---- CPU, timing -------------------------------------------------------------------------------


def one_thread() -> None:
    """torch on one intra-op (and, when still possible in this process, one inter-op) thread."""
    torch.set_num_threads(1)
    with contextlib.suppress(RuntimeError):  # settable once per process, before any parallel work
        torch.set_num_interop_threads(1)


@contextmanager
def pinned(cpu: int | None = None) -> Iterator[int]:
    """The calling thread pinned to ``cpu`` (default: the last CPU it may use); its affinity restored after."""
    before = os.sched_getaffinity(0)
    cpu = max(before) if cpu is None else cpu
    os.sched_setaffinity(0, {cpu})
    try:
        yield cpu
    finally:
        os.sched_setaffinity(0, before)


def realtime_refused() -> str | None:
    """Why SCHED_FIFO is refused to this process (None: granted); the scheduling is left as it was."""
    try:
        policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(os.sched_get_priority_min(os.SCHED_FIFO)))
    except (OSError, AttributeError) as e:
        return f"{type(e).__name__}: {e}"
    os.sched_setscheduler(0, policy, param)
    return None


def time_calls(fn: Callable[[], object], iters: int, warmup: int = 500) -> list[float]:
    """Per-call wall times in microseconds of ``iters`` calls of ``fn`` (after ``min(iters, warmup)`` calls)."""
    return (latency.time_calls(fn, iters, warmup=min(iters, warmup))["wall"] * 1000.0).tolist()


def summarise(times: list[float]) -> dict[str, float]:
    """Median, p99 and mean (microseconds) of per-call times, with the number of calls."""
    return {"median_us": statistics.median(times), "p99_us": float(np.percentile(times, 99)),
            "mean_us": statistics.fmean(times), "calls": len(times)}


def median(values: list[float | None]) -> float | None:
    """The median of the values that are not None (None when there are none)."""
    kept = [v for v in values if v is not None]
    return float(statistics.median(kept)) if kept else None


def median_interval(values: list[float], level: float = 0.95, draws: int = 10_000) -> tuple[float, float]:
    """The percentile bootstrap interval of the median of ``values`` (one per seed; ``inf`` for a seed that never got
    there): ``level`` of the medians of ``draws`` resamples (seeded) lie within it. Each bound is a resampled median,
    not an interpolation (so a bound can be ``inf``)."""
    v = np.asarray(values, dtype=float)
    medians = np.median(np.random.default_rng(0).choice(v, (draws, len(v))), axis=1)
    low, high = np.quantile(medians, [(1 - level) / 2, (1 + level) / 2], method="inverted_cdf")
    return float(low), float(high)


def interval_text(low: float, high: float, fmt: str = ".3f") -> str:
    """``95% interval 0.880-0.910`` (``never`` for an infinite bound)."""
    if math.isinf(low):
        return "95% interval: never"
    return f"95% interval {low:{fmt}}-{'never' if math.isinf(high) else format(high, fmt)}"


# ---- distillation ------------------------------------------------------------------------------


def zoo_teachers(suite_name: str) -> tuple[Suite, dict[str, Any]]:
    """Suite ``suite_name`` and its committed zoo teachers on the CPU; a suite without a zoo whose tasks each name
    their teacher (Metaworld's scripted policies) gets those."""
    suite = load_suite(suite_name)
    zoo = zoo_dir(suite_name)
    own = not zoo.is_dir() and all(t.teacher for t in suite.tasks)
    return suite, policies_for_suite("suite" if own else zoo, suite, device="cpu")


SCHEDULE_PARAMS = {"rounds": "beta_rounds", "start": "beta_start", "end": "beta_end", "decay": "beta_decay",
                   "floor": "beta_floor"}


def schedule_keys(schedule: str, params: dict[str, Any]) -> dict[str, Any]:
    """The :class:`DAggerConfig` keys of a beta schedule given by its parameters (``{"rounds": 4, "end": 0.5}``
    for ``linear``, ``{"switch_round": 1}`` for ``step``) or by the config keys themselves (``beta_rounds``)."""
    return {"schedule": schedule, **{SCHEDULE_PARAMS.get(k, k): v for k, v in params.items()}}


@contextmanager
def distill_run(suite: Suite, teachers: dict[str, Any], seed: int, method: Any, student: StudentConfig,
                eval_episodes: int, n_envs: int = 8, stop_score: float | None = None,
                stop_success: float | None = None) -> Iterator[tuple[dict[str, Any], Path]]:
    """One distillation run from the zoo ``teachers`` of ``suite`` in a temporary folder, on the CPU (students
    evaluated on the validation seeds, 5000, ...; no final evaluation: a benchmark evaluates what it compares
    itself): its ``distill.json`` content and the folder (with the final ``student`` bundle), which lives as
    long as the ``with`` block."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = DistillConfig(suite=suite.name, teachers=str(zoo_dir(suite.name)), out=tmp, seed=seed, device="cpu",
                            method=method, student=student, n_envs=n_envs, eval_episodes=eval_episodes,
                            stop_score=stop_score, stop_success=stop_success, final_episodes=0)
        yield distill(cfg, suite, teachers), Path(tmp)


def run_distill(suite: Suite, teachers: dict[str, Any], seed: int, method: Any, student: StudentConfig,
                eval_episodes: int, n_envs: int = 8, stop_score: float | None = None,
                stop_success: float | None = None) -> dict[str, Any]:
    """:func:`distill_run`'s ``distill.json`` content alone."""
    with distill_run(suite, teachers, seed, method, student, eval_episodes, n_envs, stop_score,
                     stop_success) as (summary, _):
        return summary


def student_bundle(path: str | Path | None = None, smoke: bool = False) -> Path:
    """A real MLP student bundle: ``path`` if given, else the cached DAgger student of the default suite (4 rounds
    of 400 updates, beta 1 -> 0 over 2 rounds; distilled on first use, about a minute)."""
    if path is not None:
        return Path(path)
    out = runs_dir(smoke, "student")
    bundle = out / "student"
    if (bundle / "policy.json").is_file():
        return bundle
    log.info("distilling the benchmark student into %s (once)", shown(out))
    method = DAggerConfig(rounds=1, episodes_per_task=1, updates_per_round=20, beta_rounds=2) if smoke else \
        DAggerConfig(rounds=4, updates_per_round=400, beta_rounds=2)
    cfg = DistillConfig(suite="default", teachers=str(zoo_dir("default")), out=str(out), device="cpu",
                        method=method, eval_episodes=1 if smoke else 5)
    distill(cfg)
    return bundle


@dataclass(frozen=True)
class OneStepBudget:
    """A diffusion teacher's budget (``teacher_steps`` updates on ``demo_episodes`` demonstrations per task) and
    its one-step students' (``fraction`` of the teacher's updates, observations from ``student_episodes``
    teacher episodes per task, ``pairs`` teacher pairs), ``eval_episodes`` per task after each run."""

    teacher_steps: int = 20_000
    demo_episodes: int = 100
    fraction: float = 0.1
    student_episodes: int = 20
    pairs: int = 32_768
    eval_episodes: int = 10

    @property
    def student_steps(self) -> int:
        return max(1, round(self.fraction * self.teacher_steps))

    def settings(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


ONESTEP_SMOKE = OneStepBudget(teacher_steps=50, demo_episodes=2, student_episodes=1, pairs=256, eval_episodes=1)


def train_diffusion(suite: str, demos: str, seed: int, budget: OneStepBudget, out: Path) -> tuple[Path, float]:
    """A diffusion teacher trained on the zoo experts' episodes of ``suite`` (``demos``: ``experts`` or
    ``mirror_routes``) into ``out`` (resumed, or reused when done); its bundle and training wall time."""
    cfg = DistillConfig(suite=suite, teachers=str(zoo_dir(suite)), out=str(out), seed=seed, device="cpu",
                        eval_episodes=budget.eval_episodes,
                        method=DiffusionConfig(demos=demos, episodes_per_task=budget.demo_episodes,
                                               train_steps=budget.teacher_steps))
    summary = distill(cfg)
    return out / "student", summary["rounds"][-1]["wall_time_s"]


def onestep_config(algo: str, budget: OneStepBudget, reg_weight: float | None = None) -> OneStepConfig:
    """``algo``'s config with the budget's student settings; ``reg_weight`` 0: pure distribution matching."""
    if reg_weight is not None:
        return OneStepConfig(algo=algo, steps=budget.student_steps, episodes_per_task=budget.student_episodes,
                             reg_weight=reg_weight)
    shared = OneStepConfig(algo="regression", steps=budget.student_steps, episodes_per_task=budget.student_episodes,
                           pairs=budget.pairs)
    return shared.for_algo(algo)


def train_onestep(suite: str, teacher: Path, seed: int, method: OneStepConfig, budget: OneStepBudget,
                  out: Path) -> dict[str, Any]:
    """A one-step student of the diffusion bundle ``teacher`` into ``out`` (reused when done); its last row."""
    cfg = DistillConfig(suite=suite, teachers=str(teacher), out=str(out), seed=seed, device="cpu",
                        eval_episodes=budget.eval_episodes, method=method)
    return distill(cfg)["rounds"][-1]


def chunk_bundles(smoke: bool = False) -> dict[str, Path]:
    """The diffusion teacher (``teacher``) and ``dmd_det`` one-step student (``student``) of seed 0 of
    ``bench onestep_fidelity`` on ``default_hazard``: trained on first use (minutes; the smoke ones in
    seconds), reused by both benchmarks afterwards."""
    budget = ONESTEP_SMOKE if smoke else OneStepBudget()
    root = runs_dir(smoke, "onestep") / "default_hazard" / "seed0"
    teacher, _ = train_diffusion("default_hazard", "mirror_routes", 0, budget, root / "teacher")
    train_onestep("default_hazard", teacher, 0, onestep_config("dmd_det", budget), budget, root / "dmd_det")
    return {"teacher": teacher, "student": root / "dmd_det" / "student"}


def chunk_label(path: Path, smoke: bool) -> str:
    """What a default chunk bundle is, for the results."""
    budget = ONESTEP_SMOKE if smoke else OneStepBudget()
    what = "diffusion teacher (DDIM 100)" if path.parent.name == "teacher" else \
        f"dmd_det one-step student ({budget.student_steps} updates)"
    return (f"{what} of bench onestep_fidelity seed 0, default_hazard, teacher {budget.teacher_steps} updates on "
            f"{budget.demo_episodes} mirror-route episodes per task{' (smoke budget)' if smoke else ''}: "
            f"{shown(path)}")
