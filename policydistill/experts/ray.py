"""``train-experts launcher=ray``: one Ray task per expert, each with its CPU/GPU request.

A task trains exactly as a local worker process does (:func:`~policydistill.experts.run.train_task`,
writing under ``out/<task>``, resuming from its checkpoint). It then returns the files of its task
folder (bundle, result, curve, logs; not the checkpoints), which the driver writes where they are
missing or differ, so results land in the same folder layout even when the task ran on a machine
without the driver's filesystem. Resuming an interrupted task needs ``out`` on a shared filesystem.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from tqdm import tqdm

from policydistill.experts.run import ExpertConfig, train_task
from policydistill.files import atomic_write_bytes, atomic_write_json
from policydistill.scale.ray_session import RayConfig, ray_session
from policydistill.suites import Suite

log = logging.getLogger(__name__)


def _task_files(task_dir: Path) -> dict[str, bytes]:
    """The task folder's files (relative path -> bytes), checkpoints left out."""
    return {str(p.relative_to(task_dir)): p.read_bytes() for p in sorted(task_dir.rglob("*"))
            if p.is_file() and not p.name.startswith(("ckpt-", "checkpoint.json", "."))}


def _train_task(suite: Suite, task: int, cfg: ExpertConfig, out: str, seed: int, device: str) -> tuple[dict, dict]:
    result = train_task(suite, task, cfg, out, seed, device)
    return result, _task_files(Path(out) / suite.tasks[task].name)


def _land(task_dir: Path, files: dict[str, bytes]) -> None:
    """Write the returned files where this machine does not already have them; result.json last."""
    for rel in sorted(files, key=lambda r: r == "result.json"):
        path = task_dir / rel
        if not path.is_file() or path.read_bytes() != files[rel]:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, files[rel])


def run_ray(suite: Suite, pending: list[int], cfg: ExpertConfig, out: Path, seed: int, device: str,
            summary: dict[str, Any], summary_path: Path, failures: dict[str, str], ray_cfg: RayConfig) -> None:
    """Train the ``pending`` tasks as Ray tasks; fill ``summary`` (saved after each) and ``failures``."""
    with ray_session(ray_cfg) as ray:
        remote = ray.remote(num_cpus=ray_cfg.cpus_per_task, num_gpus=ray_cfg.gpus_per_task, max_retries=0)(_train_task)
        refs = {remote.remote(suite, i, cfg, str(out.resolve()), seed, device): suite.tasks[i].name for i in pending}
        log.info("submitted %d expert tasks to Ray (%s CPU, %s GPU each)", len(refs), ray_cfg.cpus_per_task,
                 ray_cfg.gpus_per_task)
        with tqdm(total=len(refs), desc="experts (ray)", unit="task", dynamic_ncols=True) as bar:
            while refs:
                done, _ = ray.wait(list(refs), num_returns=1)
                for ref in done:
                    name = refs.pop(ref)
                    try:
                        result, files = ray.get(ref)
                        _land(out / name, files)
                        summary["tasks"][name] = result
                        atomic_write_json(summary_path, summary)
                    except Exception as e:  # one task failing must not lose the others
                        failures[name] = f"{type(e).__name__}: {e}"
                        log.error("expert %s failed: %s", name, failures[name])
                    bar.update(1)
