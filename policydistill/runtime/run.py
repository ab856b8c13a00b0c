"""``policydistill run``: a simulated robot (a suite's task) driven through the runtime at a fixed rate."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from policydistill.configs import require_choice, require_int, require_number
from policydistill.eval.metrics import Episode
from policydistill.runtime.action_queue import MODES
from policydistill.runtime.controller import BACKENDS, FALLBACKS, Controller, make_source
from policydistill.runtime.loop import FixedRateLoop, pin_to_cpu, restore_scheduling
from policydistill.runtime.monitor import ON_ALARM, load_monitor
from policydistill.runtime.record import AlarmRecorder
from policydistill.runtime.safety import OUT_OF_BOUNDS, check_limit
from policydistill.suites import Suite, load_suite
from policydistill.types import stack_obs

log = logging.getLogger(__name__)


@dataclass
class RuntimeConfig:
    """The real-time wrapper (:class:`~policydistill.runtime.Controller`). ``queue``: ``replace`` (a new chunk
    replaces the plan, cross-fading over ``blend_steps`` ticks) or ``ensemble`` (temporal ensembling,
    weights exp(-ensemble_m * i), i = 0 the oldest prediction). ``n_action_steps`` None: the policy's.
    ``latency_budget_ms`` None: (horizon - n_action_steps) periods. ``fallback``: ``hold`` | ``safe``.

    Safety of every action sent: ``out_of_bounds``: ``clip`` an action outside the action bounds into
    them, or replace it by the ``fallback``; ``max_rate`` / ``max_jerk``: largest |a_t - a_t-1| and
    |a_t - 2 a_t-1 + a_t-2| per action dimension and tick (None: no limit); ``max_consecutive_faults``:
    policy faults in a row (an exception, None or a wrong shape; each executes the fallback) after
    which the run stops, sending the safe action (``safe_action``, default zeros clipped into the
    bounds). ``monitor``: ``policy`` (the failure monitor stored with the policy, bundle or exported model;
    see ``policydistill fit-monitor``) or the path of a bundle, exported model or folder holding one; its
    alarm does ``on_alarm``: ``log``, ``fallback`` (the env executes the fallback until its reset), ``stop`` or
    ``teacher`` (``teacher``, a policy as ``distill`` reads its teachers, acts until the env's reset).
    ``record_alarms``: an episode-store folder keeping the episodes with an alarm (see
    :mod:`policydistill.runtime.record`)."""

    queue: str = "replace"
    ensemble_m: float = 0.0
    blend_steps: int = 0
    n_action_steps: int | None = None
    async_inference: bool = False
    latency_budget_ms: float | None = None
    fallback: str = "hold"
    safe_action: list[float] | None = None
    out_of_bounds: str = "clip"
    max_rate: float | None = None
    max_jerk: float | None = None
    max_consecutive_faults: int = 5
    monitor: str | None = None
    on_alarm: str = "log"
    teacher: str | None = None
    record_alarms: str | None = None

    def __post_init__(self) -> None:
        require_choice("runtime.queue", self.queue, MODES)
        require_choice("runtime.fallback", self.fallback, FALLBACKS)
        require_choice("runtime.out_of_bounds", self.out_of_bounds, OUT_OF_BOUNDS)
        require_number("runtime.ensemble_m", self.ensemble_m)
        require_int("runtime.blend_steps", self.blend_steps, 0)
        if self.n_action_steps is not None:
            require_int("runtime.n_action_steps", self.n_action_steps)
        if self.latency_budget_ms is not None:
            require_number("runtime.latency_budget_ms", self.latency_budget_ms, 0.0, low_open=True)
        if self.safe_action is not None and not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in self.safe_action):
            raise ValueError(f"runtime.safe_action must be a list of finite numbers (one per action dimension), "
                             f"got {self.safe_action!r}")
        check_limit("runtime.max_rate", self.max_rate)
        check_limit("runtime.max_jerk", self.max_jerk)
        require_int("runtime.max_consecutive_faults", self.max_consecutive_faults)
        require_choice("runtime.on_alarm", self.on_alarm, ON_ALARM)
        if self.monitor is None and self.on_alarm != "log":
            raise ValueError("runtime.on_alarm is read only with a runtime.monitor (policy or a path)")
        if self.monitor is None and self.record_alarms is not None:
            raise ValueError("runtime.record_alarms is read only with a runtime.monitor (policy or a path)")
        if (self.on_alarm == "teacher") != (self.teacher is not None):
            raise ValueError("runtime.on_alarm=teacher needs runtime.teacher=<bundle>, and runtime.teacher is read "
                             "only with it")


@dataclass
class RunConfig:
    """``policydistill run``: drive a simulated robot (``task`` of ``suite``, default its first) through the
    runtime at ``rate_hz`` for ``ticks`` ticks. ``policy``: a bundle or an exported .onnx/.pt; ``backend`` for a
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

    def __post_init__(self) -> None:
        require_number("rate_hz", self.rate_hz, 0.0, low_open=True)
        require_int("ticks", self.ticks)
        require_int("n_envs", self.n_envs)
        require_choice("backend", self.backend, BACKENDS)
        require_number("log_every_s", self.log_every_s, 0.0)
        if self.sampler_steps is not None:
            require_int("sampler_steps", self.sampler_steps)
        if self.cpu is not None:
            require_int("cpu", self.cpu, 0)


class SimRobot:
    """``n_envs`` envs of one task of a suite, stepped once per control tick; an ended episode is
    reset at once (episode k of the run uses seed ``seed + k``) and reported to the loop."""

    def __init__(self, suite: Suite, task: int | str, n_envs: int = 1, seed: int = 0) -> None:
        self.suite, self.task = suite, suite.index(task) if isinstance(task, str) else task
        self.envs = [suite.make_env(self.task) for _ in range(n_envs)]
        self._next_seed = seed
        self._seeds = [0] * n_envs
        self._obs = [self._reset(k) for k in range(n_envs)]
        self._return, self._length = np.zeros(n_envs), np.zeros(n_envs, dtype=int)
        self.episodes: list[Episode] = []
        self.recorder: AlarmRecorder | None = None  # keeps the episodes with a monitor alarm

    def _reset(self, k: int) -> dict[str, np.ndarray]:
        obs, _ = self.envs[k].reset(seed=self._next_seed)
        self._seeds[k], self._next_seed = self._next_seed, self._next_seed + 1
        return obs

    @property
    def observation_space(self) -> Any:
        return self.envs[0].observation_space

    @property
    def action_space(self) -> Any:
        return self.envs[0].action_space

    def observe(self) -> dict[str, np.ndarray]:
        return stack_obs(self._obs)

    def actuate(self, actions: np.ndarray) -> np.ndarray:
        ended = np.zeros(len(self.envs), dtype=bool)
        for k, env in enumerate(self.envs):
            obs, reward, terminated, truncated, info = env.step(actions[k])
            if self.recorder is not None:
                self.recorder.step(k, self._obs[k], actions[k], reward, terminated, truncated)
            self._return[k] += reward
            self._length[k] += 1
            if terminated or truncated:
                error = info.get("episode_error")
                self.episodes.append(Episode(self.suite.tasks[self.task].name, self._seeds[k],
                                             float(self._return[k]), int(self._length[k]),
                                             bool(info.get("is_success", False)) and not error, error))
                if self.recorder is not None and not error:
                    self.recorder.end(k, self._seeds[k], self.episodes[-1].success, float(self._return[k]))
                self._return[k], self._length[k] = 0.0, 0
                obs = self._reset(k)
                ended[k] = True
            self._obs[k] = obs
        return ended

    def close(self) -> None:
        for env in self.envs:
            env.close()


def run_policy(policy: str | Path | Any, suite: str | Suite, rate_hz: float, ticks: int, task: str | None = None,
               n_envs: int = 1, backend: str = "torch", seed: int = 0, cpu: int | None = None,
               realtime: bool = False, log_every_s: float = 0.0, sampler_steps: int | None = None,
               controller: dict[str, Any] | None = None, progress: bool = True) -> dict[str, Any]:
    """Drive ``ticks`` control ticks of a simulated robot (``n_envs`` envs of ``task``, default the
    suite's first) through a :class:`Controller` at ``rate_hz``; ``controller`` holds its options.
    The control thread is pinned to ``cpu``; ``realtime`` gives it SCHED_FIFO (and an async
    inference thread a lower SCHED_FIFO priority).

    Returns the loop statistics with the finished episodes (return, success) under ``episodes``; a run
    stopped by too many consecutive policy faults ends early with ``controller.stopped`` set.
    """
    suite = load_suite(suite) if isinstance(suite, str) else suite
    source = make_source(policy, backend=backend, seed=seed, sampler_steps=sampler_steps)
    task = task or suite.task_names[0]
    robot = SimRobot(suite, task, n_envs=n_envs, seed=seed)
    if getattr(source, "observation_space", None) is not None:
        from policydistill.spaces import check_spaces

        check_spaces(source.observation_space, source.action_space, robot.observation_space, robot.action_space,
                     f"policy on task '{task}' of suite '{suite.name}'")
    loop = FixedRateLoop(rate_hz, log_every_s=log_every_s)
    log.info("running %s on %s/%s: %d env(s), %g Hz, %d ticks", source.describe(), suite.name, task, n_envs,
             rate_hz, ticks)
    try:
        options = {"realtime_inference": realtime and bool((controller or {}).get("async_inference")),
                   **(controller or {})}
        if isinstance(options.get("monitor"), (str, Path)):
            options["monitor"] = load_monitor(policy if options["monitor"] == "policy" else options["monitor"])
        if isinstance(options.get("teacher"), (str, Path)):
            from policydistill.teachers.load import load_policy
            options["teacher"] = load_policy(options["teacher"], device="cpu")
        record = options.pop("record_alarms", None)
        with Controller(source, 1.0 / rate_hz, **options) as ctrl, \
                tqdm(total=ticks, desc="run", unit="tick", leave=False, mininterval=1.0, disable=not progress) as bar:
            if record is not None:
                robot.recorder = AlarmRecorder(record, ctrl, task, suite.index(task), n_envs)
            pinned = pin_to_cpu(cpu, realtime)  # the control thread only: an inference thread runs anywhere
            try:
                stats = loop.run(ctrl, robot, ticks, progress=bar.update if progress else None)
            finally:
                restore_scheduling(pinned)
    finally:
        robot.close()
    eps = robot.episodes
    if robot.recorder is not None:
        stats["recorded_alarm_episodes"] = robot.recorder.kept
        log.info("kept %d episodes with a monitor alarm in %s", robot.recorder.kept, robot.recorder.writer.root)
    stats["pinned"] = {k: v for k, v in pinned.items() if k != "previous"}
    stats["episodes"] = {"count": len(eps), "return_mean": float(np.mean([e.ret for e in eps])) if eps else None,
                         "success_rate": float(np.mean([e.success for e in eps])) if eps else None}
    lat, c = stats["latency"], stats["controller"]
    log.info("run finished: %d ticks at %g Hz, tick latency p50 %.0f us p99 %.0f us, deadline misses %d "
             "(overruns %d, missed %d), fallback env-ticks %d, out of bounds %d, rate/jerk-limited %d/%d, "
             "policy faults %d", stats["ticks"], rate_hz, lat["p50_us"], lat["p99_us"], stats["deadline_misses"],
             stats["overruns"], stats["missed"],
             c["starved_env_ticks"] + c["cold_start_env_ticks"] + c["nonfinite_env_ticks"],
             c["out_of_bounds_env_ticks"], c["rate_limited_env_ticks"], c["jerk_limited_env_ticks"],
             c["policy_faults"])
    if c["stopped"] and c["stopped"]["reason"] != "policy faults":
        log.error("run stopped at tick %d of %d: %s", c["stopped"]["tick"], ticks, c["stopped"]["reason"])
    elif c["stopped"]:
        log.error("run stopped at tick %d of %d: %d consecutive policy faults (first %s; last %s)",
                  c["stopped"]["tick"], ticks, c["stopped"]["consecutive_faults"], c["first_fault"],
                  c["stopped"]["last_fault"])
    return stats
