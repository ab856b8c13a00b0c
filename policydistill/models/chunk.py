"""The base of policies that act from action chunks (diffusion policies and their one-step students).

Three knobs, as in Diffusion Policy (defaults shown)::

    control step      t-1    t     t+1   t+2   t+3   t+4   ...   t+15
    observations      o      o                                           n_obs_steps = 2    (o_t-1, o_t)
    predicted chunk          a     a     a     a     a     ...   a       horizon = 16       (a_t .. a_t+15)
    executed                 a     a     a     a                         n_action_steps = 4 (a_t .. a_t+3)
                                                     ^ queue empty: observe o_t+4, predict the next chunk

Per env the policy keeps the last ``n_obs_steps`` observations (after a reset, the first observation
repeated) and a queue of actions; :meth:`act` pops one action per step and refills the queue of the
envs whose queue is empty from a new chunk. The chunk's first action is for the current step.

Normalisation lives inside the model: observations with an :class:`ObsNormalizer` (mean/var),
actions with a :class:`RangeNormalizer` to [-1, 1] (the space the generative model works in);
chunks are unnormalised and clipped to the action space. Subclasses implement
:meth:`sample_norm`: ``cond`` (n, n_obs_steps * obs_dim) -> normalised chunk (n, horizon, act_dim).

Sampling noise comes from the policy's own generator, seeded with ``seed`` at every full reset,
when ``deterministic`` is True (a rerun gives the same actions), else from torch's global one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from policydistill.models.base import TorchPolicy, check_box_spaces
from policydistill.models.normalizer import ObsNormalizer, RangeNormalizer
from policydistill.spaces import space_to_json
from policydistill.types import ActionLabel, ObsGroups, check_groups, check_obs, group_array


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return int(value)


class ChunkPolicy(TorchPolicy):
    """Observation history, action queue, normalisers and the Policy protocol of a chunk policy."""

    stateful = True  # its history and queue advance every step: collection calls it on every step

    def __init__(self, groups: Sequence[str], observation_space: spaces.Dict, action_space: spaces.Box,
                 n_obs_steps: int = 2, horizon: int = 16, n_action_steps: int = 4, seed: int = 0) -> None:
        super().__init__()
        self.groups = check_groups(groups)
        check_box_spaces(type(self).__name__, self.groups, observation_space, action_space)
        self.n_obs_steps = _positive_int("n_obs_steps", n_obs_steps)
        self.horizon = _positive_int("horizon", horizon)
        self.n_action_steps = _positive_int("n_action_steps", n_action_steps)
        if self.n_action_steps > self.horizon:
            raise ValueError(f"n_action_steps ({n_action_steps}) must not exceed the horizon ({horizon})")
        self.seed = int(seed)
        self.observation_space, self.action_space = observation_space, action_space
        self.obs_dim = sum(int(observation_space[g].shape[0]) for g in self.groups)
        self.act_dim = int(action_space.shape[0])
        self.log_std = None
        self.obs_normalizer = ObsNormalizer(self.obs_dim, enabled=True)
        self.action_normalizer = RangeNormalizer(self.act_dim)
        self.register_buffer("action_low", torch.as_tensor(action_space.low, dtype=torch.float32), persistent=False)
        self.register_buffer("action_high", torch.as_tensor(action_space.high, dtype=torch.float32), persistent=False)
        self._generator: torch.Generator | None = None
        self._history: torch.Tensor | None = None  # (n, n_obs_steps, obs_dim)
        self._fresh = np.zeros(0, dtype=bool)  # (n,) history to be filled with the next observation
        self._queue = np.zeros((0, self.n_action_steps, self.act_dim), dtype=np.float32)
        self._left = np.zeros(0, dtype=int)  # (n,) actions left in each env's queue
        self._constants: dict[str, Any] = {}
        self._constants_from: list[torch.Tensor] = []  # the tensors they were derived from
        self._constants_versions: list[int] | None = None  # and those tensors' version counters then

    @property
    def cond_dim(self) -> int:
        return self.n_obs_steps * self.obs_dim

    # ---- torch path (shared with the exported graphs) -----------------------------------------

    def cond(self, window: torch.Tensor, affine: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Raw observation window (n, n_obs_steps, obs_dim) -> conditioning (n, n_obs_steps * obs_dim);
        ``affine``: the observation normaliser's, when computed beforehand (:meth:`constants`)."""
        return self.obs_normalizer(window, affine).flatten(1)

    def to_actions(self, x: torch.Tensor, affine: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Normalised chunk (n, H, A) -> chunk in the action space (unnormalised, clipped); ``affine``: the
        action range's scale and offset, when computed beforehand (:meth:`constants`)."""
        return torch.clamp(self.action_normalizer.inverse(x, affine), self.action_low, self.action_high)

    # ---- constants of the inference path -------------------------------------------------------

    def constant_sources(self) -> list[torch.Tensor]:
        """The weights :meth:`derive_constants` reads."""
        obs, actions = self.obs_normalizer, self.action_normalizer
        return [obs.mean, obs.var, actions.low, actions.high]

    def derive_constants(self) -> dict[str, Any]:
        """Tensors the inference path derives from the weights: the normalisers' affine maps."""
        actions = self.action_normalizer
        return {"obs": self.obs_normalizer.affine(), "actions": (actions.scale(), actions.offset())}

    def constants(self) -> dict[str, Any]:
        """:meth:`derive_constants`, computed again only when a tensor of :meth:`constant_sources` was modified
        in place (its version counter moved: training, ``load_state_dict``) or the policy was moved or cast."""
        if self._constants_versions != [t._version for t in self._constants_from]:
            with torch.inference_mode(False), torch.no_grad():  # plain tensors: a copy of the policy copies them
                self._constants, self._constants_from = self.derive_constants(), self.constant_sources()
            self._constants_versions = [t._version for t in self._constants_from]
        return self._constants

    def _apply(self, fn: Any, recurse: bool = True) -> ChunkPolicy:
        self._constants_versions = None  # .to(), .float(), ...: the sources are new tensors
        return super()._apply(fn, recurse)

    def sample_norm(self, cond: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Draw normalised chunks (n, H, A) for ``cond`` (n, cond_dim); noise from ``generator``."""
        raise NotImplementedError

    def noise(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        """Standard normal (n, horizon, act_dim) on the policy's device."""
        return torch.randn(n, self.horizon, self.act_dim, generator=generator, device=self.device)

    def noise_from(self, rng: np.random.Generator, n: int) -> torch.Tensor:
        """Standard normal chunks (n, horizon, act_dim) drawn from a numpy ``rng`` (the training streams), on
        the policy's device."""
        eps = rng.standard_normal((n, self.horizon, self.act_dim), dtype=np.float32)
        return torch.as_tensor(eps, device=self.device)

    # ---- observation history and action queue ------------------------------------------------

    def generator(self, deterministic: bool) -> torch.Generator | None:
        """The policy's seeded generator when ``deterministic``, else None (torch's global one)."""
        if not deterministic:
            return None
        if self._generator is None or self._generator.device != self.device:
            self._generator = torch.Generator(device=self.device).manual_seed(self.seed)
        return self._generator

    def obs_tensor(self, obs: ObsGroups, window: bool = False) -> torch.Tensor:
        """``groups`` of ``obs`` concatenated: (n, obs_dim), or (n, n_obs_steps, obs_dim) with ``window``."""
        lead = (self.n_obs_steps,) if window else ()
        return torch.as_tensor(group_array(obs, self.groups, self.observation_space, lead), device=self.device)

    def _ensure_state(self, n: int) -> None:
        if self._history is None or len(self._history) != n or self._history.device != self.device:
            self._history = torch.zeros(n, self.n_obs_steps, self.obs_dim, device=self.device)
            self._fresh = np.ones(n, dtype=bool)
            self._queue = np.zeros((n, self.n_action_steps, self.act_dim), dtype=np.float32)
            self._left = np.zeros(n, dtype=int)

    def observe(self, obs: ObsGroups) -> torch.Tensor:
        """Record this step's observation (n, dim per group) in each env's history; returns the windows
        (n, n_obs_steps, obs_dim)."""
        check_obs(obs, self.groups)
        x = self.obs_tensor(obs)
        self._ensure_state(len(x))
        assert self._history is not None
        fresh = torch.as_tensor(self._fresh, device=self.device)
        shifted = torch.cat([self._history[:, 1:], x[:, None]], dim=1)
        self._history = torch.where(fresh[:, None, None], x[:, None].expand_as(shifted), shifted)
        self._fresh[:] = False
        return self._history

    def predict_chunk(self, obs: ObsGroups, deterministic: bool = True) -> np.ndarray:
        """A chunk (n, horizon, act_dim) in the action space; its first action is for the current step.

        ``obs`` holds either this step's observation (n, dim) per group, which is recorded in the
        history (call it, or :meth:`act`, once per control step), or explicit windows
        (n, n_obs_steps, dim), oldest first, which leave the policy's state untouched.
        """
        first = np.asarray(obs[self.groups[0]]) if self.groups[0] in obs else None
        explicit = first is not None and first.ndim == 3
        with torch.inference_mode():
            window = self.obs_tensor(obs, window=True) if explicit else self.observe(obs)
            return self._chunks(window, deterministic)

    def _chunks(self, window: torch.Tensor, deterministic: bool) -> np.ndarray:
        constants = self.constants()
        x = self.sample_norm(self.cond(window, constants["obs"]), self.generator(deterministic))
        return self.to_actions(x, constants["actions"]).cpu().numpy().astype(np.float32, copy=False)

    def act(self, obs: ObsGroups, deterministic: bool = True) -> np.ndarray:
        """obs {group: (n, dim)} -> actions (n, act_dim): each env's next queued action, the queues of
        empty envs refilled with the first ``n_action_steps`` actions of a new chunk."""
        with torch.inference_mode():
            window = self.observe(obs)
            empty = np.flatnonzero(self._left == 0)
            if len(empty):
                chunk = self._chunks(window[torch.as_tensor(empty, device=self.device)], deterministic)
                self._queue[empty] = chunk[:, : self.n_action_steps]
                self._left[empty] = self.n_action_steps
        rows = np.arange(len(self._left))
        out = self._queue[rows, self.n_action_steps - self._left].copy()
        self._left -= 1
        return out

    def label(self, obs: ObsGroups) -> ActionLabel:
        """The action it executes now, as a teacher's label (acting advances the queue)."""
        return ActionLabel(mean=self.act(obs))

    def reset(self, env_mask: np.ndarray | None = None) -> None:
        """Forget the queued actions and observation history of the envs in ``env_mask`` (all if None;
        then the generator is reseeded too)."""
        if env_mask is None:
            self._history = None
            self._generator = None
            return
        mask = np.asarray(env_mask, dtype=bool)
        if self._history is None:
            return
        if mask.shape != self._left.shape:
            raise ValueError(f"env_mask has shape {mask.shape}, expected ({len(self._left)},) as the last batch")
        self._fresh[mask] = True
        self._left[mask] = 0

    def fit_normalizers(self, obs: np.ndarray, actions: np.ndarray) -> None:
        """Observation mean/var (obs (N, obs_dim)) and action range (actions (N, act_dim)) of training data."""
        self.obs_normalizer.fit(obs)
        self.action_normalizer.set_stats(actions.min(0), actions.max(0))

    # ---- config ------------------------------------------------------------------------------

    def base_config(self) -> dict[str, Any]:
        return {"groups": list(self.groups), "observation_space": space_to_json(self.observation_space),
                "action_space": space_to_json(self.action_space), "n_obs_steps": self.n_obs_steps,
                "horizon": self.horizon, "n_action_steps": self.n_action_steps, "seed": self.seed}

    def example_obs(self, n: int, generator: torch.Generator, steps: int = 1) -> torch.Tensor:
        """Observations (n, steps, obs_dim) spread around the normaliser's statistics, past its clip range."""
        return self.obs_normalizer.examples(3.0 * torch.randn(n, steps, self.obs_dim, generator=generator))

    def extra_repr(self) -> str:
        return (f"groups={list(self.groups)}, obs_dim={self.obs_dim}, act_dim={self.act_dim}, "
                f"n_obs_steps={self.n_obs_steps}, horizon={self.horizon}, n_action_steps={self.n_action_steps}")
