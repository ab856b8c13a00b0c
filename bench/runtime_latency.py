"""Batch-1 inference latency of one MLP policy on one core: torch eager vs TorchScript vs ONNX Runtime.

Variants, all on the same exported bundle and the same observation:

- ``torch_act``: ``MLPPolicy.act`` (numpy groups in, numpy actions out);
- ``torch_forward``: bare ``forward`` on a preallocated tensor under ``inference_mode``;
- ``torchscript``: the ``torch.jit.trace`` export, called like ``torch_forward``;
- ``onnx_act``: ``OnnxPolicy.act`` (numpy groups in, numpy actions out, 1 intra-op thread).

Rounds alternate the variants; reports median and p99 per call in microseconds and the ratios
ONNX / torch eager, and writes them to ``bench/results/runtime_latency.json``.

    .venv/bin/python bench/runtime_latency.py [--bundle envs/zoo/locomotion/walk] [--iters 20000]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from runtime_setup import shown, time_calls, versions

from policydistill.bundle import load_bundle
from policydistill.io import atomic_write_json
from policydistill.runtime import OnnxPolicy, export_policy
from policydistill.types import concat_groups

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("bench.runtime_latency")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", default=str(ROOT / "envs/zoo/locomotion/walk"))
    p.add_argument("--iters", type=int, default=20_000, help="calls per variant per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "bench/results/runtime_latency.json"))
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)

    policy = load_bundle(args.bundle, device="cpu")
    rng = np.random.default_rng(0)
    obs = {g: rng.normal(size=(1, policy.observation_space[g].shape[0])).astype(np.float32) for g in policy.groups}
    x = torch.from_numpy(concat_groups(obs, policy.groups))
    with tempfile.TemporaryDirectory() as tmp:
        scripted = torch.jit.load(str(export_policy(args.bundle, "torchscript", Path(tmp) / "policy.pt")))
        onnx_policy = OnnxPolicy(export_policy(args.bundle, "onnx", Path(tmp) / "policy.onnx"))

        def forward() -> torch.Tensor:
            with torch.inference_mode():
                return policy(x)

        def script() -> torch.Tensor:
            with torch.inference_mode():
                return scripted(x)

        variants: dict[str, Callable[[], object]] = {
            "torch_act": lambda: policy.act(obs), "torch_forward": forward, "torchscript": script,
            "onnx_act": lambda: onnx_policy.act(obs),
        }
        ref = policy.act(obs)
        assert np.allclose(onnx_policy.act(obs), ref, atol=1e-4) and np.allclose(script().numpy(), ref, atol=1e-5)
        times: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(args.rounds):
            for name, fn in variants.items():
                times[name] += time_calls(fn, args.iters)

    stats = {name: {"median_us": statistics.median(t), "p99_us": float(np.percentile(t, 99)),
                    "mean_us": statistics.fmean(t)} for name, t in times.items()}
    onnx = stats["onnx_act"]
    result = {
        "bench": "runtime_latency", "bundle": shown(args.bundle), "batch": 1, "threads": 1,
        "obs_dim": policy.obs_dim, "act_dim": policy.act_dim, "hidden": policy.hidden,
        "iters_per_round": args.iters, "rounds": args.rounds, "latency": stats,
        "ratio_onnx_act_over_torch_act": {k: onnx[k] / stats["torch_act"][k] for k in ("median_us", "p99_us")},
        "ratio_onnx_act_over_torch_forward": {k: onnx[k] / stats["torch_forward"][k] for k in ("median_us", "p99_us")},
        "versions": versions(),
    }
    atomic_write_json(args.out, result)
    print(f"batch-1 latency, {policy.obs_dim}->{policy.hidden}->{policy.act_dim}, one thread, "
          f"{args.rounds}x{args.iters} calls")
    for name, s in stats.items():
        print(f"  {name:14s} median {s['median_us']:8.1f} us   p99 {s['p99_us']:8.1f} us")
    for ref_name in ("torch_act", "torch_forward"):
        r = result[f"ratio_onnx_act_over_{ref_name}"]
        print(f"  onnx_act / {ref_name:14s} median {r['median_us']:.2f}   p99 {r['p99_us']:.2f}")
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
