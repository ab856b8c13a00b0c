"""Training windows for chunk policies: per recorded step, the observation window and the action chunk.

For step ``t`` of an episode of length T the sample is::

    observations  o[t - n_obs_steps + 1 .. t]    (indices below 0 repeat o[0], as after a reset)
    chunk         a[t .. t + horizon - 1]         (indices past T-1 repeat a[T-1])

``a`` is the teacher's label (``label_mean``): with the teacher acting it is the executed action;
on DAgger data collected with the student acting it is what the teacher would have done there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from policydistill.data.sampling import task_weights
from policydistill.data.shards import EpisodeStore

ACTION_FIELD = "label_mean"


@dataclass(frozen=True)
class ChunkWindows:
    """All steps of the episodes, flat, and per sample the indices of its window and chunk."""

    obs: torch.Tensor  # (N, obs_dim) the reading groups of every step, concatenated
    actions: torch.Tensor  # (N, act_dim)
    obs_index: torch.Tensor  # (N, n_obs_steps) int64 into obs
    act_index: torch.Tensor  # (N, horizon) int64 into actions
    task: np.ndarray  # (N,) task index of each sample

    def __len__(self) -> int:
        return len(self.obs_index)

    def take(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """Samples ``idx`` (b,): ``window`` (b, n_obs_steps, obs_dim) and ``chunk`` (b, horizon, act_dim)."""
        return {"window": self.obs[self.obs_index[idx]], "chunk": self.actions[self.act_index[idx]]}

    def sample_weights(self, balance_tasks: bool = True) -> np.ndarray | None:
        """Sampling probabilities (N,) that give every task the same share, or None (uniform)."""
        return task_weights(self.task) if balance_tasks else None


def chunk_windows(roots: Sequence[str | Path], groups: Sequence[str], n_obs_steps: int, horizon: int,
                  device: torch.device | str = "cpu") -> ChunkWindows:
    """Windows of every episode kept in the stores at ``roots`` (episodes flagged with an error are not
    stored by the distillers). An empty selection is an error naming the stores."""
    obs, actions, obs_index, act_index, task = [], [], [], [], []
    offset = 0
    fields = [f"obs/{g}" for g in groups] + [ACTION_FIELD]
    for root in roots:
        store = EpisodeStore(root)
        missing = [f for f in fields if f not in store.fields]
        if missing:
            raise ValueError(f"episodes at {root} lack fields {missing} needed by the policy; "
                             f"they have {sorted(store.fields)}")
        for meta, ep in store.iter_episodes(fields):
            n = len(ep[ACTION_FIELD])
            t = np.arange(n)
            obs.append(np.concatenate([ep[f"obs/{g}"] for g in groups], axis=1))
            actions.append(ep[ACTION_FIELD])
            obs_index.append(offset + np.clip(t[:, None] + np.arange(-n_obs_steps + 1, 1), 0, n - 1))
            act_index.append(offset + np.clip(t[:, None] + np.arange(horizon), 0, n - 1))
            task.append(np.full(n, int(meta["task_index"])))
            offset += n
    if not obs:
        raise ValueError(f"no episodes to train on in {[str(r) for r in roots]}")
    as_t = lambda a, dt: torch.as_tensor(np.concatenate(a), dtype=dt, device=device)  # noqa: E731
    return ChunkWindows(as_t(obs, torch.float32), as_t(actions, torch.float32), as_t(obs_index, torch.int64),
                        as_t(act_index, torch.int64), np.concatenate(task))
