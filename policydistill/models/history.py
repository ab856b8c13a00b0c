"""A policy that acts from its observation history: normaliser -> history encoder -> head -> post-processing.

Encoders (:mod:`policydistill.models.history_encoders`): ``stack`` (last ``history`` frames into an
MLP), ``tcn`` (1-D temporal convolution over them) or ``gru`` (recurrent). Heads:

- an MLP ``features -> hidden -> action`` (history MLP, TCN and GRU students);
- ``latent``: an MLP ``features -> hidden -> z`` followed by the frozen action heads of the teachers
  (:class:`~policydistill.models.teacher_split.TeacherHead`), one per task, chosen by the ``task``
  one-hot. ``z`` is trained to regress the teachers' privileged latent (adaptation-module style).

The per-env state (history buffer or hidden vector, batch first) lives in the policy between ``act``
calls and is zeroed per env by ``reset(env_mask)``. :meth:`forward` is one control step
``(obs, state) -> (action, next state)`` with normalisation and post-processing inside, which is also
the exported graph.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from policydistill.data.batches import BatchSource, RowBatches, SequenceBatches
from policydistill.data.sampling import row_weights
from policydistill.graph import OBS, ExportGraph, TensorSpec
from policydistill.models.base import Stats, TorchPolicy, check_box_spaces
from policydistill.models.history_encoders import WINDOW_KINDS, GRUEncoder, WindowEncoder
from policydistill.models.mlp import ACTIVATIONS, NORMALIZER_KEYS, mlp_stack
from policydistill.models.normalizer import ObsNormalizer
from policydistill.models.teacher_split import TeacherHead
from policydistill.spaces import space_to_json
from policydistill.types import TASK, check_groups

ENCODERS = (*WINDOW_KINDS, "gru")
LATENT_KEYS = {"heads", "visible_groups", "hidden", "activation", "normalizer"}
STATE = "state"
TARGETS = ("z", "label_mean", "label_std", "weight")


def window_index(lengths: Sequence[int], frames: int) -> np.ndarray:
    """For every step of the concatenated episodes, the indices of its ``frames`` previous steps (oldest
    first), -1 where they would fall before its episode's start: int64 (N, frames)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    step = np.arange(int(lengths.sum()))
    start = np.repeat(np.cumsum(lengths) - lengths, lengths)
    prev = step[:, None] + np.arange(-frames, 0)[None, :]
    return np.where(prev >= start[:, None], prev, -1)


