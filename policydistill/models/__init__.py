"""Neural policies and their parts (normaliser, MLP). Models live in their own modules."""

from __future__ import annotations

from typing import TypeVar

import torch

Module = TypeVar("Module", bound=torch.nn.Module)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` is CUDA when available, else CPU; any other torch device string is checked and used."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"unknown device '{device}': expected 'auto', 'cpu', 'cuda' or 'cuda:<i>'") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device '{device}' requested but CUDA is not available; use 'cpu' or 'auto'")
    return dev


def freeze(module: Module) -> Module:
    """Eval mode with every parameter's ``requires_grad`` off, as a teacher; returns ``module``."""
    module.eval()
    module.requires_grad_(False)
    return module
