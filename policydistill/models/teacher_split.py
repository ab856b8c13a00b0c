"""Split an MLP teacher over ``[..., privileged, ...]`` into a privileged encoder and an action head.

The teacher's first layer is linear over its normalised, concatenated groups, so its weight splits by
columns as ``W1 = [W_p | W_v]`` (visible groups | ``privileged``). With ``z = W_v · norm(x_v)`` (the
latent of a linear privileged encoder), the teacher computes exactly::

    action = post(out(rest(W_p · norm(x_p) + b1 + z)))

:class:`PrivilegedLatent` is ``x_v -> z`` (used only to make training targets) and :class:`TeacherHead`
is ``(x_p, z) -> raw action`` (the frozen remainder a latent-regression student reuses). Normalisation
is elementwise, so splitting the teacher's normaliser by the same columns is exact.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from policydistill.models.mlp import ACTIVATIONS, MLPPolicy
from policydistill.models.normalizer import ObsNormalizer
from policydistill.types import PRIVILEGED


def _columns(teacher: MLPPolicy) -> tuple[list[int], list[int], list[str]]:
    """Column indices of the visible and privileged parts of the teacher's input, and its visible groups."""
    visible, hidden, names, start = [], [], [], 0
    for g in teacher.groups:
        dim = int(teacher.observation_space[g].shape[0])
        (hidden if g == PRIVILEGED else visible).extend(range(start, start + dim))
        if g != PRIVILEGED:
            names.append(g)
        start += dim
    return visible, hidden, names


def check_splittable(teacher: Any) -> MLPPolicy:
    """The teacher as an MLPPolicy reading ``privileged`` with a plain linear output, else a clear error."""
    if not isinstance(teacher, MLPPolicy) or PRIVILEGED not in teacher.groups or not teacher.hidden:
        raise ValueError(f"latent regression needs MLPPolicy teachers with hidden layers that read the "
                         f"'{PRIVILEGED}' group; got {type(teacher).__name__} "
                         f"reading {list(getattr(teacher, 'groups', []))}")
    if teacher.out_activation != "none":
        raise ValueError(f"latent regression needs teachers without an output activation, got "
                         f"'{teacher.out_activation}'")
    return teacher


class TeacherHead(nn.Module):
    """A teacher's network after its first linear map: (x_p (n, d_p) raw, z (n, h)) -> raw action (n, act)."""

    def __init__(self, visible_dim: int, hidden: list[int], activation: str, act_dim: int,
                 normalizer: dict[str, Any]) -> None:
        super().__init__()
        self.normalizer = ObsNormalizer(visible_dim, **normalizer)
        self.first = nn.Linear(visible_dim, hidden[0])
        layers: list[nn.Module] = [ACTIVATIONS[activation]()]
        for a, b in zip(hidden[:-1], hidden[1:], strict=True):
            layers += [nn.Linear(a, b), ACTIVATIONS[activation]()]
        self.rest = nn.Sequential(*layers)
        self.out = nn.Linear(hidden[-1], act_dim)

    def forward(self, x_p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.out(self.rest(self.first(self.normalizer(x_p)) + z))


class PrivilegedLatent(nn.Module):
    """``x_v (n, d_v) -> z = W_v · norm(x_v) (n, h)``: the teacher's first layer on ``privileged`` alone."""

    def __init__(self, teacher: MLPPolicy) -> None:
        super().__init__()
        _, cols, _ = _columns(check_splittable(teacher))
        idx = torch.as_tensor(cols, device=teacher.device)
        first: nn.Linear = teacher.body[0]
        norm = teacher.normalizer
        self.normalizer = ObsNormalizer(len(cols), **norm.config()).to(teacher.device)
        self.normalizer.set_stats(norm.mean[idx], norm.var[idx])
        self.register_buffer("weight", first.weight.detach()[:, idx].clone())
        self.requires_grad_(False)

    def forward(self, x_v: torch.Tensor) -> torch.Tensor:
        return self.normalizer(x_v) @ self.weight.T


def split_teacher(teacher: MLPPolicy) -> tuple[list[str], TeacherHead, PrivilegedLatent]:
    """(the teacher's visible groups, its frozen head, its privileged encoder); both reproduce it exactly."""
    visible, _, names = _columns(check_splittable(teacher))
    idx = torch.as_tensor(visible, device=teacher.device)
    norm = teacher.normalizer
    head = TeacherHead(len(visible), teacher.hidden, teacher.activation, teacher.act_dim, norm.config())
    head = head.to(teacher.device)
    head.normalizer.set_stats(norm.mean[idx], norm.var[idx])
    first: nn.Linear = teacher.body[0]
    with torch.no_grad():
        head.first.weight.copy_(first.weight[:, idx])
        head.first.bias.copy_(first.bias)
        linears = [m for m in list(teacher.body)[1:] if isinstance(m, nn.Linear)]
        for mine, theirs in zip([m for m in head.rest if isinstance(m, nn.Linear)], linears, strict=True):
            mine.load_state_dict(theirs.state_dict())
        head.out.load_state_dict(teacher.head.state_dict())
    return names, head.requires_grad_(False), PrivilegedLatent(teacher)
