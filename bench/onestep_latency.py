"""Chunk latency at batch 1 on one CPU core: the K-step diffusion teacher vs its one-step student.

Same network (the student has the teacher's denoiser architecture), same observation window, one
thread, the process pinned to one core. Variants, per denoiser (``mlp`` and ``unet``):

- torch eager: ``predict_chunk`` of the teacher with DDIM 100, 10 and 1 steps and of the one-step
  students (stochastic: noise input; deterministic: anchor, no noise);
- ONNX Runtime through the runtime's ``OnnxPolicy.predict`` (numpy in and out, one intra-op
  thread): the teacher's exported denoiser inside the exported 100-step DDIM loop, and each
  student's exported graph, one call (observation window [, noise] -> chunk).

Rounds alternate the variants; each round reports p50 and p99 per call; the table gives the medians
over rounds and the teacher/student ratios. Latency does not depend on the weights: by default both
models are built untrained from the diffusion defaults; ``--teacher`` measures a given diffusion bundle
and students of its architecture.

    nice .venv/bin/python -m bench onestep_latency [--rounds 5] [--calls 300]
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

if not __package__:  # python bench/<name>.py: the bench package lives one folder up
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from bench import envelope
from bench.common import one_thread, parse, parser, pinned, setup_logging, shown
from policydistill import DiffusionConfig, OnnxPolicy, export_policy, load_bundle, load_suite
from policydistill.distill.diffusion import build_diffusion_policy
from policydistill.eval.latency import percentiles, start_window, time_calls
from policydistill.models.onestep import OneStepPolicy
from policydistill.types import stack_obs

log = logging.getLogger("bench.onestep_latency")
SUITE = "default_hazard"
KEYS = ("p50_ms", "p99_ms", "cpu_p50_ms", "cpu_p99_ms")
TARGET = 50.0
SMOKE = {"rounds": 1, "calls": 10}


def models(denoiser: str, args: argparse.Namespace) -> tuple[Any, dict[str, OneStepPolicy]]:
    """The teacher and its one-step students: stochastic (noise input) and deterministic (anchor)."""
    if args.teacher:
        teacher = load_bundle(args.teacher, device="cpu")
    else:
        teacher = build_diffusion_policy(load_suite(SUITE), DiffusionConfig(denoiser=denoiser)).eval()
    return teacher, {kind: OneStepPolicy.from_teacher(teacher, stochastic=kind == "stochastic").eval()
                     for kind in ("stochastic", "deterministic")}


def with_steps(teacher: Any, steps: int) -> Any:
    """A copy of the diffusion policy ``teacher`` sampling with DDIM ``steps``."""
    return copy.deepcopy(teacher).eval().set_sampler("ddim", steps)


def measure(denoiser: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    teacher, students = models(denoiser, args)
    obs = stack_obs([load_suite(SUITE).make_env(0).reset(seed=0)[0]])
    window = start_window(teacher, obs)
    flat = np.concatenate([window[g] for g in teacher.groups], axis=-1).reshape(1, -1).astype(np.float32)
    teachers = {k: with_steps(teacher, k) for k in (100, 10, 1)}
    export_policy(teachers[100], "onnx", tmp / f"{denoiser}_denoiser.onnx")
    for kind, student in students.items():
        export_policy(student, "onnx", tmp / f"{denoiser}_{kind}.onnx")
    exported = {name: OnnxPolicy(tmp / f"{denoiser}_{name}.onnx") for name in ("denoiser", *students)}
    variants: dict[str, tuple[Callable[[], object], int]] = {
        **{f"torch teacher ddim {k}": (lambda p=p: p.predict_chunk(window), args.calls) for k, p in teachers.items()},
        **{f"torch one-step {kind}": (lambda s=s: s.predict_chunk(window), args.calls * 10)
           for kind, s in students.items()},
        "onnx teacher ddim 100": (lambda: exported["denoiser"].predict(flat), args.calls),
        **{f"onnx one-step {kind}": (lambda e=exported[kind]: e.predict(flat), args.calls * 10) for kind in students},
    }
    rounds: dict[str, list[dict[str, float]]] = {k: [] for k in variants}
    for r in range(args.rounds):
        for name, (fn, calls) in variants.items():
            rounds[name].append(percentiles(time_calls(fn, calls)))
        log.info("%s round %d: %s", denoiser, r, {k: round(v[-1]["p50_ms"], 3) for k, v in rounds.items()})
    med = {k: {**{q: float(np.median([x[q] for x in v])) for q in KEYS}, "calls_per_round": variants[k][1]}
           for k, v in rounds.items()}
    ratios = {}
    for engine in ("torch", "onnx"):
        for kind in students:
            t, s = med[f"{engine} teacher ddim 100"], med[f"{engine} one-step {kind}"]
            ratios[f"{engine} {kind}"] = {q.removesuffix("_ms"): t[q] / s[q] for q in KEYS}
    params = sum(p.numel() for p in teacher.denoiser.parameters())
    return {"denoiser": denoiser, "parameters": params, "medians": med, "ratios_teacher100_over_student": ratios,
            "rounds": rounds}


def main(argv: list[str] | None = None) -> dict:
    p = parser("onestep_latency", __doc__)
    p.add_argument("--denoisers", nargs="+", default=["mlp", "unet"])
    p.add_argument("--teacher", help="a diffusion bundle (default: an untrained one with the diffusion defaults)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--calls", type=int, default=300, help="calls per round of a teacher (students: 10x)")
    p.add_argument("--core", type=int, default=0, help="CPU core to pin the process to")
    args = parse(p, argv, SMOKE)
    started = envelope.start()
    setup_logging("%(asctime)s %(name)s: %(message)s")
    one_thread()
    with pinned(args.core), tempfile.TemporaryDirectory() as tmp:
        results = [measure(d or "bundle", args, Path(tmp)) for d in ([None] if args.teacher else args.denoisers)]
    print(f"\nbatch 1, one core, one thread; medians over {args.rounds} rounds (ms per chunk; wall-clock and "
          "thread CPU time)")
    head = f"{'denoiser':<10}{'variant':<34}{'p50':>9}{'p99':>9}{'cpu p50':>9}{'cpu p99':>9}"
    print(head + "\n" + "-" * len(head))
    for r in results:
        for name, m in r["medians"].items():
            print(f"{r['denoiser']:<10}{name:<34}" + "".join(f"{m[q]:>9.3f}" for q in KEYS))
    checks = {f"{r['denoiser']} {e} {clock} >= {TARGET:g}x (p50 and p99)": min(v[f"{pre}p50"], v[f"{pre}p99"]) >= TARGET
              for r in results for e, v in r["ratios_teacher100_over_student"].items()
              for clock, pre in (("wall", ""), ("cpu", "cpu_"))}
    print("\nchecks:", json.dumps(checks, indent=1))
    return envelope.write("onestep_latency", args, started, runs=args.rounds,
                          medians={r["denoiser"]: r["medians"] for r in results},
                          ratios={"teacher100_over_student": {r["denoiser"]: r["ratios_teacher100_over_student"]
                                                                     for r in results}},
                          results={"teacher": shown(args.teacher) if args.teacher else "untrained, diffusion defaults",
                                   "parameters": {r["denoiser"]: r["parameters"] for r in results},
                                   "checks": checks, "rounds": {r["denoiser"]: r["rounds"] for r in results}})


if __name__ == "__main__":
    main()
