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
    sampler: str | None = None  # diffusion policies: "ddim:<steps>" or "ddpm:<steps>"


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
class DiffusionConfig:
    """``method=diffusion``: a DDPM chunk policy trained on the teachers' episodes.

    ``demos``: ``experts`` (each task's teacher acts) or ``mirror_routes`` (per episode, the teacher or
    its mirror image acts: two ways per task, for envs with ``mirror_maps()``). ``data``: more episode
    stores to train on (e.g. a DAgger run's ``episodes``). ``rounds`` > 1 with a ``schedule`` other
    than beta 1 lets the diffusion policy act (DAgger). Chunking: ``n_obs_steps``, ``horizon``,
    ``n_action_steps``; denoiser ``mlp`` (``hidden``) or ``unet`` (``channels``, ``kernel_size``);
    ``sampler``/``sampler_steps``: how the saved policy acts (a runtime setting)."""

    demos: str = "experts"
    episodes_per_task: int = 100
    data: list[str] = field(default_factory=list)
    rounds: int = 1
    schedule: str = "constant"
    schedule_params: dict[str, Any] = field(default_factory=lambda: {"beta": 1.0})
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
    lr: float = 1e-3
    ema_decay: float = 0.995
    checkpoint_every: int = 1000


@dataclass
class OneStepConfig:
    """``method=onestep``: distil the diffusion policy ``teachers=<bundle>`` into a one-step student.

    ``algo``: ``dmd`` (distribution matching with an auxiliary score network, stochastic student),
    ``dmd_det`` (deterministic student, no auxiliary network), ``consistency`` (consistency
    distillation on ``ode_steps`` teacher DDIM steps, EMA target ``target_ema``) or ``regression``
    (``pairs`` noise -> teacher ``teacher_steps``-step DDIM output pairs; None: the teacher's sampler
    steps). Observations come from ``episodes_per_task`` teacher rollouts (+ ``data`` stores).
    ``init_level``: where on the noise levels (0..1 of the way to the noisiest) the dmd and regression
    generators take the teacher's denoiser from. ``reg_weight``: weight of the regression term that
    dmd adds on ``pairs`` (noise -> teacher output) pairs, as DMD does (0: distribution matching only)."""

    algo: str = "dmd_det"
    steps: int = 2000
    lr: float = 1e-4
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
    more episode starts; evaluation keeps the tasks' own episode length.
    ``stop_score``: stop after the first round whose mean teacher-normalised score reaches it (None: run
    every round); e.g. labels-to-target measurements."""

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
    stop_score: float | None = None
    eval_episodes: int = 10
    student: StudentConfig = field(default_factory=StudentConfig)
    kickstart: KickstartConfig = field(default_factory=KickstartConfig)
    collector: str = "local"  # local (in this process) | ray (rollout actors)
    ray: RayConfig = field(default_factory=RayConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    onestep: OneStepConfig = field(default_factory=OneStepConfig)



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
class DiffusionStageConfig:
    """The pipeline's diffusion -> one-step stage: a diffusion policy (``teacher``, pipeline-sized
    budget) trained on ``suite`` from ``teachers`` (``zoo``: the committed expert zoo of that suite),
    then one one-step student per algorithm of ``algos`` (``onestep``), evaluated beside the teacher
    at 100, 10 and 1 DDIM steps on ``eval_episodes`` per task, latency over ``latency_calls`` calls."""

    enabled: bool = True
    suite: str = "default_hazard"
    teachers: str = "zoo"
    algos: list[str] = field(default_factory=lambda: ["dmd", "dmd_det", "consistency", "regression"])
    eval_episodes: int = 10
    latency_calls: int = 200
    teacher: DiffusionConfig = field(default_factory=lambda: DiffusionConfig(
        demos="mirror_routes", episodes_per_task=40, train_steps=6000))
    onestep: OneStepConfig = field(default_factory=lambda: OneStepConfig(steps=400, episodes_per_task=10, pairs=8192))


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
    diffusion: DiffusionStageConfig = field(default_factory=DiffusionStageConfig)


@dataclass
class TrainStudentConfig:
    """Student updates over a distillation run's stored episodes, on ``nproc`` processes (DDP through
    torch.distributed.run; 1 = this process). ``run``: a ``distill`` output folder (its student bundle is
    the starting point, its loss and sampling settings are used; a ``method=diffusion`` or ``onestep`` run
    trains with that method's loss). Writes ``out`` (default
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
