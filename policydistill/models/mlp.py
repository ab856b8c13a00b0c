"""An MLP policy over observation groups: normaliser -> MLP -> action post-processing, all in torch.

It is the form every SB3 expert is converted to and the simplest student. ``forward`` holds the
whole deterministic path, so exporting the module exports normalisation and post-processing too.

``post`` maps the network output ``y`` (n, act_dim) to the env's action space [low, high]:

- ``"clip"``: ``clip(y, low, high)`` (SB3 PPO's ``predict``);
- ``"tanh_unscale"``: ``low + (tanh(y) + 1) / 2 * (high - low)`` (SAC);
- ``"unscale"``: ``low + (clip(y, -1, 1) + 1) / 2 * (high - low)``, for a network whose output is
  already in [-1, 1] (TD3's actor ends in ``out_activation="tanh"``).

A teacher's label std is its Gaussian's std over ``y`` carried to the action space (times the slope of
``post`` at ``y``): ``log_std``, one per action dim (SB3 PPO), or ``std_head``, a Linear from the last hidden
layer giving a state-dependent log std clamped to [-20, 2] (SB3 SAC's ``actor.log_std``).

A teacher may keep its critic (``critic``: the hidden sizes of its Q networks, as SB3 SAC's and TD3's): ``n_critics``
MLPs reading the normalised observation and the action scaled to [-1, 1], each giving Q(s, a); :meth:`q_value`
is their minimum and :meth:`advantage` an action's Q over that of the policy's own deterministic action.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from policydistill.graph import OBS, ExportGraph, TensorSpec
from policydistill.models.base import TorchPolicy, check_box_spaces
from policydistill.models.normalizer import ObsNormalizer
from policydistill.spaces import space_to_json
from policydistill.types import ActionLabel, ObsGroups, check_groups

ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU}
POSTS = ("clip", "tanh_unscale", "unscale")
OUT_ACTIVATIONS = ("none", "tanh")
NORMALIZER_KEYS = {"enabled", "clip", "eps"}
LOG_STD_RANGE = (-20.0, 2.0)
"""The clamp of a state-dependent log std (SB3 SAC's)."""


def mlp_stack(n_in: int, hidden: Sequence[int], n_out: int, activation: str) -> nn.Sequential:
    """Linear + ``activation`` per hidden size, then a Linear to ``n_out``."""
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(n_in, h), ACTIVATIONS[activation]()]
        n_in = h
    return nn.Sequential(*layers, nn.Linear(n_in, n_out))


