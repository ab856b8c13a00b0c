"""Training a :class:`HistoryPolicy` on stored whole episodes, exactly as it sees them when acting.

The data is the aggregated steps ``{field: (N, ...)}`` in episode order with the episode ``lengths``
(sum = N). At an episode's first step the student's state is zero, as after ``reset`` at deployment.

- Window encoders (``stack``, ``tcn``): minibatches of random steps; each step's state (its previous
  ``history - 1`` normalised frames with validity flags, zero before the episode's start) is gathered
  from the episode and the step is run through the same ``encoder.step`` as at acting time.
- Recurrent encoders (``gru``): truncated backpropagation through time. ``batch_size // tbptt``
  episodes are run side by side from their first step in chunks of ``tbptt`` steps; the hidden state
  is carried (detached) from one chunk to the next and is zero at each episode's start; one gradient
  step per chunk; padding past an episode's end is masked out of the loss.

Targets: the teacher's action label (through the loss menu), or for latent students the teachers'
privileged latent ``z`` (MSE), made from the recorded ``privileged`` group by the teachers' own
encoders (:class:`~policydistill.models.teacher_split.PrivilegedLatent`); the student network itself
is never handed ``privileged``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from policydistill.config import DistillConfig
from policydistill.data.sampling import RowSampler, task_weights
from policydistill.distill.losses import LossFn
from policydistill.models.history_policy import HistoryPolicy
from policydistill.models.teacher_split import PrivilegedLatent
from policydistill.types import PRIVILEGED, TASK


def window_index(lengths: Sequence[int], frames: int) -> np.ndarray:
    """For every step of the concatenated episodes, the indices of its ``frames`` previous steps (oldest
    first), -1 where they would fall before its episode's start: int64 (N, frames)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    n = int(lengths.sum())
    step = np.arange(n)
    start = np.repeat(np.cumsum(lengths) - lengths, lengths)
    prev = step[:, None] + np.arange(-frames, 0)[None, :]
    return np.where(prev >= start[:, None], prev, -1)


