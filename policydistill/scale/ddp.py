"""Data-parallel training under torchrun: one loop, generic over (model, loss on a batch, dataset).

The same code runs in one process (no process group) and under ``torchrun --nproc_per_node=N``
(DistributedDataParallel; gloo on CPU, nccl on GPU). Every rank draws the same global minibatch
indices from one seeded generator and takes its contiguous ``batch_size / world_size`` slice; DDP
averages the ranks' gradients, which is the gradient of the mean loss over the global batch, so N
processes follow single-process training up to floating-point summation order.

Only rank 0 writes: the checkpoint (model, optimiser, generator state, step, losses; atomic), and
whatever the caller writes when :func:`is_main` is true. A restarted run loads the last checkpoint
and continues from its step with the same index stream.

To train another model kind (a diffusion denoiser, a one-step student), pass its module, a
``loss_on_batch(model, batch) -> scalar tensor`` and its dataset as ``{name: array (N, ...)}``.
A loss that needs randomness (noise levels, noise) gets it in the batch: ``draw_random(rng, B)``
draws it for every row of the global batch from the shared generator, and each rank takes its rows,
so row ``i`` sees the same noise on any number of processes. ``lr_factor(step)`` scales the
learning rate, ``after_step(step)`` runs after each optimiser step (an EMA update) and ``keep``
names more modules (EMA copies) that the checkpoint saves and a resume restores.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from policydistill.data.sampling import RowSampler
from policydistill.io import atomic_write_bytes

log = logging.getLogger(__name__)

LossOnBatch = Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]
RandomDraw = Callable[[np.random.Generator, int], dict[str, torch.Tensor]]


@dataclass
class FitConfig:
    """``steps`` optimiser steps on global minibatches of ``batch_size`` (divisible by the world size)."""

    steps: int = 1000
    batch_size: int = 256
    lr: float = 1e-3
    seed: int = 0
    checkpoint_every: int = 200
    log_every: int = 50


@dataclass
class FitResult:
    losses: list[float] = field(default_factory=list)  # per step, the mean over ranks
    resumed_from: int = 0
    world_size: int = 1


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return world()[0] == 0


def init_from_env(device: str = "auto") -> torch.device:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1) and pick this rank's device."""
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


class _LossModule(nn.Module):
    """model + loss as one module, so DDP's forward hooks see every parameter the loss uses."""

    def __init__(self, model: nn.Module, loss_on_batch: LossOnBatch) -> None:
        super().__init__()
        self.model, self.loss_on_batch = model, loss_on_batch

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.loss_on_batch(self.model, batch)


def _finite_state(module: nn.Module, name: str, step: int) -> dict[str, torch.Tensor]:
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise FloatingPointError(f"refusing to checkpoint non-finite weights {bad} of {name} at step {step}")
    return state


def _save_checkpoint(path: Path, step: int, model: nn.Module, opt: torch.optim.Optimizer,
                     rng: np.random.Generator, losses: list[float], keep: Mapping[str, nn.Module]) -> None:
    buf = io.BytesIO()
    torch.save({"step": step, "model": _finite_state(model, "the model", step), "optim": opt.state_dict(),
                "rng": rng.bit_generator.state, "losses": losses,
                "keep": {k: _finite_state(m, k, step) for k, m in keep.items()}}, buf)
    atomic_write_bytes(path, buf.getvalue())


