"""Config schemas. Hydra composes them at the entry point; the library receives these dataclasses.

Every field is typed, so an unknown key or a wrong type in a config file or override is an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ExpertConfig:
    """How one specialist is trained with stable-baselines3.

    ``total_steps`` None uses the suite task's ``train_steps``. ``hyperparams`` go to the SB3
    algorithm's constructor. ``groups``: observation groups the expert reads (in order).
    """

    algo: str = "ppo"
    total_steps: int | None = None
    n_envs: int = 8
    groups: list[str] = field(default_factory=lambda: ["policy", "privileged"])
    net: list[int] = field(default_factory=lambda: [64, 64])
    activation: str = "tanh"
    normalize_obs: bool = True
    normalize_reward: bool = True
    hyperparams: dict[str, Any] = field(default_factory=dict)
    eval_every: int = 10_000
    eval_episodes: int = 10
    checkpoint_every: int = 10_000
    stop_at_threshold: bool = False


@dataclass
class RayConfig:
    """Where Ray work runs (``launcher=ray`` / ``collector=ray``; needs ``pip install policydistill[ray]``).

    ``address`` None starts a local Ray instance of ``num_cpus`` CPUs (default: all) for the run;
    ``auto`` or ``host:port`` / ``ray://host:10001`` joins an existing cluster. Each expert task asks for
    ``cpus_per_task``/``gpus_per_task``; ``workers`` rollout actors collect DAgger rounds, each asking
    ``cpus_per_task``.
    """

    address: str | None = None
    num_cpus: int | None = None
    cpus_per_task: float = 1.0
    gpus_per_task: float = 0.0
    workers: int = 2


@dataclass
class TrainExpertsConfig:
    suite: str = "default"
    out: str = "runs/experts"
    workers: int = 2
    seed: int = 0
    device: str = "auto"
    tasks: list[str] | None = None
    expert: ExpertConfig = field(default_factory=ExpertConfig)
    launcher: str = "local"  # local (worker processes) | ray
    ray: RayConfig = field(default_factory=RayConfig)


@dataclass
class EvaluateConfig:
    policy: str = "???"
    suite: str = "default"
    episodes: int = 20
    out: str | None = None
    teachers: str | None = None
    video: bool = False
    n_envs: int = 8
    seed: int = 1000
    device: str = "auto"


@dataclass
class ImportSB3Config:
    model: str = "???"
    out: str = "???"
    suite: str = "default"
    task: str | None = None
    vecnormalize: str | None = None
    algo: str | None = None
    groups: list[str] = field(default_factory=lambda: ["policy"])




@dataclass
class StudentConfig:
    """The student network over ``groups`` (normaliser inside), optionally with a learned std.

    ``task_encoding``: how the ``task`` group reaches the MLP, ``onehot`` or a learned ``embedding`` of
    ``embedding_dim``. A suite whose tasks have different spaces gets a padded student (padding plus
    masks, see ``policydistill.models.generalist``), which must read ``task``.

    ``kind``: ``mlp`` (stateless), ``history_mlp`` (last ``history`` frames stacked into an MLP),
    ``tcn`` (1-D temporal convolution over them), ``gru`` (recurrent, ``rnn_hidden`` wide, trained
    with truncated BPTT over ``tbptt`` steps) or ``latent`` (a ``latent_encoder`` history encoder
    regressing the teachers' privileged latent, acting through their frozen heads; the last
    ``latent_action_rounds`` rounds fine-tune it on action labels). ``check_predictable``: once
    10 episodes are stored, compare held-out action loss with and without ``privileged`` and warn when the
    student's groups cannot predict the teacher (see ``policydistill.distill.predictability``).
    """

    groups: list[str] = field(default_factory=lambda: ["policy", "task"])
    hidden: list[int] = field(default_factory=lambda: [256, 256])
    activation: str = "relu"
    learn_std: bool = False
    kind: str = "mlp"
    history: int = 16
    rnn_hidden: int = 128
    tbptt: int = 32
    latent_encoder: str = "tcn"
    latent_action_rounds: int = 0
    check_predictable: bool = True
    task_encoding: str = "onehot"
    embedding_dim: int = 8


@dataclass
class KickstartConfig:
    """``method=kickstart``: PPO on the student's own rollouts plus ``kd_weight * loss`` to the teachers
    (``loss`` of the distillation config). Each round, ``epochs`` passes over the round's states in
    minibatches of ``minibatch_size`` at learning rate ``lr``. ``kd_weight`` starts at ``kd_weight_start``
    and decays per round: ``exponential`` (``* kd_decay_rate ** round``), ``linear`` (to 0 at round
    ``kd_decay_rounds``) or ``return_ratio`` (``* clip(1 - G_student / G_teacher, 0, 1)``)."""

    lr: float = 3e-4
    epochs: int = 10
    minibatch_size: int = 64
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_range: float = 0.2
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    normalize_advantage: bool = True
    value_hidden: list[int] = field(default_factory=lambda: [64, 64])
    kd_weight_start: float = 1.0
    kd_decay: str = "exponential"
    kd_decay_rate: float = 0.7
    kd_decay_rounds: int = 10


@dataclass
class DistillConfig:
    """Teacher-student distillation. ``method``: ``bc`` (teacher always acts, data aggregated),
    ``dagger`` (``schedule`` decides who acts, data aggregated), ``onpolicy`` (student always acts,
    buffer cleared after each update), ``kickstart`` (PPO plus a decaying distillation loss, see
    :class:`KickstartConfig`; the student gets a learned std). ``max_steps`` caps the aggregated data
    (oldest rounds evicted). ``lr_decay``: cosine-anneal the learning rate from ``lr`` to ``lr / 100`` over
    each round's ``updates_per_round`` (a lower fitting error, for teachers whose tasks are sensitive to it).
    ``teacher_noise``: when the teacher acts, execute its mean plus ``teacher_noise`` times its std of
    Gaussian noise (labels stay the mean): data on how it recovers from small deviations.
    ``collect_steps``: cut collected episodes at this many steps (truncated), so the same labels come from
    more episode starts; evaluation keeps the tasks' own episode length."""

    method: str = "dagger"
    suite: str = "default"
    teachers: str = ""
    out: str = "runs/distill"
    seed: int = 0
    device: str = "auto"
    rounds: int = 6
    episodes_per_task: int = 4
    n_envs: int = 8
    schedule: str = "linear"
    schedule_params: dict[str, Any] = field(default_factory=lambda: {"rounds": 4})
    loss: str = "mse"
    loss_params: dict[str, Any] = field(default_factory=dict)
    updates_per_round: int = 500
    batch_size: int = 256
    lr: float = 1e-3
    lr_decay: bool = False
    max_steps: int = 200_000
    balance_tasks: bool = True
    success_filter: bool = False
    teacher_noise: float = 0.0
    collect_steps: int | None = None
    eval_episodes: int = 10
    student: StudentConfig = field(default_factory=StudentConfig)
    kickstart: KickstartConfig = field(default_factory=KickstartConfig)
    collector: str = "local"  # local (in this process) | ray (rollout actors)
    ray: RayConfig = field(default_factory=RayConfig)