class HistoryTrainer:
    """``fit`` runs ``cfg.updates_per_round`` gradient steps (balanced over tasks when ``balance_tasks``).

    ``latent``: the teachers' privileged encoders, one per task, for a latent student; it regresses
    their latent except in the last ``latent_action_rounds`` rounds (and when ``action_only``), where it
    is fine-tuned on the action labels through the frozen heads.
    """

    def __init__(self, student: HistoryPolicy, cfg: DistillConfig, loss_fn: LossFn, rng: np.random.Generator,
                 latent: Sequence[PrivilegedLatent] | None = None, action_only: bool = False) -> None:
        if student.is_latent and latent is None and not action_only:
            raise ValueError("a latent student needs the teachers' privileged encoders to make its targets")
        self.student, self.cfg, self.loss_fn, self.rng = student, cfg, loss_fn, rng
        self.latent = None if latent is None else list(latent)
        self.action_only = action_only
        self.opt = torch.optim.Adam([p for p in student.parameters() if p.requires_grad], lr=cfg.lr)

    @property
    def extra_fields(self) -> list[str]:
        """Stored fields the trainer needs besides the student's groups and the labels."""
        return [f"obs/{PRIVILEGED}"] if self.latent is not None and not self.action_only else []

    def regresses_latent(self, round_index: int) -> bool:
        action_from = self.cfg.rounds - self.cfg.student.latent_action_rounds
        return self.student.is_latent and not self.action_only and round_index < action_from

    def targets(self, data: dict[str, np.ndarray], task: np.ndarray, latent: bool) -> torch.Tensor:
        dev = self.student.device
        if not latent:
            return torch.as_tensor(data["label_mean"], device=dev)
        assert self.latent is not None
        priv = torch.as_tensor(data[f"obs/{PRIVILEGED}"], device=dev)
        z = torch.empty(len(priv), self.latent[0].weight.shape[0], device=dev)
        with torch.no_grad():
            for i, enc in enumerate(self.latent):
                rows = torch.as_tensor(np.flatnonzero(task == i), device=dev)
                if len(rows):
                    z[rows] = enc(priv[rows])
        return z

    def _loss(self, features: torch.Tensor, x: torch.Tensor, target: torch.Tensor, std: torch.Tensor | None,
              latent: bool) -> torch.Tensor:
        if latent:
            return F.mse_loss(self.student.latent(features), target)
        return self.loss_fn(self.student.raw(features, x), target, student_log_std=self.student.log_std,
                            teacher_std=std)

    def _probabilities(self, task: np.ndarray) -> np.ndarray | None:
        return task_weights(task) if self.cfg.balance_tasks else None

    def fit(self, data: dict[str, np.ndarray], set_stats: bool, lengths: Sequence[int] | None = None,
            round_index: int = 0) -> float:
        """Train on ``data`` (episodes of ``lengths``, in order); returns the mean loss of the last 10% of steps."""
        if lengths is None or int(np.sum(lengths)) != len(data["label_mean"]):
            raise ValueError("a history student trains on whole episodes: pass their lengths (summing to the "
                             f"{len(data['label_mean'])} steps)")
        student, dev = self.student, self.student.device
        x_np = np.concatenate([data[f"obs/{g}"] for g in student.groups], axis=1)
        if set_stats:
            student.normalizer.set_stats(x_np.mean(0), x_np.var(0))
        x = torch.as_tensor(x_np, device=dev)
        task = data[f"obs/{TASK}"].argmax(1) if f"obs/{TASK}" in data else np.zeros(len(x_np), dtype=np.int64)
        latent = self.regresses_latent(round_index)
        target = self.targets(data, task, latent)
        std = torch.as_tensor(data["label_std"], device=dev) if "label_std" in data and not latent else None
        student.train()
        if student.encoder.recurrent:
            losses = self._fit_sequences(x, target, std, task, np.asarray(lengths), latent)
        else:
            losses = self._fit_windows(x, target, std, task, np.asarray(lengths), latent)
        student.eval()
        tail = losses[-max(1, len(losses) // 10):]
        if not np.isfinite(tail).all():
            raise FloatingPointError(f"distillation loss became non-finite ({tail[-1]}); lower lr (now {self.cfg.lr})")
        return float(np.mean(tail))

    def _step(self, loss: torch.Tensor) -> float:
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.item()

    def _fit_windows(self, x: torch.Tensor, target: torch.Tensor, std: torch.Tensor | None, task: np.ndarray,
                     lengths: np.ndarray, latent: bool) -> list[float]:
        student = self.student
        with torch.no_grad():
            xn = student.normalizer(x)
        prev = torch.as_tensor(window_index(lengths, student.state_shape[0]), device=x.device)
        draw = RowSampler(len(x), self._probabilities(task))
        losses = []
        for _ in range(self.cfg.updates_per_round):
            rows = torch.as_tensor(draw(self.rng, min(self.cfg.batch_size, len(x))), device=x.device)
            idx = prev[rows]
            valid = (idx >= 0).unsqueeze(-1).to(xn.dtype)
            state = torch.cat([xn[idx.clamp(min=0)] * valid, valid], dim=-1)
            features, _ = student.encoder.step(xn[rows], state)
            losses.append(self._step(self._loss(features, x[rows], target[rows],
                                                None if std is None else std[rows], latent)))
        return losses

    def _fit_sequences(self, x: torch.Tensor, target: torch.Tensor, std: torch.Tensor | None, task: np.ndarray,
                       lengths: np.ndarray, latent: bool) -> list[float]:
        student, chunk = self.student, self.cfg.student.tbptt
        starts = np.cumsum(lengths) - lengths
        episode_task = task[starts]
        draw = RowSampler(len(lengths), self._probabilities(episode_task))
        n_seq = max(1, self.cfg.batch_size // chunk)
        losses: list[float] = []
        while len(losses) < self.cfg.updates_per_round:
            chosen = draw(self.rng, min(n_seq, len(lengths)))
            t_max = int(lengths[chosen].max())
            # (B, T) indices into the steps, padded past each episode's end (masked out of the loss)
            offs = np.arange(t_max)[None, :]
            mask_np = offs < lengths[chosen][:, None]
            idx = torch.as_tensor(np.where(mask_np, starts[chosen][:, None] + offs, 0), device=x.device)
            mask = torch.as_tensor(mask_np, device=x.device)
            state = student.init_state(len(chosen))
            for t0 in range(0, t_max, chunk):
                if len(losses) >= self.cfg.updates_per_round:
                    break
                sl = idx[:, t0:t0 + chunk]
                m = mask[:, t0:t0 + chunk]
                features, state = student.encode_sequence(x[sl], state)
                state = state.detach()
                loss = self._loss(features[m], x[sl][m], target[sl][m], None if std is None else std[sl][m], latent)
                losses.append(self._step(loss))
        return losses
