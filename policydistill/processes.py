"""Worker processes of this machine that die with the process that started them.

A worker started by ``spawn`` outlives a parent killed alone (``kill -9`` of its pid): it finishes the task in hand
and, until then, holds that task's run folder. On Linux each worker here asks the kernel for a SIGKILL when its
parent goes (``PR_SET_PDEATHSIG``); elsewhere it lives as before.
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import signal
import sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing.managers import SyncManager

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def die_with(parent: int) -> None:
    """In a worker: be killed when ``parent`` (the pid that started it) ends, or now if it already has."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request reached the kernel
        os._exit(1)


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """A pool of ``workers`` spawned processes (no state shared with this one), each dying with this process."""
    return ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"), initializer=die_with,
                               initargs=(os.getpid(),))


def manager() -> SyncManager:
    """A started spawned manager (its queues reach the workers of :func:`worker_pool`) dying with this process;
    use it as a context manager to shut it down."""
    started = SyncManager(ctx=mp.get_context("spawn"))
    started.start(die_with, (os.getpid(),))
    return started
