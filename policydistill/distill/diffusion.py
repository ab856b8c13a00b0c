"""``method=diffusion``: train a diffusion chunk policy on the teachers' episodes.

The loop of every distiller: act (round ``r``'s beta decides whether the teachers or the diffusion
policy acts; beta 1, the default, collects expert episodes), record the teachers' labels, update,
evaluate, checkpoint. The update is DDPM training: a window and chunk of the stored episodes
(:mod:`policydistill.data.chunks`), a noise level ``t ~ U{0..T-1}``, and the denoiser fitted to the
clean chunk (or the noise) at ``x_t`` with Adam, a cosine learning-rate decay and an EMA of the
weights. The EMA weights are the ones saved and acted with. The minibatch loss
(:func:`diffusion_loss`, with its randomness drawn per row by :func:`diffusion_noise`) is the one
``policydistill train-student`` runs under torchrun/DDP on a finished run.

``demos=mirror_routes`` lets, per episode, each task's teacher or its mirror image act
(:mod:`policydistill.teachers.routes`), so each task is demonstrated in two distinct ways.

Output under ``out``: ``student/`` (the EMA policy's bundle), ``episodes/`` (shards + manifest),
``checkpoint/`` (raw weights and the step, every ``checkpoint_every`` updates), ``distill.json``
(per round: beta, data, loss, wall time, per-task evaluation). A rerun resumes from the last
checkpoint (the optimiser's moments restart).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from tqdm import tqdm

from policydistill.bundle import is_bundle, load_bundle, save_bundle
from policydistill.config import DistillConfig
from policydistill.data.chunks import ChunkWindows, chunk_windows
from policydistill.data.shards import EpisodeStore, ShardWriter, evict
from policydistill.distill.collect import collect, task_spaces
from policydistill.distill.dagger import evaluate_per_task
from policydistill.distill.schedules import make_schedule
from policydistill.eval.metrics import teacher_normalised
from policydistill.io import atomic_write_json, read_json
from policydistill.models import resolve_device
from policydistill.models.chunk_policy import ChunkPolicy
from policydistill.models.diffusion import DiffusionPolicy
from policydistill.policy import Policy
from policydistill.suite import Suite
from policydistill.teachers import TeacherBank
from policydistill.teachers.routes import mirror_routes
from policydistill.types import check_groups

log = logging.getLogger(__name__)

DEMOS = ("experts", "mirror_routes")


def shared_spaces(suite: Suite, groups: tuple[str, ...]) -> tuple[spaces.Dict, spaces.Box]:
    """The observation space of ``groups`` and the action space, which every task of the suite must share."""
    all_spaces = task_spaces(suite)
    obs0, act0 = all_spaces[0]
    missing = [g for g in groups if g not in obs0.spaces]
    if missing:
        raise ValueError(f"groups {missing} are not observed by suite '{suite.name}'; it has {list(obs0.spaces)}")
    for task, (obs, act) in zip(suite.tasks, all_spaces, strict=True):
        if any(g not in obs.spaces or obs[g] != obs0[g] for g in groups) or act != act0:
            raise ValueError(f"task '{task.name}' has other spaces than '{suite.tasks[0].name}': a diffusion policy "
                             "needs one observation and action space across the suite")
    return spaces.Dict({g: obs0[g] for g in groups}), act0


def build_diffusion_policy(suite: Suite, cfg: DistillConfig) -> DiffusionPolicy:
    """An untrained diffusion policy reading ``cfg.student.groups`` with the suite's (shared) spaces."""
    d = cfg.diffusion
    groups = check_groups(cfg.student.groups)
    obs_space, act_space = shared_spaces(suite, groups)
    params: dict[str, Any] = {"time_dim": d.time_dim}
    params.update({"hidden": list(d.hidden)} if d.denoiser == "mlp" else
                  {"channels": list(d.channels), "kernel_size": d.kernel_size})
    return DiffusionPolicy(groups, obs_space, act_space, d.n_obs_steps, d.horizon, d.n_action_steps, cfg.seed,
                           d.denoiser, params,
                           {"steps": d.noise_steps, "schedule": d.noise_schedule, "prediction": d.prediction},
                           {"kind": d.sampler, "steps": d.sampler_steps})


def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """``ema <- decay * ema + (1 - decay) * model`` for parameters; buffers are copied."""
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
            pe.lerp_(pm, 1.0 - decay)
        for be, bm in zip(ema.buffers(), model.buffers(), strict=True):
            be.copy_(bm)


