"""A multi-task student for tasks whose spaces differ: padding plus masks, and a task encoding.

One network serves every task of a suite (e.g. Hopper-v5, Walker2d-v5 and HalfCheetah-v5). It reads
each observation group zero-padded to the group's widest dim over the tasks and outputs the widest
action; the ``task`` group (one-hot over the suite's tasks, required) says which entries are real:

- **input** ``x`` (n, obs_dim): the groups in order, each padded, ``obs_dim`` the sum of the padded
  widths. ``obs_mask[task]`` (obs_dim,) is 1 on the task's real entries. The normaliser's statistics
  come from real entries only, and padded entries are zeroed after normalising, so whatever a padded
  entry holds never reaches the MLP.
- **task encoding**: ``onehot`` feeds the (normalised) one-hot to the MLP; ``embedding`` replaces it by
  a learned vector of ``embedding_dim`` (a bias-free linear map of the one-hot, so it exports).
- **output** ``y`` (n, act_dim), ``act_dim`` the widest action dim. ``act_mask[task]`` (act_dim,) marks
  the task's real action dims: the distillation losses take it as ``mask`` so padded dims never
  contribute, and actions are clipped to the task's own bounds (padded dims to [0, 0]).

``act``/``label`` take observations in one task's own space (unpadded, as its env yields them) and
return actions in that task's own action space, so evaluation runs every task in its own space; the
rows of one batch must share their spaces (rows of tasks with the same spaces may mix).
:class:`SpaceLayout` pads recorded episodes the same way for storage.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from policydistill.graph import OBS, ExportGraph, TensorSpec
from policydistill.models.base import TorchPolicy
from policydistill.models.mlp import ACTIVATIONS, NORMALIZER_KEYS
from policydistill.models.normalizer import ObsNormalizer
from policydistill.spaces import space_to_json
from policydistill.types import TASK, ObsGroups, check_groups

TASK_ENCODINGS = ("onehot", "embedding")


def pad_columns(x: np.ndarray, width: int, fill: float = 0.0) -> np.ndarray:
    """(n, d) -> (n, width) with columns d.. set to ``fill``; ``d > width`` is an error."""
    x = np.asarray(x, dtype=np.float32)
    if x.shape[-1] > width:
        raise ValueError(f"cannot pad {x.shape[-1]} columns to {width}")
    if x.shape[-1] == width:
        return x
    out = np.full((*x.shape[:-1], width), fill, dtype=np.float32)
    out[..., : x.shape[-1]] = x
    return out


@dataclass(frozen=True)
class SpaceLayout:
    """Per task, the dim of every observation group and of the action; what padding makes them share.

    ``group_dims[i]`` {group: dim} and ``act_dims[i]`` for task i; ``groups`` are those every task has."""

    group_dims: tuple[dict[str, int], ...]
    act_dims: tuple[int, ...]

    @classmethod
    def from_spaces(cls, observation_spaces: Sequence[spaces.Dict], action_spaces: Sequence[spaces.Box]) -> SpaceLayout:
        for i, (o, a) in enumerate(zip(observation_spaces, action_spaces, strict=True)):
            bad = [g for g, s in o.spaces.items() if not isinstance(s, spaces.Box) or len(s.shape) != 1]
            if bad or not isinstance(a, spaces.Box) or len(a.shape) != 1:
                raise ValueError(f"task {i}: padding needs 1-D Box observation groups and actions, got groups "
                                 f"{bad} / action space {a}")
        return cls(tuple({g: int(s.shape[0]) for g, s in o.spaces.items()} for o in observation_spaces),
                   tuple(int(a.shape[0]) for a in action_spaces))

    @property
    def groups(self) -> list[str]:
        return [g for g in self.group_dims[0] if all(g in d for d in self.group_dims)]

    def width(self, group: str) -> int:
        return max(d[group] for d in self.group_dims)

    @property
    def act_width(self) -> int:
        return max(self.act_dims)

    @property
    def uniform(self) -> bool:
        """True when every task has the same dims (padding changes nothing)."""
        return len({tuple(sorted(d.items())) for d in self.group_dims}) == 1 and len(set(self.act_dims)) == 1

    def pad_steps(self, steps: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Pad one recorded episode's ``obs/<group>`` (groups every task has; others are dropped), ``action``
        and ``label_mean`` with zeros, ``label_std`` with ones, to the widths; other fields pass unchanged."""
        out: dict[str, np.ndarray] = {}
        for k, v in steps.items():
            if k.startswith("obs/"):
                if k[4:] in self.groups:
                    out[k] = pad_columns(v, self.width(k[4:]))
            elif k in ("action", "label_mean", "label_std"):
                out[k] = pad_columns(v, self.act_width, 1.0 if k == "label_std" else 0.0)
            else:
                out[k] = v
        return out


