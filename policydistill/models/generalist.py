"""A multi-task student for tasks whose spaces differ: padding plus masks, and a task encoding.

One network serves every task of a suite (e.g. Hopper-v5, Walker2d-v5 and HalfCheetah-v5). It reads
each observation group zero-padded to the group's widest dim over the tasks and outputs the widest
action; the ``task`` group (one-hot over the suite's tasks, required) says which entries are real:

- **input** ``x`` (n, obs_dim): the groups in order, each padded, ``obs_dim`` the sum of the padded
  widths. ``obs_mask[task]`` (obs_dim,) is 1 on the task's real entries. The normaliser's statistics
  come from real entries only, per task (``mean[task]``, ``var[task]``: a column means something else in
  every task) for a student with per-task heads, pooled over the tasks for one with a shared first layer;
  padded entries are zeroed after normalising, so whatever a padded entry holds never reaches the MLP.
- **task encoding**: ``onehot`` feeds the (normalised) one-hot to the MLP; ``embedding`` replaces it by
  a learned vector of ``embedding_dim`` (a bias-free linear map of the one-hot, so it exports).
- **heads**: ``shared`` (one MLP) or ``per_task`` (the first and the last layer one per task, the hidden
  layers between them shared): row i goes through the layers of its task (:class:`TaskLinear`).
- **output** ``y`` (n, act_dim), ``act_dim`` the widest action dim. ``act_mask[task]`` (act_dim,) marks
  the task's real action dims: the distillation losses take it as ``mask`` so padded dims never
  contribute, and actions are clipped to the task's own bounds (padded dims to [0, 0]). The loss
  compares student and teacher in units of ``label_scale[task]``, the spread of each task's labels (the
  root mean square of their per-dim std), refitted with the batches of every fit: a task whose actions
  are ten times smaller weighs as much.

``act``/``label`` take observations in one task's own space (unpadded, as its env yields them) and
return actions in that task's own action space, so evaluation runs every task in its own space; the
rows of one batch must share their spaces (rows of tasks with the same spaces may mix).
:class:`SpaceLayout` pads recorded episodes the same way for storage.

Exported (:meth:`GeneralistPolicy.export_graph`), the graph reads the task id and each task's own
observation, and does the per-task slicing inside (:class:`TaskInput`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from policydistill.data.batches import BatchSource
from policydistill.graph import OBS, ExportGraph, TensorSpec
from policydistill.models.base import Stats, TorchPolicy
from policydistill.models.mlp import ACTIVATIONS, NORMALIZER_KEYS
from policydistill.models.normalizer import spread, unvaried
from policydistill.spaces import space_to_json
from policydistill.types import TASK, ObsGroups, check_groups

TASK_ENCODINGS = ("onehot", "embedding")
HEADS = ("shared", "per_task")
NORMALIZER_STATS = ("per_task", "shared")
MIN_LABEL_SCALE = 0.01
"""Smallest label scale, a fraction of half the bound range (a task whose teacher barely acts is not weighted
without bound)."""


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


def _task_of(x: torch.Tensor, task_slice: tuple[int, int]) -> torch.Tensor:
    """The task of each row of padded x (n, obs_dim): the argmax of its one-hot, (n,) int64."""
    return x[:, task_slice[0]:task_slice[1]].argmax(-1)


class TaskNormalizer(nn.Module):
    """Normalises padded rows x (n, dim) by their task: ``clip((x - mean) / sqrt(var + eps), -clip, clip)`` on
    the task's real entries (``obs_mask[task]``), 0 on its padded ones.

    ``stats="per_task"``: ``mean``/``var`` (n_tasks, dim), each task's from its own rows; ``"shared"``: one
    (dim,) pair over every task's real entries (students saved before per-task statistics).
    """

    def __init__(self, obs_mask: torch.Tensor, task_slice: tuple[int, int], enabled: bool = True,
                 clip: float = 10.0, eps: float = 1e-8, stats: str = "shared") -> None:
        super().__init__()
        if stats not in NORMALIZER_STATS:
            raise ValueError(f"normalizer stats '{stats}' is not one of {list(NORMALIZER_STATS)}")
        self.enabled, self.clip, self.eps, self.stats = bool(enabled), float(clip), float(eps), stats
        self.task_slice = task_slice
        shape = tuple(obs_mask.shape) if stats == "per_task" else (obs_mask.shape[1],)
        self.register_buffer("mean", torch.zeros(shape))
        self.register_buffer("var", torch.ones(shape))
        self.register_buffer("obs_mask", obs_mask.clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Padded x (n, dim) -> normalised (n, dim), padded entries 0."""
        task = _task_of(x, self.task_slice)
        if self.enabled:
            mean, var = (self.mean[task], self.var[task]) if self.stats == "per_task" else (self.mean, self.var)
            x = torch.clamp((x - mean) / torch.sqrt(var + self.eps), -self.clip, self.clip)
        return x * self.obs_mask[task]

    def fit(self, x: np.ndarray) -> None:
        """Statistics from padded rows x (N, dim), real entries only; a column no row fills keeps var 1, one its rows
        do not vary is read as constant (see :meth:`~policydistill.models.normalizer.ObsNormalizer.fit`)."""
        x = np.asarray(x, dtype=np.float64)
        mask = self.obs_mask.cpu().numpy().astype(np.float64)
        task = x[:, slice(*self.task_slice)].argmax(1)
        if self.stats == "shared":
            mean, var = _masked_stats(x, mask[task])
        else:
            mean, var = np.zeros(tuple(self.mean.shape)), np.ones(tuple(self.var.shape))
            for t in np.unique(task):
                rows = x[task == t]
                mean[t], var[t] = _masked_stats(rows, np.broadcast_to(mask[t], rows.shape))
        self.mean.copy_(torch.as_tensor(mean, dtype=self.mean.dtype))
        self.var.copy_(torch.as_tensor(unvaried(mean, var), dtype=self.var.dtype))

    def config(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "clip": self.clip, "eps": self.eps, "stats": self.stats}


