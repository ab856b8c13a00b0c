"""The base of every torch policy: the numpy edge of the Policy protocol, done once.

Subclasses define the network: :meth:`TorchPolicy.forward_act` maps the concatenated observation groups
``x (n, obs_dim)`` to actions ``(n, act_dim)`` in torch; the base turns numpy observation groups into that
tensor and the result back into numpy (as stable-baselines3's ``predict`` / ``_predict``), labels states
as a teacher, freezes, fits the input normaliser to data, and rebuilds a policy from its
:meth:`config` (:meth:`from_config`). A student also gives its training loss on a batch
(:meth:`compute_loss`), the one thing the fit loop (:mod:`policydistill.distill.fit`) calls.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from policydistill.data.batches import BatchSource, RowBatches, take_rows
from policydistill.data.sampling import row_weights
from policydistill.models import freeze, resolve_device
from policydistill.spaces import space_from_json
from policydistill.types import ActionLabel, ObsGroups, check_obs, group_array

Stats = dict[str, torch.Tensor]


class TorchPolicy(nn.Module):
    """A policy reading ``groups`` (each a 1-D Box of ``observation_space``) and acting in ``action_space``.

    ``log_std`` (a parameter, or None) is a state-independent Gaussian over the network output, used when
    acting with ``deterministic=False`` and as the label std of a teacher.
    """

    groups: tuple[str, ...]
    observation_space: spaces.Dict
    action_space: spaces.Box
    log_std: nn.Parameter | None
    stateful: ClassVar[bool] = False

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("_where", torch.zeros(0), persistent=False)

    @property
    def device(self) -> torch.device:
        return self._where.device

    # ---- torch side (subclasses) -------------------------------------------------------------

    def forward_act(self, x: torch.Tensor, deterministic: bool) -> torch.Tensor:
        """Actions (n, act_dim) for the concatenated groups x (n, obs_dim)."""
        raise NotImplementedError

    def sample(self, y: torch.Tensor, deterministic: bool) -> torch.Tensor:
        """The network output y (n, d), plus N(0, exp(log_std)) noise when sampling from a Gaussian policy."""
        if deterministic or self.log_std is None:
            return y
        return y + torch.exp(self.log_std) * torch.randn_like(y)

    def action_std(self, n: int) -> torch.Tensor | None:
        """The Gaussian's std broadcast to (n, act_dim), or None without ``log_std``."""
        return None if self.log_std is None else torch.exp(self.log_std).expand(n, -1)

    # ---- numpy edge (the Policy / Teacher protocol) ------------------------------------------

    def obs_tensor(self, obs: ObsGroups) -> torch.Tensor:
        """``groups`` of ``obs`` (each (n, dim), checked) concatenated: float32 (n, obs_dim) on the device."""
        return torch.as_tensor(group_array(obs, self.groups, self.observation_space), device=self.device)

    def checked_tensor(self, obs: ObsGroups) -> torch.Tensor:
        """:meth:`obs_tensor` of ``obs`` once it is checked: None, a wrong shape or a non-finite value in a group
        is a ValueError naming the group."""
        try:
            dims = {g: int(self.observation_space[g].shape[0]) for g in self.groups}
        except (AttributeError, KeyError, TypeError, IndexError):  # no single observation space
            dims = None
        check_obs(obs, self.groups, dims)
        return self.obs_tensor(obs)

    def act(self, obs: ObsGroups, deterministic: bool = True) -> np.ndarray:
        """obs {group: (n, dim)} -> actions float32 (n, act_dim) in the action space (see :meth:`checked_tensor`)."""
        with torch.inference_mode():
            return self.forward_act(self.checked_tensor(obs), deterministic).cpu().numpy().astype(np.float32,
                                                                                                  copy=False)

    def label(self, obs: ObsGroups) -> ActionLabel:
        """mean: the deterministic action (n, act_dim) as ``act`` returns it; std: exp(log_std), or None."""
        mean = self.act(obs, deterministic=True)
        std = self.action_std(len(mean))
        return ActionLabel(mean=mean, std=None if std is None else
                           std[:, :mean.shape[1]].detach().cpu().numpy().astype(np.float32))

    def reset(self, env_mask: np.ndarray | None = None) -> None:
        """Forget per-env state (history, hidden state, queued actions); stateless policies have none."""

    def frozen(self) -> TorchPolicy:
        """Eval mode with every parameter's ``requires_grad`` off, as a teacher; returns self."""
        return freeze(self)

    # ---- training --------------------------------------------------------------------------------

    def fit_normalizer(self, x: np.ndarray) -> None:
        """Set the input normaliser's statistics from training inputs x (N, obs_dim) (see
        :meth:`~policydistill.models.normalizer.ObsNormalizer.fit`)."""
        self.normalizer.fit(x)

    def compute_loss(self, batch: dict[str, torch.Tensor], loss_fn: Any) -> tuple[torch.Tensor, Stats]:
        """The distillation loss on a batch of rows: ``x`` (B, obs_dim) the student's groups, ``label_mean``
        (B, act_dim) the teacher's label, optional ``label_std`` (B, act_dim) and ``weight`` (B,).
        ``loss_fn`` is one of :mod:`policydistill.distill.losses`. Returns the loss and its statistics."""
        x = batch["x"]
        loss = loss_fn(self.raw(x), batch["label_mean"], student_log_std=self.log_std,
                       teacher_std=batch.get("label_std"), weight=batch.get("weight"), mask=self.loss_mask(x))
        return loss, {"loss": loss.detach()}

    def loss_mask(self, x: torch.Tensor) -> torch.Tensor | None:
        """The action dims (B, act_dim) the loss counts for inputs x; None: all of them."""
        return None

    def batches(self, data: dict[str, np.ndarray], lengths: np.ndarray, batch_size: int,
                task: np.ndarray | None = None, sequence_length: int = 32) -> BatchSource:
        """Minibatches for :meth:`compute_loss` from stored steps: ``data`` holds per step ``x`` (N, obs_dim) and
        the targets (``label_mean``, ...) and optional loss ``weight`` (N,) (rows of weight 0 are never drawn),
        the episodes of ``lengths`` back to back; ``task`` (N,) balances the draws over tasks (None: uniform). A
        stateless student trains on independent rows; stateful ones override this (``sequence_length``:
        truncated-BPTT chunk of recurrent students)."""
        tensors = {k: torch.as_tensor(v, device=self.device) for k, v in data.items()}
        n = len(tensors["x"])
        return RowBatches(n, min(batch_size, n), take_rows(tensors), row_weights(task, data.get("weight")),
                          device=self.device)

    # ---- config ------------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        """JSON-able description from which :meth:`from_config` rebuilds the module (weights aside)."""
        raise NotImplementedError

    @classmethod
    def from_config(cls, cfg: dict[str, Any], device: str | torch.device = "cpu") -> TorchPolicy:
        """Build an (untrained) policy from :meth:`config` output on ``device`` ("auto"|"cpu"|"cuda").
        Unknown or missing keys are errors listing the valid ones."""
        params = list(inspect.signature(cls.__init__).parameters.values())[1:]
        valid = [p.name for p in params]
        required = [p.name for p in params if p.default is p.empty]
        unknown, missing = sorted(set(cfg) - set(valid)), [k for k in required if k not in cfg]
        if unknown or missing:
            raise ValueError(f"{cls.__name__} config has unknown keys {unknown}, lacks {missing}; "
                             f"valid keys are {sorted(valid)}")
        kwargs = dict(cfg)
        for key, value in cfg.items():
            if key.endswith("_space"):
                kwargs[key] = space_from_json(value)
            elif key.endswith("_spaces"):
                kwargs[key] = [space_from_json(v) for v in value]
        return cls(**kwargs).to(resolve_device(device))


def check_box_spaces(name: str, groups: tuple[str, ...], observation_space: Any, action_space: Any) -> None:
    """A Dict of 1-D Boxes for exactly ``groups`` and a 1-D Box action space, else a ValueError naming ``name``."""
    if not isinstance(observation_space, spaces.Dict) or set(observation_space) != set(groups):
        raise ValueError(f"{name} observation_space must be a Dict of exactly the groups {list(groups)}, "
                         f"got {observation_space}")
    for g in groups:
        if not isinstance(observation_space[g], spaces.Box) or len(observation_space[g].shape) != 1:
            raise ValueError(f"{name} observation group '{g}' must be a 1-D Box, got {observation_space[g]}")
    if not isinstance(action_space, spaces.Box) or len(action_space.shape) != 1:
        raise ValueError(f"{name} action_space must be a 1-D Box, got {action_space}")
