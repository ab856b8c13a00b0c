"""Student updates over a run's stored episodes, under torchrun (or in one process).

    torchrun --standalone --nproc_per_node=2 -m policydistill.scale.ddp_train run=runs/dagger updates=2000
    policydistill train-student run=runs/dagger nproc=2 updates=2000      # the same, launched for you

What is trained follows the run's ``distill.json`` (:data:`JOBS`):

- DAgger/BC/kickstart runs: the MLP student, with the run's loss (``loss``, ``loss_params``) and
  per-task balanced sampling;
- ``method=diffusion`` runs: the diffusion policy's DDPM loss (:func:`~policydistill.distill.diffusion.diffusion_loss`),
  cosine learning-rate decay and an EMA of the weights (the EMA is what is saved);
- ``method=onestep`` runs: the run's one-step algorithm (``dmd_det``, ``consistency``, ``regression``;
  its :meth:`~policydistill.distill.onestep.OneStepAlgo.student_loss`) against the run's diffusion teacher.

Each starts from the run's student bundle and uses the loss function the single-process distiller
uses; noise is drawn per row of the global batch, so N processes follow one. Rank 0 writes the
bundle, the checkpoint, ``train_student.json`` and TensorBoard logs; a rerun resumes from the checkpoint.
"""

from __future__ import annotations

import copy
import logging
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from policydistill.bundle import is_bundle, load_bundle, save_bundle
from policydistill.config import OneStepConfig, TrainStudentConfig
from policydistill.data.sampling import task_weights
from policydistill.data.shards import EpisodeStore
from policydistill.distill.losses import make_loss
from policydistill.io import atomic_write_json, read_json
from policydistill.models.generalist import action_mask
from policydistill.scale.ddp import FitConfig, LossOnBatch, RandomDraw, fit, init_from_env, world
from policydistill.types import TASK

log = logging.getLogger(__name__)


@dataclass
class StudentJob:
    """What :func:`fit` trains for one kind of run (see its arguments) and the module saved as the bundle."""

    model: nn.Module
    loss_on_batch: LossOnBatch
    data: Mapping[str, np.ndarray | torch.Tensor]
    lr: float
    bundle: nn.Module
    sample_weights: np.ndarray | None = None
    draw_random: RandomDraw | None = None
    lr_factor: Callable[[int], float] | None = None
    after_step: Callable[[int], None] | None = None
    keep: dict[str, nn.Module] = field(default_factory=dict)


def student_dataset(store: EpisodeStore, groups: tuple[str, ...]) -> dict[str, np.ndarray]:
    """``x`` (N, obs_dim) = the student's groups concatenated, ``y`` (N, act_dim) = teacher label mean,
    ``std`` (N, act_dim) when the store has teacher stds, ``task`` (N,) task index."""
    names = [f"obs/{g}" for g in dict.fromkeys([*groups, TASK])] + ["label_mean"]
    names += ["label_std"] if "label_std" in store.fields else []
    raw = store.load(names)
    data = {"x": np.concatenate([raw[f"obs/{g}"] for g in groups], axis=1), "y": raw["label_mean"],
            "task": raw[f"obs/{TASK}"].argmax(1)}
    if "label_std" in raw:
        data["std"] = raw["label_std"]
    return data