def _masked_stats(x: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance (dim,) of x (N, dim) over the entries m (N, dim) marks; var 1 where none is marked."""
    count = m.sum(0)
    mean = (x * m).sum(0) / np.maximum(count, 1.0)
    var = (((x - mean) ** 2) * m).sum(0) / np.maximum(count, 1.0)
    return mean, np.where(count > 0, var, 1.0)


class TaskLinear(nn.Module):
    """One linear layer per task: x (n, d_in) and task (n,) -> (n, d_out), row i through task[i]'s weights.

    Every task's layer is computed and row i keeps its own (n_tasks x the work of one layer: tasks are few);
    each block is initialised as ``nn.Linear`` would be."""

    def __init__(self, n_tasks: int, d_in: int, d_out: int) -> None:
        super().__init__()
        self.n_tasks, self.d_in, self.d_out = n_tasks, d_in, d_out
        layers = [nn.Linear(d_in, d_out) for _ in range(n_tasks)]
        self.weight = nn.Parameter(torch.cat([layer.weight.detach() for layer in layers]))  # (n_tasks*d_out, d_in)
        self.bias = nn.Parameter(torch.cat([layer.bias.detach() for layer in layers]))  # (n_tasks*d_out,)

    def forward(self, x: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        y = nn.functional.linear(x, self.weight, self.bias).reshape(-1, self.n_tasks, self.d_out)
        return y.gather(1, task.reshape(-1, 1, 1).expand(-1, 1, self.d_out)).squeeze(1)

    def extra_repr(self) -> str:
        return f"n_tasks={self.n_tasks}, d_in={self.d_in}, d_out={self.d_out}"


class TaskInput(nn.Module):
    """The graph a padded student exports: ``obs`` (n, n_tasks + width) -> action (n, act_dim).

    ``obs`` is the task one-hot, then the task's own observation (its groups but ``task``, each in its own
    dims, concatenated in the student's reading order), zero-filled to ``width``, the widest such
    observation over the tasks. Inside, each row's entries are moved to the student's padded layout by
    its task's column table (per-task slicing), then the student acts; the action is the task's own in its
    first ``act_dims[task]`` entries, 0 after them.
    """

    def __init__(self, policy: GeneralistPolicy) -> None:
        super().__init__()
        self.policy = policy
        n_tasks = policy.n_tasks
        own = [g for g in policy.groups if g != TASK]
        self.width = max(sum(d[g] for g in own) for d in policy.layout.group_dims)
        zero = n_tasks + self.width  # the column of a zero appended to obs
        table = torch.full((n_tasks, policy.obs_dim), zero, dtype=torch.long)
        for t, dims in enumerate(policy.layout.group_dims):
            col = n_tasks
            for g in policy.groups:
                s, _ = policy.slices[g]
                if g == TASK:
                    table[t, s:s + n_tasks] = torch.arange(n_tasks)
                else:
                    table[t, s:s + dims[g]] = torch.arange(col, col + dims[g])
                    col += dims[g]
        self.register_buffer("table", table, persistent=False)
        self.n_tasks = n_tasks

    def padded(self, obs: torch.Tensor) -> torch.Tensor:
        """obs (n, n_tasks + width) -> the student's padded input (n, obs_dim)."""
        task = obs[:, :self.n_tasks].argmax(-1)
        source = torch.cat([obs, torch.zeros_like(obs[:, :1])], dim=1)
        return source.gather(1, self.table[task])

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.policy(self.padded(obs))

    def layout(self) -> list[dict[str, Any]]:
        """Per task: its columns of ``obs`` ({group: [start, dim]}), action dims and bounds, as JSON."""
        out = []
        for t, dims in enumerate(self.policy.layout.group_dims):
            cols, col = {TASK: [0, self.n_tasks]}, self.n_tasks
            for g in self.policy.groups:
                if g != TASK:
                    cols[g], col = [col, dims[g]], col + dims[g]
            a = self.policy.action_spaces[t]
            out.append({"task": t, "columns": cols, "act_dim": self.policy.layout.act_dims[t],
                        "action_low": a.low.tolist(), "action_high": a.high.tolist()})
        return out


class GeneralistPolicy(TorchPolicy):
    """Padded multi-task MLP student (see the module doc); stateless, optionally with a learned std.

    ``observation_spaces[i]`` (a Dict over ``groups``) and ``action_spaces[i]`` are task i's own spaces.
    ``heads``: ``shared`` or ``per_task``. ``normalizer``: ``enabled``, ``clip``, ``eps`` and ``stats``
    (default: ``per_task`` with per-task heads, each task's first layer reading its own features at unit
    scale; ``shared`` with a shared first layer, where pooled statistics keep the tasks' features apart).
    """

    def __init__(self, groups: Sequence[str], observation_spaces: Sequence[spaces.Dict],
                 action_spaces: Sequence[spaces.Box], hidden: Sequence[int] = (256, 256), activation: str = "relu",
                 task_encoding: str = "onehot", embedding_dim: int = 8, normalizer: dict[str, Any] | None = None,
                 log_std: bool = False, heads: str = "shared") -> None:
        super().__init__()
        self.groups = check_groups(groups)
        if TASK not in self.groups:
            raise ValueError(f"GeneralistPolicy must read the '{TASK}' group (it says which padded entries are "
                             f"real), got groups {list(self.groups)}")
        if task_encoding not in TASK_ENCODINGS:
            raise ValueError(f"task_encoding '{task_encoding}' is not one of {list(TASK_ENCODINGS)}")
        if heads not in HEADS:
            raise ValueError(f"heads '{heads}' is not one of {list(HEADS)}")
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
        norm = dict(normalizer or {"enabled": True, "stats": "per_task" if heads == "per_task" else "shared"})
        valid = NORMALIZER_KEYS | {"stats"}
        if set(norm) - valid:
            raise ValueError(f"unknown normalizer keys {sorted(set(norm) - valid)}; valid keys are {sorted(valid)}")
        self.observation_spaces, self.action_spaces = list(observation_spaces), list(action_spaces)
        self.layout = SpaceLayout.from_spaces(self.observation_spaces, self.action_spaces)
        self.n_tasks = len(self.action_spaces)
        if any(d[TASK] != self.n_tasks for d in self.layout.group_dims):
            raise ValueError(f"the '{TASK}' group must be a one-hot over the {self.n_tasks} tasks")
        self.hidden, self.activation = [int(h) for h in hidden], activation
        self.task_encoding, self.embedding_dim, self.heads = task_encoding, int(embedding_dim), heads
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

        self.register_buffer("label_scale", torch.ones(self.n_tasks, self.act_dim), persistent=False)

        ts, te = self.slices[TASK]
        self.normalizer = TaskNormalizer(obs_mask, (ts, te), **norm)
        self.embedding = nn.Linear(self.n_tasks, self.embedding_dim, bias=False) if task_encoding == "embedding" \
            else None
        last = self.obs_dim - (te - ts) + (self.embedding_dim if self.embedding is not None else te - ts)
        widths = [*self.hidden, self.act_dim]
        self.first = TaskLinear(self.n_tasks, last, widths[0]) if heads == "per_task" and self.hidden else None
        layers: list[nn.Module] = [ACTIVATIONS[activation]()] if self.first is not None else []
        last = widths[0] if self.first is not None else last
        for h in self.hidden[1 if self.first is not None else 0:]:
            layers += [nn.Linear(last, h), ACTIVATIONS[activation]()]
            last = h
        self.body = nn.Sequential(*layers)
        self.head: nn.Module = TaskLinear(self.n_tasks, last, self.act_dim) if heads == "per_task" \
            else nn.Linear(last, self.act_dim)
        self.log_std = nn.Parameter(torch.zeros(self.act_dim)) if log_std else None

    # ---- torch path (exportable) -------------------------------------------------------------

    def task_index(self, x: torch.Tensor) -> torch.Tensor:
        """The task of each row of x (n, obs_dim): the argmax of its one-hot, (n,) int64."""
        return _task_of(x, self.slices[TASK])

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        """Network output before post-processing: padded x (n, obs_dim) -> y (n, act_dim)."""
        ts, te = self.slices[TASK]
        task = self.task_index(x)
        z = self.normalizer(x)
        if self.embedding is not None:
            z = torch.cat([z[:, :ts], z[:, te:], self.embedding(x[:, ts:te])], dim=-1)
        if self.first is not None:
            z = self.first(z, task)
        z = self.body(z)
        return self.head(z, task) if isinstance(self.head, TaskLinear) else self.head(z)

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
        self.normalizer.fit(x)

    def fit_label_scale(self, x: np.ndarray, label_mean: np.ndarray) -> None:
        """``label_scale`` (n_tasks, act_dim) from padded inputs x (N, obs_dim) and labels (N, act_dim): on a task's
        real dims, the root mean square over them of the labels' std (one number per task, so a dim the teacher
        holds constant is not weighted without bound), at least ``MIN_LABEL_SCALE`` times half the bound range;
        1 elsewhere."""
        task = np.asarray(x)[:, slice(*self.slices[TASK])].argmax(1)
        scale = np.ones((self.n_tasks, self.act_dim))
        half = ((self.action_high - self.action_low) / 2).cpu().numpy()
        for t in np.unique(task):
            d = self.layout.act_dims[t]
            var = np.asarray(label_mean, dtype=np.float64)[task == t, :d].var(0)
            scale[t, :d] = max(float(np.sqrt(var.mean())), MIN_LABEL_SCALE * float(half[t, :d].mean()), 1e-6)
        self.label_scale.copy_(torch.as_tensor(scale, dtype=self.label_scale.dtype))

    def batches(self, data: dict[str, np.ndarray], lengths: np.ndarray, batch_size: int,
                task: np.ndarray | None = None, sequence_length: int = 32) -> BatchSource:
        """As :meth:`TorchPolicy.batches`; the labels of ``data`` (those of weight > 0) also refit
        :attr:`label_scale`."""
        if "label_mean" in data:
            keep = np.asarray(data["weight"]) > 0 if "weight" in data else slice(None)
            self.fit_label_scale(data["x"][keep], data["label_mean"][keep])
        return super().batches(data, lengths, batch_size, task, sequence_length)

    def compute_loss(self, batch: dict[str, torch.Tensor], loss_fn: Any) -> tuple[torch.Tensor, Stats]:
        """As :meth:`TorchPolicy.compute_loss`, student and teacher divided by each row's ``label_scale``."""
        x = batch["x"]
        scale = self.label_scale[self.task_index(x)]
        std = batch.get("label_std")
        loss = loss_fn(self.raw(x) / scale, batch["label_mean"] / scale,
                       student_log_std=None if self.log_std is None else self.log_std - torch.log(scale),
                       teacher_std=None if std is None else std / scale, weight=batch.get("weight"),
                       mask=self.loss_mask(x))
        return loss, {"loss": loss.detach()}

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
        """The deterministic path as an export graph. Tasks that share their spaces: ``forward``, ``obs`` (n,
        obs_dim) -> ``action`` (n, act_dim). Tasks whose spaces differ: :class:`TaskInput`, ``obs`` (n, n_tasks +
        width), the task one-hot then the task's own observation, -> ``action`` (n, act_dim), the task's own
        action first; :meth:`export_layout` describes its columns."""
        if self.layout.uniform:
            def example(graph: ExportGraph, n: int, generator: torch.Generator) -> tuple[torch.Tensor]:
                x = 3.0 * torch.randn(n, self.obs_dim, generator=generator)
                ts, te = self.slices[TASK]
                task = torch.randint(self.n_tasks, (n,), generator=generator)
                x[:, ts:te] = torch.nn.functional.one_hot(task, self.n_tasks).float()
                return (x * self.obs_mask.cpu()[task],)

            return ExportGraph(self, (TensorSpec(OBS, (self.obs_dim,), "observation"),),
                               (TensorSpec("action", (self.act_dim,), "action"),), example=example)
        module = TaskInput(self)

        def padded_example(graph: ExportGraph, n: int, generator: torch.Generator) -> tuple[torch.Tensor]:
            """Rows around each task's normaliser statistics (3 std), in the exported layout."""
            task = torch.randint(self.n_tasks, (n,), generator=generator)
            mean, var = self.normalizer.mean.cpu(), self.normalizer.var.cpu()
            mean, var = (mean[task], var[task]) if mean.ndim == 2 else (mean, var)
            x = mean + 3.0 * spread(var) * torch.randn(n, self.obs_dim, generator=generator)
            x[:, slice(*self.slices[TASK])] = torch.nn.functional.one_hot(task, self.n_tasks).float()
            out = torch.zeros(n, self.n_tasks + module.width + 1)  # the last column gathers the padded zeros
            out.scatter_(1, module.table.cpu()[task], x * self.obs_mask.cpu()[task])
            return (out[:, :-1],)

        return ExportGraph(module, (TensorSpec(OBS, (self.n_tasks + module.width,), "observation"),),
                           (TensorSpec("action", (self.act_dim,), "action"),), example=padded_example)

    def export_layout(self) -> list[dict[str, Any]] | None:
        """Per task, where its groups sit in the exported ``obs`` and its action dims and bounds (see
        :class:`TaskInput`); None for a student whose tasks share their spaces (its ``obs`` is the groups')."""
        return None if self.layout.uniform else TaskInput(self).layout()

    # ---- config ------------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        """JSON-able description from which :meth:`from_config` rebuilds the module (weights aside)."""
        return {"groups": list(self.groups),
                "observation_spaces": [space_to_json(s) for s in self.observation_spaces],
                "action_spaces": [space_to_json(s) for s in self.action_spaces], "hidden": list(self.hidden),
                "activation": self.activation, "task_encoding": self.task_encoding,
                "embedding_dim": self.embedding_dim, "normalizer": self.normalizer.config(),
                "log_std": self.log_std is not None, "heads": self.heads}

    def extra_repr(self) -> str:
        return (f"groups={list(self.groups)}, tasks={self.n_tasks}, obs_dim={self.obs_dim}, act_dim={self.act_dim}, "
                f"task_encoding={self.task_encoding!r}, heads={self.heads!r}")
