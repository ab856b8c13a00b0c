"""Deployable runtimes: export a policy (TorchScript/ONNX), run exported models without torch, and
drive any of them behind a fixed-rate control loop (:class:`Controller`, :class:`FixedRateLoop`).

Names are resolved on first use, so ``import policydistill.runtime`` imports neither torch (needed by
:func:`export_policy` and :class:`GraphPolicy`) nor onnxruntime (needed by :class:`OnnxPolicy`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from policydistill.lazy import lazy_names

if TYPE_CHECKING:
    from policydistill.graph import ExportGraph, TensorSpec
    from policydistill.runtime.action_queue import ActionQueue
    from policydistill.runtime.controller import Controller, make_source
    from policydistill.runtime.export import FORMATS, ExportError, export_policy, exportable_classes
    from policydistill.runtime.exported import ExportedModelError, ExportedPolicy, read_export_info
    from policydistill.runtime.loop import FixedRateLoop
    from policydistill.runtime.onnx_policy import OnnxPolicy
    from policydistill.runtime.sampler import SamplerSpec
    from policydistill.runtime.torch_policy import GraphPolicy

_LAZY = {
    "export_policy": "policydistill.runtime.export",
    "ExportError": "policydistill.runtime.export",
    "FORMATS": "policydistill.runtime.export",
    "exportable_classes": "policydistill.runtime.export",
    "ExportGraph": "policydistill.graph",
    "TensorSpec": "policydistill.graph",
    "OnnxPolicy": "policydistill.runtime.onnx_policy",
    "ExportedModelError": "policydistill.runtime.exported",
    "ExportedPolicy": "policydistill.runtime.exported",
    "read_export_info": "policydistill.runtime.exported",
    "ActionQueue": "policydistill.runtime.action_queue",
    "Controller": "policydistill.runtime.controller",
    "make_source": "policydistill.runtime.controller",
    "FixedRateLoop": "policydistill.runtime.loop",
    "SamplerSpec": "policydistill.runtime.sampler",
    "GraphPolicy": "policydistill.runtime.torch_policy",
}

__all__ = ["FORMATS", "ActionQueue", "Controller", "ExportError", "ExportGraph", "ExportedModelError",
           "ExportedPolicy", "FixedRateLoop", "GraphPolicy", "OnnxPolicy", "SamplerSpec", "TensorSpec",
           "export_policy", "exportable_classes", "make_source", "read_export_info"]


__getattr__, __dir__ = lazy_names("policydistill.runtime", _LAZY)
