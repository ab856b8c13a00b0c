"""Frozen MLP teachers of one shape run as one network, one batched matmul per layer for all of them."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from policydistill.models.mlp import LOG_STD_RANGE, MLPPolicy, post_action, post_slope
from policydistill.types import ActionLabel, ObsGroups

Layer = tuple[torch.Tensor, torch.Tensor]  # weight (T, out, in), bias (T, 1, out)


def _shape(t: MLPPolicy) -> tuple:
    """What two teachers must share to be stacked."""
    return (t.groups, tuple(t.observation_space[g].shape for g in t.groups), t.act_dim, tuple(t.hidden),
            t.activation, t.post, t.out_activation, tuple(sorted(t.normalizer.config().items())),
            t.log_std is not None, t.std_head is not None, t.device)


def _layer(linears: Sequence[torch.nn.Linear]) -> Layer:
    return (torch.stack([m.weight.detach() for m in linears]),
            torch.stack([m.bias.detach() for m in linears])[:, None, :].clone())


class StackedMLPs:
    """Teachers ``t`` (T of them, plain frozen :class:`MLPPolicy` of one architecture) as one batched network.

    The rows of each teacher are gathered into a block (T, m, obs_dim), m the most rows any teacher has, and every
    layer is one ``baddbmm``: one call for the bank instead of one per teacher. Weights and normaliser scales are
    copied when built (the teachers are frozen). Labels equal each teacher's own up to float rounding.
    """

    def __init__(self, teachers: Sequence[MLPPolicy]) -> None:
        first = self.first = teachers[0]  # its input check and normaliser settings are every teacher's
        self.post, self.tanh_out = first.post, first.out_activation == "tanh"
        self.activation = torch.tanh if first.activation == "tanh" else torch.relu
        self.mean = torch.stack([t.normalizer.affine()[0] for t in teachers])[:, None, :].clone()
        self.inv_std = torch.stack([t.normalizer.affine()[1] for t in teachers])[:, None, :].clone()
        hidden = [[m for m in t.body if isinstance(m, torch.nn.Linear)] for t in teachers]
        self.body = [_layer([h[k] for h in hidden]) for k in range(len(first.hidden))]
        self.head = _layer([t.head for t in teachers])
        self.std_head = None if first.std_head is None else _layer([t.std_head for t in teachers])
        self.log_std = None if first.log_std is None else \
            torch.stack([t.log_std.detach() for t in teachers])[:, None, :].clone()
        self.low = torch.stack([t.action_low for t in teachers])[:, None, :].clone()
        self.high = torch.stack([t.action_high for t in teachers])[:, None, :].clone()

    @classmethod
    def of(cls, teachers: Sequence[object]) -> StackedMLPs | None:
        """The stacked network of ``teachers``, or None unless they are two or more plain frozen MLPPolicy
        (not a subclass, no wrapper) of one architecture, groups, post-processing and device."""
        if len(teachers) < 2 or any(type(t) is not MLPPolicy for t in teachers):
            return None
        mlps: list[MLPPolicy] = list(teachers)  # type: ignore[arg-type]
        frozen = all(not t.training and not any(p.requires_grad for p in t.parameters()) for t in mlps)
        return cls(mlps) if frozen and len({_shape(t) for t in mlps}) == 1 else None

    def label(self, obs: ObsGroups, rows: Sequence[np.ndarray]) -> ActionLabel:
        """obs {group: (n, dim)} and each teacher's rows (T int arrays) -> each row's label by its teacher: mean
        (n, act_dim) and std (n, act_dim), or None for deterministic teachers."""
        m = max(len(r) for r in rows)
        if m == 0:
            raise ValueError("TeacherBank got an empty batch")
        index, valid = np.zeros((len(rows), m), dtype=np.int64), np.zeros((len(rows), m), dtype=bool)
        for t, r in enumerate(rows):
            index[t, :len(r)], valid[t, :len(r)] = r, True
        x = self.first.checked_tensor(obs)  # (n, obs_dim)
        with torch.inference_mode():
            h = self.first.normalizer(x[torch.as_tensor(index, device=x.device)], (self.mean, self.inv_std))
            for weight, bias in self.body:
                h = self.activation(torch.baddbmm(bias, h, weight.transpose(1, 2)))
            y = torch.baddbmm(self.head[1], h, self.head[0].transpose(1, 2))
            y = torch.tanh(y) if self.tanh_out else y
            mean = post_action(y, self.post, self.low, self.high)
            std = None
            if self.std_head is not None:
                log_std = torch.baddbmm(self.std_head[1], h, self.std_head[0].transpose(1, 2)).clamp(*LOG_STD_RANGE)
                std = torch.exp(log_std) * post_slope(y, self.post, self.low, self.high)
            elif self.log_std is not None:
                std = torch.exp(self.log_std).expand_as(y) * post_slope(y, self.post, self.low, self.high)
        return ActionLabel(mean=_scatter(mean, index, valid, len(x)), std=None if std is None else
                           _scatter(std, index, valid, len(x)))


def _scatter(block: torch.Tensor, index: np.ndarray, valid: np.ndarray, n: int) -> np.ndarray:
    """(T, m, a) block rows back to batch order: float32 (n, a)."""
    out = np.empty((n, block.shape[-1]), dtype=np.float32)
    out[index[valid]] = block.cpu().numpy()[valid]
    return out
