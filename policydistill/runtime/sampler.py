"""The K-step diffusion sampler that runs around an exported denoiser: its description and its step.

A K-step diffusion policy exports its denoiser alone (``obs``, ``sample`` (n, horizon, act_dim),
``timestep`` (n, 1) -> ``prediction`` (n, horizon, act_dim)); the loop around it is described by a
:class:`SamplerSpec` stored in the export description under ``sampler``, so that a runtime without
torch runs the same loop (and the number of steps can be changed at deployment)::

    kind: "ddim"
    alphas_cumprod: [T floats]     the training noise schedule, abar_t for t = 0..T-1
    timesteps: [K ints]            the timesteps visited, strictly descending, each in [0, T)
    prediction: "epsilon"|"sample" what the denoiser predicts: the noise or the clean sample x0
    eta: float                     0: deterministic DDIM; 1: DDPM-like ancestral noise
    clip_sample: float | null      x0 estimates are clipped to [-c, c] (the normalised action range)
    action_scale, action_offset: [act_dim floats]   action = x0 * scale + offset
    action_low, action_high: [act_dim floats] | null  then clipped to these bounds

One step from timestep ``t = timesteps[i]`` to ``s = timesteps[i + 1]`` (abar_s = 1 after the last)::

    x0  = (x - sqrt(1 - abar_t) * eps) / sqrt(abar_t)          (or x0 = prediction; eps from it)
    x0  = clip(x0, -c, c)                                      (when clip_sample)
    sig = eta * sqrt((1 - abar_s) / (1 - abar_t)) * sqrt(1 - abar_t / abar_s)
    x   = sqrt(abar_s) * x0 + sqrt(1 - abar_s - sig^2) * eps + sig * z,   z ~ N(0, 1)

The sampler starts from ``x ~ N(0, 1)`` of shape (n, horizon, act_dim). The arithmetic uses only
``+ - *``, scalar coefficients and ``.clip``, so :meth:`SamplerSpec.step` and
:meth:`SamplerSpec.postprocess` work on numpy arrays and torch tensors alike: the torch policy and
the exported runtime share this one implementation. This module imports numpy only.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

KINDS = ("ddim",)
PREDICTIONS = ("epsilon", "sample")
SCHEDULES = ("linear", "squaredcos_cap_v2")
SPEC_KEYS = {"kind", "alphas_cumprod", "timesteps", "prediction", "eta", "clip_sample", "action_scale",
             "action_offset", "action_low", "action_high"}


def alphas_cumprod(schedule: str, train_steps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> list[float]:
    """abar_t for t = 0..train_steps-1 of a named beta schedule (``linear`` or ``squaredcos_cap_v2``)."""
    if schedule == "linear":
        betas = np.linspace(beta_start, beta_end, train_steps, dtype=np.float64)
    elif schedule == "squaredcos_cap_v2":
        f = np.cos((np.arange(train_steps + 1) / train_steps + 0.008) / 1.008 * math.pi / 2) ** 2
        betas = np.minimum(1.0 - f[1:] / f[:-1], 0.999)
    else:
        raise ValueError(f"unknown noise schedule '{schedule}'; expected one of {list(SCHEDULES)}")
    return np.cumprod(1.0 - betas).tolist()


def sampler_levels(train_steps: int, steps: int) -> list[int]:
    """The ``steps`` noise levels a sampler visits, from ``train_steps - 1`` down (trailing spacing, so even
    one step starts from pure noise); the torch policies use the same levels."""
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= train_steps:
        raise ValueError(f"sampler steps must be in [1, {train_steps}] (an int), got {steps!r}")
    return [round(train_steps - k * train_steps / steps) - 1 for k in range(steps)]


@dataclass(frozen=True)
class SamplerSpec:
    """A DDIM sampler (see the module docstring); build it with :meth:`ddim` or :meth:`from_json`."""

    alphas_cumprod: tuple[float, ...]
    timesteps: tuple[int, ...]
    action_scale: tuple[float, ...]
    action_offset: tuple[float, ...]
    prediction: str = "epsilon"
    eta: float = 0.0
    clip_sample: float | None = 1.0
    action_low: tuple[float, ...] | None = None
    action_high: tuple[float, ...] | None = None
    kind: str = "ddim"

    def __post_init__(self) -> None:
        for name in ("alphas_cumprod", "action_scale", "action_offset", "action_low", "action_high"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        object.__setattr__(self, "timesteps", tuple(int(t) for t in self.timesteps))
        ac, ts = np.asarray(self.alphas_cumprod, dtype=np.float64), list(self.timesteps)
        problems = []
        if self.kind not in KINDS:
            problems.append(f"kind '{self.kind}' is not one of {list(KINDS)}")
        if self.prediction not in PREDICTIONS:
            problems.append(f"prediction '{self.prediction}' is not one of {list(PREDICTIONS)}")
        if ac.ndim != 1 or not len(ac) or not np.all((ac > 0) & (ac < 1)) or np.any(np.diff(ac) > 0):
            problems.append("alphas_cumprod must be a non-empty, non-increasing list in (0, 1)")
        if not ts or any(not 0 <= t < len(ac) for t in ts) or np.any(np.diff(ts) >= 0):
            problems.append(f"timesteps must be a non-empty, strictly descending list in [0, {len(ac)}), got {ts}")
        if not math.isfinite(self.eta) or self.eta < 0:
            problems.append(f"eta must be >= 0, got {self.eta}")
        if self.clip_sample is not None and not self.clip_sample > 0:
            problems.append(f"clip_sample must be > 0 or null, got {self.clip_sample}")
        dims = {len(v) for v in (self.action_scale, self.action_offset, self.action_low, self.action_high)
                if v is not None}
        if len(dims) != 1 or (self.action_low is None) != (self.action_high is None):
            problems.append("action_scale, action_offset (and action_low/high, given together) need one length")
        if problems:
            raise ValueError("invalid sampler: " + "; ".join(problems))

    # ---- construction / JSON --------------------------------------------------------------------

    @classmethod
    def ddim(cls, alphas_cumprod: Sequence[float], steps: int, action_scale: Sequence[float],
             action_offset: Sequence[float], **kwargs: Any) -> SamplerSpec:
        """A sampler visiting ``steps`` evenly spaced timesteps of a training schedule (:func:`sampler_levels`)."""
        return cls(tuple(alphas_cumprod), tuple(sampler_levels(len(alphas_cumprod), steps)), tuple(action_scale),
                   tuple(action_offset), **kwargs)

    def with_steps(self, steps: int) -> SamplerSpec:
        """The same sampler visiting ``steps`` evenly spaced timesteps instead (:func:`sampler_levels`)."""
        return dataclasses.replace(self, timesteps=tuple(sampler_levels(len(self.alphas_cumprod), steps)))

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "alphas_cumprod": list(self.alphas_cumprod), "timesteps": list(self.timesteps),
                "prediction": self.prediction, "eta": self.eta, "clip_sample": self.clip_sample,
                "action_scale": list(self.action_scale), "action_offset": list(self.action_offset),
                "action_low": None if self.action_low is None else list(self.action_low),
                "action_high": None if self.action_high is None else list(self.action_high)}

    @classmethod
    def from_json(cls, doc: Any) -> SamplerSpec:
        if not isinstance(doc, dict) or set(doc) - SPEC_KEYS or \
                {"alphas_cumprod", "timesteps", "action_scale", "action_offset"} - set(doc):
            raise ValueError(f"invalid sampler description: expected an object with keys {sorted(SPEC_KEYS)}, "
                             f"got {sorted(doc) if isinstance(doc, dict) else type(doc).__name__}")
        return cls(**doc)

    # ---- the loop's arithmetic (numpy arrays or torch tensors) ------------------------------------

    @property
    def steps(self) -> int:
        return len(self.timesteps)

    @property
    def stochastic(self) -> bool:
        """True when steps draw fresh noise (eta > 0)."""
        return self.eta > 0

    def step(self, i: int, x: Any, prediction: Any, noise: Any = None) -> Any:
        """x at ``timesteps[i]`` and the denoiser's prediction there -> x at the next timestep.

        ``noise`` (like x, N(0, 1)) is needed when :attr:`stochastic`; it is ignored on the last step.
        """
        t = self.timesteps[i]
        a_t = self.alphas_cumprod[t]
        a_s = self.alphas_cumprod[self.timesteps[i + 1]] if i + 1 < self.steps else 1.0
        if self.prediction == "epsilon":
            eps = prediction
            x0 = (x - math.sqrt(1.0 - a_t) * eps) * (1.0 / math.sqrt(a_t))
        else:
            x0 = prediction
            eps = (x - math.sqrt(a_t) * x0) * (1.0 / math.sqrt(1.0 - a_t))
        if self.clip_sample is not None:
            x0 = x0.clip(-self.clip_sample, self.clip_sample)
        sigma = self.eta * math.sqrt((1.0 - a_s) / (1.0 - a_t)) * math.sqrt(1.0 - a_t / a_s)
        out = math.sqrt(a_s) * x0 + math.sqrt(max(1.0 - a_s - sigma * sigma, 0.0)) * eps
        if sigma > 0:
            if noise is None:
                raise ValueError("a stochastic sampler step (eta > 0) needs noise")
            out = out + sigma * noise
        return out

    def postprocess(self, x: Any) -> Any:
        """Final sample x (n, horizon, act_dim) in the model's normalised space -> actions."""
        scale, offset = self._as(x, self.action_scale), self._as(x, self.action_offset)
        a = x * scale + offset
        if self.action_low is not None:
            a = a.clip(self._as(x, self.action_low), self._as(x, self.action_high))
        return a

    @staticmethod
    def _as(x: Any, values: Sequence[float]) -> Any:
        """``values`` as an array of x's kind (numpy array or torch tensor, same dtype/device)."""
        if isinstance(x, np.ndarray):
            return np.asarray(values, dtype=x.dtype)
        return x.new_tensor(values)
