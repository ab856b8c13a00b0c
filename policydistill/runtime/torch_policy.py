"""The torch side of the runtime: a policy's export graph run eagerly, or a TorchScript export.

Both go through :class:`policydistill.runtime.exported.ExportedPolicy`, the same numpy driver the
ONNX runtime uses, so state, noise, chunks and the diffusion sampler behave identically whichever
engine runs the graph.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from policydistill.runtime.export import describe_graph
from policydistill.runtime.exported import ExportedPolicy, description_path, model_path, read_export_info

log = logging.getLogger(__name__)


def _torch_calls(module: Any, input_names: list[str]) -> dict[str, Any]:
    """``call(feed)`` and ``call_obs(x)`` for a torch module taking the inputs positionally, under
    ``inference_mode`` (see :class:`ExportedPolicy`)."""

    def call(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        with torch.inference_mode():
            out = module(*[torch.from_numpy(feed[name]) for name in input_names])
        return [t.numpy() for t in out] if isinstance(out, tuple) else [out.numpy()]

    view: list = [None, None]  # the last x and its tensor view (ExportedPolicy.prepare reuses one buffer)

    def call_obs(x: np.ndarray) -> np.ndarray:
        if x is not view[0]:
            view[:] = x, torch.from_numpy(x)
        with torch.inference_mode():
            out = module(view[1])
        return (out[0] if isinstance(out, tuple) else out).numpy()

    return {"call": call, "call_obs": call_obs}


class GraphPolicy(ExportedPolicy):
    """An export graph executed by torch: build it with :meth:`from_policy` or :meth:`from_torchscript`."""

    @classmethod
    def from_policy(cls, policy: Any, seed: int = 0, sampler_steps: int | None = None) -> GraphPolicy:
        """``policy.export_graph()`` run eagerly on the CPU (a float32 eval-mode copy of the policy)."""
        policy = copy.deepcopy(policy).to(device="cpu", dtype=torch.float32).eval().requires_grad_(False)
        graph = policy.export_graph()
        info = describe_graph(policy, graph)
        graph.module.eval()
        self = cls(info, **_torch_calls(graph.module, [s.name for s in graph.inputs]), seed=seed,
                   where=f"{type(policy).__name__} export graph", sampler_steps=sampler_steps)
        self.module = graph.module
        return self

    @classmethod
    def from_torchscript(cls, path: str | Path, seed: int = 0, verify: bool = True,
                         sampler_steps: int | None = None) -> GraphPolicy:
        """A TorchScript export (``path``: the ``.pt`` file or its ``.json`` description)."""
        info = read_export_info(path)
        model = model_path(path, info, "torchscript", verify)
        module = torch.jit.load(str(model), map_location="cpu").eval()
        self = cls(info, **_torch_calls(module, [s["name"] for s in info["inputs"]]), seed=seed,
                   where=str(description_path(path)), sampler_steps=sampler_steps)
        self.module = module
        return self

    def __repr__(self) -> str:
        return f"GraphPolicy({self.where!r}, {self.describe()})"