def post_action(y: torch.Tensor, post: str, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Network output y (..., act_dim) -> action (..., act_dim) in [low, high] (each broadcast to y) by ``post``."""
    if post == "clip":
        return torch.clamp(y, low, high)
    u = torch.tanh(y) if post == "tanh_unscale" else torch.clamp(y, -1.0, 1.0)
    return low + 0.5 * (u + 1.0) * (high - low)


def post_slope(y: torch.Tensor, post: str, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """d action / d y of :func:`post_action` at y (..., act_dim)."""
    if post == "clip":
        return torch.ones_like(y)
    half = 0.5 * (high - low)
    return half * (1.0 - torch.tanh(y) ** 2) if post == "tanh_unscale" else half.expand_as(y)


def _choice(name: str, value: str, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise ValueError(f"MLPPolicy {name} '{value}' is not one of {list(allowed)}")
    return value


class MLPPolicy(TorchPolicy):
    """A stateless MLP policy and teacher.

    Reads ``groups`` (concatenated in that order, each a 1-D Box of ``observation_space``) and acts
    in ``action_space``. With ``log_std`` it has a state-independent Gaussian (as SB3 PPO), with
    ``std_head`` a state-dependent one (as SB3 SAC), used for sampling and as the teacher's label std.
    """

    def __init__(self, groups: Sequence[str], observation_space: spaces.Dict, action_space: spaces.Box,
                 hidden: Sequence[int] = (64, 64), activation: str = "tanh", post: str = "clip",
                 out_activation: str = "none", normalizer: dict[str, Any] | None = None,
                 log_std: bool = False, std_head: bool = False, critic: Sequence[int] | None = None,
                 n_critics: int = 2) -> None:
        super().__init__()
        if log_std and std_head:
            raise ValueError("MLPPolicy takes log_std (a std per action dim) or std_head (a std per state), not both")
        self.groups = check_groups(groups)
        check_box_spaces("MLPPolicy", self.groups, observation_space, action_space)
        self.observation_space, self.action_space = observation_space, action_space
        self.hidden = [int(h) for h in hidden]
        self.activation = _choice("activation", activation, list(ACTIVATIONS))
        self.post = _choice("post", post, POSTS)
        self.out_activation = _choice("out_activation", out_activation, OUT_ACTIVATIONS)
        finite = np.all(np.isfinite(action_space.low)) and np.all(np.isfinite(action_space.high))
        if post != "clip" and not finite:
            raise ValueError(f"MLPPolicy post '{post}' needs finite action bounds, got {action_space}")
        norm = dict(normalizer or {})
        unknown = set(norm) - NORMALIZER_KEYS
        if unknown:
            raise ValueError(f"unknown normalizer keys {sorted(unknown)}; "
                             f"valid keys are {sorted(NORMALIZER_KEYS)}")

        self.obs_dim = sum(int(observation_space[g].shape[0]) for g in self.groups)
        self.act_dim = int(action_space.shape[0])
        self.normalizer = ObsNormalizer(self.obs_dim, **norm)
        layers: list[nn.Module] = []
        last = self.obs_dim
        for h in self.hidden:
            layers += [nn.Linear(last, h), ACTIVATIONS[self.activation]()]
            last = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(last, self.act_dim)
        self.log_std = nn.Parameter(torch.zeros(self.act_dim)) if log_std else None
        self.std_head = nn.Linear(last, self.act_dim) if std_head else None
        self.critic_hidden = None if critic is None else [int(h) for h in critic]
        self.critic = None if self.critic_hidden is None else nn.ModuleList(
            mlp_stack(self.obs_dim + self.act_dim, self.critic_hidden, 1, self.activation)
            for _ in range(int(n_critics)))
        low = torch.as_tensor(action_space.low, dtype=torch.float32)
        high = torch.as_tensor(action_space.high, dtype=torch.float32)
        self.register_buffer("action_low", low, persistent=False)
        self.register_buffer("action_high", high, persistent=False)

    # ---- torch path (exportable) -------------------------------------------------------------

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        """Network output before post-processing: x (n, obs_dim) -> y (n, act_dim)."""
        return self._output(self.body(self.normalizer(x)))

    def _output(self, h: torch.Tensor) -> torch.Tensor:
        y = self.head(h)
        return torch.tanh(y) if self.out_activation == "tanh" else y

    def _gaussian(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The Gaussian over y: x (n, obs_dim) -> mean y, std (n, act_dim) (state-dependent with ``std_head``)."""
        h = self.body(self.normalizer(x))
        y = self._output(h)
        if self.std_head is not None:
            return y, torch.exp(self.std_head(h).clamp(*LOG_STD_RANGE))
        assert self.log_std is not None
        return y, torch.exp(self.log_std).expand_as(y)

    def _slope(self, y: torch.Tensor) -> torch.Tensor:
        """d action / d y of ``post`` at y (n, act_dim)."""
        return post_slope(y, self.post, self.action_low, self.action_high)

    def postprocess(self, y: torch.Tensor) -> torch.Tensor:
        """Network output y (n, act_dim) -> action (n, act_dim) in the action space."""
        return post_action(y, self.post, self.action_low, self.action_high)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic action: x (n, obs_dim) -> action (n, act_dim)."""
        return self.postprocess(self.raw(x))

    def forward_act(self, x: torch.Tensor, deterministic: bool) -> torch.Tensor:
        if deterministic or (self.std_head is None and self.log_std is None):
            return self.forward(x)
        y, std = self._gaussian(x)
        return self.postprocess(y + std * torch.randn_like(y))

    def label(self, obs: ObsGroups) -> ActionLabel:
        """mean: the deterministic action (n, act_dim); std: the Gaussian's std carried to the action space (see
        the module doc), or None for a deterministic policy. One forward pass."""
        if self.std_head is None and self.log_std is None:
            return ActionLabel(mean=self.act(obs, deterministic=True), std=None)
        with torch.inference_mode():
            y, std = self._gaussian(self.checked_tensor(obs))
            mean = self.postprocess(y).cpu().numpy().astype(np.float32, copy=False)
            return ActionLabel(mean=mean, std=(std * self._slope(y)).cpu().numpy().astype(np.float32))

    def q_value(self, obs: ObsGroups, actions: np.ndarray) -> np.ndarray:
        """The critic's value of taking ``actions`` (n, act_dim), in the action space, in ``obs``: (n,), the minimum
        over its Q networks."""
        with torch.inference_mode():
            return self._q(*self._critic_inputs(obs, actions)).cpu().numpy()

    def advantage(self, obs: ObsGroups, actions: np.ndarray) -> np.ndarray:
        """Q(s, ``actions``) - Q(s, the policy's deterministic action) (n,): how much better (> 0) or worse an
        action is than the policy's own, by its critic."""
        with torch.inference_mode():
            x, a = self._critic_inputs(obs, actions)
            return (self._q(x, a) - self._q(x, self.forward(x))).cpu().numpy()

    def _critic_inputs(self, obs: ObsGroups, actions: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """obs and actions as tensors x (n, obs_dim), a (n, act_dim); an error if there is no critic."""
        if self.critic is None:
            raise ValueError("this policy has no critic (an SB3 SAC or TD3 expert converted by policydistill keeps "
                             "its Q networks)")
        x = self.checked_tensor(obs)
        return x, torch.as_tensor(np.asarray(actions, dtype=np.float32), device=x.device)

    def _q(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """x (n, obs_dim), a (n, act_dim) in the action space -> min over the Q networks (n,)."""
        assert self.critic is not None
        scaled = 2.0 * (a - self.action_low) / (self.action_high - self.action_low) - 1.0
        xa = torch.cat([self.normalizer(x), scaled.clamp(-1.0, 1.0)], dim=-1)
        return torch.stack([q(xa)[:, 0] for q in self.critic]).min(0).values

    def export_graph(self) -> ExportGraph:
        """``forward`` as an export graph: ``obs`` (n, obs_dim) -> ``action`` (n, act_dim), stateless.

        Example inputs spread around the normaliser's statistics, past its clip range too."""

        def example(graph: ExportGraph, n: int, generator: torch.Generator) -> tuple[torch.Tensor]:
            return (self.normalizer.examples(3.0 * torch.randn(n, self.obs_dim, generator=generator)),)

        return ExportGraph(self, (TensorSpec(OBS, (self.obs_dim,), "observation"),),
                           (TensorSpec("action", (self.act_dim,), "action"),), example=example)

    # ---- config ------------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        """JSON-able description from which :meth:`from_config` rebuilds the module (weights aside)."""
        return {"groups": list(self.groups), "observation_space": space_to_json(self.observation_space),
                "action_space": space_to_json(self.action_space), "hidden": list(self.hidden),
                "activation": self.activation, "post": self.post, "out_activation": self.out_activation,
                "normalizer": self.normalizer.config(), "log_std": self.log_std is not None,
                "std_head": self.std_head is not None} | (
                {} if self.critic is None else {"critic": self.critic_hidden, "n_critics": len(self.critic)})

    def extra_repr(self) -> str:
        return (f"groups={list(self.groups)}, post={self.post!r}, obs_dim={self.obs_dim}, "
                f"act_dim={self.act_dim}")

