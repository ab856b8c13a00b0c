"""DAgger student updates over a run's stored episodes, under torchrun (or in one process).

    torchrun --standalone --nproc_per_node=2 -m policydistill.scale.ddp_train run=runs/dagger updates=2000
    policydistill train-student run=runs/dagger nproc=2 updates=2000      # the same, launched for you

The student bundle of the run is the starting point; its loss (``loss``, ``loss_params``) and per-task
balanced sampling come from the run's ``distill.json``. Rank 0 writes the bundle, the checkpoint,
``train_student.json`` and TensorBoard logs; a rerun resumes from the checkpoint.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from policydistill.bundle import load_bundle, save_bundle
from policydistill.config import TrainStudentConfig
from policydistill.data.shards import EpisodeStore
from policydistill.distill.losses import make_loss
from policydistill.io import atomic_write_json, read_json
from policydistill.scale.ddp import FitConfig, fit, init_from_env, world
from policydistill.types import TASK

log = logging.getLogger(__name__)


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


def train_student(cfg: TrainStudentConfig) -> dict[str, Any]:
    """Run on this process as rank ``RANK`` of ``WORLD_SIZE`` (1 without torchrun); returns the summary."""
    device = init_from_env(cfg.device)
    rank, size = world()
    run = Path(cfg.run)
    if not (run / "distill.json").is_file():
        raise FileNotFoundError(f"{run} is not a distill run: it has no distill.json")
    out = Path(cfg.out) if cfg.out else run / "student_ddp"
    dcfg = read_json(run / "distill.json")["config"]
    student = load_bundle(run / "student", device=device, frozen=False)
    store = EpisodeStore(run / "episodes")
    data = student_dataset(store, student.groups)
    loss_fn = make_loss(dcfg["loss"], teacher_has_std="std" in data, student_has_std=student.log_std is not None,
                        **dcfg.get("loss_params", {}))
    weights = None
    if dcfg.get("balance_tasks", True):
        counts = np.bincount(data["task"])
        weights = 1.0 / counts[data["task"]]
    data.pop("task")

    def loss_on_batch(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return loss_fn(model.raw(batch["x"]), batch["y"], student_log_std=model.log_std, teacher_std=batch.get("std"))

    tb = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        tb = SummaryWriter(str(out / "tb"))
    fit_cfg = FitConfig(steps=cfg.updates, batch_size=cfg.batch_size, lr=cfg.lr or dcfg["lr"], seed=cfg.seed,
                        checkpoint_every=cfg.checkpoint_every)
    t0 = time.perf_counter()
    result = fit(student, loss_on_batch, data, fit_cfg, checkpoint=out / "checkpoint.pt", sample_weights=weights,
                 device=device, on_log=(lambda step, loss: tb.add_scalar("train/loss", loss, step)) if tb else None)
    tail = result.losses[-max(1, cfg.updates // 10):]
    summary = {"run": str(run), "world_size": size, "updates": cfg.updates, "resumed_from": result.resumed_from,
               "dataset_steps": len(data["x"]), "final_loss": float(np.mean(tail)),
               "wall_time_s": round(time.perf_counter() - t0, 2), "config": asdict(cfg)}
    if rank == 0:
        save_bundle(student, out / "bundle", meta={"train_student": asdict(cfg), "world_size": size})
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
    if cfg.nproc < 1:
        raise ValueError(f"nproc must be at least one, got {cfg.nproc}")
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