def cosine_lr(step: int, total: int, warmup: int = 100) -> float:
    """Learning-rate factor: linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    return min(1.0, (step + 1) / warmup) * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))


def set_stats(policy: DiffusionPolicy, data: ChunkWindows) -> None:
    """Observation mean/var and action range of the training data into the policy's normalisers."""
    obs, actions = data.obs.cpu().numpy(), data.actions.cpu().numpy()
    policy.obs_normalizer.set_stats(obs.mean(0), obs.var(0))
    policy.action_normalizer.set_stats(actions.min(0), actions.max(0))


def ema_decay(step: int, decay: float) -> float:
    """The EMA decay after update ``step``: ``decay``, lower while few updates were averaged."""
    return min(decay, (1 + step) / (10 + step))


def chunk_noise(policy: ChunkPolicy, rng: np.random.Generator, n: int) -> torch.Tensor:
    """Standard normal chunks (n, H, A) drawn from ``rng``, on the policy's device."""
    eps = rng.standard_normal((n, policy.horizon, policy.act_dim), dtype=np.float32)
    return torch.as_tensor(eps, device=policy.device)


def diffusion_noise(policy: DiffusionPolicy, rng: np.random.Generator, n: int) -> dict[str, torch.Tensor]:
    """The DDPM loss's randomness for ``n`` rows, drawn from ``rng`` on the policy's device: noise levels
    ``t`` (n,) uniform in ``0..T-1`` and noise ``eps`` (n, H, A)."""
    t = torch.as_tensor(rng.integers(0, policy.schedule.steps, n), device=policy.device)
    return {"t": t, "eps": chunk_noise(policy, rng, n)}


