"""Several teachers of one task as one: they label with their mean action, and their spread is the label's std.

A folder of teachers may hold, for a task, a folder of bundles (``<teachers>/<task>/<member>/policy.json``)
instead of one bundle: the task's teacher is then an :class:`EnsembleTeacher` of them. Its label's std says how
much the members disagree at a state, so ``method.confidence=teacher_std`` weighs each label by the members'
agreement (see :mod:`policydistill.distill.confidence`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from policydistill.policy import Policy
from policydistill.types import ActionLabel, ObsGroups, select_groups


class EnsembleTeacher:
    """``members`` (k >= 2 policies of one task) acting and labelling as one teacher: the mean of their
    deterministic actions, with their standard deviation across members as the label std (n, act_dim)."""

    def __init__(self, members: Sequence[Policy]) -> None:
        if len(members) < 2:
            raise ValueError(f"an ensemble of teachers needs at least 2 members, got {len(members)}")
        self.members = list(members)
        self.groups: tuple[str, ...] = tuple(dict.fromkeys(g for m in self.members for g in m.groups))
        self.stateful = any(getattr(m, "stateful", False) for m in self.members)
        self.critic = None

    def _actions(self, obs: ObsGroups) -> np.ndarray:
        """Every member's deterministic actions: (k, n, act_dim)."""
        actions = [np.asarray(m.act(select_groups(obs, m.groups), deterministic=True), dtype=np.float32)
                   for m in self.members]
        if len({a.shape for a in actions}) != 1:
            raise ValueError(f"the ensemble's members act in different shapes: {[a.shape for a in actions]}")
        return np.stack(actions)

    def act(self, obs: ObsGroups, deterministic: bool = True) -> np.ndarray:
        return self._actions(obs).mean(0)

    def label(self, obs: ObsGroups) -> ActionLabel:
        actions = self._actions(obs)
        return ActionLabel(mean=actions.mean(0), std=actions.std(0))

    def reset(self, env_mask: np.ndarray | None = None) -> None:
        for m in self.members:
            m.reset(env_mask)
