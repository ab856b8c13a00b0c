"""The one optimiser loop. Every student update of every method goes through :func:`fit`.

A :class:`FitJob` says what to train: the ``model`` whose parameters the ``optimizer`` holds, ``loss(model,
batch) -> (loss, stats)`` (a student's ``compute_loss``, a one-step algorithm's ``student_loss``), a
minibatch source (:mod:`policydistill.data.batches`), the schedule (:class:`FitConfig`: steps, learning rate,
warm-up and cosine decay, gradient clipping), an EMA of the weights, a target-network update after each
step, and an auxiliary network trained between steps with its own optimiser. The loop owns what is the
same for all of them: the learning-rate schedule, the optimiser steps, clipping, the non-finite check,
logging, mid-fit checkpoints and data parallelism.

One process is this loop with world size 1. Under ``torchrun`` (``WORLD_SIZE`` > 1) the model and its loss
run in DistributedDataParallel (gloo on CPU, nccl on GPU): every process draws the same global minibatch
from the same seeded generator and takes its share; DDP averages the gradients, so N processes follow one
process up to floating-point summation order. Only rank 0 writes checkpoints.
"""

from __future__ import annotations

import copy
import io
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from policydistill.configs import require_choice, require_int, require_lr, require_number
from policydistill.data.batches import Batch, BatchSource
from policydistill.files import atomic_write_bytes

log = logging.getLogger(__name__)

LossFn = Callable[[nn.Module, Batch], tuple[torch.Tensor, dict[str, torch.Tensor]]]
LR_SCHEDULES = ("constant", "cosine")


@dataclass
class FitConfig:
    """``steps`` optimiser steps at learning rate ``lr`` times the schedule's factor: ``constant``, or
    ``cosine`` (linear warm-up over ``warmup_steps``, then a cosine from 1 down to ``final_lr`` at the last
    step). ``max_grad_norm``: clip the gradient's global norm (None: no clipping). ``checkpoint_every``:
    write the mid-fit checkpoint (when the caller gives a path) every so many steps (0: never mid-fit)."""

    steps: int
    lr: float
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    final_lr: float = 0.0
    max_grad_norm: float | None = None
    checkpoint_every: int = 0

    def __post_init__(self) -> None:
        require_int("steps", self.steps, 0)
        require_lr("lr", self.lr)
        require_choice("lr schedule", self.lr_schedule, LR_SCHEDULES)
        require_int("warmup_steps", self.warmup_steps, 0)
        require_number("final_lr", self.final_lr, 0.0, 1.0)
        if self.max_grad_norm is not None:
            require_number("max_grad_norm", self.max_grad_norm, 0.0, low_open=True)
        require_int("checkpoint_every", self.checkpoint_every, 0)

    def lr_factor(self, step: int) -> float:
        """The factor on ``lr`` at update ``step`` (0-based)."""
        if self.lr_schedule == "constant":
            return 1.0
        warm = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        frac = min(step, self.steps) / max(1, self.steps - 1)
        return warm * (self.final_lr + (1.0 - self.final_lr) * 0.5 * (1.0 + math.cos(math.pi * min(frac, 1.0))))