def fit(model: nn.Module, loss_on_batch: LossOnBatch, data: Mapping[str, np.ndarray | torch.Tensor],
        cfg: FitConfig, checkpoint: str | Path | None = None, sample_weights: np.ndarray | None = None,
        device: torch.device | None = None, on_log: Callable[[int, float], None] | None = None,
        draw_random: RandomDraw | None = None, lr_factor: Callable[[int], float] | None = None,
        after_step: Callable[[int], None] | None = None, keep: Mapping[str, nn.Module] | None = None) -> FitResult:
    """Train ``model`` in place for ``cfg.steps`` Adam steps on ``data`` ``{name: (N, ...)}``, sampling
    rows with ``sample_weights`` (N,) (uniform if None). ``draw_random(rng, B)`` -> ``{name: (B, ...)}``
    adds per-row random inputs to each global batch of ``B`` rows; the learning rate of step ``s`` is
    ``cfg.lr * lr_factor(s)``; ``after_step(s)`` follows each optimiser step. Resumes from
    ``checkpoint`` (model, optimiser, generator, ``keep`` modules) if it exists and writes it (rank 0)
    every ``cfg.checkpoint_every`` steps and at the end. ``on_log(step, loss)`` is called on rank 0
    every ``cfg.log_every`` steps with the mean loss over ranks."""
    rank, size = world()
    if cfg.batch_size % size:
        raise ValueError(f"batch_size {cfg.batch_size} must be divisible by the number of processes ({size})")
    device = device or next(model.parameters()).device
    model.to(device)
    keep = dict(keep or {})
    tensors = {k: torch.as_tensor(v if isinstance(v, torch.Tensor) else np.asarray(v), device=device)
               for k, v in data.items()}
    n = len(next(iter(tensors.values())))
    if n == 0 or any(len(v) != n for v in tensors.values()):
        lengths = {k: len(v) for k, v in tensors.items()}
        raise ValueError(f"dataset fields need one common, non-zero length, got {lengths}")
    draw = RowSampler(n, None if sample_weights is None
                      else np.asarray(sample_weights, dtype=np.float64) / np.sum(sample_weights))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    rng = np.random.default_rng(cfg.seed)
    result = FitResult(world_size=size)
    path = Path(checkpoint) if checkpoint is not None else None
    if path is not None and path.is_file():
        saved = torch.load(path, map_location=device, weights_only=False)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optim"])
        rng.bit_generator.state = saved["rng"]
        missing = sorted(set(keep) - set(saved.get("keep", {})))
        if missing:
            raise ValueError(f"checkpoint {path} lacks the state of {missing}: it was written by another training")
        for name, kept in keep.items():
            kept.load_state_dict(saved["keep"][name])
        result.losses, result.resumed_from = list(saved["losses"]), int(saved["step"])
        if rank == 0:
            log.info("resuming from %s at step %d", path, saved["step"])
    # a probe batch of 2 rows, its random inputs from a generator of its own (the training stream stays untouched)
    probe = {k: v[:2] for k, v in tensors.items()}
    if draw_random is not None:
        extra = draw_random(np.random.default_rng(0), 2)
        lengths = {k: len(v) for k, v in extra.items()}
        if any(length != 2 for length in lengths.values()):
            raise ValueError(f"draw_random(rng, B) must return B rows per field, got lengths {lengths} for B=2")
        probe.update({k: v.to(device) for k, v in extra.items()})
    module: nn.Module = _LossModule(model, loss_on_batch)
    if size > 1:  # DDP must be told about parameters the loss leaves unused (e.g. a std an MSE ignores)
        module(probe).backward()
        unused = any(p.requires_grad and p.grad is None for p in model.parameters())
        opt.zero_grad(set_to_none=True)
        module = nn.parallel.DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda"
                                                     else None, find_unused_parameters=unused)
    per_rank = cfg.batch_size // size
    model.train()
    steps = range(result.resumed_from, cfg.steps)
    for step in tqdm(steps, desc="train", unit="step", disable=rank != 0, dynamic_ncols=True):
        idx = draw(rng, cfg.batch_size)[rank * per_rank:(rank + 1) * per_rank]
        rows = torch.as_tensor(idx, device=device)
        batch = {k: v[rows] for k, v in tensors.items()}
        if draw_random is not None:  # for the whole global batch, then this rank's rows
            batch.update({k: v[rank * per_rank:(rank + 1) * per_rank].to(device)
                          for k, v in draw_random(rng, cfg.batch_size).items()})
        if lr_factor is not None:
            for group in opt.param_groups:
                group["lr"] = cfg.lr * lr_factor(step)
        loss = module(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if after_step is not None:
            after_step(step)
        mean_loss = loss.detach().clone()
        if size > 1:
            dist.all_reduce(mean_loss)
            mean_loss /= size
        result.losses.append(float(mean_loss))
        if not np.isfinite(result.losses[-1]):
            raise FloatingPointError(f"loss became non-finite at step {step}; lower lr (now {cfg.lr})")
        done = step + 1
        if rank == 0 and on_log is not None and done % cfg.log_every == 0:
            on_log(done, float(np.mean(result.losses[-cfg.log_every:])))
        if path is not None and (done % cfg.checkpoint_every == 0 or done == cfg.steps):
            if rank == 0:
                _save_checkpoint(path, done, model, opt, rng, result.losses, keep)
            if size > 1:
                dist.barrier()
    model.eval()
    return result

