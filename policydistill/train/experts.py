"""Train one stable-baselines3 specialist per task of a suite, in parallel worker processes.

Layout of ``out``::

    experts.json            summary (suite, per task: algo, env steps, wall time, return, success)
    <task>/bundle/          the expert as a policy bundle (what every other command loads)
    <task>/checkpoint.json  last checkpoint (commit point), <task>/ckpt-*.zip its files
    <task>/curve.csv        evaluation curve: env steps, wall time, return mean/std, success rate
                            (rows after the resumed checkpoint are redone, never duplicated)
    <task>/result.json      written last: a task with it is finished and skipped on rerun
    <task>/tb/              TensorBoard logs
"""

from __future__ import annotations

import csv
import io
import logging
import multiprocessing as mp
import queue
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from gymnasium import spaces
from stable_baselines3 import PPO, SAC, TD3
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecNormalize
from tqdm import tqdm

from policydistill.bundle import save_bundle
from policydistill.config import ExpertConfig, RayConfig
from policydistill.eval.metrics import summarise
from policydistill.eval.rollout import run_episodes
from policydistill.io import atomic_write_json, atomic_write_text, read_json
from policydistill.models import resolve_device
from policydistill.scale.ray_session import check_engine
from policydistill.suite import Suite
from policydistill.teachers.sb3 import policy_from_sb3
from policydistill.types import check_groups
from policydistill.wrappers import FlattenGroups

log = logging.getLogger(__name__)

ALGOS: dict[str, type[BaseAlgorithm]] = {"ppo": PPO, "sac": SAC, "td3": TD3}
CURVE_FIELDS = ("env_steps", "wall_time_s", "return_mean", "return_std", "success_rate")


def _algo(name: str) -> type[BaseAlgorithm]:
    if name not in ALGOS:
        raise ValueError(f"unknown expert algo '{name}': expected one of {sorted(ALGOS)}")
    return ALGOS[name]


def _make_vec_env(suite: Suite, task: int, cfg: ExpertConfig, seed: int) -> VecEnv:
    groups = check_groups(cfg.groups)
    fns = [lambda: Monitor(FlattenGroups(suite.make_env(task), groups)) for _ in range(cfg.n_envs)]
    venv = DummyVecEnv(fns)
    venv.seed(seed)
    return venv


def _group_space(suite: Suite, task: int, groups: list[str]) -> spaces.Dict:
    env = suite.make_env(task)
    try:
        missing = [g for g in groups if g not in env.observation_space.spaces]
        if missing:
            raise ValueError(f"task '{suite.tasks[task].name}' has no observation groups {missing}; "
                             f"it has {list(env.observation_space.spaces)}")
        return spaces.Dict({g: env.observation_space[g] for g in groups})
    finally:
        env.close()


class _Checkpoint:
    """A task's checkpoint: SB3 zip (+ VecNormalize, + replay buffer) committed by checkpoint.json."""

    def __init__(self, task_dir: Path) -> None:
        self.dir = task_dir
        self.index = task_dir / "checkpoint.json"

    def load(self) -> dict[str, Any] | None:
        return read_json(self.index) if self.index.exists() else None

    def save(self, model: BaseAlgorithm, state: dict[str, Any]) -> None:
        steps = model.num_timesteps
        files = {"model": f"ckpt-{steps}.zip"}
        model.save(self.dir / files["model"])
        if isinstance(model.get_env(), VecNormalize):
            files["vecnormalize"] = f"ckpt-{steps}-vecnormalize.pkl"
            model.get_env().save(str(self.dir / files["vecnormalize"]))
        if hasattr(model, "replay_buffer") and model.replay_buffer is not None:
            files["replay_buffer"] = f"ckpt-{steps}-replay.pkl"
            model.save_replay_buffer(self.dir / files["replay_buffer"])
        old = self.load()
        atomic_write_json(self.index, {"env_steps": steps, "files": files, **state})
        for name in (old or {}).get("files", {}).values():
            if name not in files.values():
                (self.dir / name).unlink(missing_ok=True)


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
            if run.cfg.stop_at_threshold and stats["success_rate"] >= run.threshold:
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
        self.obs_space = _group_space(suite, task, cfg.groups)
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
        return policy_from_sb3(model, self.obs_space, self.cfg.groups,
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
        if self.state["threshold_steps"] is None and stats["success_rate"] >= self.threshold:
            self.state.update(threshold_steps=model.num_timesteps, threshold_s=row["wall_time_s"])
        log.info("%s: %d steps, return %.2f, success %.2f", self.spec.name, model.num_timesteps,
                 stats["return_mean"], stats["success_rate"])
        return stats

    def checkpoint(self, model: BaseAlgorithm) -> None:
        self.state["elapsed_s"] = self.elapsed()
        self.t0 = time.perf_counter()
        self.ckpt.save(model, self.state)

    def build_or_resume(self) -> BaseAlgorithm:
        algo = _algo(self.cfg.algo)
        venv: VecEnv = _make_vec_env(self.suite, self.task, self.cfg, self.seed)
        saved = self.ckpt.load()
        if saved is not None:
            files = saved["files"]
            if "vecnormalize" in files:
                venv = VecNormalize.load(str(self.dir / files["vecnormalize"]), venv)
            model = algo.load(self.dir / files["model"], env=venv, device=self.device)
            if "replay_buffer" in files:
                model.load_replay_buffer(self.dir / files["replay_buffer"])
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
        stats = self.evaluate(model, episodes=max(self.cfg.eval_episodes, 20))
        policy = self.policy(model)
        meta = {"task": self.spec.name, "suite": self.suite.name, "algo": self.cfg.algo,
                "env_steps": model.num_timesteps, "expert": asdict(self.cfg), "seed": self.seed,
                "control_period": float(getattr(self.suite.make_env(self.task).unwrapped, "dt", 0.0))}
        save_bundle(policy, self.dir / "bundle", meta=meta)
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


def _train_task_worker(suite: Suite, task: int, cfg: ExpertConfig, out: str, seed: int, device: str,
                       progress: Any) -> dict[str, Any]:
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)
    return _TaskRun(suite, task, cfg, Path(out), seed, device, progress).train()


