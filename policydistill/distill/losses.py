"""The loss menu between a student's output and the teacher's label.

Every loss takes ``student_mean`` (n, d) and ``teacher_mean`` (n, d), and as keywords
``student_log_std`` (n, d) or (d,), ``teacher_std`` (n, d), a per-sample ``weight`` (n,) >= 0 and a
per-dim ``mask`` (n, d) of the action dims that exist (a student padded to the widest action space of a
suite, see :mod:`policydistill.models.generalist`), and returns a scalar: the per-sample losses averaged
over the batch, weighted by ``weight`` when given (``sum(w * l) / sum(w)``, so a zero weight removes a
sample). Per sample, ``mse``, ``huber`` and ``precision_weighted`` average over the (unmasked) action
dims (``mse`` equals ``F.mse_loss``), while the KL losses sum over them (the KL of the joint diagonal
Gaussians); masked dims contribute nothing, whatever their values. Teacher tensors are detached: gradients
reach the student only. Teacher stds are clamped below at ``min_std``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F

LossFn = Callable[..., torch.Tensor]
_COMMON = ("student_log_std", "teacher_std", "weight", "mask")


def _check(student_mean: torch.Tensor, teacher_mean: torch.Tensor, student_log_std: torch.Tensor | None,
           teacher_std: torch.Tensor | None, weight: torch.Tensor | None, mask: torch.Tensor | None = None) -> None:
    if student_mean.ndim != 2 or student_mean.shape != teacher_mean.shape:
        raise ValueError(f"student_mean {tuple(student_mean.shape)} and teacher_mean {tuple(teacher_mean.shape)} "
                         "must both be (n, d)")
    n, d = student_mean.shape
    if teacher_std is not None and teacher_std.shape != teacher_mean.shape:
        raise ValueError(f"teacher_std {tuple(teacher_std.shape)} must match teacher_mean {(n, d)}")
    if student_log_std is not None and student_log_std.shape not in ((n, d), (d,)):
        raise ValueError(f"student_log_std {tuple(student_log_std.shape)} must be {(n, d)} or {(d,)}")
    if weight is not None and weight.shape != (n,):
        raise ValueError(f"weight {tuple(weight.shape)} must be {(n,)}")
    if mask is not None and mask.shape != (n, d):
        raise ValueError(f"mask {tuple(mask.shape)} must be {(n, d)}")


def _mean_dims(per_dim: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(n, d) -> (n,): the mean over the dims ``mask`` keeps (all without a mask)."""
    if mask is None:
        return per_dim.mean(-1)
    m = mask.to(per_dim.dtype)
    return (per_dim * m).sum(-1) / m.sum(-1).clamp_min(1.0)


