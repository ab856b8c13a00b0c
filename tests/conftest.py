"""Shared fixtures: suites and simple policies built from the project's real parts."""

from __future__ import annotations

import numpy as np
import pytest

from policydistill.policy import CallablePolicy
from policydistill.suite import Suite, load_suite


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
