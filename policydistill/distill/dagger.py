"""DAgger and its special cases: per round, collect (the schedule decides who acts), store the teacher's
labels, fit the student on the stored data.

======== ================================= ==========================================
method   who acts (beta = P(teacher acts)) data
======== ================================= ==========================================
bc       teacher (beta = 1)                aggregated over rounds (capped, FIFO)
dagger   ``schedule`` (e.g. linear 1 -> 0) aggregated over rounds (capped, FIFO)
onpolicy student (beta = 0)                this round's only (cleared after the update)
======== ================================= ==========================================

BC is the baseline: the student is trained on the stored expert episodes only. The aggregated data is
capped at ``max_steps`` steps; eviction removes whole shards, oldest first (so the oldest rounds go
first). ``success_filter`` drops teacher-only episodes that fail the task's success test. Every round the
student's input normaliser is refitted to the stored data (a normaliser fitted once on a small first
round clips the states the student reaches later) and the student takes ``updates_per_round`` steps of
the fit loop, its optimiser carried across rounds. Any student kind trains here: MLP and padded
generalists on independent steps, history students on windows or truncated-BPTT sequences of whole
episodes, latent students on the teachers' privileged latent (then, in their last
``latent_action_rounds`` rounds, on the actions).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from policydistill.configs import refuse_unread, require_choice, require_int, require_lr, require_number
from policydistill.data.shards import EpisodeStore
from policydistill.distill.algorithm import Algorithm, Context, FitWith, stream
from policydistill.distill.collect import CollectPlan, teacher_has_std
from policydistill.distill.confidence import CONFIDENCE, advantage_weights, precision_weights
from policydistill.distill.fit import FitConfig, FitJob, adam
from policydistill.distill.losses import LOSSES, make_loss
from policydistill.distill.offline import load_stores
from policydistill.distill.predictability import MIN_EPISODES, check_predictable
from policydistill.distill.schedules import ScheduleFields
from policydistill.models.base import TorchPolicy
from policydistill.models.generalist import GeneralistPolicy
from policydistill.models.history import HistoryPolicy
from policydistill.models.students import build_student, privileged_encoders
from policydistill.types import POLICY, PRIVILEGED, TASK

log = logging.getLogger(__name__)


AUTO_EPOCHS = 10
"""Passes over a round's training rows when ``updates_per_round`` is None."""
AUTO_UPDATES = (50, 500)
"""The fewest and most updates per round then."""