def train_experts(suite: Suite, cfg: ExpertConfig, out: str | Path, workers: int = 2, seed: int = 0,
                  device: str = "auto", tasks: list[str] | None = None, launcher: str = "local",
                  ray: RayConfig | None = None) -> dict[str, Any]:
    """Train (or resume) one expert per task; finished tasks are skipped. Returns experts.json.

    ``launcher``: ``local`` (``workers`` processes) or ``ray`` (one Ray task per expert, see ``ray``)."""
    check_engine(launcher, "launcher")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _algo(cfg.algo)
    names = tasks or suite.task_names
    todo = [suite.index(n) for n in names]
    summary_path = out / "experts.json"
    summary: dict[str, Any] = {"suite": suite.name, "tasks": {}}
    if summary_path.exists():
        old = read_json(summary_path)
        if old.get("suite") != suite.name:
            raise ValueError(f"{out} holds experts of suite '{old.get('suite')}', not '{suite.name}': "
                             "choose another out directory")
        summary["tasks"] = old.get("tasks", {})
    pending = []
    for i in todo:
        done = out / suite.tasks[i].name / "result.json"
        if done.exists() and (done.parent / "bundle" / "policy.json").exists():
            summary["tasks"][suite.tasks[i].name] = read_json(done)
            log.info("%s: already trained, skipped", suite.tasks[i].name)
        else:
            pending.append(i)
    failures: dict[str, str] = {}
    if pending and launcher == "ray":
        from policydistill.scale.ray_experts import run_ray

        run_ray(suite, pending, cfg, out, seed, device, summary, summary_path, failures, ray or RayConfig())
    elif pending:
        _run_pool(suite, pending, cfg, out, workers, seed, device, summary, summary_path, failures)
    summary["tasks"] = {n: summary["tasks"][n] for n in suite.task_names if n in summary["tasks"]}
    atomic_write_json(summary_path, summary)
    if failures:
        raise RuntimeError(f"expert training failed for {sorted(failures)}: {failures}")
    return summary


def _run_pool(suite: Suite, pending: list[int], cfg: ExpertConfig, out: Path, workers: int, seed: int,
              device: str, summary: dict, summary_path: Path, failures: dict[str, str]) -> None:
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        progress = manager.Queue()
        bars = {suite.tasks[i].name: tqdm(total=cfg.total_steps or suite.tasks[i].train_steps, position=k,
                                          desc=f"{suite.tasks[i].name:>12}", unit="step", leave=True,
                                          dynamic_ncols=True)
                for k, i in enumerate(pending)}
        with ProcessPoolExecutor(max_workers=max(1, min(workers, len(pending))), mp_context=ctx) as pool:
            futures = {pool.submit(_train_task_worker, suite, i, cfg, str(out), seed, device, progress):
                       suite.tasks[i].name for i in pending}
            while futures:
                try:
                    name, steps, total = progress.get(timeout=0.5)
                    bars[name].total = total
                    bars[name].update(steps - bars[name].n)
                except queue.Empty:
                    pass
                for fut in [f for f in futures if f.done()]:
                    name = futures.pop(fut)
                    try:
                        summary["tasks"][name] = fut.result()
                        atomic_write_json(summary_path, summary)
                    except Exception as e:  # one task failing must not lose the others
                        failures[name] = f"{type(e).__name__}: {e}"
                        log.error("expert %s failed: %s", name, failures[name])
        for bar in bars.values():
            bar.close()