class Ema:
    """An exponential moving average ``target`` of ``source``'s parameters (buffers are copied):
    ``target <- d * target + (1 - d) * source`` after every step, ``d = min(decay, (1 + n) / (10 + n))`` after n
    updates with ``warmup`` (few updates averaged: a lower decay), else ``decay``."""

    def __init__(self, target: nn.Module, source: nn.Module, decay: float, warmup: bool = True) -> None:
        self.target, self.source, self.decay, self.warmup, self.updates = target, source, decay, warmup, 0

    @torch.no_grad()
    def update(self) -> None:
        d = min(self.decay, (1 + self.updates) / (10 + self.updates)) if self.warmup else self.decay
        for pt, ps in zip(self.target.parameters(), self.source.parameters(), strict=True):
            pt.lerp_(ps, 1.0 - d)
        for bt, bs in zip(self.target.buffers(), self.source.buffers(), strict=True):
            bt.copy_(bs)
        self.updates += 1

    @torch.no_grad()
    def copy(self) -> None:
        """Make the average equal the source (a fresh start)."""
        self.target.load_state_dict(self.source.state_dict())

    def state_dict(self) -> dict:
        return {"updates": self.updates, "target": self.target.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.updates = int(state["updates"])
        self.target.load_state_dict(state["target"])


@dataclass
class Aux:
    """A network trained before each main step with an optimiser of its own: ``updates`` steps of ``loss(rng)``
    (it draws its batches from the fit's generator), e.g. the fake-score network of distribution matching.
    ``lr`` is its base rate, scaled by the same schedule as the main one."""

    module: nn.Module
    loss: Callable[[np.random.Generator], torch.Tensor]
    optimizer: torch.optim.Optimizer
    lr: float
    updates: int
    name: str = "aux"


@dataclass
class FitJob:
    """What :func:`fit` trains (see the module doc). ``keep``: more modules (target networks) a mid-fit
    checkpoint saves and restores."""

    model: nn.Module
    loss: LossFn
    batches: BatchSource
    cfg: FitConfig
    optimizer: torch.optim.Optimizer
    ema: Ema | None = None
    after_step: Callable[[], None] | None = None
    aux: Aux | None = None
    keep: dict[str, nn.Module] = field(default_factory=dict)


@dataclass
class FitResult:
    """``losses``: the main loss of every step (mean over processes); ``stats``: every statistic of the loss,
    averaged over the last 10% of the steps."""

    steps: int
    losses: list[float]
    stats: dict[str, float]
    resumed_from: int = 0

    @property
    def loss(self) -> float:
        return self.stats.get("loss", float(np.mean(self.losses[-max(1, len(self.losses) // 10):])))


def adam(module: nn.Module, lr: float) -> torch.optim.Adam:
    """Adam over the trainable parameters of ``module`` (frozen teacher heads left out), as one fused kernel per
    step (a seventh of a small MLP's update on a CPU)."""
    return torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=lr, fused=True)


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


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

    def __init__(self, model: nn.Module, loss: LossFn) -> None:
        super().__init__()
        self.model, self.loss = model, loss

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.loss(self.model, batch)


def _finite_state(module: nn.Module, name: str, step: int) -> dict[str, torch.Tensor]:
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise FloatingPointError(f"refusing to checkpoint non-finite weights {bad} of {name} at update {step}")
    return state


def save_torch(path: str | Path, obj: object) -> None:
    """``torch.save`` ``obj`` to ``path`` atomically (a kill leaves the old file or the new one)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def _save(path: Path, job: FitJob, step: int, rng: np.random.Generator, losses: list[float],
          history: list[dict[str, float]]) -> None:
    state = {"step": step, "model": _finite_state(job.model, "the model", step),
             "optimizer": job.optimizer.state_dict(), "rng": rng.bit_generator.state, "losses": losses,
             "history": history,
             "keep": {k: _finite_state(m, k, step) for k, m in job.keep.items()},
             "ema": job.ema.state_dict() if job.ema else None,
             "aux": {"module": _finite_state(job.aux.module, job.aux.name, step),
                     "optimizer": job.aux.optimizer.state_dict()} if job.aux else None}
    save_torch(path, state)


def _load(path: Path, job: FitJob, rng: np.random.Generator,
          device: torch.device) -> tuple[int, list[float], list[dict[str, float]]]:
    saved = torch.load(path, map_location=device, weights_only=True)
    missing = sorted(set(job.keep) - set(saved["keep"]))
    if missing or (job.ema is None) != (saved["ema"] is None) or (job.aux is None) != (saved["aux"] is None):
        raise ValueError(f"checkpoint {path} was written by another kind of training (it lacks {missing or 'parts'})")
    job.model.load_state_dict(saved["model"])
    job.optimizer.load_state_dict(saved["optimizer"])
    rng.bit_generator.state = saved["rng"]
    for name, module in job.keep.items():
        module.load_state_dict(saved["keep"][name])
    if job.ema is not None:
        job.ema.load_state_dict(saved["ema"])
    if job.aux is not None:
        job.aux.module.load_state_dict(saved["aux"]["module"])
        job.aux.optimizer.load_state_dict(saved["aux"]["optimizer"])
    return int(saved["step"]), list(saved["losses"]), list(saved["history"])


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def fit(job: FitJob, rng: np.random.Generator, checkpoint: str | Path | None = None,
        on_log: Callable[[int, float], None] | None = None, log_every: int = 50, desc: str = "fit",
        progress: bool = True) -> FitResult:
    """Run ``job.cfg.steps`` optimiser steps (see the module doc), drawing every batch and random input from
    ``rng``. With ``checkpoint``, resume from it when it exists and write it (rank 0) every
    ``cfg.checkpoint_every`` steps and at the end. ``on_log(step, mean loss)`` is called on rank 0 every
    ``log_every`` steps. A non-finite loss stops the run with a FloatingPointError naming the step."""
    cfg, model = job.cfg, job.model
    rank, size = world()
    device = next(model.parameters()).device
    path = Path(checkpoint) if checkpoint is not None else None
    start, losses, history = 0, [], []
    if path is not None and path.is_file():
        start, losses, history = _load(path, job, rng, device)
        if rank == 0:
            log.info("%s: resuming from %s at update %d", desc, path, start)
    module: nn.Module = _LossModule(model, job.loss)
    if size > 1:
        if job.aux is not None:
            raise ValueError(f"{desc}: an auxiliary network ({job.aux.name}) with an optimiser of its own is trained "
                             "in one process only")
        probe = copy.copy(job.batches).draw(np.random.default_rng(0), rank, size)  # the training stream untouched
        module(probe)[0].backward()
        unused = any(p.requires_grad and p.grad is None for p in model.parameters())
        job.optimizer.zero_grad(set_to_none=True)
        module = nn.parallel.DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda"
                                                     else None, find_unused_parameters=unused)
    model.train()
    off = {"disable": True} if rank != 0 or not progress else {}  # else tqdm's default, which TQDM_DISABLE sets
    for step in tqdm(range(start, cfg.steps), desc=desc, unit="upd", leave=False, initial=start, total=cfg.steps,
                     dynamic_ncols=True, **off):
        factor = cfg.lr_factor(step)
        _set_lr(job.optimizer, cfg.lr * factor)
        aux_losses = []
        if job.aux is not None:
            _set_lr(job.aux.optimizer, job.aux.lr * factor)
            for _ in range(job.aux.updates):
                aux_loss = job.aux.loss(rng)
                job.aux.optimizer.zero_grad(set_to_none=True)
                aux_loss.backward()
                job.aux.optimizer.step()
                aux_losses.append(aux_loss.item())
        loss, stats = module(job.batches.draw(rng, rank, size))
        job.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.max_grad_norm is not None:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        job.optimizer.step()
        if job.ema is not None:
            job.ema.update()
        if job.after_step is not None:
            job.after_step()
        mean_loss = loss.detach().clone()
        if size > 1:
            dist.all_reduce(mean_loss)
            mean_loss /= size
        value = float(mean_loss)
        losses.append(value)
        if not math.isfinite(value):
            raise FloatingPointError(f"{desc}: the loss became non-finite at update {step}; lower the learning rate "
                                     f"(now {cfg.lr})")
        row = {k: float(v) for k, v in stats.items()}
        if aux_losses:
            row[job.aux.name] = float(np.mean(aux_losses))
        history.append(row)
        done = step + 1
        if rank == 0 and on_log is not None and done % log_every == 0:
            on_log(done, float(np.mean(losses[-log_every:])))
        if path is not None and (done == cfg.steps or (cfg.checkpoint_every and done % cfg.checkpoint_every == 0)):
            if rank == 0:
                _save(path, job, done, rng, losses, history)
            if size > 1:
                dist.barrier()
    model.eval()
    tail = history[-max(1, len(history) // 10):]
    stats = {k: float(np.mean([h[k] for h in tail if k in h])) for k in (tail[0] if tail else {})}
    return FitResult(cfg.steps, losses, stats, start)
