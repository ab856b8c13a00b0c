"""Chunk latency at batch 1 on one CPU core: the K-step diffusion teacher vs its one-step student.

Same network (the student has the teacher's denoiser architecture), same observation window, one
thread, the process pinned to one core. Variants, per denoiser (``mlp`` and ``unet``):

- torch eager: ``predict_chunk`` of the teacher with DDIM 100, 10 and 1 steps and of the one-step
  students (stochastic: noise input; deterministic: anchor, no noise);
- ONNX Runtime through the runtime's ``OnnxPolicy.predict`` (numpy in and out, one intra-op
  thread): the teacher's exported denoiser inside the exported 100-step DDIM loop, and each
  student's exported graph, one call (observation window [, noise] -> chunk).

Rounds alternate the variants; each round reports p50 and p99 per call; the table gives the medians
over rounds and the teacher/student ratios, and ``bench/results/onestep_latency.json`` holds them.
Latency does not depend on the weights: by default both models are built untrained from the
distill defaults; ``--teacher`` measures a given diffusion bundle and students of its architecture.

    nice .venv/bin/python bench/onestep_latency.py [--rounds 5] [--calls 300]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from policydistill.bundle import load_bundle
from policydistill.cli import compose_config
from policydistill.distill.diffusion import build_diffusion_policy
from policydistill.eval.latency import percentiles, start_window, time_calls
from policydistill.io import atomic_write_json
from policydistill.models.diffusion import DiffusionPolicy
from policydistill.models.onestep import OneStepPolicy
from policydistill.runtime import OnnxPolicy, export_policy
from policydistill.suite import load_suite
from policydistill.types import stack_obs

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("bench.onestep_latency")


def models(denoiser: str, args: argparse.Namespace) -> tuple[DiffusionPolicy, dict[str, OneStepPolicy]]:
    """The teacher and its one-step students: stochastic (noise input) and deterministic (anchor)."""
    if args.teacher:
        teacher = load_bundle(args.teacher, device="cpu")
    else:
        cfg = compose_config("distill", [f"diffusion.denoiser={denoiser}"])
        teacher = build_diffusion_policy(load_suite("default_hazard"), cfg).eval()
    return teacher, {kind: OneStepPolicy.from_teacher(teacher, stochastic=kind == "stochastic").eval()
                     for kind in ("stochastic", "deterministic")}


def measure(denoiser: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    teacher, students = models(denoiser, args)
    obs = stack_obs([load_suite("default_hazard").make_env(0).reset(seed=0)[0]])
    window = start_window(teacher, obs)
    flat = np.concatenate([window[g] for g in teacher.groups], axis=-1).reshape(1, -1).astype(np.float32)
    teachers = {k: load_bundle_like(teacher, k) for k in (100, 10, 1)}
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
    keys = ("p50_ms", "p99_ms", "cpu_p50_ms", "cpu_p99_ms")
    med = {k: {**{q: float(np.median([x[q] for x in v])) for q in keys}, "calls_per_round": variants[k][1]}
           for k, v in rounds.items()}
    ratios = {}
    for engine in ("torch", "onnx"):
        for kind in students:
            t, s = med[f"{engine} teacher ddim 100"], med[f"{engine} one-step {kind}"]
            ratios[f"{engine} {kind}"] = {q.removesuffix("_ms"): t[q] / s[q] for q in keys}
    params = sum(p.numel() for p in teacher.denoiser.parameters())
    return {"denoiser": denoiser, "parameters": params, "medians": med, "ratios_teacher100_over_student": ratios,
            "rounds": rounds}


def load_bundle_like(teacher: DiffusionPolicy, steps: int) -> DiffusionPolicy:
    """A copy of ``teacher`` sampling with DDIM ``steps``."""
    copy = DiffusionPolicy.from_config(teacher.config())
    copy.load_state_dict(teacher.state_dict())
    return copy.eval().set_sampler("ddim", steps)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--denoisers", nargs="+", default=["mlp", "unet"])
    p.add_argument("--teacher", help="a diffusion bundle (default: an untrained one with the distill defaults)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--calls", type=int, default=300, help="calls per round of a teacher (students: 10x)")
    p.add_argument("--core", type=int, default=0, help="CPU core to pin the process to")
    p.add_argument("--out", default=str(ROOT / "bench/results/onestep_latency.json"))
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(1)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.core})
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for denoiser in ([None] if args.teacher else args.denoisers):
            results.append(measure(denoiser or "bundle", args, Path(tmp)))
    print(f"\nbatch 1, one core, one thread; medians over {args.rounds} rounds (ms per chunk; wall-clock and "
          "thread CPU time)")
    head = f"{'denoiser':<10}{'variant':<34}{'p50':>9}{'p99':>9}{'cpu p50':>9}{'cpu p99':>9}"
    print(head + "\n" + "-" * len(head))
    for r in results:
        for name, m in r["medians"].items():
            print(f"{r['denoiser']:<10}{name:<34}" + "".join(f"{m[q]:>9.3f}" for q in
                                                          ("p50_ms", "p99_ms", "cpu_p50_ms", "cpu_p99_ms")))
        for engine, ratio in r["ratios_teacher100_over_student"].items():
            print(f"{r['denoiser']:<10}{'100 steps / ' + engine:<34}" + "".join(
                f"{ratio[q]:>8.1f}x" for q in ("p50", "p99", "cpu_p50", "cpu_p99")))
    checks = {f"{r['denoiser']} {e} {clock} >= 50x (p50 and p99)": min(v[f"{pre}p50"], v[f"{pre}p99"]) >= 50
              for r in results for e, v in r["ratios_teacher100_over_student"].items()
              for clock, pre in (("wall", ""), ("cpu", "cpu_"))}
    print("\nchecks:", json.dumps(checks, indent=1))
    atomic_write_json(args.out, {"rounds": args.rounds, "calls": args.calls, "core": args.core,
                                 "results": results, "checks": checks,
                                 "versions": {"torch": torch.__version__, "onnxruntime": ort.__version__}})
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
