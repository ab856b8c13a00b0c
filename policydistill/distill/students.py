"""The student factory keyed by ``StudentConfig.kind``, and the trainer that fits each kind.

======================= ============================================================================
kind                    student
======================= ============================================================================
``mlp``                 :class:`MLPPolicy` over the current observation (stateless)
``history_mlp``         :class:`HistoryPolicy`, encoder ``stack`` (last ``history`` frames into an MLP)
``tcn``                 :class:`HistoryPolicy`, encoder ``tcn`` (1-D temporal convolution)
``gru``                 :class:`HistoryPolicy`, encoder ``gru`` (truncated BPTT, ``tbptt`` steps)
``latent``              :class:`HistoryPolicy` with a ``latent_encoder`` and the teachers' frozen heads
======================= ============================================================================

Latent regression needs MLP teachers that read ``privileged`` (the zoo's PPO experts do): each is
split exactly into a linear privileged encoder and its action head (:mod:`policydistill.models.teacher_split`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from policydistill.config import DistillConfig, StudentConfig
from policydistill.distill.dagger import _Trainer, build_student
from policydistill.distill.history_trainer import HistoryTrainer
from policydistill.distill.losses import LossFn
from policydistill.models.history_encoders import WINDOW_KINDS
from policydistill.models.history_policy import HistoryPolicy
from policydistill.models.mlp_policy import MLPPolicy
from policydistill.models.teacher_split import PrivilegedLatent, split_teacher
from policydistill.policy import Policy
from policydistill.suite import Suite

ENCODER_OF = {"history_mlp": "stack", "tcn": "tcn", "gru": "gru"}
STUDENT_KINDS = ("mlp", *ENCODER_OF, "latent")
LATENT_ENCODERS = (*WINDOW_KINDS, "gru")


def check_kind(cfg: StudentConfig) -> str:
    if cfg.kind not in STUDENT_KINDS:
        raise ValueError(f"unknown student kind '{cfg.kind}'; expected one of {list(STUDENT_KINDS)} "
                         "(e.g. student=gru)")
    if cfg.kind == "latent" and cfg.latent_encoder not in LATENT_ENCODERS:
        raise ValueError(f"unknown student.latent_encoder '{cfg.latent_encoder}'; expected one of "
                         f"{list(LATENT_ENCODERS)}")
    if cfg.kind == "gru" or (cfg.kind == "latent" and cfg.latent_encoder == "gru"):
        for name in ("tbptt", "rnn_hidden"):
            value = getattr(cfg, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"student.{name} must be an int >= 1 for a GRU encoder, got {value!r}")
    return cfg.kind


def _latent_config(teachers: Sequence[Policy]) -> tuple[dict[str, Any], list[Any]]:
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


def make_student(suite: Suite, cfg: StudentConfig, device: str | torch.device,
                 teachers: Sequence[Policy] | None = None) -> MLPPolicy | HistoryPolicy:
    """The student of ``cfg.kind`` reading ``cfg.groups`` (spaces checked by :func:`build_student`).

    ``teachers`` (one per task of the suite, in order) is needed for ``latent`` only."""
    kind = check_kind(cfg)
    base = build_student(suite, cfg, device)
    if kind == "mlp":
        return base
    if not isinstance(base, MLPPolicy):
        raise ValueError(f"a '{kind}' student needs one observation and action space across suite '{suite.name}' "
                         "and a one-hot task id; use student=mlp for suites whose tasks differ")
    latent = None
    if kind == "latent":
        if teachers is None or len(teachers) != len(suite.tasks):
            raise ValueError(f"a latent student needs one teacher per task of suite '{suite.name}'")
        latent, splits = _latent_config(teachers)
    student = HistoryPolicy(cfg.groups, base.observation_space, base.action_space,
                            encoder=cfg.latent_encoder if kind == "latent" else ENCODER_OF[kind],
                            history=cfg.history, rnn_hidden=cfg.rnn_hidden, hidden=cfg.hidden,
                            activation=cfg.activation, post=base.post, normalizer={"enabled": True},
                            log_std=cfg.learn_std, latent=latent).to(base.device)
    if latent is not None:
        for head, (_, teacher_head, _) in zip(student.teacher_heads, splits, strict=True):
            head.load_state_dict(teacher_head.state_dict())
    return student


def privileged_encoders(teachers: Sequence[Policy], device: torch.device) -> list[PrivilegedLatent]:
    return [split_teacher(t)[2].to(device) for t in teachers]  # type: ignore[arg-type]


def make_trainer(student: Policy, cfg: DistillConfig, loss_fn: LossFn, rng: np.random.Generator,
                 teachers: Sequence[Policy] | None = None, action_only: bool = False) -> _Trainer | HistoryTrainer:
    """The trainer for ``student``: minibatches of steps (MLP, padded generalist), windows or TBPTT sequences
    (history students)."""
    if not isinstance(student, HistoryPolicy):
        return _Trainer(student, cfg, loss_fn, rng)
    latent = None
    if student.is_latent and not action_only:
        if teachers is None:
            raise ValueError("a latent student's trainer needs the teachers (their privileged encoders)")
        latent = privileged_encoders(teachers, student.device)
    return HistoryTrainer(student, cfg, loss_fn, rng, latent=latent, action_only=action_only)
