"""Shared fixtures: suites and simple policies built from the project's real parts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from policydistill.cli import main
from policydistill.eval.video import configure_headless_gl
from policydistill.policy import CallablePolicy
from policydistill.suite import Suite, load_suite

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


TINY = ["expert.n_envs=4", "expert.eval_every=1024", "expert.eval_episodes=4", "expert.checkpoint_every=1024",
        "expert.hyperparams.n_steps=128", "expert.hyperparams.batch_size=128", "expert.hyperparams.n_epochs=2"]


@pytest.fixture(scope="session")
def tiny_experts(tmp_path_factory) -> Path:
    """Experts for the default suite's north and east tasks, trained for 2048 steps by the real CLI."""
    out = tmp_path_factory.mktemp("experts")
    args = ["train-experts", "suite=default", f"out={out}", "workers=2", "tasks=[north,east]",
            "expert.total_steps=2048", *TINY]
    assert main(args) == 0
    return out
