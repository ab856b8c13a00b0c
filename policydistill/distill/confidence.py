"""Confidence weights: how much each labelled step counts in the student's loss.

``teacher_std``: a teacher with a state-dependent Gaussian (an SB3 SAC expert keeps its std head, see
:mod:`policydistill.models.mlp`) says where it is sure. Each labelled step is weighed by its label's precision
``1 / mean_d(std_d ** 2)``, over the precision's mean on the labelled steps (so the weights average 1), capped
at ``cap``: a few near-deterministic states do not take over the loss. A teacher whose std does not depend on
the state (PPO) gives every step the same weight.

``advantage``: a teacher that keeps its critic (SB3 SAC and TD3 experts, see :mod:`policydistill.models.mlp`)
judges each label a by ``A = Q(s, a) - Q(s, its own action)``, recorded when the label is given. A label is
weighed by ``exp(A / std(A))`` (the std over the labelled steps: advantage-weighted regression at a temperature
set by the data), over its mean, capped at ``cap``: labels the critic finds worse than the teacher's own
action (a noisy demonstrator's slips) count less. A teacher labelling with its own action gives A = 0, every
weight 1.
"""

from __future__ import annotations

import numpy as np

CONFIDENCE = ("none", "teacher_std", "advantage")
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


def advantage_weights(advantage: np.ndarray, labelled: np.ndarray, cap: float) -> np.ndarray:
    """Label advantages (N,) and which steps hold a label (N,) bool -> weights (N,) float32: ``exp(A / std(A))``
    over its mean on the labelled steps, at most ``cap``; 0 on the others (1 on every labelled step where the
    advantages do not vary)."""
    if not labelled.any():
        return np.zeros(len(advantage), dtype=np.float32)
    a = advantage.astype(np.float64)
    scale = a[labelled].std()
    if scale <= 0:
        return labelled.astype(np.float32)
    z = (a - a[labelled].max()) / scale  # <= 0 on the labelled steps: no overflow
    weight = np.exp(np.where(labelled, z, 0.0))
    weight = np.minimum(weight / weight[labelled].mean(), cap)
    return np.where(labelled, weight, 0.0).astype(np.float32)