def sum_dims(per_dim: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(n, d) -> (n,): the sum over the dims ``mask`` keeps (all without a mask)."""
    return per_dim.sum(-1) if mask is None else torch.where(mask.bool(), per_dim, 0.0).sum(-1)


def _reduce(per_sample: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """(n,) per-sample losses -> scalar, the mean or the ``weight``-weighted mean."""
    if weight is None:
        return per_sample.mean()
    weight = weight.to(per_sample.dtype)
    return (weight * per_sample).sum() / weight.sum().clamp_min(torch.finfo(per_sample.dtype).tiny)


def _need(name: str, **tensors: torch.Tensor | None) -> None:
    missing = [k for k, v in tensors.items() if v is None]
    if missing:
        raise ValueError(f"loss '{name}' needs {missing}")


def _positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def mse(student_mean: torch.Tensor, teacher_mean: torch.Tensor, *, student_log_std: torch.Tensor | None = None,
        teacher_std: torch.Tensor | None = None, weight: torch.Tensor | None = None,
        mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error of the means, averaged over dims then (weighted) over samples."""
    _check(student_mean, teacher_mean, student_log_std, teacher_std, weight, mask)
    return _reduce(_mean_dims((student_mean - teacher_mean.detach()).pow(2), mask), weight)


def huber(student_mean: torch.Tensor, teacher_mean: torch.Tensor, *, student_log_std: torch.Tensor | None = None,
          teacher_std: torch.Tensor | None = None, weight: torch.Tensor | None = None,
          mask: torch.Tensor | None = None, delta: float = 1.0) -> torch.Tensor:
    """Huber loss of the means (quadratic within ``delta``, linear beyond), averaged over dims."""
    _check(student_mean, teacher_mean, student_log_std, teacher_std, weight, mask)
    _positive("delta", delta)
    per_dim = F.huber_loss(student_mean, teacher_mean.detach(), reduction="none", delta=delta)
    return _reduce(_mean_dims(per_dim, mask), weight)


def _gaussian_kl(mean_p: torch.Tensor, log_std_p: torch.Tensor, mean_q: torch.Tensor,
                 log_std_q: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """KL(p || q) of diagonal Gaussians, summed over the dims ``mask`` keeps: (n, d) -> (n,)."""
    var_ratio = torch.exp(2 * (log_std_p - log_std_q))
    mahalanobis = (mean_p - mean_q).pow(2) * torch.exp(-2 * log_std_q)
    return sum_dims(log_std_q - log_std_p + 0.5 * (var_ratio + mahalanobis - 1), mask)


def _log_stds(name: str, student_mean: torch.Tensor, teacher_mean: torch.Tensor,
              student_log_std: torch.Tensor | None, teacher_std: torch.Tensor | None, weight: torch.Tensor | None,
              mask: torch.Tensor | None, min_std: float) -> tuple[torch.Tensor, torch.Tensor]:
    _check(student_mean, teacher_mean, student_log_std, teacher_std, weight, mask)
    _need(name, student_log_std=student_log_std, teacher_std=teacher_std)
    _positive("min_std", min_std)
    assert student_log_std is not None and teacher_std is not None
    return student_log_std.expand_as(student_mean), teacher_std.detach().clamp_min(min_std).log()


def forward_kl(student_mean: torch.Tensor, teacher_mean: torch.Tensor, *,
               student_log_std: torch.Tensor | None = None, teacher_std: torch.Tensor | None = None,
               weight: torch.Tensor | None = None, mask: torch.Tensor | None = None,
               min_std: float = 1e-3) -> torch.Tensor:
    """KL(teacher || student) of diagonal Gaussians (mass-covering: the student spreads over the teacher)."""
    s_log, t_log = _log_stds("forward_kl", student_mean, teacher_mean, student_log_std, teacher_std, weight,
                             mask, min_std)
    return _reduce(_gaussian_kl(teacher_mean.detach(), t_log, student_mean, s_log, mask), weight)


def reverse_kl(student_mean: torch.Tensor, teacher_mean: torch.Tensor, *,
               student_log_std: torch.Tensor | None = None, teacher_std: torch.Tensor | None = None,
               weight: torch.Tensor | None = None, mask: torch.Tensor | None = None,
               min_std: float = 1e-3) -> torch.Tensor:
    """KL(student || teacher) of diagonal Gaussians (mode-seeking)."""
    s_log, t_log = _log_stds("reverse_kl", student_mean, teacher_mean, student_log_std, teacher_std, weight,
                             mask, min_std)
    return _reduce(_gaussian_kl(student_mean, s_log, teacher_mean.detach(), t_log, mask), weight)


def jeffreys(student_mean: torch.Tensor, teacher_mean: torch.Tensor, *,
             student_log_std: torch.Tensor | None = None, teacher_std: torch.Tensor | None = None,
             weight: torch.Tensor | None = None, mask: torch.Tensor | None = None,
               min_std: float = 1e-3) -> torch.Tensor:
    """Jeffreys divergence: forward KL + reverse KL."""
    s_log, t_log = _log_stds("jeffreys", student_mean, teacher_mean, student_log_std, teacher_std, weight, mask,
                             min_std)
    t_mean = teacher_mean.detach()
    per_sample = (_gaussian_kl(t_mean, t_log, student_mean, s_log, mask)
                  + _gaussian_kl(student_mean, s_log, t_mean, t_log, mask))
    return _reduce(per_sample, weight)


def precision_weighted(student_mean: torch.Tensor, teacher_mean: torch.Tensor, *,
                       student_log_std: torch.Tensor | None = None, teacher_std: torch.Tensor | None = None,
                       weight: torch.Tensor | None = None, mask: torch.Tensor | None = None,
               min_std: float = 1e-3) -> torch.Tensor:
    """Squared error weighted per (sample, dim) by the teacher's precision 1 / clamp(std, min_std)^2,
    normalised so the precision weights average 1 over the batch: dims where the teacher is sure count more."""
    _check(student_mean, teacher_mean, student_log_std, teacher_std, weight, mask)
    _need("precision_weighted", teacher_std=teacher_std)
    _positive("min_std", min_std)
    assert teacher_std is not None
    precision = teacher_std.detach().clamp_min(min_std).pow(-2)
    if mask is None:
        precision = precision / precision.mean()
    else:
        precision = torch.where(mask.bool(), precision, 0.0)
        precision = precision / (precision.sum() / mask.to(precision.dtype).sum().clamp_min(1.0))
    return _reduce(_mean_dims(precision * (student_mean - teacher_mean.detach()).pow(2), mask), weight)


LOSSES: dict[str, LossFn] = {f.__name__: f for f in (mse, huber, forward_kl, reverse_kl, jeffreys, precision_weighted)}
"""Every loss by name."""

_NEEDS: dict[str, tuple[bool, bool]] = {
    "mse": (False, False), "huber": (False, False), "precision_weighted": (True, False),
    "forward_kl": (True, True), "reverse_kl": (True, True), "jeffreys": (True, True),
}
"""name -> (needs a teacher std, needs a student std)."""


def loss_params(name: str) -> dict[str, Any]:
    """The tunable params of loss ``name`` and their defaults."""
    sig = inspect.signature(LOSSES[name])
    return {k: p.default for k, p in sig.parameters.items() if p.kind is p.KEYWORD_ONLY and k not in _COMMON}


def valid_losses(teacher_has_std: bool, student_has_std: bool) -> list[str]:
    """Names of the losses usable with this teacher (label std or not) and student (log std or not)."""
    return sorted(k for k, (t, s) in _NEEDS.items() if (teacher_has_std or not t) and (student_has_std or not s))


def make_loss(name: str, teacher_has_std: bool, student_has_std: bool, **params: Any) -> LossFn:
    """Loss ``name`` with ``params`` bound, checked against what the teacher and student provide.

    KL losses and Jeffreys need a teacher std and a student std, ``precision_weighted`` a teacher std; a
    deterministic teacher allows ``mse``/``huber`` only. Errors list the valid losses or params.
    """
    valid = valid_losses(teacher_has_std, student_has_std)
    if name not in LOSSES:
        raise ValueError(f"unknown loss '{name}'; losses: {sorted(LOSSES)} (valid for this teacher/student: {valid})")
    if name not in valid:
        needs_t, needs_s = _NEEDS[name]
        needed = " and ".join(w for w, n in (("a teacher std", needs_t), ("a student std", needs_s)) if n)
        teacher = "a teacher with a std" if teacher_has_std else "a deterministic teacher"
        student = "a student with a std" if student_has_std else "a deterministic student"
        raise ValueError(f"loss '{name}' needs {needed}; valid for {teacher} and {student}: {valid}")
    allowed = loss_params(name)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(f"loss '{name}' has no params {unknown}; its params: {allowed}")
    for k, v in params.items():
        _positive(k, v)
    return partial(LOSSES[name], **params)