@dataclass
class FitFields:
    """How the student is fitted every round: ``updates_per_round`` steps on minibatches of ``batch_size``
    (None: as many as :data:`AUTO_EPOCHS` passes over the round's training rows (those of nonzero weight) take, between
    :data:`AUTO_UPDATES` (50, 500), so that small datasets are not fitted 500 times a round; ``method=gated``'s teacher
    round takes 500) (``balance_tasks``:
    every task the same share) of ``loss`` (with ``loss_params``) at learning rate ``lr``;
    ``lr_decay`` anneals it to ``lr / 100`` within each round (a cosine). ``confidence``: per-step loss weights,
    ``none``, ``teacher_std`` (each label's precision) or ``advantage`` (how the teacher's critic judges each
    label), capped at ``confidence_cap`` times the mean; see :mod:`policydistill.distill.confidence`."""

    loss: str = "mse"
    confidence: str = "none"
    confidence_cap: float = 10.0
    loss_params: dict[str, Any] = field(default_factory=dict)
    updates_per_round: int | None = None
    batch_size: int = 256
    lr: float = 1e-3
    lr_decay: bool = False
    balance_tasks: bool = True

    def check_fit(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss '{self.loss}'; losses: {sorted(LOSSES)}")
        require_choice("confidence", self.confidence, CONFIDENCE)
        require_number("confidence_cap", self.confidence_cap, 1.0)
        if self.confidence == "none" and self.confidence_cap != 10.0:
            raise ValueError("method.confidence_cap is read only with method.confidence=teacher_std|advantage")
        if self.updates_per_round is not None:
            require_int("updates_per_round", self.updates_per_round)
        require_int("batch_size", self.batch_size)
        require_lr("lr", self.lr)

    def round_updates(self, rows: int) -> int:
        """The updates of a round that trains on ``rows`` rows (see ``updates_per_round``)."""
        if self.updates_per_round is not None:
            return self.updates_per_round
        low, high = AUTO_UPDATES
        return min(high, max(low, math.ceil(AUTO_EPOCHS * rows / self.batch_size)))

    def most_updates(self) -> int:
        """``updates_per_round``, else the most automatic updates of a round whatever its rows."""
        return self.updates_per_round if self.updates_per_round is not None else AUTO_UPDATES[1]

    def fit_config(self, rows: int, steps: int | None = None, lr: float | None = None) -> FitConfig:
        """The fit of a round on ``rows`` training rows (``steps``, ``lr``: overrides)."""
        return FitConfig(steps=steps or self.round_updates(rows), lr=lr or self.lr,
                         lr_schedule="cosine" if self.lr_decay else "constant", final_lr=0.01)


@dataclass
class RoundFields:
    """``rounds`` rounds, each collecting ``episodes_per_task`` episodes per task (cut at ``collect_steps`` steps
    when set: the same labels from more episode starts; evaluation keeps the tasks' own episode length)."""

    rounds: int = 6
    episodes_per_task: int = 4
    collect_steps: int | None = None


@dataclass
class RelabelFields:
    """``relabel_noise``: each round, the student also trains on ``relabel_copies`` copies of every stored step
    whose ``policy`` group is perturbed by Gaussian noise of ``relabel_noise`` times each input's std over the
    data, each copy labelled by its task's teacher (0: off). The student learns the teacher around the states
    it saw, not only on them: e.g. goals between the few a manipulation task was shown. MLP students on tasks
    that share their spaces only."""

    relabel_noise: float = 0.0
    relabel_copies: int = 1

    def check_relabel(self) -> None:
        require_number("relabel_noise", self.relabel_noise, 0.0)
        require_int("relabel_copies", self.relabel_copies)


@dataclass
class ExtraFields:
    """``extra_episodes``: an episode store (e.g. the episodes of a deployment in which the failure monitor
    raised an alarm: ``policydistill run ... runtime.record_alarms=<dir>``) whose every step the teachers label
    once, counted as labels in round 0, and which the student trains on beside the run's own episodes every
    round: DAgger from deployment."""

    extra_episodes: str | None = None

    def check_extra(self) -> None:
        if self.extra_episodes is not None and not (Path(self.extra_episodes) / "manifest.json").is_file():
            raise ValueError(f"method.extra_episodes={self.extra_episodes} is not an episode store (no manifest.json)")


@dataclass
class OnPolicyConfig(ExtraFields, RelabelFields, FitFields, RoundFields):
    """``method=onpolicy``: the student acts on every step and only this round's data is trained on (the
    rsl_rl style)."""

    def __post_init__(self) -> None:
        self.check_fit()
        self.check_relabel()
        self.check_extra()
        require_int("rounds", self.rounds)
        require_int("episodes_per_task", self.episodes_per_task)
        if self.collect_steps is not None:
            require_int("collect_steps", self.collect_steps)


@dataclass
class BCConfig(OnPolicyConfig):
    """``method=bc``: the teacher acts on every step (``teacher_noise``: plus that many of its stds of Gaussian
    noise, labels staying its mean, as DART); data aggregated over rounds up to ``max_steps`` steps;
    ``success_filter`` drops teacher-only episodes that fail the task's success test. ``data``: with
    ``teachers=none``, the episode stores the student learns their labels from, collecting nothing (offline;
    see :mod:`policydistill.distill.offline`)."""

    teacher_noise: float = 0.0
    success_filter: bool = False
    max_steps: int = 200_000
    data: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__post_init__()
        require_number("teacher_noise", self.teacher_noise, 0.0)
        require_int("max_steps", self.max_steps)


@dataclass
class DAggerConfig(ScheduleFields, BCConfig):
    """``method=dagger``: per env and step the teacher acts with probability beta, which follows ``schedule``
    over the rounds (see :class:`~policydistill.distill.schedules.ScheduleFields`); the rest as ``bc``."""

    def __post_init__(self) -> None:
        super().__post_init__()
        refuse_unread(self, set(BCConfig.__dataclass_fields__) - {"data"} | self.schedule_keys(),
                      f"schedule '{self.schedule}'", "method.")
        self.beta_schedule()


class OnPolicy(Algorithm):
    """The DAgger family's algorithm; subclasses choose who acts (:meth:`beta`) and what data is kept."""

    name = "onpolicy"
    config = OnPolicyConfig

    def __init__(self, cfg: OnPolicyConfig, ctx: Context) -> None:
        super().__init__(cfg, ctx)
        self.offline = not ctx.teachers
        teachers = [] if self.offline else [ctx.teachers[n] for n in ctx.suite.task_names]
        self.student: TorchPolicy = build_student(ctx.suite, ctx.student, ctx.device, teachers or None)
        has_std = all("label_std" in EpisodeStore(r).fields for r in self.cfg.data) if self.offline \
            else teacher_has_std(ctx.bank, ctx.suite)
        self.loss_fn = make_loss(cfg.loss, teacher_has_std=has_std, student_has_std=ctx.student.learn_std,
                                 **dict(cfg.loss_params))
        if cfg.confidence == "teacher_std" and not has_std:
            raise ValueError(f"method.confidence={cfg.confidence} weighs labels by the teachers' std; these teachers "
                             "are deterministic (SB3 PPO and SAC experts label with a std)")
        if cfg.confidence == "advantage" and (self.offline or any(getattr(t, "critic", None) is None
                                                                  for t in teachers)):
            why = "" if teachers else "; teachers=none has none"
            raise ValueError("method.confidence=advantage weighs labels by the teachers' critics as they label: it "
                             "needs teachers that keep one (SB3 SAC and TD3 experts, as policydistill converts "
                             f"them){why}")
        if self.plan_options()["teacher_noise"] > 0 and not has_std:
            raise ValueError("teacher_noise needs teachers with a label std (e.g. SB3/PPO experts); these teachers "
                             "are deterministic")
        self.optimizer = adam(self.student, cfg.lr)
        is_latent = isinstance(self.student, HistoryPolicy) and self.student.is_latent
        self.encoders = privileged_encoders(teachers, self.student.device) if is_latent else None
        self.diagnosed = False
        self._extra: tuple[dict[str, np.ndarray], np.ndarray, np.ndarray] | None = None
        first = ctx.suite.spaces[0]
        padded = any(o != first[0] or a != first[1] for o, a in ctx.suite.spaces)
        if cfg.confidence == "teacher_std" and padded:
            raise ValueError("method.confidence weighs every step by its label's std over the action dims: it needs "
                             "tasks that share their spaces")
        if cfg.extra_episodes is not None and padded:
            raise ValueError("method.extra_episodes adds stored steps as they are: it needs tasks that share their "
                             "spaces")
        if self.offline and (cfg.relabel_noise > 0 or cfg.extra_episodes is not None):
            raise ValueError("method.relabel_noise and method.extra_episodes ask the teachers for labels: an offline "
                             "run (teachers=none) has none")
        if cfg.relabel_noise > 0 and (isinstance(self.student, HistoryPolicy) or padded):
            raise ValueError("method.relabel_noise trains on perturbed single steps of tasks that share their spaces: "
                             f"it needs an MLP student (student=mlp) on such a suite, not a "
                             f"{type(self.student).__name__}{' over padded spaces' if padded else ''}")

    def beta(self, round: int, prev: dict[str, Any] | None, teacher_return: float) -> float:
        return 0.0

    def plan_options(self) -> dict[str, Any]:
        """The :class:`CollectPlan` fields on the teacher's noise, filtering and what data is kept: on-policy
        keeps only this round's."""
        return {"teacher_noise": 0.0, "success_filter": False, "keep_steps": None, "only_this_round": True}

    def collect(self, round: int, prev: dict[str, Any] | None, teacher_return: float) -> CollectPlan | None:
        cfg = self.cfg
        if self.offline:
            return None
        beta = self.beta(round, prev, teacher_return)
        return CollectPlan(beta, cfg.episodes_per_task, self.student if beta < 1 else None,
                           episode_steps=cfg.collect_steps, advantage=cfg.confidence == "advantage",
                           **self.plan_options())

    def regresses_latent(self, round: int) -> bool:
        """Whether a latent student regresses the teachers' latent in round ``round`` (else the actions)."""
        return self.encoders is not None and round < self.cfg.rounds - self.ctx.student.latent_action_rounds

    def training_data(self, store: EpisodeStore | None, round: int, extra: tuple[str, ...] = ()
                      ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        """Every stored step's observation groups (the student's, ``task``, ``extra``, and ``privileged`` for a
        latent student) as ``obs/<group>`` with the labels, the episode lengths and each step's task: the run's
        store's, or offline the ``data`` stores'."""
        stores = [EpisodeStore(r) for r in self.cfg.data] if self.offline else [store]
        fields = set.intersection(*(set(s.fields) for s in stores))
        wanted = [*self.student.groups, TASK, *([PRIVILEGED] if self.encoders is not None else []), *extra]
        names = [f"obs/{g}" for g in dict.fromkeys(wanted)] + ["label_mean"]
        names += [k for k in ("label_std", "label_advantage", "query") if k in fields]
        raw, lengths = load_stores(stores, names)
        if len(raw["label_mean"]) == 0:
            raise ValueError(f"round {round}: no episodes to train on (all dropped or filtered out)")
        return raw, lengths, raw[f"obs/{TASK}"].argmax(1)

    def student_data(self, raw: dict[str, np.ndarray], task: np.ndarray, round: int) -> dict[str, np.ndarray]:
        """The student's inputs ``x`` (N, obs_dim) and targets: ``label_mean`` [``label_std``], or ``z`` the
        teachers' latent while a latent student regresses it; where the store says which steps the teacher was
        asked about (``query``), ``weight`` (N,) is 1 on those and 0 elsewhere, times the step's confidence
        (``method.confidence``)."""
        data = {"x": np.concatenate([raw[f"obs/{g}"] for g in self.student.groups], axis=1)}
        if "query" in raw:
            data["weight"] = (raw["query"] > 0).astype(np.float32)
        if self.cfg.confidence != "none":
            labelled = data["weight"] > 0 if "weight" in data else np.ones(len(data["x"]), dtype=bool)
            data["weight"] = self.confidence_weights(raw.get("label_std"), raw.get("label_advantage"), labelled)
        if self.regresses_latent(round):
            data["z"] = self.latent_targets(raw[f"obs/{PRIVILEGED}"], task)
        else:
            data.update({k: raw[k] for k in ("label_mean", "label_std") if k in raw})
        return data

    def confidence_weights(self, std: np.ndarray | None, advantage: np.ndarray | None, labelled: np.ndarray
                           ) -> np.ndarray:
        """The ``method.confidence`` weights (N,) of labels with ``std`` (N, act_dim) or ``advantage`` (N,)."""
        cap = self.cfg.confidence_cap
        if self.cfg.confidence == "teacher_std":
            return precision_weights(np.asarray(std), labelled, cap)
        return advantage_weights(np.asarray(advantage), labelled, cap)

    def latent_targets(self, privileged: np.ndarray, task: np.ndarray) -> np.ndarray:
        """The teachers' privileged latent of every step, each by its task's teacher: (N, latent_dim)."""
        assert self.encoders is not None
        priv = torch.as_tensor(privileged, device=self.student.device)
        z = torch.empty(len(priv), self.encoders[0].weight.shape[0], device=priv.device)
        with torch.no_grad():
            for i, enc in enumerate(self.encoders):
                rows = torch.as_tensor(np.flatnonzero(task == i), device=priv.device)
                if len(rows):
                    z[rows] = enc(priv[rows])
        return z.cpu().numpy()

    def fit_job(self, store: EpisodeStore, round: int, steps: int | None = None, batch_size: int | None = None,
                lr: float | None = None) -> FitJob:
        raw, lengths, task = self.training_data(store, round)
        return self.job(self.student_data(raw, task, round), lengths, task, steps, batch_size, lr)

    def job(self, data: dict[str, np.ndarray], lengths: np.ndarray, task: np.ndarray, steps: int | None = None,
            batch_size: int | None = None, lr: float | None = None) -> FitJob:
        """The student's fit job on ``data`` (see :meth:`student_data`), its normaliser refitted to it."""
        cfg, loss_fn = self.cfg, self.loss_fn
        self.student.fit_normalizer(data["x"])
        batches = self.student.batches(data, lengths, batch_size or cfg.batch_size,
                                       task if cfg.balance_tasks else None, self.ctx.student.tbptt)
        rows = int(np.count_nonzero(data["weight"])) if "weight" in data else len(data["x"])  # rows ever drawn
        return FitJob(self.student, lambda model, batch: model.compute_loss(batch, loss_fn), batches,
                      cfg.fit_config(rows, steps, lr), self.optimizer)

    def update(self, store: EpisodeStore | None, round: int, fit_with: FitWith) -> dict[str, Any]:
        assert store is not None or self.offline
        diagnose = store is not None and self.ctx.student.check_predictable and not self.diagnosed \
            and PRIVILEGED not in self.student.groups and self.teachers_see_more() \
            and f"obs/{PRIVILEGED}" in store.fields and len(store) >= MIN_EPISODES \
            and not isinstance(self.student, GeneralistPolicy) and "query" not in store.fields  # padded, unlabelled
        raw, lengths, task = self.training_data(store, round, (PRIVILEGED,) if diagnose else ())
        data = self.student_data(raw, task, round)
        if self.cfg.relabel_noise > 0:
            data, lengths, task = self.relabelled(store, data, lengths, task, round)
        labels = 0
        if self.cfg.extra_episodes is not None:
            extra, extra_lengths, extra_task = self.extra_data(round, data)
            labels = len(extra_task) if round == 0 else 0
            data = {k: np.concatenate([v, extra[k]]) for k, v in data.items()}
            lengths, task = np.concatenate([lengths, extra_lengths]), np.concatenate([task, extra_task])
        result = fit_with(self.job(data, lengths, task, self.round_steps(round)))
        out: dict[str, Any] = {"loss": result.loss, "losses": result.stats, "updates": result.steps, "info": {},
                               "labels": labels}
        if diagnose:
            self.diagnosed = True
            out["info"]["predictability"] = check_predictable(self.ctx, self.cfg, self.loss_fn, raw, lengths)
        return out

    def round_steps(self, round: int) -> int | None:
        """The updates of round ``round`` when the method sets them (None: ``updates_per_round``'s rule)."""
        return None

    def teachers_see_more(self) -> bool:
        """Whether the teachers read a group the student does not: else their labels are a function of the
        student's inputs and the predictability diagnostic has nothing to find."""
        return not self.offline and bool(set(self.ctx.bank.groups) - set(self.student.groups))

    def extra_data(self, round: int, own: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], np.ndarray,
                                                                          np.ndarray]:
        """The ``extra_episodes`` store's steps as :meth:`student_data` makes them, with the keys of the run's
        ``own`` data, every step labelled by its task's teacher (once; reused after), with their episode lengths
        and tasks."""
        keys = set(own)
        if self._extra is None:
            store = EpisodeStore(self.cfg.extra_episodes)
            if len(store) == 0:
                log.warning("method.extra_episodes=%s holds no episodes", self.cfg.extra_episodes)
                empty = np.zeros(0, dtype=np.int64)
                return {k: v[:0] for k, v in own.items()}, empty, empty
            groups = list(dict.fromkeys([*self.ctx.bank.groups, *self.student.groups, TASK,
                                         *([PRIVILEGED] if self.encoders is not None else [])]))
            missing = [g for g in groups if f"obs/{g}" not in store.fields]
            if missing:
                raise ValueError(f"method.extra_episodes={self.cfg.extra_episodes} lacks the observation groups "
                                 f"{missing} that the teachers or the student read")
            raw = store.load([f"obs/{g}" for g in groups])
            label = self.ctx.bank.label({g: raw[f"obs/{g}"] for g in groups})
            raw["label_mean"] = np.asarray(label.mean, dtype=np.float32)
            if label.std is not None:
                raw["label_std"] = np.asarray(label.std, dtype=np.float32)
            if self.cfg.confidence == "advantage":
                raw["label_advantage"] = self.ctx.bank.advantage({g: raw[f"obs/{g}"] for g in groups}, label.mean)
            task = raw[f"obs/{TASK}"].argmax(1)
            self._extra = self.student_data(raw, task, round), store.lengths(), task
        data, lengths, task = self._extra
        if self.regresses_latent(round) != ("z" in data):  # a latent student switching targets
            self._extra = None
            return self.extra_data(round, own)
        out = {k: v for k, v in data.items() if k in keys}
        if "weight" in keys:
            out["weight"] = np.ones(len(task), dtype=np.float32)
        if set(out) != keys:
            raise ValueError(f"method.extra_episodes: the teachers' labels give {sorted(out)}, the run's data "
                             f"{sorted(keys)}")
        return out, lengths, task

    def relabelled(self, store: EpisodeStore, data: dict[str, np.ndarray], lengths: np.ndarray, task: np.ndarray,
                   round: int) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        """``data`` (see :meth:`student_data`) with ``relabel_copies`` perturbed, teacher-labelled copies of its
        N steps appended (see :class:`RelabelFields`): ``x`` (N * (1 + copies), obs_dim) and the labels, with the
        episode lengths and per-step tasks repeated."""
        cfg, bank = self.cfg, self.ctx.bank
        groups = list(dict.fromkeys([*bank.groups, *self.student.groups]))
        obs = store.load([f"obs/{g}" for g in groups])
        obs = {g: obs[f"obs/{g}"] for g in groups}
        rng = stream(self.ctx.seed, round, 3)
        scale = cfg.relabel_noise * obs[POLICY].std(axis=0)
        xs, labels = [data["x"]], {k: [data[k]] for k in ("label_mean", "label_std", "weight") if k in data}
        for _ in range(cfg.relabel_copies):
            noisy = {**obs, POLICY: (obs[POLICY] + rng.normal(size=obs[POLICY].shape) * scale).astype(np.float32)}
            label = bank.label(noisy)
            xs.append(np.concatenate([noisy[g] for g in self.student.groups], axis=1))
            labels["label_mean"].append(np.asarray(label.mean, dtype=np.float32))
            if "label_std" in labels:
                labels["label_std"].append(np.asarray(label.std, dtype=np.float32))
            if "weight" in labels:  # method.confidence (a gated run, whose weights say who was asked, has no copies)
                every = np.ones(len(label.mean), dtype=bool)
                judged = bank.advantage(noisy, label.mean) if cfg.confidence == "advantage" else None
                labels["weight"].append(self.confidence_weights(label.std, judged, every))
        n = 1 + cfg.relabel_copies
        return ({"x": np.concatenate(xs), **{k: np.concatenate(v) for k, v in labels.items()}},
                np.tile(lengths, n), np.tile(task, n))

    def policy(self) -> TorchPolicy:
        return self.student

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "diagnosed": self.diagnosed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.diagnosed = bool(state["diagnosed"])


class BC(OnPolicy):
    name = "bc"
    config = BCConfig
    learns_offline = True

    def beta(self, round: int, prev: dict[str, Any] | None, teacher_return: float) -> float:
        return 1.0

    def plan_options(self) -> dict[str, Any]:
        """Aggregated data capped at ``max_steps``, with ``teacher_noise`` and ``success_filter``."""
        cfg = self.cfg
        return {"teacher_noise": cfg.teacher_noise, "success_filter": cfg.success_filter,
                "keep_steps": cfg.max_steps, "only_this_round": False}


class DAgger(BC):
    name = "dagger"
    config = DAggerConfig
    learns_offline = False  # its student acts and the teachers label what it meets

    def __init__(self, cfg: DAggerConfig, ctx: Context) -> None:
        super().__init__(cfg, ctx)  # BC's data handling, this schedule's beta
        self.schedule = cfg.beta_schedule()

    def beta(self, round: int, prev: dict[str, Any] | None, teacher_return: float) -> float:
        return self.schedule(round, prev["student_return"] if prev else None, teacher_return)
