"""Batch-1 latency of a chunk policy: torch eager vs ONNX Runtime, side by side (target: ONNX >= 2x faster).

For a one-step diffusion student (``--bundle``, a chunk policy with ``export_graph``: obs + noise ->
chunk). Variants on the same observation, rounds alternating:

- ``torch_policy``: the policy's own ``predict_chunk(obs)`` (when it has one);
- ``torch_eager``: its export graph module called eagerly on preallocated tensors under ``inference_mode``;
- ``torch_runtime``: the same graph through the runtime (``GraphPolicy.predict``: numpy in, noise drawn, numpy out);
- ``onnx_runtime``: the ONNX export through the runtime (``OnnxPolicy.predict``, numpy and onnxruntime only).

A denoiser bundle (K-step policy) runs its whole sampler in the runtime variants. Without ``--bundle``
the harness runs a labelled stand-in (see runtime_setup.py), not a diffusion policy. Writes
``bench/results/chunk_latency.json`` (``chunk_latency_standin.json`` for the stand-in).

    .venv/bin/python bench/chunk_latency.py --bundle <one-step student> [--iters 3000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch
from runtime_setup import ROOT, STAND_IN, stand_in_chunk_policy, summarise, time_calls, versions

from policydistill.io import atomic_write_json
from policydistill.runtime import OnnxPolicy, export_policy
from policydistill.runtime.latency import LoadMeter
from policydistill.runtime.torch_policy import GraphPolicy

log = logging.getLogger("bench.chunk_latency")
TARGET = 2.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", default=None, help="a one-step diffusion student bundle (default: a stand-in)")
    p.add_argument("--iters", type=int, default=3000, help="calls per variant per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--cpu", type=int, default=None, help="pin to this CPU (default: the last one)")
    p.add_argument("--out", default=None, help="default: bench/results/chunk_latency[_standin].json")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    cpu = max(os.sched_getaffinity(0)) if args.cpu is None else args.cpu
    os.sched_setaffinity(0, {cpu})

    if args.bundle:
        from policydistill.bundle import load_bundle

        policy, label = load_bundle(args.bundle, device="cpu"), str(args.bundle)
    else:
        policy, label = stand_in_chunk_policy("onestep", horizon=16, n_action_steps=8, hidden=256, layers=2), STAND_IN
    graph_policy = GraphPolicy.from_policy(policy, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_policy = OnnxPolicy(export_policy(policy, "onnx", Path(tmp) / "chunk.onnx"), seed=0)
    rng = np.random.default_rng(0)
    obs = {g: rng.normal(size=(1, policy.observation_space[g].shape[0])).astype(np.float32) for g in policy.groups}
    x = graph_policy.prepare(obs).copy()
    if graph_policy.n_obs_steps > 1:
        x = np.repeat(x, graph_policy.n_obs_steps, axis=1)
    inputs = [torch.from_numpy(x)] + [torch.from_numpy(rng.standard_normal((1, *s["shape"][1:]), dtype=np.float32))
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
    speedup = {k: statistics.median(r[k] for r in per_round) for k in per_round[0]}
    torch_ref = "torch_policy" if "torch_policy" in speedup else "torch_eager"
    result = {"bench": "chunk_latency", "policy": label, "stand_in": args.bundle is None,
              "graph": graph_policy.describe(), "batch": 1, "threads": 1, "cpu": cpu, "iters_per_round": args.iters,
              "rounds": args.rounds, "latency": stats, "speedup_over_onnx": speedup, "per_round": per_round,
              "target": TARGET, "passed": speedup[torch_ref] >= TARGET, "machine": machine, "versions": versions()}
    out = Path(args.out or ROOT / f"bench/results/chunk_latency{'' if args.bundle else '_standin'}.json")
    atomic_write_json(out, result)
    print(f"chunk policy latency at batch 1, one thread on CPU {cpu}, {args.rounds} rounds x {args.iters} calls")
    print(f"  policy: {label}\n  graph: {graph_policy.describe()}")
    for name, s in stats.items():
        print(f"  {name:14s} median {s['median_us']:8.1f} us   p99 {s['p99_us']:8.1f} us")
    for name, v in speedup.items():
        print(f"  {name} / onnx_runtime: {v:.2f}x" + (f"  (target >= {TARGET})" if name == torch_ref else ""))
    busy = ", ".join(f"{k} {v:.0%}" for k, v in machine["cpu_busy"].items())
    print(f"  machine: CPU busy {busy}; load average {machine['loadavg_before'][0]} -> {machine['loadavg_after'][0]}")
    log.info("wrote %s", out)


if __name__ == "__main__":
    main()
