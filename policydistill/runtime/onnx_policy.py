"""An exported ONNX policy run by ONNX Runtime: numpy in, numpy out, no torch.

Reads the model and its ``<model>.json`` description (see :mod:`policydistill.runtime.export`) and
runs every kind of export graph through :class:`policydistill.runtime.exported.ExportedPolicy`:
stateless or stateful (state per env), with noise inputs, action or chunk outputs, or a denoiser
inside its K-step sampler. At run time it needs only ``numpy`` and ``onnxruntime``; gymnasium is
imported only when ``observation_space`` / ``action_space`` are asked for as gymnasium spaces.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from policydistill.runtime.exported import (
    ExportedModelError,
    ExportedPolicy,
    description_path,
    model_path,
    read_export_info,
)

log = logging.getLogger(__name__)

__all__ = ["ExportedModelError", "OnnxPolicy", "read_export_info"]


class OnnxPolicy(ExportedPolicy):
    """An exported ONNX model as a Policy: ``act({group: (n, dim)}) -> (n, act_dim)`` float32.

    ``path``: the ``.onnx`` model or its ``.json`` description. One ONNX Runtime session with
    ``intra_op_threads`` threads (1: run on the caller's thread). ``verify`` checks the model's
    sha256 against the description; ``seed`` seeds the noise generator; ``sampler_steps`` changes
    a denoiser's number of sampling steps. :meth:`predict` runs the graph once (or the sampler)
    on concatenated observations; see :class:`ExportedPolicy` for state, noise and chunks.
    """

    def __init__(self, path: str | Path, intra_op_threads: int = 1, inter_op_threads: int = 1,
                 providers: Sequence[str] = ("CPUExecutionProvider",), verify: bool = True, seed: int = 0,
                 sampler_steps: int | None = None) -> None:
        desc = description_path(path)
        info = read_export_info(desc)
        model = model_path(path, info, "onnx", verify)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(intra_op_threads)
        opts.inter_op_num_threads = int(inter_op_threads)
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = ort.InferenceSession(str(model), opts, providers=list(providers))
        names = [o["name"] for o in info["outputs"]]
        run = self._session.run

        first, obs_name = names[:1], info["inputs"][0]["name"]

        def call(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
            return run(names, feed)

        def call_obs(x: np.ndarray) -> np.ndarray:
            return run(first, {obs_name: x})[0]

        super().__init__(info, call, seed=seed, where=str(desc), sampler_steps=sampler_steps, call_obs=call_obs)
        self.path = model
        inputs = {i.name: i.shape for i in self._session.get_inputs()}
        outputs = {o.name: o.shape for o in self._session.get_outputs()}
        want_in = {s["name"]: s["shape"] for s in info["inputs"]}
        want_out = {s["name"]: s["shape"] for s in info["outputs"]}
        if set(inputs) != set(want_in) or set(outputs) != set(want_out) or any(
                list(got[1:]) != list(want[name][1:]) for got_all, want in ((inputs, want_in), (outputs, want_out))
                for name, got in got_all.items()):
            raise ExportedModelError(f"{model}: graph inputs {inputs} / outputs {outputs} do not match {desc} "
                                     f"({want_in} -> {want_out})")
        log.debug("loaded %s: %s", model, self.describe())

    def __repr__(self) -> str:
        return f"OnnxPolicy({str(self.path)!r}, {self.describe()})"
