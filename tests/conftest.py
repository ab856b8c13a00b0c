"""Shared fixtures: suites and simple policies built from the project's real parts."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from tqdm import tqdm

from policydistill.cli import main
from policydistill.eval.video import configure_headless_gl
from policydistill.policy import CallablePolicy
from policydistill.suites import Suite, load_suite

torch.set_num_threads(1)  # as the CLI does: small-batch inference is far faster on one thread
configure_headless_gl()  # EGL with a GPU driver, OSMesa otherwise, as the library picks for videos


@pytest.fixture(scope="session")
def default_suite() -> Suite:
    return load_suite("default")


def goal_seeker(gain: float = 8.0) -> CallablePolicy:
    """Scripted PointReach controller: PD toward the target read from the privileged group."""

    def act(x: np.ndarray) -> np.ndarray:
        pos, vel, target = x[:, 0:2], x[:, 2:4], x[:, 4:6]
        return np.clip(gain * (target - pos) - 1.0 * vel, -1, 1)

    return CallablePolicy(act, groups=("policy", "privileged"), batched=True)


@pytest.fixture
def seeker() -> CallablePolicy:
    return goal_seeker()


TINY = ["expert.n_envs=4", "expert.eval_every=1024", "expert.eval_episodes=4", "expert.final_episodes=4",
        "expert.checkpoint_every=1024", "expert.hyperparams.n_steps=128", "expert.hyperparams.batch_size=128",
        "expert.hyperparams.n_epochs=2"]


@pytest.fixture(scope="session")
def tiny_experts(tmp_path_factory) -> Path:
    """Experts for the default suite's north and east tasks, trained for 2048 steps by the real CLI."""
    out = tmp_path_factory.mktemp("experts")
    args = ["train-experts", "suite=default", f"out={out}", "workers=2", "tasks=[north,east]",
            "expert.total_steps=2048", *TINY]
    assert main(args) == 0
    return out


def _quiet_main(argv: list[str]) -> None:
    os.setsid()
    # tqdm's write lock is a semaphore shared with the parent; a SIGKILL while holding it would block the parent
    tqdm.set_lock(threading.RLock())
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    main(argv)


def run_and_kill(argv: list[str], ready: Callable[[], bool], timeout: float = 120.0) -> None:
    """``policydistill <argv>`` in a process group of its own (forked from this process: no start-up cost),
    killed with SIGKILL, the worker processes it started included, as soon as ``ready()``; an error if it
    ends first."""
    proc = multiprocessing.get_context("fork").Process(target=_quiet_main, args=(argv,))
    proc.start()
    try:
        deadline = time.monotonic() + timeout
        while not ready() and proc.is_alive() and time.monotonic() < deadline:
            time.sleep(0.005)
        assert proc.is_alive(), "the run ended before it could be killed"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.join(30)


@pytest.fixture(scope="session")
def ray_instance():
    """One local Ray instance (2 CPUs) for every test that needs one: its start-up is paid once."""
    from policydistill.scale.ray_session import RayConfig, ray_session

    with ray_session(RayConfig(num_cpus=2)) as ray:
        yield ray
