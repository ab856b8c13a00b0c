"""Batch-1 latency of a chunk policy: torch eager vs ONNX Runtime, side by side (target: ONNX >= 2x faster).

For a one-step diffusion student (a chunk policy with ``export_graph``: obs + noise -> chunk). Variants
on the same observation, rounds alternating:

- ``torch_policy``: the policy's own ``predict_chunk(obs)`` (when it has one);
- ``torch_eager``: its export graph module called eagerly on preallocated tensors under ``inference_mode``;
- ``torch_runtime``: the same graph through the runtime (``GraphPolicy.predict``: numpy in, noise drawn, numpy out);
- ``onnx_runtime``: the ONNX export through the runtime (``OnnxPolicy.predict``, numpy and onnxruntime only).

A denoiser bundle (K-step policy) runs its whole sampler in the runtime variants. Without ``--bundle``
the policy is the ``dmd_det`` one-step student of ``bench onestep_fidelity``'s seed 0 (see
bench/common.py; trained on first use); the results name the policy measured.

    .venv/bin/python -m bench chunk_latency [--bundle <one-step student>] [--iters 3000] [--rounds 5]
"""

from __future__ import annotations

import logging
import statistics
import sys
import tempfile
from pathlib import Path

if not __package__:  # python bench/<name>.py: the bench package lives one folder up
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from bench import envelope
from bench.common import (
    chunk_bundles,
    chunk_label,
    one_thread,
    parse,
    parser,
    pinned,
    random_obs,
    setup_logging,
    shown,
    summarise,
    time_calls,
    timing_args,
)
from policydistill import OnnxPolicy, export_policy, load_bundle
from policydistill.runtime import GraphPolicy
from policydistill.runtime.latency import LoadMeter

log = logging.getLogger("bench.chunk_latency")
TARGET = 2.0
SMOKE = {"iters": 100, "rounds": 1}


def main(argv: list[str] | None = None) -> dict:
    p = parser("chunk_latency", __doc__)
    p.add_argument("--bundle", default=None,
                   help="a one-step diffusion student bundle (default: bench onestep_fidelity's seed-0 dmd_det)")
    timing_args(p, iters=3000)
    args = parse(p, argv, SMOKE)
    started = envelope.start()
    setup_logging()
    one_thread()
    bundle = Path(args.bundle) if args.bundle else chunk_bundles(args.smoke)["student"]
    label = shown(bundle) if args.bundle else chunk_label(bundle, args.smoke)

    with pinned(args.cpu) as cpu:
        policy = load_bundle(bundle, device="cpu")
        graph_policy = GraphPolicy.from_policy(policy, seed=0)
        with tempfile.TemporaryDirectory() as tmp:
            onnx_policy = OnnxPolicy(export_policy(policy, "onnx", Path(tmp) / "chunk.onnx"), seed=0)
        obs = random_obs(policy)
        x = graph_policy.prepare(obs).copy()
        if graph_policy.n_obs_steps > 1:
            x = np.repeat(x, graph_policy.n_obs_steps, axis=1)
        rng = np.random.default_rng(1)
        inputs = [torch.from_numpy(x)] + [torch.from_numpy(rng.standard_normal((1, *s["shape"][1:]),
                                                                                dtype=np.float32))
                                          for s in graph_policy.info["inputs"][1:]]
        module = graph_policy.module

        def eager() -> object:
            with torch.inference_mode():
                return module(*inputs)

        variants = {"torch_eager": eager, "torch_runtime": lambda: graph_policy.predict(x),
                    "onnx_runtime": lambda: onnx_policy.predict(x)}
        if hasattr(policy, "predict_chunk"):
            variants = {"torch_policy": lambda: policy.predict_chunk(obs, True), **variants}
        if graph_policy.sampler is None:
            z = {s["name"]: t.numpy() for s, t in zip(graph_policy.info["inputs"][1:], inputs[1:], strict=True)}
            assert np.allclose(graph_policy.predict(x, z), onnx_policy.predict(x, z), atol=1e-4)
        times: dict[str, list[float]] = {k: [] for k in variants}
        per_round = []
        load = LoadMeter().start()
        for r in range(args.rounds):
            medians = {}
            for name, fn in variants.items():
                t = time_calls(fn, args.iters, warmup=100)
                times[name] += t
                medians[name] = statistics.median(t)
            per_round.append({k: medians[k] / medians["onnx_runtime"] for k in variants if k != "onnx_runtime"})
            log.info("round %d: %s", r + 1, ", ".join(f"{k} / onnx_runtime {v:.2f}" for k, v in per_round[-1].items()))
        machine = load.stop()

    stats = {name: summarise(t) for name, t in times.items()}
    speedup = {f"{k}_over_onnx_runtime": statistics.median(r[k] for r in per_round) for k in per_round[0]}
    torch_ref = "torch_policy" if "torch_policy" in variants else "torch_eager"
    passed = speedup[f"{torch_ref}_over_onnx_runtime"] >= TARGET
    print(f"chunk policy latency at batch 1, one thread on CPU {cpu}, {args.rounds} rounds x {args.iters} calls")
    print(f"  policy: {label}\n  graph: {graph_policy.describe()}")
    for name, s in stats.items():
        print(f"  {name:14s} median {s['median_us']:8.1f} us   p99 {s['p99_us']:8.1f} us")
    print(f"  target: {torch_ref} / onnx_runtime >= {TARGET}: {'met' if passed else 'NOT met'}")
    return envelope.write("chunk_latency", args, started, runs=args.rounds,
                          medians={name: s["median_us"] for name, s in stats.items()}, ratios=speedup,
                          results={"policy": label, "bundle": shown(bundle), "graph": graph_policy.describe(),
                                   "batch": 1, "threads": 1, "cpu": cpu, "latency": stats, "per_round": per_round,
                                   "target": TARGET, "passed": passed, "machine_load": machine})


if __name__ == "__main__":
    main()
