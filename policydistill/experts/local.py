"""``launcher=local``: expert tasks in parallel worker processes of this machine, a progress bar per task."""

from __future__ import annotations

import logging
import queue
from pathlib import Path

from tqdm import tqdm

from policydistill.experts.run import ExpertConfig, train_task
from policydistill.files import atomic_write_json
from policydistill.processes import manager, worker_pool
from policydistill.suites import Suite

log = logging.getLogger(__name__)


def run_local(suite: Suite, pending: list[int], cfg: ExpertConfig, out: Path, workers: int, seed: int,
              device: str, summary: dict, summary_path: Path, failures: dict[str, str]) -> None:
    """Train the ``pending`` tasks on ``workers`` processes; fill ``summary`` (saved after each) and ``failures``."""
    with manager() as queues:
        progress = queues.Queue()
        bars = {suite.tasks[i].name: tqdm(total=cfg.total_steps or suite.tasks[i].train_steps, position=k,
                                          desc=f"{suite.tasks[i].name:>12}", unit="step", leave=True,
                                          dynamic_ncols=True)
                for k, i in enumerate(pending)}
        with worker_pool(max(1, min(workers, len(pending)))) as pool:
            futures = {pool.submit(train_task, suite, i, cfg, str(out), seed, device, progress):
                       suite.tasks[i].name for i in pending}
            while futures:
                try:
                    name, steps, total = progress.get(timeout=0.5)
                    bars[name].total = total
                    bars[name].update(steps - bars[name].n)
                except queue.Empty:
                    pass
                for fut in [f for f in futures if f.done()]:
                    name = futures.pop(fut)
                    try:
                        summary["tasks"][name] = fut.result()
                        atomic_write_json(summary_path, summary)
                    except Exception as e:  # one task failing must not lose the others
                        failures[name] = f"{type(e).__name__}: {e}"
                        log.error("expert %s failed: %s", name, failures[name])
        for bar in bars.values():
            bar.close()

