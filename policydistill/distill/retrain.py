"""``policydistill train-student``: more student updates over a finished run's stored episodes, on one
process or N (DDP through torchrun), with the fit job the run's method itself runs.

    policydistill train-student run=runs/dagger nproc=2 updates=2000
    torchrun --standalone --nproc_per_node=2 -m policydistill train-student run=runs/dagger updates=2000

The run's method is rebuilt from its ``distill.json`` and its last finished round (student, optimiser, EMA,
target networks); its fit job (:meth:`~policydistill.distill.algorithm.Algorithm.fit_job`) runs for
``updates`` updates of ``batch_size`` rows (global: split over the processes), each process drawing the
same global batch from the seeded generator. Rank 0 writes ``out`` (default ``<run>/student_ddp``):
``bundle/``, ``checkpoint.pt`` (a rerun resumes from it; ``out`` is a :class:`~policydistill.run_folder.RunFolder`,
so a rerun with another config is refused, ``resume=extend`` lets ``updates`` grow), ``train_student.json`` and
``tb/``. Only the run's finished rounds' episodes are read, under a shared lock of the run's folder. Methods
without a fit job over stored episodes (``kickstart``: SB3's rollouts) are refused, and so is an auxiliary
network with an optimiser of its own on more than one process (``onestep`` ``dmd``). A rerun resumes from the
checkpoint exactly, but for recurrent students, whose truncated-BPTT sequences restart from their episodes'
starts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from policydistill.bundle import save_bundle
from policydistill.configs import require_device, require_int, require_lr
from policydistill.data.shards import EpisodeStore
from policydistill.distill.algorithm import Algorithm, Context
from policydistill.distill.fit import fit, init_from_env, world
from policydistill.distill.methods import METHODS
from policydistill.distill.runner import DistillConfig, load_round
from policydistill.files import RunLock, atomic_write_json, read_json_object
from policydistill.run_folder import RunFolder, resume_mode
from policydistill.scale.torchrun import holds_lock
from policydistill.suites import load_suite
from policydistill.teachers import policies_for_suite

log = logging.getLogger(__name__)


@dataclass
class TrainStudentConfig:
    """Student updates over a ``distill`` run's stored episodes (``run``: its output folder), on ``nproc``
    processes (DDP through torch.distributed.run; 1 = this process): ``updates`` updates of ``batch_size``
    rows (global) at ``lr`` (None: the run's), drawn from ``seed``; a checkpoint every ``checkpoint_every``
    updates; written to ``out`` (None: ``<run>/student_ddp``)."""

    run: str = "???"
    out: str | None = None
    updates: int = 1000
    batch_size: int = 256
    lr: float | None = None
    seed: int = 0
    checkpoint_every: int = 200
    nproc: int = 1
    device: str = "auto"
    resume: str = "auto"

    def __post_init__(self) -> None:
        require_device(self.device)
        self.resume = resume_mode(self.resume)
        for name in ("updates", "batch_size", "checkpoint_every", "nproc"):
            require_int(name, getattr(self, name))
        if self.lr is not None:
            require_lr("lr", self.lr)


def check_run(run: Path, processes: int) -> tuple[dict[str, Any], DistillConfig]:
    """The run's distill.json and config, when train-student can train it on ``processes`` processes."""
    if not (run / "distill.json").is_file():
        raise FileNotFoundError(f"{run} is not a distill run: it has no distill.json")
    summary = read_json_object(run / "distill.json", ("method", "config", "rounds"), "a distill summary")
    cfg = DistillConfig.from_dict(summary["config"])
    cls = METHODS[summary["method"]]
    if cls.fit_job is Algorithm.fit_job:
        raise ValueError(f"{run}: method '{cls.name}' does not train from stored episodes with the fit loop "
                         f"({cls.not_read}); train-student runs bc, dagger, gated, onpolicy, diffusion and onestep "
                         "runs")
    if not summary["rounds"]:
        raise ValueError(f"{run} has no finished round to train further")
    EpisodeStore(run / "episodes")  # a missing or damaged manifest is refused before anything is written
    reason = cls.one_process_only(cfg.method)
    if processes > 1 and reason:
        raise ValueError(f"{run}: {reason}")
    return summary, cfg


def rebuild(run: Path, device: torch.device, processes: int = 1) -> tuple[Algorithm, int]:
    """The run's method at its last finished round, and that round."""
    summary, cfg = check_run(run, processes)
    cls = METHODS[summary["method"]]
    suite = load_suite(cfg.suite)
    teachers = policies_for_suite(cfg.teachers, suite, device=str(device))
    algo = cls.build(cfg.method, Context(suite, teachers, cfg.student, device, cfg.seed, cfg.teachers))
    r = summary["rounds"][-1]["round"]
    load_round(algo, run / "checkpoint", r, device)
    return algo, r


def output_folder(cfg: TrainStudentConfig) -> Path:
    return Path(cfg.out) if cfg.out else Path(cfg.run) / "student_ddp"


def locked(cfg: TrainStudentConfig) -> contextlib.AbstractContextManager:
    """The output folder as a :class:`RunFolder` and a shared lock of the run it reads (none for the ranks
    whose launcher holds them)."""
    stack = contextlib.ExitStack()
    if holds_lock():
        stack.enter_context(RunLock(cfg.run, "train-student (reading)", shared=True))
        stack.enter_context(RunFolder(output_folder(cfg), "train-student", dataclasses.asdict(cfg),
                                      extendable=("updates",), free=("nproc", "checkpoint_every")))
    return stack


def train_student(cfg: TrainStudentConfig) -> dict[str, Any]:
    """Run on this process as rank ``RANK`` of ``WORLD_SIZE`` (1 without torchrun); returns the summary."""
    check_run(Path(cfg.run), int(os.environ.get("WORLD_SIZE", 1)))
    with locked(cfg):
        return _train(cfg)


def _train(cfg: TrainStudentConfig) -> dict[str, Any]:
    device = init_from_env(cfg.device)
    rank, size = world()
    run = Path(cfg.run)
    out = output_folder(cfg)
    algo, r = rebuild(run, device, size)
    store = EpisodeStore(run / "episodes", max_round=r)
    job = algo.fit_job(store, r, steps=cfg.updates, batch_size=cfg.batch_size, lr=cfg.lr)
    job.cfg = dataclasses.replace(job.cfg, checkpoint_every=cfg.checkpoint_every)
    tb = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        tb = SummaryWriter(str(out / "tb"))
    t0 = time.perf_counter()
    result = fit(job, np.random.default_rng(cfg.seed), checkpoint=out / "checkpoint.pt",
                 on_log=(lambda step, loss: tb.add_scalar("train/loss", loss, step)) if tb else None,
                 desc="train-student")
    summary = {"run": str(run), "method": algo.name, "world_size": size, "updates": cfg.updates,
               "resumed_from": result.resumed_from, "dataset_rows": job.batches.sampler.n,
               "final_loss": float(np.mean(result.losses[-max(1, cfg.updates // 10):])),
               "wall_time_s": round(time.perf_counter() - t0, 2), "config": dataclasses.asdict(cfg)}
    if rank == 0:
        save_bundle(algo.policy().eval(), out / "bundle", meta={"train_student": dataclasses.asdict(cfg),
                                                               "world_size": size}, obs_keys=algo.ctx.suite.keymap)
        atomic_write_json(out / "train_student.json", summary)
        tb.close()
        log.info("trained %d updates on %d process(es): loss %.5f; bundle %s", cfg.updates, size,
                 summary["final_loss"], out / "bundle")
    if size > 1:
        dist.barrier()
        dist.destroy_process_group()
    algo.close()
    return summary