def mlp_job(run: Path, dcfg: dict[str, Any], cfg: TrainStudentConfig, device: torch.device) -> StudentJob:
    """The run's MLP student on its episodes' teacher labels, with the run's loss."""
    student = load_bundle(run / "student", device=device, frozen=False)
    if getattr(student, "stateful", False):
        raise ValueError(f"{run}: train-student trains stateless (MLP) students on i.i.d. steps; this history "
                         f"student ({type(student).__name__}) trains on whole episodes in 'distill'")
    data = student_dataset(EpisodeStore(run / "episodes"), student.groups)
    loss_fn = make_loss(dcfg["loss"], teacher_has_std="std" in data, student_has_std=student.log_std is not None,
                        **dcfg.get("loss_params", {}))
    weights = task_weights(data["task"]) if dcfg.get("balance_tasks", True) else None
    mask = action_mask(student, data.pop("task"))  # a padded student: each row's real action dims only
    if mask is not None:
        data["mask"] = mask.cpu().numpy()

    def loss_on_batch(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return loss_fn(model.raw(batch["x"]), batch["y"], student_log_std=model.log_std, teacher_std=batch.get("std"),
                       mask=batch.get("mask"))

    return StudentJob(student, loss_on_batch, data, cfg.lr or dcfg["lr"], student, sample_weights=weights)


def diffusion_job(run: Path, dcfg: dict[str, Any], cfg: TrainStudentConfig, device: torch.device) -> StudentJob:
    """The run's diffusion policy (from its EMA weights) on windows of its episodes (+ its ``diffusion.data``)."""
    from policydistill.data.chunks import chunk_windows
    from policydistill.distill.diffusion import cosine_lr, diffusion_loss, diffusion_noise, ema_decay, update_ema

    d = dcfg["diffusion"]
    policy = load_bundle(run / "student", device=device, frozen=False)
    ema = copy.deepcopy(policy).frozen()
    data = chunk_windows([run / "episodes", *d["data"]], policy.groups, policy.n_obs_steps, policy.horizon,
                         device=device)
    return StudentJob(policy, diffusion_loss, data.rows(), cfg.lr or d["lr"], ema,
                      sample_weights=data.sample_weights(dcfg.get("balance_tasks", True)),
                      draw_random=lambda rng, n: diffusion_noise(policy, rng, n),
                      lr_factor=lambda step: cosine_lr(step, cfg.updates),
                      after_step=lambda step: update_ema(ema, policy, ema_decay(step, d["ema_decay"])),
                      keep={"ema": ema})


def onestep_job(run: Path, dcfg: dict[str, Any], cfg: TrainStudentConfig, device: torch.device) -> StudentJob:
    """The run's one-step student, trained further by its algorithm against the run's diffusion teacher."""
    from policydistill.data.chunks import chunk_windows
    from policydistill.distill.diffusion import cosine_lr
    from policydistill.distill.onestep import make_algo

    o = OneStepConfig(**dcfg["onestep"])
    if o.algo == "dmd":
        raise ValueError("train-student does not run onestep.algo=dmd: its auxiliary score network takes "
                         "aux_updates steps with an optimiser of its own between generator steps, which the "
                         "single-optimiser DDP loop does not carry; distil it in one process (policydistill distill "
                         "method=onestep onestep.algo=dmd), or use dmd_det, consistency or regression")
    teacher_path = Path(dcfg["teachers"])
    if not is_bundle(teacher_path):
        raise FileNotFoundError(f"the run's diffusion teacher {teacher_path} (its distill.json 'teachers') is not "
                                "a bundle here; run train-student from the folder the run was made in")
    teacher = load_bundle(teacher_path, device=device)
    data = chunk_windows([run / "episodes", *o.data], teacher.groups, teacher.n_obs_steps, teacher.horizon,
                         device=device)
    algo = make_algo(o.algo, teacher, o, data, cfg.batch_size, np.random.default_rng(cfg.seed))
    algo.student.load_state_dict(load_bundle(run / "student", device=device, frozen=False).state_dict())
    algo.prepare()  # fixed pairs and target networks, the same on every rank (seeded)
    return StudentJob(algo.student, lambda model, batch: algo.student_loss(model, batch)[0], algo.dataset(),
                      cfg.lr or o.lr, algo.student, sample_weights=algo.sample_weights(), draw_random=algo.randoms,
                      lr_factor=lambda step: cosine_lr(step, cfg.updates), after_step=lambda step: algo.after_step(),
                      keep=algo.state_modules())


JOBS: dict[str, Callable[[Path, dict[str, Any], TrainStudentConfig, torch.device], StudentJob]] = {
    "diffusion": diffusion_job, "onestep": onestep_job}


def check_config(cfg: TrainStudentConfig) -> None:
    """Counts that must be whole numbers >= 1, checked before any process starts or data loads."""
    for name in ("nproc", "updates", "batch_size", "checkpoint_every"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int of at least one, got {value!r}")


def train_student(cfg: TrainStudentConfig) -> dict[str, Any]:
    """Run on this process as rank ``RANK`` of ``WORLD_SIZE`` (1 without torchrun); returns the summary."""
    check_config(cfg)
    device = init_from_env(cfg.device)
    rank, size = world()
    run = Path(cfg.run)
    if not (run / "distill.json").is_file():
        raise FileNotFoundError(f"{run} is not a distill run: it has no distill.json")
    out = Path(cfg.out) if cfg.out else run / "student_ddp"
    summary_in = read_json(run / "distill.json")
    method = summary_in["method"]
    job = JOBS.get(method, mlp_job)(run, summary_in["config"], cfg, device)
    tb = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        tb = SummaryWriter(str(out / "tb"))
    fit_cfg = FitConfig(steps=cfg.updates, batch_size=cfg.batch_size, lr=job.lr, seed=cfg.seed,
                        checkpoint_every=cfg.checkpoint_every)
    t0 = time.perf_counter()
    result = fit(job.model, job.loss_on_batch, job.data, fit_cfg, checkpoint=out / "checkpoint.pt",
                 sample_weights=job.sample_weights, device=device,
                 on_log=(lambda step, loss: tb.add_scalar("train/loss", loss, step)) if tb else None,
                 draw_random=job.draw_random, lr_factor=job.lr_factor, after_step=job.after_step, keep=job.keep)
    tail = result.losses[-max(1, cfg.updates // 10):]
    summary = {"run": str(run), "method": method, "world_size": size, "updates": cfg.updates,
               "resumed_from": result.resumed_from, "dataset_rows": len(next(iter(job.data.values()))),
               "final_loss": float(np.mean(tail)), "wall_time_s": round(time.perf_counter() - t0, 2),
               "config": asdict(cfg)}
    if rank == 0:
        save_bundle(job.bundle.eval(), out / "bundle", meta={"train_student": asdict(cfg), "world_size": size})
        atomic_write_json(out / "train_student.json", summary)
        tb.close()
        log.info("trained %d updates on %d process(es): loss %.5f; bundle %s", cfg.updates, size,
                 summary["final_loss"], out / "bundle")
    if size > 1:
        dist.barrier()
        dist.destroy_process_group()
    return summary


def launch(cfg: TrainStudentConfig) -> None:
    """``nproc`` 1: train here; more: run this module under torch.distributed.run (standalone, this machine)."""
    check_config(cfg)
    if cfg.nproc == 1:
        train_student(cfg)
        return
    overrides = [f"{f.name}={'null' if getattr(cfg, f.name) is None else getattr(cfg, f.name)}"
                 for f in fields(cfg) if f.name != "nproc"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={cfg.nproc}",
           "-m", "policydistill.scale.ddp_train", *overrides]
    log.info("launching %s", " ".join(cmd))
    subprocess.run(cmd, check=True)


def main(argv: list[str] | None = None) -> int:
    from policydistill.cli import compose_config

    logging.basicConfig(level=logging.INFO if world()[0] == 0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(1)
    cfg = compose_config("train-student", sys.argv[1:] if argv is None else argv)
    train_student(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
