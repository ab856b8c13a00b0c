"""``method=onestep``: distil a diffusion policy into a one-step chunk policy; what every algorithm shares.

The frozen diffusion teacher (``teachers=<diffusion bundle>``) acts with its own sampler and its executed
chunks are recorded (one round, ``episodes_per_task`` per task); then ``steps`` updates of the chosen
algorithm run through the fit loop. Algorithms, one file each, subclass :class:`OneStepAlgorithm`:

- ``dmd`` / ``dmd_det`` (:mod:`.dmd`): distribution matching along the diffusion chain;
- ``consistency`` (:mod:`.consistency`): consistency distillation on teacher DDIM steps;
- ``regression`` (:mod:`.regression`): noise -> teacher K-step output, one step.

Every student starts from the teacher's denoiser weights and normalisers (the teacher must predict
clean chunks, ``prediction="sample"``). The teacher stays frozen (eval mode, no gradients). All randomness
of an update (windows, noise, levels) comes from the fit loop's seeded generator, so the same minibatch
loss trains a finished run further under torchrun/DDP (``policydistill train-student``; not ``dmd``,
whose auxiliary network has an optimiser of its own).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from policydistill.bundle import is_bundle, read_bundle_info
from policydistill.configs import refuse_unread, require_choice, require_int, require_lr, require_number
from policydistill.data.batches import Batch, RowBatches
from policydistill.data.chunks import ChunkWindows, chunk_windows
from policydistill.data.sampling import RowSampler
from policydistill.data.shards import EpisodeStore
from policydistill.distill.algorithm import Algorithm, Context, FitWith, stream
from policydistill.distill.collect import CollectPlan
from policydistill.distill.fit import Aux, FitConfig, FitJob, adam
from policydistill.models.diffusion import DiffusionPolicy
from policydistill.models.onestep import OneStepPolicy
from policydistill.policy import Policy

PAIR_CHUNK = 1024
READS = {
    "dmd": {"init_level", "reg_weight", "aux_lr", "aux_updates", "t_min", "t_max", "pairs", "teacher_steps"},
    "dmd_det": {"init_level", "reg_weight", "t_min", "t_max", "pairs", "teacher_steps"},
    "consistency": {"ode_steps", "target_ema"},
    "regression": {"init_level", "pairs", "teacher_steps"},
}
"""The keys each algorithm reads besides the common ones (``pairs``/``teacher_steps``: dmd with reg_weight > 0)."""
ALGOS = tuple(READS)
COMMON = {"algo", "steps", "lr", "batch_size", "episodes_per_task", "data", "checkpoint_every"}


@dataclass
class OneStepConfig:
    """``method=onestep``: distil the diffusion policy ``teachers=<bundle>`` into a one-step student.

    ``algo``: ``dmd`` (distribution matching with an auxiliary score network, stochastic student),
    ``dmd_det`` (deterministic student, no auxiliary network), ``consistency`` (consistency distillation on
    ``ode_steps`` teacher DDIM steps, EMA target ``target_ema``) or ``regression`` (``pairs`` noise -> teacher
    ``teacher_steps``-step DDIM output pairs; None: the teacher's sampler steps). ``steps`` updates at ``lr``
    on minibatches of ``batch_size``; observations from ``episodes_per_task`` teacher rollouts (+ ``data``
    stores). ``init_level``: where on the noise levels (0..1 of the way to the noisiest) the dmd and regression
    generators take the teacher's denoiser from; ``reg_weight``: the regression term dmd adds on ``pairs``
    (0: distribution matching only); ``t_min``/``t_max``: the levels dmd matches at; ``aux_lr``/``aux_updates``:
    dmd's auxiliary network. A key the chosen algorithm does not read is an error."""

    algo: str = "dmd_det"
    steps: int = 2000
    lr: float = 1e-4
    batch_size: int = 256
    episodes_per_task: int = 20
    data: list[str] = field(default_factory=list)
    init_level: float = 0.6
    reg_weight: float = 30.0
    aux_lr: float = 1e-3
    aux_updates: int = 2
    t_min: float = 0.02
    t_max: float = 0.98
    ode_steps: int = 10
    target_ema: float = 0.95
    pairs: int = 32768
    teacher_steps: int | None = None
    checkpoint_every: int = 500

    def __post_init__(self) -> None:
        require_choice("onestep algo", self.algo, ALGOS)
        for name in ("steps", "batch_size", "episodes_per_task", "aux_updates", "ode_steps", "pairs",
                     "checkpoint_every"):
            require_int(f"method.{name}", getattr(self, name))
        if self.teacher_steps is not None and (isinstance(self.teacher_steps, bool) or
                                               not isinstance(self.teacher_steps, int) or self.teacher_steps < 1):
            raise ValueError(f"method.teacher_steps must be an int >= 1 or null (the teacher's own), "
                             f"got {self.teacher_steps!r}")
        require_lr("method.lr", self.lr)
        require_lr("method.aux_lr", self.aux_lr)
        require_number("method.init_level", self.init_level, 0.0, 1.0)
        require_number("method.reg_weight", self.reg_weight, 0.0)
        require_number("method.target_ema", self.target_ema, 0.0, 1.0)
        if not 0.0 <= self.t_min < self.t_max <= 1.0:
            raise ValueError(f"method.t_min/t_max must satisfy 0 <= t_min < t_max <= 1, got {self.t_min}, "
                             f"{self.t_max}")
        read = set(READS[self.algo])
        if self.algo.startswith("dmd") and self.reg_weight == 0:
            read -= {"pairs", "teacher_steps"}
        refuse_unread(self, COMMON | read, f"onestep algo '{self.algo}'", "method.")

    def for_algo(self, algo: str) -> OneStepConfig:
        """These settings for ``algo``: the keys it does not read back at their defaults."""
        read = COMMON | READS[algo]
        return OneStepConfig(**{k: v for k, v in dataclasses.asdict(self).items() if k in read and k != "algo"},
                             algo=algo)


def teacher_of(teachers: dict[str, Policy]) -> DiffusionPolicy:
    """The one diffusion policy serving every task, else a clear error."""
    found = {id(t): t for t in teachers.values()}
    if len(found) != 1 or not isinstance(next(iter(found.values())), DiffusionPolicy):
        kinds = sorted({type(t).__name__ for t in teachers.values()})
        raise ValueError(f"method=onestep needs teachers=<one DiffusionPolicy bundle> serving every task, got {kinds}")
    teacher = next(iter(found.values()))
    if teacher.schedule.prediction != "sample":
        raise ValueError("one-step distillation needs a teacher that predicts clean chunks (prediction='sample'); "
                         f"this one predicts '{teacher.schedule.prediction}'")
    return teacher.frozen()


def init_level(teacher: DiffusionPolicy, cfg: OneStepConfig) -> int:
    """The noise level at which a generator is initialised from the teacher: ``init_level`` of the way to the
    noisiest. At the noisiest level the teacher's estimate hardly depends on its input (it is the mean over
    modes), a saddle point for a generator that must map noise to modes; lower, the estimate leans towards
    the mode the noise points to."""
    return round(cfg.init_level * (teacher.schedule.steps - 1))


def teacher_train_steps(bundle: str) -> int | None:
    """Updates the diffusion teacher was trained with (from its bundle's meta), if recorded."""
    if not is_bundle(bundle):
        return None
    method = read_bundle_info(bundle).get("meta", {}).get("distill", {}).get("method") or {}
    return int(method["train_steps"]) * int(method.get("rounds", 1)) if "train_steps" in method else None


class OneStepAlgorithm(Algorithm):
    """The harness of the one-step algorithms. Subclasses build the student (:meth:`make_student`) and give
    :meth:`student_loss` (a loss whose gradient trains every student parameter) and :meth:`randoms`; they may
    add work before the first update (:meth:`prepare`), after each step (:meth:`after_step`), an auxiliary
    network (:meth:`aux`) and modules a checkpoint keeps (:meth:`state_modules`). ``teacher_calls`` counts the
    teacher's denoiser evaluations (per sample)."""

    name = "onestep"
    config = OneStepConfig
    uses_student = False
    not_read = "a one-step student has its teacher's network, groups and normalisers"
    variants: ClassVar[dict[str, type[OneStepAlgorithm]]] = {}
    one_process: ClassVar[dict[str, str]] = {}
    """Why a variant's algos (by name) cannot train on several processes (DDP); see :meth:`one_process_only`."""

    @classmethod
    def build(cls, cfg: OneStepConfig, ctx: Context) -> Algorithm:
        return cls.variants[cfg.algo](cfg, ctx)

    def __init__(self, cfg: OneStepConfig, ctx: Context) -> None:
        super().__init__(cfg, ctx)
        self.teacher = teacher_of(ctx.teachers)
        self.student = self.make_student().train()
        self.optimizer = adam(self.student, cfg.lr)
        self.teacher_calls = 0
        self.data: ChunkWindows | None = None
        self.k = cfg.teacher_steps or self.teacher.sampler["steps"]  # teacher DDIM steps of a pair
        self.pairs: tuple[torch.Tensor, ...] | None = None  # (cond, z, teacher output), if prepare draws them
        self.rng = stream(ctx.seed, 0, 3)

    @property
    def rounds(self) -> int:
        return 1

    def make_student(self) -> OneStepPolicy:
        raise NotImplementedError

    @classmethod
    def one_process_only(cls, cfg: OneStepConfig) -> str | None:
        return cls.variants[cfg.algo].one_process.get(cfg.algo)

    def reference(self) -> dict[str, Policy]:
        return dict.fromkeys(self.ctx.suite.task_names, self.teacher)

    def run_info(self) -> dict[str, Any]:
        return {"algo": self.cfg.algo, "teacher_sampler": dict(self.teacher.sampler)}

    def collect(self, round: int, prev: dict[str, Any] | None, teacher_return: float) -> CollectPlan:
        return CollectPlan(1.0, self.cfg.episodes_per_task, None, teacher=self.teacher)

    # ---- data and losses ---------------------------------------------------------------------

    def windows(self, store: EpisodeStore) -> ChunkWindows:
        t = self.teacher
        self.data = chunk_windows([store.root, *self.cfg.data], t.groups, t.n_obs_steps, t.horizon, device=t.device)
        return self.data

    def dataset(self) -> tuple[int, Any, np.ndarray | None]:
        """The rows minibatches are drawn from: their number, ``take(idx) -> batch`` and the sampling
        probabilities (every task the same share); the training windows by default."""
        assert self.data is not None
        return len(self.data), self.data.take, self.data.sample_weights()

    def randoms(self, rng: np.random.Generator, n: int) -> Batch:
        """The loss's random inputs for ``n`` rows, ``{name: (n, ...)}`` drawn from ``rng``."""
        return {}

    def teacher_view(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Conditioning (b, cond_dim) and normalised teacher chunks (b, H, A) of a minibatch's rows."""
        return self.teacher.cond(batch["window"]), self.teacher.action_normalizer(batch["chunk"])

    def teacher_x0(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The frozen teacher's clean-chunk estimate, counted in ``teacher_calls``."""
        self.teacher_calls += len(x_t)
        with torch.no_grad():
            return self.teacher.x0(x_t, t, cond)

    def teacher_pairs(self, n: int, k: int, anchor: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``n`` triples (cond (n, cond_dim), noise z (n, H, A), the teacher's ``k``-step DDIM sample from
        that z (n, H, A)) for windows and noise drawn from the run's generator; ``anchor`` (H, A) replaces z."""
        assert self.data is not None
        loop = self.teacher.sampler_spec("ddim", k)
        rows = RowSampler(len(self.data), self.data.sample_weights())
        conds, zs, ys = [], [], []
        with torch.no_grad():
            for start in range(0, n, PAIR_CHUNK):
                idx = torch.as_tensor(rows(self.rng, min(PAIR_CHUNK, n - start)), device=self.teacher.device)
                cond = self.teacher.cond(self.data.take(idx)["window"])
                z = self.teacher.noise_from(self.rng, len(cond)) if anchor is None else anchor.expand(len(cond), -1, -1)
                ys.append(self.teacher.sample_from(cond, z.clone(), None, loop))
                conds.append(cond)
                zs.append(z)
                self.teacher_calls += len(cond) * k
        return torch.cat(conds), torch.cat(zs), torch.cat(ys)

    def prepare(self) -> None:
        """Work before the first update (and after a resume): fixed pairs, target networks."""

    def student_loss(self, student: OneStepPolicy, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of ``student`` (this algorithm's student, or its DDP view) on a minibatch (rows and random
        inputs) and its statistics (``loss`` among them)."""
        raise NotImplementedError

    def after_step(self) -> None:
        """Work after each student step (target networks)."""

    def aux(self) -> Aux | None:
        """An auxiliary network trained before each student step, or None."""
        return None

    def state_modules(self) -> dict[str, torch.nn.Module]:
        """Modules besides the student whose state a checkpoint keeps (after :meth:`prepare`)."""
        return {}

    # ---- the algorithm contract --------------------------------------------------------------

    def fit_job(self, store: EpisodeStore, round: int, steps: int | None = None, batch_size: int | None = None,
                lr: float | None = None) -> FitJob:
        cfg = self.cfg
        self.windows(store)
        self.prepare()
        n, take, weights = self.dataset()
        batches = RowBatches(n, batch_size or cfg.batch_size, take, weights, self.randoms, device=self.teacher.device)
        return FitJob(self.student, self.student_loss, batches,
                      FitConfig(steps or cfg.steps, lr or cfg.lr, "cosine", warmup_steps=100,
                                checkpoint_every=cfg.checkpoint_every),
                      self.optimizer, after_step=self.after_step, aux=self.aux(), keep=self.state_modules())

    def update(self, store: EpisodeStore | None, round: int, fit_with: FitWith) -> dict[str, Any]:
        assert store is not None
        result = fit_with(self.fit_job(store, round))
        return {"loss": result.loss, "losses": result.stats, "updates": result.steps,
                "info": {"teacher_calls": self.teacher_calls, "windows": len(self.data),
                         "teacher_train_steps": teacher_train_steps(self.ctx.teachers_spec)}}

    def policy(self) -> OneStepPolicy:
        return self.student

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(),
                "modules": {k: m.state_dict() for k, m in self.state_modules().items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        for k, m in self.state_modules().items():
            m.load_state_dict(state["modules"][k])
