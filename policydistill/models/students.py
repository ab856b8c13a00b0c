"""The student a distiller trains, built from :class:`StudentConfig` (``student=<kind>`` on the command line).

======================= ============================================================================
kind                    student
======================= ============================================================================
``mlp``                 :class:`MLPPolicy` over the current observation (stateless), or a padded
                        :class:`GeneralistPolicy` when the suite's tasks differ in their spaces, a
                        task embedding or per-task heads are asked for
``history_mlp``         :class:`HistoryPolicy`, encoder ``stack`` (last ``history`` frames into an MLP)
``tcn``                 :class:`HistoryPolicy`, encoder ``tcn`` (1-D temporal convolution)
``gru``                 :class:`HistoryPolicy`, encoder ``gru`` (truncated BPTT over ``tbptt`` steps)
``latent``              :class:`HistoryPolicy` with a ``latent_encoder`` and the teachers' frozen heads
======================= ============================================================================

Latent regression needs MLP teachers that read ``privileged`` (the zoo's PPO experts do): each is split
exactly into a linear privileged encoder and its action head (:mod:`policydistill.models.teacher_split`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from gymnasium import spaces

from policydistill.configs import refuse_unread, require_choice, require_int, require_ints
from policydistill.models import resolve_device
from policydistill.models.base import TorchPolicy
from policydistill.models.generalist import HEADS, TASK_ENCODINGS, GeneralistPolicy
from policydistill.models.history import HistoryPolicy
from policydistill.models.history_encoders import WINDOW_KINDS
from policydistill.models.mlp import ACTIVATIONS, MLPPolicy
from policydistill.models.teacher_split import PrivilegedLatent, split_teacher
from policydistill.policy import Policy
from policydistill.suites import Suite
from policydistill.types import TASK, check_groups

ENCODER_OF = {"history_mlp": "stack", "tcn": "tcn", "gru": "gru"}
STUDENT_KINDS = ("mlp", *ENCODER_OF, "latent")
LATENT_ENCODERS = (*WINDOW_KINDS, "gru")


@dataclass
class StudentConfig:
    """The student network over ``groups`` (normaliser inside), optionally with a learned std.

    ``kind``: see the module doc. ``history``: frames in a window encoder's view; ``rnn_hidden``/``tbptt``: a
    GRU's width and truncated-BPTT length; ``latent_encoder``: the history encoder of a ``latent`` student,
    whose last ``latent_action_rounds`` rounds fine-tune it on action labels. ``task_encoding``: how the
    ``task`` group reaches an MLP student, ``onehot`` or a learned ``embedding`` of ``embedding_dim``. ``heads``:
    an MLP student's first and last layers, ``shared`` by the tasks or one per task (``per_task``); ``auto``:
    per task when the suite's tasks differ in their spaces, else shared.
    ``check_predictable``: once 10 episodes are stored, compare held-out action loss with and without
    ``privileged`` and warn when the student's groups cannot predict the teacher
    (:mod:`policydistill.distill.predictability`). A key the chosen kind does not read is an error.
    """

    kind: str = "mlp"
    groups: list[str] = field(default_factory=lambda: ["policy", "task"])
    hidden: list[int] = field(default_factory=lambda: [256, 256])
    activation: str = "relu"
    learn_std: bool = False
    history: int = 16
    rnn_hidden: int = 128
    tbptt: int = 32
    latent_encoder: str = "tcn"
    latent_action_rounds: int = 0
    task_encoding: str = "onehot"
    embedding_dim: int = 8
    heads: str = "auto"
    check_predictable: bool = True

    def __post_init__(self) -> None:
        require_choice("student kind", self.kind, STUDENT_KINDS)
        check_groups(self.groups)
        require_ints("student.hidden", self.hidden)
        require_choice("student.activation", self.activation, list(ACTIVATIONS))
        require_choice("student.task_encoding", self.task_encoding, TASK_ENCODINGS)
        require_choice("student.heads", self.heads, ("auto", *HEADS))
        require_choice("student.latent_encoder", self.latent_encoder, LATENT_ENCODERS)
        for name in ("history", "rnn_hidden", "tbptt", "embedding_dim"):
            require_int(f"student.{name}", getattr(self, name))
        require_int("student.latent_action_rounds", self.latent_action_rounds, 0)
        refuse_unread(self, self.reads(), f"student kind '{self.kind}'", "student.")

    @property
    def encoder(self) -> str | None:
        """The history encoder (``stack``, ``tcn``, ``gru``), None for an MLP student."""
        return self.latent_encoder if self.kind == "latent" else ENCODER_OF.get(self.kind)

    def reads(self) -> set[str]:
        """The keys this kind reads."""
        keys = {"kind", "groups", "hidden", "activation", "learn_std", "check_predictable"}
        if self.kind == "mlp":
            keys |= {"task_encoding", "embedding_dim"} if self.task_encoding == "embedding" else {"task_encoding"}
            keys.add("heads")
        if self.kind == "latent":
            keys |= {"latent_encoder", "latent_action_rounds"}
        keys |= {"rnn_hidden", "tbptt"} if self.encoder == "gru" else {"history"} if self.encoder else set()
        return keys


def _latent_heads(teachers: Sequence[Policy]) -> tuple[dict[str, Any], list[Any]]:
    """The heads description for :class:`HistoryPolicy` and the split (visible groups, head, encoder) per teacher."""
    splits = [split_teacher(t) for t in teachers]  # type: ignore[arg-type]
    first: MLPPolicy = teachers[0]  # type: ignore[assignment]
    for t, (visible, _, _) in zip(teachers, splits, strict=True):
        if visible != splits[0][0] or t.hidden != first.hidden or t.activation != first.activation \
                or t.normalizer.config() != first.normalizer.config():
            raise ValueError("latent regression needs teachers of one architecture (groups, hidden layers, "
                             "activation, normaliser) so that one student latent fits every head")
    return {"heads": len(teachers), "visible_groups": list(splits[0][0]), "hidden": list(first.hidden),
            "activation": first.activation, "normalizer": first.normalizer.config()}, splits


def build_student(suite: Suite, cfg: StudentConfig, device: str | torch.device = "auto",
                  teachers: Sequence[Policy] | None = None) -> TorchPolicy:
    """The untrained student of ``cfg.kind`` reading ``cfg.groups`` (and ``goal`` where the suite observes one,
    see :meth:`Suite.with_goal`), in the suite's spaces. ``teachers`` (one per task, in order) are needed for
    ``latent`` only."""
    groups = check_groups(suite.with_goal(cfg.groups))
    missing = sorted({g for obs, _ in suite.spaces for g in groups if g not in obs.spaces})
    if missing:
        raise ValueError(f"student groups {missing} are not observed by every task of suite '{suite.name}'; "
                         f"it has {list(suite.spaces[0][0].spaces)}")
    obs_spaces = [spaces.Dict({g: obs[g] for g in groups}) for obs, _ in suite.spaces]
    act_spaces = [a for _, a in suite.spaces]
    uniform = all(o == obs_spaces[0] and a == act_spaces[0] for o, a in zip(obs_spaces, act_spaces, strict=True))
    device = resolve_device(device)
    heads = cfg.heads if cfg.heads != "auto" else "shared" if uniform else "per_task"
    if cfg.kind == "mlp" and uniform and cfg.task_encoding == "onehot" and heads == "shared":
        return MLPPolicy(groups, obs_spaces[0], act_spaces[0], hidden=cfg.hidden, activation=cfg.activation,
                         post="clip", normalizer={"enabled": True}, log_std=cfg.learn_std).to(device)
    if cfg.kind == "mlp":
        if TASK not in groups:
            why = "its tasks have different spaces" if not uniform else \
                "a task embedding is asked for" if cfg.task_encoding == "embedding" else "per-task heads are asked for"
            raise ValueError(f"suite '{suite.name}': {why}, so the student must read the '{TASK}' group; "
                             f"got student.groups={list(groups)}")
        return GeneralistPolicy(groups, obs_spaces, act_spaces, hidden=cfg.hidden, activation=cfg.activation,
                                task_encoding=cfg.task_encoding, embedding_dim=cfg.embedding_dim,
                                log_std=cfg.learn_std, heads=heads).to(device)
    if not uniform:
        raise ValueError(f"a '{cfg.kind}' student needs one observation and action space across suite "
                         f"'{suite.name}'; use student=mlp for suites whose tasks differ")
    latent = splits = None
    if cfg.kind == "latent":
        if teachers is None or len(teachers) != len(suite.tasks):
            raise ValueError(f"a latent student needs one teacher per task of suite '{suite.name}'")
        latent, splits = _latent_heads(teachers)
    student = HistoryPolicy(groups, obs_spaces[0], act_spaces[0], encoder=cfg.encoder, history=cfg.history,
                            rnn_hidden=cfg.rnn_hidden, hidden=cfg.hidden, activation=cfg.activation, post="clip",
                            normalizer={"enabled": True}, log_std=cfg.learn_std, latent=latent).to(device)
    for head, (_, teacher_head, _) in zip(student.teacher_heads if splits else [], splits or [], strict=True):
        head.load_state_dict(teacher_head.state_dict())
    return student


def privileged_encoders(teachers: Sequence[Policy], device: torch.device) -> list[PrivilegedLatent]:
    """Each teacher's linear encoder of ``privileged`` (what a latent student regresses), one per task."""
    return [split_teacher(t)[2].to(device) for t in teachers]  # type: ignore[arg-type]
