"""A pipeline stage's distillation runs on worker processes of this machine, one progress bar over them.

Each run is seeded and takes one torch thread, so a run on a worker ends where it ends in the pipeline's own
process. Workers log warnings only, each line naming its run, and draw no bars of their own: they start at submit,
with ``TQDM_DISABLE`` set for them to read as they import.
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import as_completed
from typing import Any

import torch
from tqdm import tqdm

from policydistill.distill.runner import DistillConfig, distill
from policydistill.processes import worker_pool

log = logging.getLogger(__name__)


def distill_timed(cfg: DistillConfig, name: str) -> tuple[dict[str, Any], float]:
    """One distillation on a worker (one torch thread, warnings naming ``name``): ``distill.json``'s content and
    its wall time in seconds."""
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING, format=f"%(levelname)s {name}: %(message)s", force=True)
    t0 = time.perf_counter()
    return distill(cfg), time.perf_counter() - t0


def distill_all(configs: dict[str, DistillConfig], workers: int, what: str) -> dict[str, tuple[dict[str, Any], float]]:
    """:func:`distill_timed` of each of ``configs`` (taken in its order) on ``workers`` processes, under a bar
    named ``what``: each run's summary and wall time, keyed as ``configs``."""
    done: dict[str, tuple[dict[str, Any], float]] = {}
    if not configs:
        return done
    before = os.environ.get("TQDM_DISABLE")
    with worker_pool(min(workers, len(configs))) as pool:
        os.environ["TQDM_DISABLE"] = "1"
        try:
            futures = {pool.submit(distill_timed, c, f"{what} {name}"): name for name, c in configs.items()}
        finally:
            if before is None:
                del os.environ["TQDM_DISABLE"]
            else:
                os.environ["TQDM_DISABLE"] = before
        with tqdm(total=len(futures), desc=what, unit="run", dynamic_ncols=True) as bar:
            for fut in as_completed(futures):
                name = futures[fut]
                run, seconds = done[name] = fut.result()
                log.info("%s %s: mean score %.3f after %.0f s", what, name, run["rounds"][-1]["mean_score"], seconds)
                bar.update()
    return done
