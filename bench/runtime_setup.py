"""Shared by the runtime benchmarks: the MLP student they run, labelled stand-in chunk policies, timing.

The student is a real DAgger student of the default suite (the default student network, 256x256
ReLU over ``policy`` + ``task``), distilled from the committed zoo on first use into
``runs/bench/student`` (about a minute) and reused afterwards.

Stand-ins: until a diffusion policy bundle is given, the chunk benchmarks run the runtime's test
fixtures (tests/runtime_fixtures.py): untrained MLPs that follow the same export contract (a
noise -> chunk generator, a denoiser inside a K-step DDIM sampler). Every result made with one is
labelled ``stand-in`` in the output and the JSON; they show the harness, not the diffusion policy.
"""

from __future__ import annotations

import logging
import statistics
import sys
from collections.abc import Callable
from dataclasses import replace
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from policydistill.eval import latency

ROOT = Path(__file__).resolve().parents[1]
STUDENT_DIR = ROOT / "runs/bench/student"
STAND_IN = "stand-in (test fixture: untrained MLP on the export contract), not a diffusion policy"
log = logging.getLogger("bench.runtime")


def student_bundle(path: str | Path | None = None) -> Path:
    """A real MLP student bundle: ``path`` if given, else the cached DAgger student (distilled if missing)."""
    if path is not None:
        return Path(path)
    bundle = STUDENT_DIR / "student"
    if (bundle / "policy.json").is_file():
        return bundle
    from policydistill.config import DistillConfig
    from policydistill.distill.dagger import distill
    from policydistill.eval.evaluate import policies_for_suite
    from policydistill.suite import load_suite

    log.info("distilling the benchmark student into %s (once)", STUDENT_DIR)
    suite = load_suite("default")
    teachers = policies_for_suite(ROOT / "envs/zoo/default", suite, device="cpu")
    cfg = replace(DistillConfig(), suite="default", teachers="zoo", out=str(STUDENT_DIR), device="cpu", rounds=4,
                  updates_per_round=400, eval_episodes=5, schedule_params={"rounds": 2})
    distill(cfg, suite, teachers)
    return bundle


def stand_in_chunk_policy(kind: str, **kwargs: Any) -> Any:
    """A stand-in chunk policy (see the module docstring): ``onestep`` or ``denoiser``."""
    sys.path.insert(0, str(ROOT / "tests"))
    from runtime_fixtures import DenoiserFixture, NoiseChunkFixture

    return {"onestep": NoiseChunkFixture, "denoiser": DenoiserFixture}[kind](**kwargs).eval()


def time_calls(fn: Callable[[], object], iters: int, warmup: int = 500) -> list[float]:
    """Per-call wall times in microseconds of ``iters`` calls of ``fn`` (after ``warmup`` calls)."""
    return (latency.time_calls(fn, iters, warmup=min(iters, warmup))["wall"] * 1000.0).tolist()


def summarise(times: list[float]) -> dict[str, float]:
    return {"median_us": statistics.median(times), "p99_us": float(np.percentile(times, 99)),
            "mean_us": statistics.fmean(times), "calls": len(times)}


def shown(path: str | Path) -> str:
    """``path`` relative to the repository when it lies inside it (results never name this machine's paths)."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def versions() -> dict[str, str]:
    return {d: metadata.version(d) for d in ("torch", "onnxruntime", "onnx", "numpy")}
