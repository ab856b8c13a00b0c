"""Confidence weights: how much each labelled step counts in the student's loss.

``teacher_std``: a teacher with a state-dependent Gaussian (an SB3 SAC expert keeps its std head, see
:mod:`policydistill.models.mlp`) says where it is sure. Each labelled step is weighed by its label's precision
``1 / mean_d(std_d ** 2)``, over the precision's mean on the labelled steps (so the weights average 1), capped
at ``cap``: a few near-deterministic states do not take over the loss. A teacher whose std does not depend on
the state (PPO) gives every step the same weight.
"""

from __future__ import annotations

import numpy as np

CONFIDENCE = ("none", "teacher_std")
MIN_STD = 1e-3
"""Stds are clamped below at this before their precision is taken."""


def precision_weights(std: np.ndarray, labelled: np.ndarray, cap: float) -> np.ndarray:
    """Label stds (N, act_dim) and which steps hold a label (N,) bool -> weights (N,) float32: the precision over
    its mean on the labelled steps, at most ``cap``; 0 on the others."""
    precision = 1.0 / np.mean(np.maximum(std.astype(np.float64), MIN_STD) ** 2, axis=1)
    if not labelled.any():
        return np.zeros(len(std), dtype=np.float32)
    weight = np.minimum(precision / precision[labelled].mean(), cap)
    return np.where(labelled, weight, 0.0).astype(np.float32)