@dataclass
class PrivilegedStageConfig:
    """The pipeline's privileged-students stage: each student ``kinds`` reading ``groups`` is distilled
    by DAgger from the teachers (``zoo``: the committed ``envs/zoo/<suite>``) on ``suite``, with a small
    budget (``bench/privileged_students.py`` runs the full comparison)."""

    enabled: bool = True
    suite: str = "locomotion"
    teachers: str = "zoo"
    kinds: list[str] = field(default_factory=lambda: ["mlp", "history_mlp", "tcn", "gru", "latent"])
    groups: list[str] = field(default_factory=lambda: ["policy", "task"])
    rounds: int = 4
    episodes_per_task: int = 2
    updates_per_round: int = 600
    eval_episodes: int = 3


@dataclass
class PipelineConfig:
    suite: str = "default"
    out: str = "runs/pipeline"
    workers: int = 2
    seed: int = 0
    episodes: int = 20
    eval_seed: int = 1000
    video: bool = True
    device: str = "auto"
    expert: ExpertConfig = field(default_factory=ExpertConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    privileged: PrivilegedStageConfig = field(default_factory=PrivilegedStageConfig)
    launcher: str = "local"  # where experts train: local | ray
    ray: RayConfig = field(default_factory=RayConfig)


@dataclass
class TrainStudentConfig:
    """Student updates over a distillation run's stored episodes, on ``nproc`` processes (DDP through
    torch.distributed.run; 1 = this process). ``run``: a ``distill`` output folder (its student bundle is
    the starting point, its loss and sampling settings are used). Writes ``out`` (default
    ``<run>/student_ddp``): ``bundle/``, ``checkpoint.pt`` (a rerun resumes from it), ``train_student.json``,
    ``tb/``. ``batch_size`` is global (split across processes)."""

    run: str = "???"
    out: str | None = None
    updates: int = 1000
    batch_size: int = 256
    lr: float | None = None
    seed: int = 0
    checkpoint_every: int = 200
    nproc: int = 1
    device: str = "auto"


@dataclass
class RuntimeConfig:
    """The real-time wrapper (``policydistill.runtime.Controller``). ``queue``: ``replace`` (a new chunk
    replaces the plan, cross-fading over ``blend_steps`` ticks) or ``ensemble`` (temporal ensembling,
    weights exp(-ensemble_m * i), i = 0 the oldest prediction). ``n_action_steps`` None: the policy's.
    ``latency_budget_ms`` None: (horizon - n_action_steps) periods. ``fallback``: ``hold`` | ``safe``."""

    queue: str = "replace"
    ensemble_m: float = 0.0
    blend_steps: int = 0
    n_action_steps: int | None = None
    async_inference: bool = False
    latency_budget_ms: float | None = None
    fallback: str = "hold"
    safe_action: list[float] | None = None


@dataclass
class RunConfig:
    """Drive a simulated robot (``task`` of ``suite``, default its first) through the runtime at
    ``rate_hz`` for ``ticks`` ticks. ``policy``: a bundle or an exported .onnx/.pt; ``backend`` for a
    bundle: torch | torchscript | onnx. ``cpu``: pin the loop to this CPU; ``realtime``: SCHED_FIFO."""

    policy: str = "???"
    suite: str = "default"
    task: str | None = None
    rate_hz: float = 50.0
    ticks: int = 1000
    n_envs: int = 1
    backend: str = "torch"
    sampler_steps: int | None = None
    seed: int = 0
    cpu: int | None = None
    realtime: bool = False
    log_every_s: float = 5.0
    out: str | None = None
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)


@dataclass
class ExportConfig:
    """Export a bundle's policy (normalisation and post-processing inside) to ``format`` at ``out``,
    checked against the torch policy unless ``check=false``."""

    policy: str = "???"
    format: str = "onnx"
    out: str = "???"
    opset: int = 17
    check: bool = True


COMMANDS: dict[str, type] = {
    "train-experts": TrainExpertsConfig,
    "evaluate": EvaluateConfig,
    "pipeline": PipelineConfig,
    "import-sb3": ImportSB3Config,
    "distill": DistillConfig,
    "run": RunConfig,
    "export": ExportConfig,
    "train-student": TrainStudentConfig,
}
