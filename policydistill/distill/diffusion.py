"""``method=diffusion``: train a diffusion chunk policy on the teachers' episodes.

Per round: collect (beta from ``schedule``: 1, the default, collects expert episodes; lower lets the
diffusion policy act, DAgger-style), then ``train_steps`` updates of the DDPM loss
(:meth:`~policydistill.models.diffusion.DiffusionPolicy.compute_loss`) on windows and chunks of the stored
episodes (:mod:`policydistill.data.chunks`) plus any stores in ``data``, through the fit loop: Adam, a
warm-up then cosine learning-rate decay, and an EMA of the weights, which is the policy saved and acted
with. Long rounds checkpoint every ``checkpoint_every`` updates, so a killed run resumes mid-round.

``demos=mirror_routes`` lets, per episode, each task's teacher or its mirror image act
(:mod:`policydistill.teachers.routes`), so each task is demonstrated in two distinct ways.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from policydistill.configs import refuse_unread, require_choice, require_int, require_ints, require_lr, require_number
from policydistill.data.batches import RowBatches
from policydistill.data.chunks import chunk_windows
from policydistill.data.shards import EpisodeStore
from policydistill.distill.algorithm import Algorithm, Context, FitWith
from policydistill.distill.collect import CollectPlan
from policydistill.distill.fit import Ema, FitConfig, FitJob, adam
from policydistill.distill.schedules import ScheduleFields
from policydistill.models.denoisers import DENOISERS
from policydistill.models.diffusion import DiffusionPolicy
from policydistill.models.noise import PREDICTIONS, SAMPLERS, SCHEDULES
from policydistill.policy import Policy
from policydistill.suites import Suite
from policydistill.teachers import TeacherBank
from policydistill.teachers.routes import mirror_routes
from policydistill.types import check_groups

DEMOS = ("experts", "mirror_routes")


@dataclass
class DiffusionFields:
    groups: list[str] = field(default_factory=lambda: ["policy", "task"])
    demos: str = "experts"
    episodes_per_task: int = 100
    data: list[str] = field(default_factory=list)
    rounds: int = 1
    max_steps: int = 200_000
    denoiser: str = "mlp"
    hidden: list[int] = field(default_factory=lambda: [256, 256, 256])
    channels: list[int] = field(default_factory=lambda: [32, 64])
    kernel_size: int = 5
    time_dim: int = 32
    n_obs_steps: int = 2
    horizon: int = 16
    n_action_steps: int = 4
    noise_steps: int = 100
    noise_schedule: str = "cosine"
    prediction: str = "sample"
    sampler: str = "ddim"
    sampler_steps: int = 100
    train_steps: int = 20_000
    batch_size: int = 256
    lr: float = 1e-3
    ema_decay: float = 0.995
    balance_tasks: bool = True
    checkpoint_every: int = 1000


@dataclass
class DiffusionConfig(ScheduleFields, DiffusionFields):
    """``method=diffusion``: a DDPM chunk policy reading ``groups``, trained on the teachers' episodes.

    ``demos``: ``experts`` (each task's teacher acts) or ``mirror_routes`` (per episode, the teacher or its
    mirror image acts: two ways per task, for envs with ``mirror_maps()``); ``episodes_per_task`` per round;
    ``data``: more episode stores to train on (e.g. a DAgger run's ``episodes``). ``rounds`` > 1 with a
    ``schedule`` giving beta < 1 lets the diffusion policy act (DAgger). Chunking: ``n_obs_steps``,
    ``horizon``, ``n_action_steps``; denoiser ``mlp`` (``hidden``) or ``unet`` (``channels``,
    ``kernel_size``); ``noise_steps`` levels on a ``noise_schedule``, predicting the clean ``sample`` or
    ``epsilon``; ``sampler``/``sampler_steps``: how the saved policy acts (a runtime setting). Training:
    ``train_steps`` updates per round of ``batch_size`` at ``lr`` (warm-up, cosine decay), EMA ``ema_decay``."""

    schedule: str = "constant"

    def __post_init__(self) -> None:
        check_groups(self.groups)
        require_choice("diffusion demos", self.demos, DEMOS)
        require_choice("denoiser", self.denoiser, DENOISERS)
        require_choice("noise schedule", self.noise_schedule, SCHEDULES)
        require_choice("prediction", self.prediction, PREDICTIONS)
        require_choice("sampler", self.sampler, list(SAMPLERS))
        for name in ("episodes_per_task", "rounds", "max_steps", "kernel_size", "time_dim", "n_obs_steps",
                     "horizon", "n_action_steps", "noise_steps", "sampler_steps", "train_steps", "batch_size",
                     "checkpoint_every"):
            require_int(f"method.{name}", getattr(self, name))
        require_ints("method.hidden", self.hidden)
        require_ints("method.channels", self.channels)
        require_lr("method.lr", self.lr)
        require_number("method.ema_decay", self.ema_decay, 0.0, 1.0)
        denoiser = {"hidden"} if self.denoiser == "mlp" else {"channels", "kernel_size"}
        others = set(DiffusionFields.__dataclass_fields__) - {"hidden", "channels", "kernel_size"}
        refuse_unread(self, others | denoiser | self.schedule_keys(),
                      f"denoiser '{self.denoiser}' with schedule '{self.schedule}'", "method.")
        if self.kernel_size % 2 == 0:  # an even kernel's "same" padding changes the chunk length in the U-Net
            raise ValueError(f"method.kernel_size must be odd, got {self.kernel_size!r}")
        self.beta_schedule()


def shared_spaces(suite: Suite, groups: tuple[str, ...]) -> tuple[Any, Any]:
    """The observation space of ``groups`` and the action space, which every task of the suite must share."""
    from gymnasium import spaces

    obs0, act0 = suite.spaces[0]
    missing = [g for g in groups if g not in obs0.spaces]
    if missing:
        raise ValueError(f"groups {missing} are not observed by suite '{suite.name}'; it has {list(obs0.spaces)}")
    for task, (obs, act) in zip(suite.tasks, suite.spaces, strict=True):
        if any(g not in obs.spaces or obs[g] != obs0[g] for g in groups) or act != act0:
            raise ValueError(f"task '{task.name}' has other spaces than '{suite.tasks[0].name}': a diffusion policy "
                             "needs one observation and action space across the suite")
    return spaces.Dict({g: obs0[g] for g in groups}), act0


def build_diffusion_policy(suite: Suite, cfg: DiffusionConfig, seed: int = 0) -> DiffusionPolicy:
    """An untrained diffusion policy reading ``cfg.groups`` with the suite's (shared) spaces."""
    groups = check_groups(suite.with_goal(cfg.groups))
    obs_space, act_space = shared_spaces(suite, groups)
    params: dict[str, Any] = {"time_dim": cfg.time_dim}
    params.update({"hidden": list(cfg.hidden)} if cfg.denoiser == "mlp" else
                  {"channels": list(cfg.channels), "kernel_size": cfg.kernel_size})
    return DiffusionPolicy(groups, obs_space, act_space, cfg.n_obs_steps, cfg.horizon, cfg.n_action_steps, seed,
                           cfg.denoiser, params,
                           {"steps": cfg.noise_steps, "schedule": cfg.noise_schedule, "prediction": cfg.prediction},
                           {"kind": cfg.sampler, "steps": cfg.sampler_steps})


class Diffusion(Algorithm):
    name = "diffusion"
    config = DiffusionConfig
    uses_student = False
    learns_offline = True
    not_read = "a diffusion policy's network and groups are method.* keys (denoiser, hidden, groups, ...)"

    def __init__(self, cfg: DiffusionConfig, ctx: Context) -> None:
        super().__init__(cfg, ctx)
        self.model = build_diffusion_policy(ctx.suite, cfg, ctx.seed).to(ctx.device)
        self.ema_policy = copy.deepcopy(self.model).frozen()
        self.optimizer = adam(self.model, cfg.lr)
        self.ema = Ema(self.ema_policy, self.model, cfg.ema_decay)
        self.fitted = False
        self.schedule = cfg.beta_schedule()
        self.offline = not ctx.teachers
        if self.offline:
            if cfg.demos != "experts" or cfg.rounds != 1:
                raise ValueError("an offline diffusion run (teachers=none) trains once on method.data: it reads "
                                 "neither method.demos nor more than one round")
            self.demos: dict[str, Policy] = {}
        elif cfg.demos == "mirror_routes":
            self.demos = mirror_routes(ctx.suite, ctx.teachers, seed=ctx.seed)
            self.bank = TeacherBank([self.demos[n] for n in ctx.suite.task_names])
        else:
            self.demos, self.bank = ctx.teachers, ctx.bank

    def reference(self) -> dict[str, Policy]:
        return self.demos

    def collect(self, round: int, prev: dict[str, Any] | None, teacher_return: float) -> CollectPlan | None:
        if self.offline:
            return None
        beta = self.schedule(round, prev["student_return"] if prev else None, teacher_return)
        return CollectPlan(beta, self.cfg.episodes_per_task, self.ema_policy if beta < 1 else None, teacher=self.bank,
                           keep_steps=self.cfg.max_steps)

    def fit_job(self, store: EpisodeStore | None, round: int, steps: int | None = None,
                batch_size: int | None = None, lr: float | None = None) -> FitJob:
        cfg, model = self.cfg, self.model
        roots = cfg.data if self.offline else [store.root, *cfg.data]
        data = chunk_windows(roots, model.groups, model.n_obs_steps, model.horizon, device=model.device)
        if not self.fitted:
            model.fit_normalizers(data.obs.cpu().numpy(), data.actions.cpu().numpy())
            self.ema.copy()
            self.fitted = True
        steps = steps or cfg.train_steps
        batches = RowBatches(len(data), batch_size or cfg.batch_size, data.take,
                             data.sample_weights(cfg.balance_tasks), model.training_noise, device=model.device)
        return FitJob(model, lambda m, batch: m.compute_loss(batch), batches,
                      FitConfig(steps, lr or cfg.lr, "cosine", warmup_steps=100, checkpoint_every=cfg.checkpoint_every),
                      self.optimizer, ema=self.ema)

    def update(self, store: EpisodeStore | None, round: int, fit_with: FitWith) -> dict[str, Any]:
        assert store is not None or self.offline
        job = self.fit_job(store, round)
        result = fit_with(job)
        return {"loss": result.loss, "losses": result.stats, "updates": result.steps,
                "info": {"windows": job.batches.sampler.n}}

    def policy(self) -> DiffusionPolicy:
        return self.ema_policy

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "ema": self.ema.state_dict(), "fitted": self.fitted}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.ema.load_state_dict(state["ema"])
        self.fitted = bool(state["fitted"])