def diffusion_loss(policy: DiffusionPolicy, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """DDPM loss on ``batch``: windows ``window`` (b, n_obs, obs_dim), chunks ``chunk`` (b, H, A), noise
    levels ``t`` (b,) and noise ``eps`` (b, H, A) (:func:`diffusion_noise`): MSE of the denoiser's
    output at ``x_t`` to its target (clean chunk or noise). The training loop here and the DDP one
    (``train-student``) both call it."""
    x0 = policy.action_normalizer(batch["chunk"])
    t, eps = batch["t"], batch["eps"]
    pred = policy.denoise(policy.schedule.add_noise(x0, eps, t), t, policy.cond(batch["window"]))
    return torch.nn.functional.mse_loss(pred, policy.schedule.target(x0, eps))


def _check(cfg: DistillConfig) -> None:
    d = cfg.diffusion
    if d.demos not in DEMOS:
        raise ValueError(f"unknown diffusion.demos '{d.demos}'; expected one of {list(DEMOS)}")
    for name in ("rounds", "episodes_per_task", "train_steps", "checkpoint_every"):
        value = getattr(d, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"diffusion.{name} must be an int >= 1, got {value!r}")
    if not 0.0 <= d.ema_decay < 1.0 or not d.lr > 0:
        raise ValueError(f"diffusion.ema_decay must be in [0, 1) and diffusion.lr > 0, got {d.ema_decay}, {d.lr}")


def _save_checkpoint(out: Path, policy: DiffusionPolicy, ema: DiffusionPolicy, state: dict[str, Any],
                     meta: dict[str, Any]) -> None:
    save_bundle(policy, out / "checkpoint" / "model", meta=meta)
    save_bundle(ema, out / "student", meta=meta)
    atomic_write_json(out / "checkpoint" / "state.json", state)


def distill_diffusion(cfg: DistillConfig, suite: Suite, teachers: dict[str, Policy]) -> dict[str, Any]:
    """Run (or resume) ``cfg.diffusion.rounds`` rounds; returns the content of ``distill.json``."""
    _check(cfg)
    d = cfg.diffusion
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    device = resolve_device(cfg.device)
    policy = build_diffusion_policy(suite, cfg).to(device)
    ema = copy.deepcopy(policy).frozen()
    demos = mirror_routes(suite, teachers, seed=cfg.seed) if d.demos == "mirror_routes" else teachers
    bank = TeacherBank([demos[n] for n in suite.task_names])
    schedule = make_schedule(d.schedule, **dict(d.schedule_params))
    summary_path, state_path = out / "distill.json", out / "checkpoint" / "state.json"
    state = {"round": 0, "step": 0}
    if summary_path.exists():
        summary = read_json(summary_path)
        if summary["method"] != "diffusion" or summary["suite"] != suite.name:
            raise ValueError(f"{out} holds a '{summary['method']}' run on suite '{summary['suite']}': "
                             "choose another out")
        if state_path.exists() and is_bundle(out / "checkpoint" / "model"):
            state = read_json(state_path)
            policy.load_state_dict(load_bundle(out / "checkpoint" / "model", device=device, frozen=False).state_dict())
            ema.load_state_dict(load_bundle(out / "student", device=device).state_dict())
            if state["round"] < d.rounds:
                log.info("resuming round %d at update %d", state["round"], state["step"])
    else:
        summary = {"method": "diffusion", "suite": suite.name, "config": asdict(cfg),
                   "teacher": evaluate_per_task(suite, demos, cfg.eval_episodes), "rounds": []}
        atomic_write_json(summary_path, summary)
    meta = {"distill": asdict(cfg), "suite": suite.name}
    writer = ShardWriter(out / "episodes")
    tasks = list(range(len(suite.tasks)))
    wall = summary["rounds"][-1]["wall_time_s"] if summary["rounds"] else 0.0
    for r in range(len(summary["rounds"]), d.rounds):
        t0 = time.perf_counter()
        prev = summary["rounds"][-1] if summary["rounds"] else None
        beta = schedule(r, prev["student_return"] if prev else None,
                        float(np.mean([summary["teacher"][n]["return_mean"] for n in suite.task_names])))
        if not any(m["round"] == r for m in EpisodeStore(out / "episodes").episodes()):
            records = collect(suite, tasks, bank, ema if beta < 1 else None, beta, d.episodes_per_task,
                              cfg.n_envs, seed=cfg.seed * 100_000 + r * 1000, rng=rng)
            for rec in records:
                if not rec.episode.error:
                    writer.add(rec.steps, {"task": rec.episode.task, "task_index": rec.task_index,
                                           "seed": rec.episode.seed, "success": rec.episode.success, "round": r,
                                           "beta": beta, "return": rec.episode.ret})
            writer.flush()
            evict(out / "episodes", cfg.max_steps)
        data = chunk_windows([out / "episodes", *d.data], policy.groups, policy.n_obs_steps, policy.horizon,
                             device=device)
        if r == 0 and state["step"] == 0:
            set_stats(policy, data)
            update_ema(ema, policy, 0.0)
        loss = _train(policy, ema, data, cfg, rng, state, r, out, meta)
        evals = evaluate_per_task(suite, ema, cfg.eval_episodes)
        per_task = {n: {"return_mean": e["return_mean"], "success_rate": e["success_rate"],
                        **teacher_normalised(e, summary["teacher"][n])} for n, e in evals.items()}
        scores = [t["score"] for t in per_task.values() if t["score"] is not None]
        wall += time.perf_counter() - t0
        row = {"round": r, "beta": beta, "dataset_steps": len(data), "updates": d.train_steps, "loss": loss,
               "wall_time_s": round(wall, 2),
               "student_return": float(np.mean([e["return_mean"] for e in evals.values()])),
               "mean_score": float(np.mean(scores)) if scores else None, "tasks": per_task}
        save_bundle(ema, out / "student", meta={**meta, "round": r})
        summary["rounds"].append(row)
        atomic_write_json(summary_path, summary)
        state = {"round": r + 1, "step": 0}
        atomic_write_json(state_path, state)
        log.info("round %d: beta %.2f, %d windows, loss %.4f, return %.2f, score %s", r, beta, len(data), loss,
                 row["student_return"], "n/a" if row["mean_score"] is None else f"{row['mean_score']:.3f}")
    return summary


def _train(policy: DiffusionPolicy, ema: DiffusionPolicy, data: ChunkWindows, cfg: DistillConfig,
           rng: np.random.Generator, state: dict[str, Any], r: int, out: Path, meta: dict[str, Any]) -> float:
    """``diffusion.train_steps`` updates of round ``r`` from ``state["step"]``; returns the mean loss of the
    last 10% of them. Checkpoints every ``checkpoint_every`` updates."""
    d = cfg.diffusion
    opt = torch.optim.Adam(policy.parameters(), lr=d.lr)
    draw = data.balanced_sampler(rng, cfg.balance_tasks)
    losses: list[float] = []
    policy.train()
    for step in tqdm(range(state["step"], d.train_steps), desc=f"diffusion round {r}", unit="upd", leave=False,
                     initial=state["step"], total=d.train_steps):
        for group in opt.param_groups:
            group["lr"] = d.lr * cosine_lr(step, d.train_steps)
        window, chunk = data.batch(draw(cfg.batch_size))
        loss = diffusion_loss(policy, {"window": window, "chunk": chunk,
                                       **diffusion_noise(policy, rng, cfg.batch_size)})
        if not torch.isfinite(loss):
            raise FloatingPointError(f"diffusion loss became non-finite at update {step}; lower diffusion.lr "
                                     f"(now {d.lr})")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        update_ema(ema, policy, ema_decay(step, d.ema_decay))
        losses.append(loss.item())
        if (step + 1) % d.checkpoint_every == 0 and step + 1 < d.train_steps:
            _save_checkpoint(out, policy, ema, {"round": r, "step": step + 1}, {**meta, "round": r})
    policy.eval()
    tail = losses[-max(1, len(losses) // 10):] if losses else [float("nan")]
    return float(np.mean(tail))
