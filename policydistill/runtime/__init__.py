"""Deployable runtimes: export a policy (TorchScript/ONNX) and run exported models without torch.

Names are resolved on first use, so ``import policydistill.runtime`` imports neither torch (needed by
:func:`export_policy`) nor onnxruntime (needed by :class:`OnnxPolicy`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from policydistill.runtime.export import FORMATS, ExportError, export_policy, exportable_classes
    from policydistill.runtime.graph import ExportGraph, TensorSpec
    from policydistill.runtime.onnx_policy import ExportedModelError, OnnxPolicy, read_export_info

_LAZY = {
    "export_policy": "policydistill.runtime.export",
    "ExportError": "policydistill.runtime.export",
    "FORMATS": "policydistill.runtime.export",
    "exportable_classes": "policydistill.runtime.export",
    "ExportGraph": "policydistill.runtime.graph",
    "TensorSpec": "policydistill.runtime.graph",
    "OnnxPolicy": "policydistill.runtime.onnx_policy",
    "ExportedModelError": "policydistill.runtime.onnx_policy",
    "read_export_info": "policydistill.runtime.onnx_policy",
}

__all__ = ["FORMATS", "ExportError", "ExportGraph", "ExportedModelError", "OnnxPolicy", "TensorSpec",
           "export_policy", "exportable_classes", "read_export_info"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'policydistill.runtime' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
