"""Observation normalisation that lives inside the model, as SB3's VecNormalize applies it."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

CONSTANT_VAR = 1e30
"""The variance :meth:`ObsNormalizer.fit` gives a dim its data never varied: its input then normalises to 0 (a
scale of 1e-15), whatever value it holds later."""


def unvaried(mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    """``var`` (..., dim) with :data:`CONSTANT_VAR` where its std is within 1e-6 of the scale of ``mean``."""
    return np.where(np.sqrt(var) <= 1e-6 * np.maximum(1.0, np.abs(mean)), CONSTANT_VAR, var)


def spread(var: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """The std (..., dim) that export examples are drawn with: ``sqrt(var + eps)``, 1 for a dim read as constant."""
    return torch.where(var >= CONSTANT_VAR, 1.0, torch.sqrt(var + eps))


class ObsNormalizer(nn.Module):
    """``clip((x - mean) / sqrt(var + eps), -clip, clip)``; the identity when disabled.

    ``mean`` and ``var`` (dim,) are buffers, so they are saved with the weights and exported with
    the graph. ``enabled``, ``clip`` and ``eps`` are configuration (see :meth:`config`).
    """

    def __init__(self, dim: int, enabled: bool = False, clip: float = 10.0, eps: float = 1e-8) -> None:
        super().__init__()
        self.enabled, self.clip, self.eps = bool(enabled), float(clip), float(eps)
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("var", torch.ones(dim))

    def set_stats(self, mean: Any, var: Any) -> None:
        """Set the statistics from arrays of shape (dim,)."""
        self.mean.copy_(torch.as_tensor(mean, dtype=self.mean.dtype).reshape(self.mean.shape))
        self.var.copy_(torch.as_tensor(var, dtype=self.var.dtype).reshape(self.var.shape))

    def fit(self, x: np.ndarray) -> None:
        """The statistics of training inputs x (N, dim). A dim that does not vary in x (std within 1e-6 of its
        scale) gets :data:`CONSTANT_VAR`: the model reads it as its training value ever after. With its own
        tiny variance, a value never seen would be scaled by up to 1e4 to the clip, into weights that never
        learned from that input (it was 0 throughout training)."""
        mean = x.mean(0)
        self.set_stats(mean, unvaried(mean, x.var(0)))

    def examples(self, z: torch.Tensor) -> torch.Tensor:
        """Standard normal draws z (..., dim) -> inputs (..., dim) spread as the training data was (a dim read as
        constant by std 1), for checking an export; z itself when disabled."""
        if not self.enabled:
            return z
        return self.mean.cpu() + z * spread(self.var.cpu(), self.eps)

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, 1 / sqrt(var + eps))``, each (dim,)."""
        return self.mean, torch.rsqrt(self.var + self.eps)

    def forward(self, x: torch.Tensor, affine: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """x (..., dim) -> normalised x (..., dim); ``affine``: :meth:`affine`, when computed beforehand."""
        if not self.enabled:
            return x
        mean, inv_std = self.affine() if affine is None else affine
        return torch.clamp((x - mean) * inv_std, -self.clip, self.clip)

    def config(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "clip": self.clip, "eps": self.eps}


class RangeNormalizer(nn.Module):
    """Maps values in the data range [low, high] (per dim) to [-1, 1] and back, as diffusion models of
    actions expect. A dim whose range is (almost) empty is only shifted. ``low``/``high`` (dim,) are
    buffers saved with the weights."""

    def __init__(self, dim: int, min_range: float = 1e-4) -> None:
        super().__init__()
        self.min_range = float(min_range)
        self.register_buffer("low", -torch.ones(dim))
        self.register_buffer("high", torch.ones(dim))

    def set_stats(self, low: Any, high: Any) -> None:
        """Set the data range from arrays of shape (dim,)."""
        self.low.copy_(torch.as_tensor(low, dtype=self.low.dtype).reshape(self.low.shape))
        self.high.copy_(torch.as_tensor(high, dtype=self.high.dtype).reshape(self.high.shape))

    def scale(self) -> torch.Tensor:
        """Half the data range (dim,): ``x = y * scale + offset``."""
        return torch.clamp(self.high - self.low, min=self.min_range) / 2

    def offset(self) -> torch.Tensor:
        """The middle of the data range (dim,)."""
        return (self.high + self.low) / 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., dim) in the data range -> (..., dim) in [-1, 1]."""
        return (x - self.offset()) / self.scale()

    def inverse(self, y: torch.Tensor, affine: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """y (..., dim) in [-1, 1] -> (..., dim) in the data range; ``affine``: ``(scale(), offset())``, when
        computed beforehand."""
        scale, offset = (self.scale(), self.offset()) if affine is None else affine
        return y * scale + offset
