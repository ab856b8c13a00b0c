"""The batched tensor environment protocol (IsaacGym-style): one object steps a whole batch of envs.

Observation groups are tensors ``{group: (num_envs, dim)}`` on ``device``; ``step(actions (num_envs,
act_dim))`` returns ``obs, reward (num_envs,), terminated (num_envs,) bool, truncated (num_envs,) bool,
extras``. Optional extras: ``is_success`` (num_envs,) bool, ``episode_error`` a list of ``num_envs``
``str | None`` (a row whose episode was ended by a fault, as :class:`~policydistill.suites.wrappers.SafeEpisodes`).

There is no contract-level autoreset: the caller ends an episode by calling ``reset(env_mask, seeds)``
for its row before stepping it again, with one seed (or None) per masked row. A row stepped after its
episode ended without that reset is reset by the env itself (its results are meaningless to the caller).
``seeded_reset`` says whether a seed fixes the episode's initial state (False for envs that reset
themselves, e.g. rsl_rl's).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import torch
from gymnasium import spaces

if TYPE_CHECKING:
    from policydistill.suites import Suite

Obs = dict[str, torch.Tensor]
StepResult = tuple[Obs, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]


@runtime_checkable
class BatchedEnv(Protocol):
    """A batch of ``num_envs`` envs stepped at once; see the module doc for the contract."""

    num_envs: int
    device: torch.device
    single_observation_space: spaces.Dict
    single_action_space: spaces.Box
    max_episode_length: int
    seeded_reset: bool

    def reset(self, env_mask: torch.Tensor | np.ndarray | None = None,
              seeds: Sequence[int | None] | None = None) -> Obs:
        """Start new episodes in the rows where ``env_mask`` (num_envs,) is True (all rows if None), the
        k-th masked row seeded with ``seeds[k]``; returns the whole batch's current observation."""
        ...

    def step(self, actions: torch.Tensor) -> StepResult: ...

    def close(self) -> None: ...


# (suite, slot_tasks: the suite task index of each row) -> a batched env whose rows run those tasks
BatchedEnvFactory = Callable[["Suite", Sequence[int]], BatchedEnv]


def mask_rows(env_mask: torch.Tensor | np.ndarray | None, n: int) -> np.ndarray:
    """The row indices a reset mask selects: an int array; None selects all ``n`` rows."""
    if env_mask is None:
        return np.arange(n)
    mask = np.asarray(env_mask.cpu() if isinstance(env_mask, torch.Tensor) else env_mask, dtype=bool)
    if mask.shape != (n,):
        raise ValueError(f"env_mask must have shape ({n},), got {mask.shape}")
    return np.flatnonzero(mask)


def check_seeds(seeds: Sequence[int | None] | None, rows: np.ndarray) -> list[int | None]:
    """One seed (or None) per reset row; None for all when ``seeds`` is None."""
    if seeds is None:
        return [None] * len(rows)
    seeds = list(seeds)
    if len(seeds) != len(rows):
        raise ValueError(f"reset got {len(seeds)} seeds for {len(rows)} masked rows: give one per masked row")
    return seeds


def obs_to_numpy(obs: Obs) -> dict[str, np.ndarray]:
    """Tensors on any device -> float32 numpy arrays, as policies take them: {group: (n, dim)}."""
    return {g: v.numpy(force=True).astype(np.float32, copy=False) for g, v in obs.items()}
