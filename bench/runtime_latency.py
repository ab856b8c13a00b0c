"""Batch-1 inference latency of one MLP policy on one core: torch eager vs TorchScript vs ONNX Runtime.

Variants, all on the same exported bundle and the same observation:

- ``torch_act``: ``MLPPolicy.act`` (numpy groups in, numpy actions out);
- ``torch_forward``: bare ``forward`` on a preallocated tensor under ``inference_mode``;
- ``torchscript``: the ``torch.jit.trace`` export, called like ``torch_forward``;
- ``onnx_act``: ``OnnxPolicy.act`` (numpy groups in, numpy actions out, 1 intra-op thread).

Rounds alternate the variants; reports median and p99 per call in microseconds and the ratios
ONNX / torch eager.

    .venv/bin/python -m bench runtime_latency [--bundle envs/zoo/locomotion/walk] [--iters 20000]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

if not __package__:  # python bench/<name>.py: the bench package lives one folder up
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from bench import envelope
from bench.common import one_thread, parse, parser, random_obs, shown, summarise, time_calls
from policydistill import OnnxPolicy, export_policy, load_bundle, zoo_dir
from policydistill.types import concat_groups

SMOKE = {"iters": 300, "rounds": 1}


def main(argv: list[str] | None = None) -> dict:
    p = parser("runtime_latency", __doc__)
    p.add_argument("--bundle", default=str(zoo_dir("locomotion") / "walk"))
    p.add_argument("--iters", type=int, default=20_000, help="calls per variant per round")
    p.add_argument("--rounds", type=int, default=3)
    args = parse(p, argv, SMOKE)
    started = envelope.start()
    one_thread()

    policy = load_bundle(args.bundle, device="cpu")
    obs = random_obs(policy)
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

    stats = {name: summarise(t) for name, t in times.items()}
    onnx = stats["onnx_act"]
    ratios = {f"onnx_act_over_{ref_name}": {k: onnx[k] / stats[ref_name][k] for k in ("median_us", "p99_us")}
              for ref_name in ("torch_act", "torch_forward")}
    print(f"batch-1 latency, {policy.obs_dim}->{policy.hidden}->{policy.act_dim}, one thread, "
          f"{args.rounds}x{args.iters} calls")
    for name, s in stats.items():
        print(f"  {name:14s} median {s['median_us']:8.1f} us   p99 {s['p99_us']:8.1f} us")
    return envelope.write("runtime_latency", args, started, runs=args.rounds,
                          medians={name: statistics.median(t) for name, t in times.items()}, ratios=ratios,
                          results={"bundle": shown(args.bundle), "batch": 1, "threads": 1, "obs_dim": policy.obs_dim,
                                   "act_dim": policy.act_dim, "hidden": policy.hidden, "latency": stats})


if __name__ == "__main__":
    main()
