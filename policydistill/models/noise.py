"""The DDPM forward process of diffusion policies, shared by their training and the distillers.

Forward process over ``T`` noise levels ``t = 0 .. T-1``::

    x_t = sqrt(abar_t) * x_0 + sqrt(1 - abar_t) * eps,    eps ~ N(0, I)

``abar_t`` (``alphas_cumprod``) follows the cosine schedule of Nichol & Dhariwal (betas clipped at
0.999) or a linear beta schedule. A denoiser predicts either ``x_0`` (``prediction="sample"``) or
``eps`` (``"epsilon"``); :meth:`NoiseSchedule.split` turns either into both.

Sampling (:class:`policydistill.runtime.sampler.SamplerSpec`, the one implementation the torch policy
and the exported runtimes share) visits ``K`` evenly spaced levels from ``T-1`` down
(:func:`~policydistill.runtime.sampler.sampler_levels`, "trailing" spacing, so even one step starts
from pure noise) with the generalised DDIM update; ``ddim`` is its deterministic form (eta 0),
``ddpm`` the ancestral one (eta 1).
"""

from __future__ import annotations

import math

import torch

SCHEDULES = ("cosine", "linear")
PREDICTIONS = ("sample", "epsilon")
SAMPLERS = {"ddim": 0.0, "ddpm": 1.0}


def alphas_cumprod(steps: int, schedule: str = "cosine") -> torch.Tensor:
    """``abar_t`` for ``t = 0 .. steps-1``: float64 tensor (steps,), decreasing from ~1 towards 0."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"noise steps must be an int >= 1, got {steps!r}")
    if schedule == "cosine":
        s = 0.008
        f = torch.cos((torch.arange(steps + 1, dtype=torch.float64) / steps + s) / (1 + s) * math.pi / 2) ** 2
        betas = torch.clamp(1 - f[1:] / f[:-1], max=0.999)
    elif schedule == "linear":
        betas = torch.linspace(1e-4 * 1000 / steps, 0.02 * 1000 / steps, steps, dtype=torch.float64).clamp(max=0.999)
    else:
        raise ValueError(f"unknown noise schedule '{schedule}'; expected one of {list(SCHEDULES)}")
    return torch.cumprod(1 - betas, dim=0)


class NoiseSchedule:
    """``T`` noise levels with ``abar`` (float32 tensor (T,)), the prediction type and the x0 clip range."""

    def __init__(self, steps: int = 100, schedule: str = "cosine", prediction: str = "sample",
                 clip_sample: float = 1.0) -> None:
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction '{prediction}'; expected one of {list(PREDICTIONS)}")
        if not (isinstance(clip_sample, (int, float)) and clip_sample > 0 and math.isfinite(clip_sample)):
            raise ValueError(f"clip_sample must be a positive number, got {clip_sample!r}")
        self.steps, self.schedule, self.prediction, self.clip_sample = steps, schedule, prediction, float(clip_sample)
        self.abar64 = alphas_cumprod(steps, schedule)
        self.abar = self.abar64.float()

    def config(self) -> dict:
        return {"steps": self.steps, "schedule": self.schedule, "prediction": self.prediction,
                "clip_sample": self.clip_sample}

    def abar_at(self, t: torch.Tensor) -> torch.Tensor:
        """``abar`` at integer levels ``t`` (n,) as (n, 1, 1) on t's device, to broadcast over chunks."""
        return self.abar.to(t.device)[t.long()].view(-1, 1, 1)

    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Forward process: x0, eps (n, H, A), t (n,) -> x_t (n, H, A)."""
        a = self.abar_at(t)
        return a.sqrt() * x0 + (1 - a).sqrt() * eps

    def target(self, x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """What the denoiser is trained to output: ``x0`` or ``eps`` (n, H, A)."""
        return x0 if self.prediction == "sample" else eps

    def split(self, pred: torch.Tensor, x_t: torch.Tensor,
              abar: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
        """Denoiser output at ``x_t`` -> (x0 clipped to +-clip_sample, the eps consistent with it)."""
        if not isinstance(abar, torch.Tensor):
            abar = torch.tensor(abar, dtype=x_t.dtype, device=x_t.device)
        x0 = pred if self.prediction == "sample" else (x_t - (1 - abar).sqrt() * pred) / abar.sqrt()
        x0 = x0.clamp(-self.clip_sample, self.clip_sample)
        eps = (x_t - abar.sqrt() * x0) / (1 - abar).clamp(min=1e-12).sqrt()
        return x0, eps
