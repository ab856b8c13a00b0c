"""One expert: an SB3 specialist trained on one task of a suite, evaluated, checkpointed, saved as a bundle.

Layout of ``<out>/<task>/``::

    bundle/            the expert as a policy bundle (what every other command loads)
    checkpoint.json    last checkpoint (commit point) and the one before, ckpt-*.zip their files
    curve.csv          evaluation curve: env steps, wall time, return mean/std, success rate
                       (rows after the resumed checkpoint are redone, never duplicated)
    result.json        written last: a task with it is finished and skipped on rerun
    tb/                TensorBoard logs

The launchers (:mod:`.local`: worker processes, :mod:`.ray`: Ray tasks) run :func:`train_task` per task.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecNormalize

from policydistill.bundle import save_bundle
from policydistill.configs import require_choice, require_int, require_ints
from policydistill.eval.metrics import fmt_rate, summarise
from policydistill.eval.rollout import run_episodes
from policydistill.files import atomic_write_json, atomic_write_text, atomic_write_with, read_json
from policydistill.models import resolve_device
from policydistill.suites import Suite
from policydistill.suites.wrappers import FlattenGroups
from policydistill.teachers.sb3 import policy_from_sb3, sb3_classes
from policydistill.types import TASK, check_groups

log = logging.getLogger(__name__)

ALGOS: dict[str, type[BaseAlgorithm]] = sb3_classes()
CURVE_FIELDS = ("env_steps", "wall_time_s", "return_mean", "return_std", "success_rate")


@dataclass
class ExpertConfig:
    """How one specialist is trained with stable-baselines3 (``expert=ppo|sac|td3`` picks the defaults).

    ``total_steps`` None uses the suite task's ``train_steps``. ``hyperparams`` go to the SB3 algorithm's
    constructor. ``groups``: the observation groups the expert reads, in order (None: every group its task
    observes but ``task``: ``policy`` and, where the simulator exposes it, ``privileged``).
    """

    algo: str = "ppo"
    total_steps: int | None = None
    n_envs: int = 8
    groups: list[str] | None = None
    net: list[int] = field(default_factory=lambda: [64, 64])
    activation: str = "tanh"
    normalize_obs: bool = True
    normalize_reward: bool = True
    hyperparams: dict[str, Any] = field(default_factory=dict)
    eval_every: int = 10_000
    eval_episodes: int = 10
    final_episodes: int = 20
    checkpoint_every: int = 10_000
    stop_at_threshold: bool = False

    def __post_init__(self) -> None:
        require_choice("expert algo", self.algo, sorted(ALGOS))
        require_choice("expert.activation", self.activation, ["tanh", "relu"])
        require_ints("expert.net", self.net)
        for name in ("n_envs", "eval_every", "eval_episodes", "final_episodes", "checkpoint_every"):
            require_int(f"expert.{name}", getattr(self, name))
        if self.total_steps is not None:
            require_int("expert.total_steps", self.total_steps)
        if self.groups is not None:
            check_groups(self.groups)

    def groups_of(self, suite: Suite, task: int) -> list[str]:
        """The groups the expert of ``task`` reads (see ``groups``)."""
        return list(self.groups) if self.groups is not None else [g for g in suite.spaces[task][0].spaces
                                                                 if g != TASK]


def _make_vec_env(suite: Suite, task: int, cfg: ExpertConfig, seed: int) -> VecEnv:
    groups = check_groups(cfg.groups_of(suite, task))
    fns = [lambda: Monitor(FlattenGroups(suite.make_env(task), groups)) for _ in range(cfg.n_envs)]
    venv = DummyVecEnv(fns)
    venv.seed(seed)
    return venv


def _group_space(suite: Suite, task: int, groups: list[str]) -> spaces.Dict:
    obs_space = suite.spaces[task][0]  # built once per suite
    missing = [g for g in groups if g not in obs_space.spaces]
    if missing:
        raise ValueError(f"task '{suite.tasks[task].name}' has no observation groups {missing}; "
                         f"it has {list(obs_space.spaces)}")
    return spaces.Dict({g: obs_space[g] for g in groups})


class _Checkpoint:
    """A task's checkpoint: SB3 zip (+ VecNormalize, + replay buffer), each file written atomically, committed
    by checkpoint.json, which also keeps the checkpoint before it: a damaged checkpoint falls back to it."""

    def __init__(self, task_dir: Path) -> None:
        self.dir = task_dir
        self.index = task_dir / "checkpoint.json"

    def load(self) -> dict[str, Any] | None:
        return read_json(self.index) if self.index.exists() else None

    def save(self, model: BaseAlgorithm, state: dict[str, Any]) -> None:
        steps = model.num_timesteps
        files = {"model": f"ckpt-{steps}.zip"}
        atomic_write_with(self.dir / files["model"], model.save)
        venv = model.get_env()
        if isinstance(venv, VecNormalize):
            files["vecnormalize"] = f"ckpt-{steps}-vecnormalize.pkl"
            atomic_write_with(self.dir / files["vecnormalize"], lambda tmp: venv.save(str(tmp)))
        if hasattr(model, "replay_buffer") and model.replay_buffer is not None:
            files["replay_buffer"] = f"ckpt-{steps}-replay.pkl"
            atomic_write_with(self.dir / files["replay_buffer"], model.save_replay_buffer)
        old = self.load()
        previous = {k: v for k, v in old.items() if k != "previous"} if old else None
        if previous is not None and previous["env_steps"] == steps:
            previous = old.get("previous")  # the same step saved again: keep the one before it
        atomic_write_json(self.index, {"env_steps": steps, "files": files, **state, "previous": previous})
        keep = set(files.values()) | set((previous or {}).get("files", {}).values())
        for path in self.dir.glob("ckpt-*"):
            if path.name not in keep:
                path.unlink(missing_ok=True)

    def restore(self, load: Callable[[dict[str, str]], BaseAlgorithm]) -> tuple[BaseAlgorithm, dict[str, Any]] | None:
        """``load(files)`` on the last checkpoint, or on the one before it (with a warning) when the last cannot
        be loaded; None without a checkpoint."""
        saved = self.load()
        for n, entry in enumerate([saved, (saved or {}).get("previous")]):
            if entry is None:
                continue
            try:
                return load(entry["files"]), entry
            except Exception as e:  # a damaged or truncated file: SB3 and pickle raise many kinds
                damaged = ", ".join(str(self.dir / f) for f in entry["files"].values())
                if n == 0 and saved.get("previous"):
                    log.warning("checkpoint %s cannot be loaded (%s: %s); falling back to the one before it",
                                damaged, type(e).__name__, e)
                    continue
                raise ValueError(f"checkpoint {damaged} cannot be loaded ({type(e).__name__}: {e}) and there is no "
                                 f"earlier one; remove {self.dir} to train this task from the start") from None
        return None


class _Trainer(BaseCallback):
    """Evaluates, logs the curve, checkpoints and reports progress while SB3 learns."""

    def __init__(self, run: _TaskRun) -> None:
        super().__init__()
        self.run = run
        self.last_eval = self.last_ckpt = self.last_report = 0

    def _on_training_start(self) -> None:
        self.last_eval = self.last_ckpt = self.last_report = self.num_timesteps

    def _on_step(self) -> bool:
        run, n = self.run, self.num_timesteps
        if n - self.last_report >= 500:
            run.report(n)
            self.last_report = n
        if n - self.last_eval >= run.cfg.eval_every:
            self.last_eval = n
            stats = run.evaluate(self.model)
            for k in ("return_mean", "success_rate"):
                self.logger.record(f"eval/{k}", stats[k])
            if run.cfg.stop_at_threshold and (stats["success_rate"] or 0.0) >= run.threshold:
                return False
        if n - self.last_ckpt >= run.cfg.checkpoint_every:
            self.last_ckpt = n
            run.checkpoint(self.model)
        return True


class _TaskRun:
    """Everything about training one task; lives in a worker process."""

    def __init__(self, suite: Suite, task: int, cfg: ExpertConfig, out: Path, seed: int, device: str,
                 progress: Any = None) -> None:
        self.suite, self.task, self.cfg, self.seed = suite, task, cfg, seed
        self.spec = suite.tasks[task]
        self.dir = out / self.spec.name
        self.device = resolve_device(device)
        self.progress = progress
        self.total = cfg.total_steps or self.spec.train_steps
        self.threshold = self.spec.success_threshold
        self.groups = cfg.groups_of(suite, task)
        self.obs_space = _group_space(suite, task, self.groups)
        self.ckpt = _Checkpoint(self.dir)
        self.state: dict[str, Any] = {"elapsed_s": 0.0, "threshold_steps": None, "threshold_s": None, "curve": [],
                                   "resumed_from": []}
        self.t0 = time.perf_counter()

    def elapsed(self) -> float:
        return self.state["elapsed_s"] + time.perf_counter() - self.t0

    def report(self, steps: int) -> None:
        if self.progress is not None:
            self.progress.put((self.spec.name, steps, self.total))

    def policy(self, model: BaseAlgorithm):
        venv = model.get_env()
        return policy_from_sb3(model, self.obs_space, self.groups,
                               vecnormalize=venv if isinstance(venv, VecNormalize) else None)

    def evaluate(self, model: BaseAlgorithm, episodes: int | None = None) -> dict[str, Any]:
        episodes = episodes or self.cfg.eval_episodes
        stats = summarise(run_episodes(self.suite, self.task, self.policy(model), episodes,
                                       seed=10_000 + self.seed * 1000))
        row = {"env_steps": model.num_timesteps, "wall_time_s": round(self.elapsed(), 2),
               **{k: stats[k] for k in CURVE_FIELDS[2:]}}
        curve = self.state["curve"]
        if curve and curve[-1]["env_steps"] == row["env_steps"]:
            curve.pop()  # the final, longer evaluation replaces a periodic one at the same step
        curve.append(row)
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=CURVE_FIELDS)
        writer.writeheader()
        writer.writerows(self.state["curve"])
        atomic_write_text(self.dir / "curve.csv", text.getvalue())
        if self.state["threshold_steps"] is None and (stats["success_rate"] or 0.0) >= self.threshold:
            self.state.update(threshold_steps=model.num_timesteps, threshold_s=row["wall_time_s"])
        log.info("%s: %d steps, return %.2f, success %s", self.spec.name, model.num_timesteps,
                 stats["return_mean"], fmt_rate(stats["success_rate"]))
        return stats

    def checkpoint(self, model: BaseAlgorithm) -> None:
        self.state["elapsed_s"] = self.elapsed()
        self.t0 = time.perf_counter()
        self.ckpt.save(model, self.state)

    def build_or_resume(self) -> BaseAlgorithm:
        algo = ALGOS[self.cfg.algo]
        venv: VecEnv = _make_vec_env(self.suite, self.task, self.cfg, self.seed)

        def load(files: dict[str, str]) -> BaseAlgorithm:
            env = VecNormalize.load(str(self.dir / files["vecnormalize"]), venv) if "vecnormalize" in files else venv
            model = algo.load(self.dir / files["model"], env=env, device=self.device)
            if "replay_buffer" in files:
                model.load_replay_buffer(self.dir / files["replay_buffer"])
            return model

        restored = self.ckpt.restore(load)
        if restored is not None:
            model, saved = restored
            self.state.update({k: saved[k] for k in self.state})
            self.state["resumed_from"].append(model.num_timesteps)
            log.info("%s: resuming from checkpoint at %d env steps", self.spec.name, model.num_timesteps)
            return model
        if self.cfg.normalize_obs or self.cfg.normalize_reward:
            venv = VecNormalize(venv, norm_obs=self.cfg.normalize_obs, norm_reward=self.cfg.normalize_reward)
        act = {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU}[self.cfg.activation]
        kwargs = {"net_arch": list(self.cfg.net), "activation_fn": act}
        try:
            return algo("MlpPolicy", venv, seed=self.seed, device=self.device, verbose=0,
                        tensorboard_log=str(self.dir / "tb"), policy_kwargs=kwargs, **dict(self.cfg.hyperparams))
        except TypeError as e:
            raise ValueError(f"bad expert.hyperparams for {self.cfg.algo}: {e}") from e

    def train(self) -> dict[str, Any]:
        self.dir.mkdir(parents=True, exist_ok=True)
        model = self.build_or_resume()
        remaining = self.total - model.num_timesteps
        if remaining > 0:
            model.learn(remaining, callback=_Trainer(self), reset_num_timesteps=False, tb_log_name="sb3")
        self.checkpoint(model)
        stats = self.evaluate(model, episodes=self.cfg.final_episodes)
        policy = self.policy(model)
        meta = {"task": self.spec.name, "suite": self.suite.name, "algo": self.cfg.algo,
                "env_steps": model.num_timesteps, "expert": {**asdict(self.cfg), "groups": self.groups},
                "seed": self.seed,
                "control_period": float(getattr(self.suite.make_env(self.task).unwrapped, "dt", 0.0))}
        save_bundle(policy, self.dir / "bundle", meta=meta, obs_keys=self.suite.keymaps[self.task])
        result = {
            "algo": self.cfg.algo, "env_steps": model.num_timesteps, "wall_time_s": round(self.elapsed(), 2),
            "return_mean": stats["return_mean"], "return_std": stats["return_std"],
            "success_rate": stats["success_rate"], "success_threshold": self.threshold,
            "steps_to_threshold": self.state["threshold_steps"],
            "seconds_to_threshold": self.state["threshold_s"], "resumed_from": self.state["resumed_from"],
            "dropped_episodes": int(sum(model.get_env().get_attr("dropped"))), "bundle": f"{self.spec.name}/bundle",
        }
        atomic_write_json(self.dir / "result.json", result)
        self.report(self.total)
        return result


def train_task(suite: Suite, task: int, cfg: ExpertConfig, out: str, seed: int, device: str,
               progress: Any = None) -> dict[str, Any]:
    """Train (or resume) the expert of task ``task`` under ``out``; returns its result.json content. Runs in a
    worker process or Ray task: one torch thread, warnings only."""
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)
    return _TaskRun(suite, task, cfg, Path(out), seed, device, progress).train()
