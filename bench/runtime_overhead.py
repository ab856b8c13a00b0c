"""Per-tick cost of the runtime wrapper vs the bare forward pass of the same MLP student, batch 1, one core.

Variants, on the same student and the same observation, rounds alternating between them:

- ``bare_forward``: ``policy(x)`` on a preallocated tensor under ``inference_mode`` (no numpy, no groups);
- ``controller_torch``: ``Controller.step(obs)``: observation groups in, action out, through the policy's
  export graph run eagerly (concatenation, the graph, non-finite check, deadline and latency accounting);
- ``bare_onnx``: ``InferenceSession.run`` on a preallocated array;
- ``controller_onnx``: ``Controller.step(obs)`` on the exported ONNX model (numpy and onnxruntime only).

Reports medians and p99 per call and the ratios controller / bare per round. Targets: controller_torch /
bare_forward <= 1.2; controller_onnx / bare_onnx <= 1.2 or at most 5 us added per tick (median). The
student: see bench/common.py (``--bundle`` for another MLP student).

    .venv/bin/python -m bench runtime_overhead [--bundle <student>] [--iters 20000] [--rounds 5] [--cpu 1]
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
import onnxruntime as ort
import torch

from bench import envelope
from bench.common import (
    one_thread,
    parse,
    parser,
    pinned,
    random_obs,
    setup_logging,
    shown,
    student_bundle,
    summarise,
    time_calls,
    timing_args,
)
from policydistill import Controller, OnnxPolicy, export_policy, load_bundle
from policydistill.runtime import make_source
from policydistill.runtime.latency import LoadMeter
from policydistill.types import concat_groups

log = logging.getLogger("bench.runtime_overhead")
TARGET = 1.2
TARGET_ADDED_US = 5.0
SMOKE = {"iters": 300, "rounds": 1}


def main(argv: list[str] | None = None) -> dict:
    p = parser("runtime_overhead", __doc__)
    p.add_argument("--bundle", default=None, help="an MLP student bundle (default: the cached DAgger student)")
    timing_args(p, iters=20_000)
    args = parse(p, argv, SMOKE)
    started = envelope.start()
    setup_logging()
    one_thread()
    bundle = student_bundle(args.bundle, args.smoke)
    with pinned(args.cpu) as cpu:
        policy = load_bundle(bundle, device="cpu")
        obs = random_obs(policy)
        x_np = concat_groups(obs, policy.groups)
        x = torch.from_numpy(x_np.copy())
        with tempfile.TemporaryDirectory() as tmp:
            onnx_path = export_policy(bundle, "onnx", Path(tmp) / "student.onnx")
            ctrl_onnx = Controller(OnnxPolicy(onnx_path), 0.001)
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = opts.inter_op_num_threads = 1
            opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        ctrl_torch = Controller(make_source(policy), 0.001)

        def bare_forward() -> torch.Tensor:
            with torch.inference_mode():
                return policy(x)

        variants = {"bare_forward": bare_forward, "controller_torch": lambda: ctrl_torch.step(obs),
                    "bare_onnx": lambda: session.run(["action"], {"obs": x_np}),
                    "controller_onnx": lambda: ctrl_onnx.step(obs)}
        ref = policy.act(obs)
        assert np.allclose(ctrl_torch.step(obs), ref, atol=1e-6) and np.allclose(ctrl_onnx.step(obs), ref, atol=1e-4)
        times: dict[str, list[float]] = {k: [] for k in variants}
        per_round: list[dict[str, float]] = []
        load = LoadMeter().start()
        for r in range(args.rounds):
            medians = {}
            for name, fn in variants.items():
                t = time_calls(fn, args.iters)
                times[name] += t
                medians[name] = statistics.median(t)
            per_round.append({"torch": medians["controller_torch"] / medians["bare_forward"],
                              "onnx": medians["controller_onnx"] / medians["bare_onnx"]})
            log.info("round %d: controller_torch / bare_forward %.3f, controller_onnx / bare_onnx %.3f", r + 1,
                     per_round[-1]["torch"], per_round[-1]["onnx"])
        machine = load.stop()

    stats = {name: summarise(t) for name, t in times.items()}
    ratios = {"controller_torch_over_bare_forward": {
                  "median_of_round_medians": statistics.median(r["torch"] for r in per_round),
                  "p99": stats["controller_torch"]["p99_us"] / stats["bare_forward"]["p99_us"]},
              "controller_onnx_over_bare_onnx": {
                  "median_of_round_medians": statistics.median(r["onnx"] for r in per_round),
                  "p99": stats["controller_onnx"]["p99_us"] / stats["bare_onnx"]["p99_us"]},
              "controller_onnx_over_bare_forward": {
                  "median": stats["controller_onnx"]["median_us"] / stats["bare_forward"]["median_us"]}}
    added_us = stats["controller_onnx"]["median_us"] - stats["bare_onnx"]["median_us"]
    ratios["controller_onnx_minus_bare_onnx_us"] = {"median": added_us}
    passed = ratios["controller_torch_over_bare_forward"]["median_of_round_medians"] <= TARGET
    onnx_ratio = ratios["controller_onnx_over_bare_onnx"]["median_of_round_medians"]
    onnx_passed = onnx_ratio <= TARGET or added_us <= TARGET_ADDED_US
    print(f"runtime wrapper overhead, MLP student {policy.obs_dim}->{policy.hidden}->{policy.act_dim}, batch 1, "
          f"one thread on CPU {cpu}, {args.rounds} rounds x {args.iters} calls")
    for name, s in stats.items():
        print(f"  {name:18s} median {s['median_us']:8.1f} us   p99 {s['p99_us']:8.1f} us")
    print(f"  target: controller_torch / bare_forward <= {TARGET}: {'met' if passed else 'NOT met'}")
    print(f"  target: controller_onnx / bare_onnx <= {TARGET} ({onnx_ratio:.2f}) or <= {TARGET_ADDED_US:.0f} us added "
          f"({added_us:.1f} us): {'met' if onnx_passed else 'NOT met'}")
    busy = ", ".join(f"{k} {v:.0%}" for k, v in machine["cpu_busy"].items())
    print(f"  machine: CPU busy {busy}")
    return envelope.write("runtime_overhead", args, started, runs=args.rounds,
                          medians={name: s["median_us"] for name, s in stats.items()}, ratios=ratios,
                          results={"bundle": shown(bundle), "policy_class": type(policy).__name__,
                                   "hidden": policy.hidden, "obs_dim": policy.obs_dim, "act_dim": policy.act_dim,
                                   "batch": 1, "threads": 1, "cpu": cpu, "latency": stats, "per_round": per_round,
                                   "target": TARGET, "passed": passed, "target_added_us": TARGET_ADDED_US,
                                   "onnx_passed": onnx_passed, "machine_load": machine})


if __name__ == "__main__":
    main()