class GeneralistPolicy(TorchPolicy):
    """Padded multi-task MLP student (see the module doc); stateless, optionally with a learned std.

    ``observation_spaces[i]`` (a Dict over ``groups``) and ``action_spaces[i]`` are task i's own spaces.
    """

    def __init__(self, groups: Sequence[str], observation_spaces: Sequence[spaces.Dict],
                 action_spaces: Sequence[spaces.Box], hidden: Sequence[int] = (256, 256), activation: str = "relu",
                 task_encoding: str = "onehot", embedding_dim: int = 8, normalizer: dict[str, Any] | None = None,
                 log_std: bool = False) -> None:
        super().__init__()
        self.groups = check_groups(groups)
        if TASK not in self.groups:
            raise ValueError(f"GeneralistPolicy must read the '{TASK}' group (it says which padded entries are "
                             f"real), got groups {list(self.groups)}")
        if task_encoding not in TASK_ENCODINGS:
            raise ValueError(f"task_encoding '{task_encoding}' is not one of {list(TASK_ENCODINGS)}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation '{activation}' is not one of {list(ACTIVATIONS)}")
        if isinstance(embedding_dim, bool) or not isinstance(embedding_dim, int) or embedding_dim < 1:
            raise ValueError(f"embedding_dim must be an int >= 1, got {embedding_dim!r}")
        if not observation_spaces or len(observation_spaces) != len(action_spaces):
            raise ValueError(f"need one observation and one action space per task, got {len(observation_spaces)} "
                             f"and {len(action_spaces)}")
        for i, o in enumerate(observation_spaces):
            if not isinstance(o, spaces.Dict) or set(o.spaces) != set(self.groups):
                raise ValueError(f"task {i}: observation space must be a Dict of exactly the groups "
                                 f"{list(self.groups)}, got {o}")
        for i, a in enumerate(action_spaces):
            if not isinstance(a, spaces.Box) or not (np.isfinite(a.low).all() and np.isfinite(a.high).all()):
                raise ValueError(f"task {i}: action space must be a Box with finite bounds, got {a}")
        norm = dict(normalizer or {"enabled": True})
        if set(norm) - NORMALIZER_KEYS:
            raise ValueError(f"unknown normalizer keys {sorted(set(norm) - NORMALIZER_KEYS)}; "
                             f"valid keys are {sorted(NORMALIZER_KEYS)}")
        self.observation_spaces, self.action_spaces = list(observation_spaces), list(action_spaces)
        self.layout = SpaceLayout.from_spaces(self.observation_spaces, self.action_spaces)
        self.n_tasks = len(self.action_spaces)
        if any(d[TASK] != self.n_tasks for d in self.layout.group_dims):
            raise ValueError(f"the '{TASK}' group must be a one-hot over the {self.n_tasks} tasks")
        self.hidden, self.activation = [int(h) for h in hidden], activation
        self.task_encoding, self.embedding_dim = task_encoding, int(embedding_dim)
        self.widths = {g: self.layout.width(g) for g in self.groups}
        self.obs_dim = sum(self.widths.values())
        self.act_dim = self.layout.act_width
        starts = np.cumsum([0, *self.widths.values()])
        self.slices = {g: (int(starts[k]), int(starts[k + 1])) for k, g in enumerate(self.groups)}

        obs_mask = torch.zeros(self.n_tasks, self.obs_dim)
        act_mask = torch.zeros(self.n_tasks, self.act_dim, dtype=torch.bool)
        low, high = torch.zeros(self.n_tasks, self.act_dim), torch.zeros(self.n_tasks, self.act_dim)
        for i, dims in enumerate(self.layout.group_dims):
            for g, (s, _) in self.slices.items():
                obs_mask[i, s:s + dims[g]] = 1.0
            d = self.layout.act_dims[i]
            act_mask[i, :d] = True
            low[i, :d] = torch.as_tensor(self.action_spaces[i].low, dtype=torch.float32)
            high[i, :d] = torch.as_tensor(self.action_spaces[i].high, dtype=torch.float32)
        for name, t in (("obs_mask", obs_mask), ("act_mask", act_mask), ("action_low", low), ("action_high", high)):
            self.register_buffer(name, t, persistent=False)

        self.normalizer = ObsNormalizer(self.obs_dim, **norm)
        ts, te = self.slices[TASK]
        self.embedding = nn.Linear(self.n_tasks, self.embedding_dim, bias=False) if task_encoding == "embedding" \
            else None
        last = self.obs_dim - (te - ts) + (self.embedding_dim if self.embedding is not None else te - ts)
        layers: list[nn.Module] = []
        for h in self.hidden:
            layers += [nn.Linear(last, h), ACTIVATIONS[activation]()]
            last = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(last, self.act_dim)
        self.log_std = nn.Parameter(torch.zeros(self.act_dim)) if log_std else None

    # ---- torch path (exportable) -------------------------------------------------------------

    def task_index(self, x: torch.Tensor) -> torch.Tensor:
        """The task of each row of x (n, obs_dim): the argmax of its one-hot, (n,) int64."""
        ts, te = self.slices[TASK]
        return x[:, ts:te].argmax(-1)

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        """Network output before post-processing: padded x (n, obs_dim) -> y (n, act_dim)."""
        ts, te = self.slices[TASK]
        z = self.normalizer(x) * self.obs_mask[self.task_index(x)]
        if self.embedding is not None:
            z = torch.cat([z[:, :ts], z[:, te:], self.embedding(x[:, ts:te])], dim=-1)
        return self.head(self.body(z))

    def postprocess(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """y (n, act_dim) -> actions (n, act_dim) clipped to each row's task bounds (padded dims 0)."""
        task = self.task_index(x)
        return torch.minimum(torch.maximum(y, self.action_low[task]), self.action_high[task])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic padded action: padded x (n, obs_dim) -> action (n, act_dim)."""
        return self.postprocess(self.raw(x), x)

    def forward_act(self, x: torch.Tensor, deterministic: bool) -> torch.Tensor:
        return self.postprocess(self.sample(self.raw(x), deterministic), x)

    def loss_mask(self, x: torch.Tensor) -> torch.Tensor:
        """Real action dims (B, act_dim) of each row's task: the loss ignores padded dims."""
        return self.act_mask[self.task_index(x)]

    def fit_normalizer(self, x: np.ndarray) -> None:
        """Set the normaliser's statistics from padded inputs x (N, obs_dim), real entries only."""
        x = np.asarray(x, dtype=np.float64)
        m = self.obs_mask.cpu().numpy()[x[:, slice(*self.slices[TASK])].argmax(1)]
        count = np.maximum(m.sum(0), 1.0)
        mean = (x * m).sum(0) / count
        var = (((x - mean) ** 2) * m).sum(0) / count
        self.normalizer.set_stats(mean, np.where(m.sum(0) > 0, var, 1.0))

    # ---- Policy / Teacher protocol (numpy in, numpy out) --------------------------------------

    def _tasks_of(self, obs: ObsGroups) -> tuple[np.ndarray, int]:
        """Task index of every row and the one action dim they share; checks the groups' dims."""
        if TASK not in obs:
            raise KeyError(f"GeneralistPolicy needs the '{TASK}' group; got {sorted(obs)}")
        onehot = np.asarray(obs[TASK])
        if onehot.ndim != 2 or onehot.shape[1] != self.n_tasks:
            raise ValueError(f"'{TASK}' group must be (n, {self.n_tasks}), got {onehot.shape}")
        task = onehot.argmax(1)
        kinds = sorted({int(t) for t in task})
        for g in self.groups:
            want = {self.layout.group_dims[t][g] for t in kinds}
            got = np.shape(obs[g])[1:]
            if len(want) != 1 or got != (want.pop(),):
                raise ValueError(f"observation group '{g}' has shape {np.shape(obs[g])}, but the batch's tasks "
                                 f"{kinds} read {sorted({self.layout.group_dims[t][g] for t in kinds})} dims: "
                                 "one batch must hold tasks of one observation space")
        act_dims = {self.layout.act_dims[t] for t in kinds}
        if len(act_dims) != 1:
            raise ValueError(f"the batch mixes tasks {kinds} with action dims {sorted(act_dims)}")
        return task, act_dims.pop()

    def obs_tensor(self, obs: ObsGroups) -> torch.Tensor:
        """Each group of ``obs`` (n, own dim) zero-padded and concatenated: (n, obs_dim) on the device."""
        self._tasks_of(obs)
        x = np.concatenate([pad_columns(obs[g], self.widths[g]) for g in self.groups], axis=1)
        return torch.as_tensor(x, device=self.device)

    def act(self, obs: ObsGroups, deterministic: bool = True) -> np.ndarray:
        """obs {group: (n, own dim)} -> actions float32 (n, own act_dim) in the rows' task action space."""
        _, d = self._tasks_of(obs)
        return super().act(obs, deterministic)[:, :d]

    @property
    def observation_space(self) -> spaces.Dict:
        """The one observation space of a student whose tasks all share theirs (AttributeError otherwise)."""
        if any(o != self.observation_spaces[0] for o in self.observation_spaces):
            raise AttributeError("a padded student has one observation space per task (observation_spaces)")
        return self.observation_spaces[0]

    @property
    def action_space(self) -> spaces.Box:
        """The one action space of a student whose tasks all share theirs (AttributeError otherwise)."""
        if any(a != self.action_spaces[0] for a in self.action_spaces):
            raise AttributeError("a padded student has one action space per task (action_spaces)")
        return self.action_spaces[0]

    def export_graph(self) -> ExportGraph:
        """``forward`` as an export graph: ``obs`` (n, obs_dim) -> ``action`` (n, act_dim), for a student whose
        tasks share their spaces (a task embedding); padded students over different spaces do not export."""
        if not self.layout.uniform:
            raise ValueError("exporting a student padded over tasks with different spaces is not supported: "
                             "its graph would read padded observations")

        def example(graph: ExportGraph, n: int, generator: torch.Generator) -> tuple[torch.Tensor]:
            x = 3.0 * torch.randn(n, self.obs_dim, generator=generator)
            ts, te = self.slices[TASK]
            task = torch.randint(self.n_tasks, (n,), generator=generator)
            x[:, ts:te] = torch.nn.functional.one_hot(task, self.n_tasks).float()
            return (x * self.obs_mask.cpu()[task],)

        return ExportGraph(self, (TensorSpec(OBS, (self.obs_dim,), "observation"),),
                           (TensorSpec("action", (self.act_dim,), "action"),), example=example)

    # ---- config ------------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        """JSON-able description from which :meth:`from_config` rebuilds the module (weights aside)."""
        return {"groups": list(self.groups),
                "observation_spaces": [space_to_json(s) for s in self.observation_spaces],
                "action_spaces": [space_to_json(s) for s in self.action_spaces], "hidden": list(self.hidden),
                "activation": self.activation, "task_encoding": self.task_encoding,
                "embedding_dim": self.embedding_dim, "normalizer": self.normalizer.config(),
                "log_std": self.log_std is not None}

    def extra_repr(self) -> str:
        return (f"groups={list(self.groups)}, tasks={self.n_tasks}, obs_dim={self.obs_dim}, act_dim={self.act_dim}, "
                f"task_encoding={self.task_encoding!r}")