class HistoryPolicy(TorchPolicy):
    """A stateful student over ``groups`` (each a 1-D Box), acting in ``action_space``.

    ``history``: frames in the window of ``stack``/``tcn`` encoders; ``rnn_hidden``: the GRU's width;
    ``feature_dim``: width of window-encoder features; ``latent``: None, or the teachers' head
    description ``{heads, visible_groups, hidden, activation, normalizer}`` (see module doc).
    """

    stateful = True

    def __init__(self, groups: Sequence[str], observation_space: spaces.Dict, action_space: spaces.Box,
                 encoder: str = "gru", history: int = 16, rnn_hidden: int = 128, feature_dim: int = 256,
                 hidden: Sequence[int] = (256,), activation: str = "relu", post: str = "clip",
                 normalizer: dict[str, Any] | None = None, log_std: bool = False,
                 latent: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.groups = check_groups(groups)
        check_box_spaces("HistoryPolicy", self.groups, observation_space, action_space)
        for name, value, allowed in (("encoder", encoder, ENCODERS), ("activation", activation, list(ACTIVATIONS)),
                                     ("post", post, ("clip",))):
            if value not in allowed:
                raise ValueError(f"HistoryPolicy {name} '{value}' is not one of {list(allowed)}")
        norm = dict(normalizer or {})
        if set(norm) - NORMALIZER_KEYS:
            raise ValueError(f"unknown normalizer keys {sorted(set(norm) - NORMALIZER_KEYS)}; "
                             f"valid keys are {sorted(NORMALIZER_KEYS)}")
        self.observation_space, self.action_space = observation_space, action_space
        self.encoder_kind, self.history, self.rnn_hidden = encoder, int(history), int(rnn_hidden)
        self.feature_dim, self.hidden, self.activation, self.post = int(feature_dim), [int(h) for h in hidden], \
            activation, post
        self.obs_dim = sum(int(observation_space[g].shape[0]) for g in self.groups)
        self.act_dim = int(action_space.shape[0])
        self.normalizer = ObsNormalizer(self.obs_dim, **norm)
        if encoder == "gru":
            self.encoder: WindowEncoder | GRUEncoder = GRUEncoder(self.obs_dim, self.rnn_hidden)
        else:
            self.encoder = WindowEncoder(encoder, self.obs_dim, self.history, self.feature_dim)
        self.state_shape = tuple(self.encoder.state_shape)
        self.latent_cfg = None if latent is None else self._check_latent(latent)
        if self.latent_cfg is None:
            self.head = mlp_stack(self.encoder.feature_dim, self.hidden, self.act_dim, activation)
        else:
            lat = self.latent_cfg
            self.head = mlp_stack(self.encoder.feature_dim, self.hidden, lat["hidden"][0], activation)
            visible_dim = sum(int(observation_space[g].shape[0]) for g in lat["visible_groups"])
            self.teacher_heads = nn.ModuleList(
                TeacherHead(visible_dim, lat["hidden"], lat["activation"], self.act_dim, lat["normalizer"])
                for _ in range(lat["heads"])).requires_grad_(False)
            self.register_buffer("visible_index", self._columns(lat["visible_groups"]), persistent=False)
            self.register_buffer("task_index", self._columns([TASK]) if lat["heads"] > 1 else
                                 torch.zeros(0, dtype=torch.long), persistent=False)
        self.log_std = nn.Parameter(torch.zeros(self.act_dim)) if log_std else None
        self.register_buffer("action_low", torch.as_tensor(action_space.low, dtype=torch.float32), persistent=False)
        self.register_buffer("action_high", torch.as_tensor(action_space.high, dtype=torch.float32), persistent=False)
        self._state: torch.Tensor | None = None

    def _check_latent(self, latent: dict[str, Any]) -> dict[str, Any]:
        lat = dict(latent)
        if set(lat) != LATENT_KEYS:
            raise ValueError(f"HistoryPolicy latent config has keys {sorted(lat)}; expected {sorted(LATENT_KEYS)}")
        missing = [g for g in lat["visible_groups"] if g not in self.groups]
        if missing:
            raise ValueError(f"the teachers' heads read groups {missing} that the student does not read "
                             f"(student groups {list(self.groups)})")
        if lat["heads"] > 1 and (TASK not in self.groups or self.observation_space[TASK].shape[0] != lat["heads"]):
            raise ValueError(f"a latent student with {lat['heads']} teacher heads needs the '{TASK}' group "
                             f"(one-hot over {lat['heads']} tasks) to choose the head")
        lat["hidden"] = [int(h) for h in lat["hidden"]]
        return lat

    def _columns(self, groups: Sequence[str]) -> torch.Tensor:
        """Column indices of ``groups`` (in that order) in this policy's concatenated observation."""
        starts, start = {}, 0
        for g in self.groups:
            starts[g] = start
            start += int(self.observation_space[g].shape[0])
        cols = [c for g in groups for c in range(starts[g], starts[g] + int(self.observation_space[g].shape[0]))]
        return torch.as_tensor(cols, dtype=torch.long)

    @property
    def is_latent(self) -> bool:
        return self.latent_cfg is not None

    # ---- torch path (exportable) -------------------------------------------------------------

    def init_state(self, n: int) -> torch.Tensor:
        """The state after a reset: zeros (n, *state_shape)."""
        return torch.zeros(n, *self.state_shape, device=self.device)

    def encode(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step of the encoder: raw x (n, obs_dim), state -> features (n, f), next state."""
        return self.encoder.step(self.normalizer(x), state)

    def encode_sequence(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Recurrent encoders only: raw x (B, T, obs_dim), state (B, *state_shape) -> features (B, T, f), state."""
        if not isinstance(self.encoder, GRUEncoder):
            raise TypeError("encode_sequence is for recurrent encoders; window encoders step on gathered windows")
        return self.encoder.sequence(self.normalizer(x), state)

    def latent(self, features: torch.Tensor) -> torch.Tensor:
        """Latent students: features (..., f) -> predicted teacher latent z (..., h)."""
        return self.head(features)

    def raw(self, features: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """features (n, f) and the current raw observation x (n, obs_dim) -> network output (n, act_dim)."""
        if self.latent_cfg is None:
            return self.head(features)
        z = self.head(features)
        x_p = x.index_select(-1, self.visible_index)
        outs = [head(x_p, z) for head in self.teacher_heads]
        if len(outs) == 1:
            return outs[0]
        task = x.index_select(-1, self.task_index)
        onehot = torch.nn.functional.one_hot(task.argmax(-1), len(outs)).to(x.dtype)
        return (torch.stack(outs, dim=-1) * onehot.unsqueeze(-2)).sum(-1)

    def postprocess(self, y: torch.Tensor) -> torch.Tensor:
        return torch.clamp(y, self.action_low, self.action_high)

    def forward(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One control step: raw x (n, obs_dim), state (n, *state_shape) -> action (n, act_dim), next state."""
        features, state = self.encode(x, state)
        return self.postprocess(self.raw(features, x)), state

    def forward_act(self, x: torch.Tensor, deterministic: bool) -> torch.Tensor:
        """Acts and advances the history of all n envs; the state is created at zero for a batch of a new size."""
        if self._state is None or self._state.shape[0] != len(x):
            self._state = self.init_state(len(x))
        features, self._state = self.encode(x, self._state)
        return self.postprocess(self.sample(self.raw(features, x), deterministic))

    def reset(self, env_mask: np.ndarray | None = None) -> None:
        """Forget the history / hidden state of the envs where ``env_mask`` (n,) is True (all when None)."""
        if env_mask is None or self._state is None:
            self._state = None
            return
        mask = np.asarray(env_mask, dtype=bool)
        if mask.shape != (self._state.shape[0],):
            raise ValueError(f"reset mask has shape {mask.shape}, expected ({self._state.shape[0]},) for the "
                             "batch the policy is acting on")
        keep = torch.as_tensor(~mask, device=self.device).view(-1, *[1] * len(self.state_shape))
        self._state = self._state * keep  # out of place: the state may be an inference-mode tensor

    def batches(self, data: dict[str, np.ndarray], lengths: np.ndarray, batch_size: int,
                task: np.ndarray | None = None, sequence_length: int = 32) -> BatchSource:
        """Window encoders: random steps, each with its previous ``history - 1`` frames (zero before its
        episode's start); steps of loss ``weight`` 0 are never drawn (episodes without a weighted step, for
        recurrent encoders). Recurrent encoders: ``batch_size // sequence_length`` whole episodes side by side,
        truncated BPTT over chunks of ``sequence_length`` steps (:class:`SequenceBatches`)."""
        tensors = {k: torch.as_tensor(v, device=self.device) for k, v in data.items()}
        lengths = np.asarray(lengths, dtype=np.int64)
        if int(lengths.sum()) != len(tensors["x"]):
            raise ValueError("a history student trains on whole episodes: their lengths must sum to the "
                             f"{len(tensors['x'])} steps")
        starts = np.cumsum(lengths) - lengths
        if self.encoder.recurrent:
            weight = data.get("weight")
            labelled = None if weight is None else np.add.reduceat((np.asarray(weight) > 0).astype(np.int64), starts)
            weights = row_weights(None if task is None else task[starts], labelled)
            sequences = min(max(1, batch_size // sequence_length), len(lengths))
            return SequenceBatches(tensors, lengths, sequences, sequence_length, self.init_state, weights)
        n, x = len(tensors["x"]), tensors["x"]
        prev = torch.as_tensor(window_index(lengths, self.state_shape[0]), device=self.device)

        def take(idx: torch.Tensor) -> dict[str, torch.Tensor]:
            p = prev[idx]
            return {**{k: v[idx] for k, v in tensors.items()}, "window": x[p.clamp(min=0)],
                    "valid": (p >= 0).unsqueeze(-1).to(x.dtype)}

        return RowBatches(n, min(batch_size, n), take, row_weights(task, data.get("weight")), device=self.device)

    def compute_loss(self, batch: dict[str, torch.Tensor], loss_fn: Any) -> tuple[torch.Tensor, Stats]:
        """The loss on a batch, acting exactly as at deployment, in one of two forms:

        - windows (``stack``/``tcn``): ``x`` (B, obs_dim) the current observations, ``window`` (B, history-1,
          obs_dim) the previous ones and ``valid`` (B, history-1, 1) which of them exist (0 before the
          episode's start);
        - sequences (``gru``): ``x`` (B, T, obs_dim), ``mask`` (B, T) the real steps, ``state`` (B, *state_shape)
          the hidden state the chunk starts from; the state after it is left in ``batch["next_state"]``.

        The target is ``z`` (the teachers' privileged latent, MSE through :meth:`latent`) or ``label_mean``
        (with optional ``label_std``, through ``loss_fn``); an optional ``weight`` per step weighs the loss."""
        x = batch["x"]
        if x.ndim == 3:
            features, state = self.encode_sequence(x, batch["state"])
            batch["next_state"] = state.detach()
            m = batch["mask"]
            features, x = features[m], x[m]
            rows = {k: batch[k][m] for k in TARGETS if k in batch}
        else:
            valid = batch["valid"]
            state = torch.cat([self.normalizer(batch["window"]) * valid, valid], dim=-1)
            features, _ = self.encoder.step(self.normalizer(x), state)
            rows = {k: batch[k] for k in TARGETS if k in batch}
        weight = rows.get("weight")
        if "z" in rows:
            per_row = ((self.latent(features) - rows["z"]) ** 2).mean(-1)
            loss = per_row.mean() if weight is None else (weight * per_row).sum() / weight.sum().clamp_min(1e-12)
        else:
            loss = loss_fn(self.raw(features, x), rows["label_mean"], student_log_std=self.log_std,
                           teacher_std=rows.get("label_std"), weight=weight)
        return loss, {"loss": loss.detach()}

    @property
    def state(self) -> torch.Tensor | None:
        """The current per-env state (n, *state_shape), None before the first ``act`` after a full reset."""
        return self._state

    def export_graph(self) -> ExportGraph:
        """``forward`` as an export graph: (``obs`` (n, obs_dim), ``state``) -> (``action``, ``next_state``)."""

        def example(graph: ExportGraph, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
            x = self.normalizer.examples(3.0 * torch.randn(n, self.obs_dim, generator=generator))
            state = torch.randn(n, *self.state_shape, generator=generator)
            if isinstance(self.encoder, WindowEncoder):
                state[..., -1] = (torch.rand(n, self.state_shape[0], generator=generator) < 0.7).float()
            return x, state

        return ExportGraph(self, (TensorSpec(OBS, (self.obs_dim,), "observation"),
                                  TensorSpec(STATE, self.state_shape, "state")),
                           (TensorSpec("action", (self.act_dim,), "action"),
                            TensorSpec("next_state", self.state_shape, "state")),
                           state=((STATE, "next_state"),), example=example)

    # ---- config ------------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        return {"groups": list(self.groups), "observation_space": space_to_json(self.observation_space),
                "action_space": space_to_json(self.action_space), "encoder": self.encoder_kind,
                "history": self.history, "rnn_hidden": self.rnn_hidden, "feature_dim": self.feature_dim,
                "hidden": list(self.hidden), "activation": self.activation, "post": self.post,
                "normalizer": self.normalizer.config(), "log_std": self.log_std is not None,
                "latent": None if self.latent_cfg is None else dict(self.latent_cfg)}

    def train(self, mode: bool = True) -> HistoryPolicy:
        """As nn.Module.train, but the teachers' heads of a latent student always stay in eval mode."""
        super().train(mode)
        if self.latent_cfg is not None:
            self.teacher_heads.eval()
        return self

    def extra_repr(self) -> str:
        return (f"groups={list(self.groups)}, encoder={self.encoder_kind!r}, state={self.state_shape}, "
                f"latent={self.latent_cfg is not None}")
