"""Multi-modal demonstrations from deterministic experts: mirror images and per-episode mixtures.

A deterministic expert gives one action per state, so its demonstrations are uni-modal even when the
task could be solved in several ways. When the env is symmetric under a reflection (an env whose
``unwrapped`` defines ``mirror_maps()``, as PointReach does about its start-goal axis), the
expert's mirror image :class:`MirroredPolicy` is an equally good expert that takes the other way;
an :class:`EpisodeMixture` draws, per env and per episode, which of several experts acts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from policydistill.policy import Policy
from policydistill.suites import Suite
from policydistill.types import ActionLabel, ObsGroups, check_groups

ACTION = "action"


class MirroredPolicy:
    """``obs -> A policy(M obs)``: ``maps`` holds a matrix per observation group it reflects (groups
    not named pass through) and ``action`` (act_dim, act_dim)."""

    def __init__(self, policy: Policy, maps: Mapping[str, np.ndarray]) -> None:
        if ACTION not in maps:
            raise ValueError(f"mirror maps need an '{ACTION}' matrix, got {sorted(maps)}")
        self.policy = policy
        self.groups = check_groups(policy.groups)
        self.maps = {k: np.asarray(v, dtype=np.float32) for k, v in maps.items()}
        for g, m in self.maps.items():
            if m.ndim != 2 or m.shape[0] != m.shape[1]:
                raise ValueError(f"mirror map of '{g}' must be a square matrix, got shape {m.shape}")

    def _mirror_obs(self, obs: ObsGroups) -> dict[str, np.ndarray]:
        out = {}
        for g in self.groups:
            x = np.asarray(obs[g], dtype=np.float32)
            out[g] = x @ self.maps[g].T if g in self.maps else x
        return out

    def act(self, obs: ObsGroups, deterministic: bool = True) -> np.ndarray:
        return np.asarray(self.policy.act(self._mirror_obs(obs), deterministic), dtype=np.float32) @ self.maps[ACTION].T

    def label(self, obs: ObsGroups) -> ActionLabel:
        lab = self.policy.label(self._mirror_obs(obs))  # type: ignore[attr-defined]
        a = self.maps[ACTION]
        std = None if lab.std is None else np.sqrt((lab.std ** 2) @ (a ** 2).T).astype(np.float32)
        return ActionLabel(mean=(lab.mean @ a.T).astype(np.float32), std=std)

    def reset(self, env_mask: np.ndarray | None = None) -> None:
        self.policy.reset(env_mask)


class EpisodeMixture:
    """Per env, one of ``policies`` (drawn with ``weights``) acts for a whole episode; a reset of an env
    draws again. Every policy sees every step's batch, so stateful policies stay consistent."""

    def __init__(self, policies: Sequence[Policy], weights: Sequence[float] | None = None, seed: int = 0) -> None:
        if not policies:
            raise ValueError("EpisodeMixture needs at least one policy")
        w = np.ones(len(policies)) if weights is None else np.asarray(weights, dtype=np.float64)
        if w.shape != (len(policies),) or not np.all(w >= 0) or not w.sum() > 0:
            raise ValueError(f"weights must be {len(policies)} non-negative numbers with a positive sum, got {weights}")
        self.policies, self.p = list(policies), w / w.sum()
        groups: list[str] = []
        for pol in self.policies:
            groups += [g for g in pol.groups if g not in groups]
        self.groups = tuple(groups)
        self.rng = np.random.default_rng(seed)
        self.choice = np.zeros(0, dtype=int)  # (n,) which policy acts in each env

    def _draw(self, n: int) -> np.ndarray:
        return self.rng.choice(len(self.policies), size=n, p=self.p)

    def _run(self, obs: ObsGroups, fn) -> list:
        n = len(next(iter(obs.values())))
        if len(self.choice) != n:
            self.choice = self._draw(n)
        return [fn(pol, {g: obs[g] for g in pol.groups}) for pol in self.policies]

    def act(self, obs: ObsGroups, deterministic: bool = True) -> np.ndarray:
        outs = self._run(obs, lambda pol, o: np.asarray(pol.act(o, deterministic), dtype=np.float32))
        return np.stack(outs)[self.choice, np.arange(len(self.choice))]

    def label(self, obs: ObsGroups) -> ActionLabel:
        labels = self._run(obs, lambda pol, o: pol.label(o))
        rows = np.arange(len(self.choice))
        mean = np.stack([lab.mean for lab in labels])[self.choice, rows]
        has_std = all(lab.std is not None for lab in labels)
        std = np.stack([lab.std for lab in labels])[self.choice, rows] if has_std else None
        return ActionLabel(mean=mean, std=std)

    def reset(self, env_mask: np.ndarray | None = None) -> None:
        for pol in self.policies:
            pol.reset(env_mask)
        if env_mask is None:
            self.choice = np.zeros(0, dtype=int)
            return
        mask = np.asarray(env_mask, dtype=bool)
        if mask.shape == self.choice.shape:
            self.choice[mask] = self._draw(int(mask.sum()))


def mirror_routes(suite: Suite, teachers: Mapping[str, Policy], seed: int = 0) -> dict[str, EpisodeMixture]:
    """Per task, its teacher or the teacher's mirror image (probability 1/2 each, per episode)."""
    out = {}
    for i, name in enumerate(suite.task_names):
        env = suite.make_env(i)
        try:
            mirror = getattr(env.unwrapped, "mirror_maps", None)
            if mirror is None:
                raise ValueError(f"task '{name}' of suite '{suite.name}' has no mirror symmetry (its env defines "
                                 "no mirror_maps()); use method.demos=experts")
            maps = mirror()
        finally:
            env.close()
        out[name] = EpisodeMixture([teachers[name], MirroredPolicy(teachers[name], maps)], seed=seed + i)
    return out
