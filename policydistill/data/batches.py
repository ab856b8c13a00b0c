"""Minibatch sources for the fit loop (:mod:`policydistill.distill.fit`).

A source's ``draw(rng, rank, world)`` draws one *global* minibatch from ``rng`` (every process holds the
same generator state and draws the same numbers) and returns this process's share of it, so N processes
see exactly the rows one process would, split N ways. Batches are ``{name: tensor}`` dicts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import numpy as np
import torch

from policydistill.data.sampling import RowSampler

Batch = dict[str, torch.Tensor]
RandomDraw = Callable[[np.random.Generator, int], Batch]


class BatchSource(Protocol):
    batch_size: int

    def draw(self, rng: np.random.Generator, rank: int = 0, world: int = 1) -> Batch: ...


def _share(n: int, rank: int, world: int) -> slice:
    if n % world:
        raise ValueError(f"a global batch of {n} cannot be split evenly over {world} processes")
    per = n // world
    return slice(rank * per, (rank + 1) * per)


def take_rows(data: Mapping[str, torch.Tensor]) -> Callable[[torch.Tensor], Batch]:
    """``take(idx) -> {name: data[name][idx]}``: a batch made of whole rows."""
    return lambda idx: {k: v[idx] for k, v in data.items()}


class RowBatches:
    """``batch_size`` of ``n`` rows drawn with replacement (probabilities ``weights`` (n,), or uniform), made into a
    batch by ``take(idx (b,) int64)``; ``randoms(rng, B)`` adds per-row random inputs (noise, levels) drawn
    for the whole global batch after its rows."""

    def __init__(self, n: int, batch_size: int, take: Callable[[torch.Tensor], Batch],
                 weights: np.ndarray | None = None, randoms: RandomDraw | None = None,
                 device: torch.device | str = "cpu") -> None:
        if n < 1:
            raise ValueError("no rows to train on")
        self.batch_size, self.take, self.randoms, self.device = batch_size, take, randoms, torch.device(device)
        self.sampler = RowSampler(n, weights)

    def draw(self, rng: np.random.Generator, rank: int = 0, world: int = 1) -> Batch:
        share = _share(self.batch_size, rank, world)
        idx = self.sampler(rng, self.batch_size)
        batch = self.take(torch.as_tensor(idx[share], device=self.device))
        if self.randoms is not None:
            batch.update({k: v[share] for k, v in self.randoms(rng, self.batch_size).items()})
        return batch


class SequenceBatches:
    """Truncated backpropagation through time over whole episodes (recurrent students).

    ``sequences`` episodes (drawn with ``weights`` (E,) over the episodes) run side by side from their first
    step in chunks of ``chunk`` steps; each draw is the next chunk: the step fields of ``data`` (N steps, the
    episodes of ``lengths`` back to back) as (B, chunk, ...), ``mask`` (B, chunk) the real steps (padding past
    an episode's end is False) and ``state``: zeros (``init_state(B)``) at the episodes' start, then the
    ``next_state`` the loss left in the previous batch (carried, detached). New episodes are drawn when the
    longest of the current ones is done.
    """

    def __init__(self, data: Mapping[str, torch.Tensor], lengths: Sequence[int], sequences: int, chunk: int,
                 init_state: Callable[[int], torch.Tensor], weights: np.ndarray | None = None) -> None:
        self.data, self.lengths = dict(data), np.asarray(lengths, dtype=np.int64)
        self.starts = np.cumsum(self.lengths) - self.lengths
        self.sequences, self.chunk, self.init_state = sequences, chunk, init_state
        self.batch_size = sequences * chunk
        self.sampler = RowSampler(len(self.lengths), weights)
        self.device = next(iter(self.data.values())).device
        self._idx = self._mask = None
        self._t0 = self._t_max = 0
        self._last: Batch | None = None

    def draw(self, rng: np.random.Generator, rank: int = 0, world: int = 1) -> Batch:
        if self._t0 >= self._t_max:
            chosen = self.sampler(rng, self.sequences)[_share(self.sequences, rank, world)]
            self._t_max = int(self.lengths[chosen].max())
            offs = np.arange(self._t_max)[None, :]
            mask = offs < self.lengths[chosen][:, None]
            self._idx = torch.as_tensor(np.where(mask, self.starts[chosen][:, None] + offs, 0), device=self.device)
            self._mask = torch.as_tensor(mask, device=self.device)
            self._t0, self._last = 0, None
            state = self.init_state(len(chosen))
        else:
            assert self._last is not None
            state = self._last["next_state"]
        sl = slice(self._t0, self._t0 + self.chunk)
        self._t0 += self.chunk
        idx = self._idx[:, sl]
        self._last = {**{k: v[idx] for k, v in self.data.items()}, "mask": self._mask[:, sl], "state": state}
        return self._last
