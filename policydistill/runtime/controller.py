"""The real-time wrapper: any policy or exported model as a controller stepped once per control tick.

A :class:`Controller` drives a *source*: an :class:`~policydistill.runtime.exported.ExportedPolicy`
(an ONNX model, a TorchScript model or a torch policy's export graph, all with normalisation and
action post-processing inside the graph and state kept per env) or, for policies without an export
graph, a :class:`PolicySource` around their ``act`` / ``predict_chunk``. Each tick,
:meth:`Controller.step` turns the observation groups into one action per env:

- action policies (MLP, history, recurrent students) run once per tick;
- chunk policies (diffusion, one-step students) fill an :class:`ActionQueue` of timestamped actions
  (stale ones are dropped, never executed; ``queue="ensemble"`` averages overlapping chunks with
  ACT weights, ``queue="replace"`` swaps plans, cross-fading over ``blend_steps`` ticks). A new
  chunk is computed every ``n_action_steps`` ticks, or when an env has nothing left;
- with ``async_inference`` a background thread computes the next chunk while the current one is
  executed. It is requested when no request is in flight and either ``n_action_steps`` ticks have
  passed since the last request or the queue holds no more than ``lead = ceil(latency_budget /
  period) + 1`` ticks, so the queue does not run dry while inference takes at most the latency
  budget; a chunk slower than the budget and every tick without a queued action are counted and
  logged;
- a tick without an action (the queue ran dry, counted apart while the first chunk of an episode
  is still being computed as a *cold start*; a non-finite output; the deadline passed before the
  action was ready, or a tick the loop missed) executes the fallback: ``hold`` the env's last
  executed action (the safe action before the first and after a reset) or the ``safe`` action
  (default: zeros clipped into the action bounds);
- a *fault* (the policy raised, returned None, an array of the wrong shape, values that are not real
  numbers or no finite action for any env, or was given an observation it rejects) executes the
  fallback for every env; it is counted and logged (the first at once, then at most one line every
  WARN_EVERY_S seconds, with the count). After
  ``max_consecutive_faults`` faults without a good policy result in between, the controller stops:
  it no longer calls the policy and sends the safe action from then on (:attr:`Controller.stopped`
  says when and why; :attr:`Controller.halted` once the safe action is reached);
- every action sent, fallbacks included, passes one :class:`~policydistill.runtime.safety.ActionGuard`:
  finite, within the action bounds (clipped, or replaced by the fallback, and counted) and, with
  ``max_rate`` / ``max_jerk``, rate- and jerk-limited.

With a ``monitor`` (:class:`~policydistill.runtime.monitor.FailureMonitor`) every tick also scores each
env's observation (at its tick since the env's last reset: the monitor knows how an episode starts); an env
whose score passes the monitor's threshold raises an alarm (logged, counted,
latched until the env is reset) and ``on_alarm`` says what else happens: ``log`` nothing more,
``fallback`` the env executes the fallback until its reset, ``stop`` the controller stops as after too
many faults, ``teacher`` the ``teacher`` policy acts for the env until its reset (``teacher_env_ticks``
counts those ticks).

:meth:`Controller.stats` returns the counters and latency percentiles as a dict. This module
imports numpy only (torch only when a torch policy or bundle is given).
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from policydistill.keymap import KeyMap, KeyMaps, groups_from_keys, is_keyed, task_keymap
from policydistill.runtime.action_queue import MODES, ActionQueue
from policydistill.runtime.exported import ExportedPolicy, ObsWindow, reset_mask
from policydistill.runtime.latency import LatencyRecorder
from policydistill.runtime.monitor import ON_ALARM, FailureMonitor
from policydistill.runtime.safety import COUNTERS, OUT_OF_BOUNDS, ActionGuard, check_limit, safe_action_for
from policydistill.types import check_obs, select_groups

log = logging.getLogger(__name__)

FALLBACKS = ("hold", "safe")
BACKENDS = ("torch", "torchscript", "onnx")
WARN_EVERY_S = 5.0
perf_counter = time.perf_counter


def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split()) or '(no message)'}"


class PolicySource:
    """A policy without an export graph as a controller source: ``act`` (or ``predict_chunk`` for a
    chunk policy) on its observation groups; it keeps its own history and state (``reset``)."""

    def __init__(self, policy: Any) -> None:
        self.policy = policy
        self.groups: tuple[str, ...] = tuple(policy.groups)
        self.kind = "chunk" if hasattr(policy, "predict_chunk") else "action"
        self.horizon = int(getattr(policy, "horizon", 1))
        self.n_action_steps = int(getattr(policy, "n_action_steps", None) or self.horizon)
        self.n_obs_steps = 1
        self.observation_space = space = getattr(policy, "observation_space", None)
        self.obs_keys: KeyMaps | None = getattr(policy, "obs_keys", None)
        self.group_dims = {g: int(np.prod(s.shape)) for g, s in getattr(space, "spaces", {}).items()}
        self.action_space = space = getattr(policy, "action_space", None)
        self.action_low = None if space is None else np.asarray(space.low, np.float32)
        self.action_high = None if space is None else np.asarray(space.high, np.float32)

    def prepare(self, obs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if is_keyed(obs, self.obs_keys, self.groups):
            obs = groups_from_keys(obs, task_keymap(obs, self.obs_keys)[0], self.groups, self.group_dims)
        return select_groups(obs, self.groups)

    def predict(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        chunk = self.kind == "chunk"
        out = self.policy.predict_chunk(obs, True) if chunk else self.policy.act(obs, True)
        if out is None:
            raise ValueError(f"{type(self.policy).__name__}.{'predict_chunk' if chunk else 'act'} returned None, "
                             f"expected an array of shape {'(n, horizon, act_dim)' if chunk else '(n, act_dim)'}")
        actions = np.asarray(out)
        if actions.dtype.kind not in "fiu":
            raise ValueError(f"{type(self.policy).__name__}.{'predict_chunk' if chunk else 'act'} returned "
                             f"{actions.dtype} values, expected real numbers")
        return np.array(actions, dtype=np.float32)  # a copy: the controller holds what it sent; the policy may reuse it

    def reset(self, env_mask: np.ndarray | None = None) -> None:
        self.policy.reset(env_mask)

    def describe(self) -> str:
        return f"{type(self.policy).__name__} (own act/reset), groups={list(self.groups)}, kind={self.kind}"


def make_source(policy: Any, backend: str = "torch", seed: int = 0, sampler_steps: int | None = None) -> Any:
    """A controller source from a policy object, a bundle directory or an exported model file.

    ``policy``: an :class:`ExportedPolicy` (used as is); a policy with ``export_graph`` (run as a
    :class:`~policydistill.runtime.torch_policy.GraphPolicy`); any other Policy (:class:`PolicySource`);
    a bundle directory (loaded with torch; ``backend="onnx"`` or ``"torchscript"`` exports it to a
    temporary file first and runs that); an ``.onnx`` / ``.pt`` file or its ``.json`` description.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown runtime backend '{backend}'; expected one of {list(BACKENDS)}")
    if isinstance(policy, (ExportedPolicy, PolicySource)):
        return policy
    if isinstance(policy, (str, Path)):
        return _load_source(Path(policy), backend, seed, sampler_steps)
    if hasattr(policy, "export_graph"):
        if backend != "torch":
            raise ValueError(f"backend '{backend}' needs a bundle or an exported file, got a policy object")
        from policydistill.runtime.torch_policy import GraphPolicy

        return GraphPolicy.from_policy(policy, seed=seed, sampler_steps=sampler_steps)
    if hasattr(policy, "act") and hasattr(policy, "groups"):
        return PolicySource(policy)
    raise ValueError(f"cannot run a {type(policy).__name__}: expected a Policy, an exported model or a bundle")


def _load_source(path: Path, backend: str, seed: int, sampler_steps: int | None) -> Any:
    if (path / "policy.json").is_file():
        if backend == "torch":
            from policydistill.bundle import load_bundle

            return make_source(load_bundle(path, device="cpu"), "torch", seed, sampler_steps)
        import tempfile

        from policydistill.runtime.export import export_policy

        with tempfile.TemporaryDirectory() as tmp:
            out = export_policy(path, backend, Path(tmp) / ("policy.onnx" if backend == "onnx" else "policy.pt"))
            return _load_source(out, backend, seed, sampler_steps)
    if path.is_dir():
        bundles = sorted(p.name for p in path.iterdir() if (p / "policy.json").is_file())
        inside = f"a folder of {len(bundles)} bundles ({', '.join(bundles)})" if bundles else \
            "a directory without policy.json"
        raise ValueError(f"policy '{path}' is {inside}, not one bundle: expected a bundle directory"
                         f"{f' such as {path / bundles[0]}' if bundles else ''} or an exported .onnx/.pt model")
    if not path.exists() and not Path(f"{path}.json").exists():
        raise FileNotFoundError(f"no bundle or exported model at '{path}' (expected a bundle directory, an .onnx "
                                "or .pt export with its .json description)")
    from policydistill.runtime.exported import read_export_info

    fmt = read_export_info(path)["format"]
    if fmt == "onnx":
        from policydistill.runtime.onnx_policy import OnnxPolicy

        return OnnxPolicy(path, seed=seed, sampler_steps=sampler_steps)
    from policydistill.runtime.torch_policy import GraphPolicy

    return GraphPolicy.from_torchscript(path, seed=seed, sampler_steps=sampler_steps)


class Controller:
    """A source stepped at a fixed control period ``period_s`` (see the module docstring).

    ``n_action_steps``: ticks between chunk requests (default: the source's); ``latency_budget_s``:
    the inference latency async requests plan for (default: ``max(1, horizon - n_action_steps)``
    periods); ``safe_action`` (act_dim,): the fallback action of ``fallback="safe"``, of ``hold``
    before any action and after a stop (within the action bounds; default zeros clipped into them);
    ``realtime_inference``: run the inference thread with SCHED_FIFO, below a real-time control loop,
    so that other processes cannot stall it while it holds the GIL. ``out_of_bounds``: ``clip`` or
    ``fallback`` an action outside the bounds;
    ``max_rate`` / ``max_jerk``: limits of |a_t - a_t-1| and |a_t - 2 a_t-1 + a_t-2| per dimension
    (None: off); ``max_consecutive_faults``: faults in a row that stop the controller. ``monitor`` and
    ``on_alarm``: the failure monitor and what its alarm does (see the module doc).
    """

    def __init__(self, source: Any, period_s: float, *, queue: str = "replace", ensemble_m: float = 0.0,
                 blend_steps: int = 0, n_action_steps: int | None = None, async_inference: bool = False,
                 latency_budget_s: float | None = None, fallback: str = "hold",
                 safe_action: Any = None, realtime_inference: bool = False, out_of_bounds: str = "clip",
                 max_rate: float | None = None, max_jerk: float | None = None,
                 max_consecutive_faults: int = 5, monitor: FailureMonitor | None = None,
                 on_alarm: str = "log", teacher: Any = None) -> None:
        if not period_s > 0:
            raise ValueError(f"control period must be > 0 s, got {period_s}")
        if fallback not in FALLBACKS:
            raise ValueError(f"unknown fallback '{fallback}'; expected one of {list(FALLBACKS)}")
        if out_of_bounds not in OUT_OF_BOUNDS:
            raise ValueError(f"unknown out_of_bounds '{out_of_bounds}'; expected one of {list(OUT_OF_BOUNDS)}")
        if isinstance(max_consecutive_faults, bool) or not isinstance(max_consecutive_faults, int) \
                or max_consecutive_faults < 1:
            raise ValueError(f"max_consecutive_faults must be an int >= 1, got {max_consecutive_faults!r}")
        if on_alarm not in ON_ALARM:
            raise ValueError(f"unknown on_alarm '{on_alarm}'; expected one of {list(ON_ALARM)}")
        if (on_alarm == "teacher") != (teacher is not None):
            raise ValueError("on_alarm='teacher' needs a teacher policy, and a teacher is read only with it")
        self.monitor, self.on_alarm, self.teacher = monitor, on_alarm, teacher
        self.monitor_time = LatencyRecorder()
        self._alarmed: np.ndarray | None = None  # (n,) envs whose alarm was raised this episode
        self._episode_ticks: np.ndarray | None = None  # (n,) each env's ticks since its reset, while one is starting
        self._starting = False  # some env is within the monitor's start_scale ticks of its reset
        # statistic mean: (2, n) each env's scores summed since its reset and the threshold summed as many times (an
        # alarm once the first passes the second); (2, n) what a tick adds to them (the threshold read at the start)
        self._sums: np.ndarray | None = None
        self._added: np.ndarray | None = None
        self.taught: np.ndarray | None = None
        """(n, act_dim) the teacher's actions of this tick where it acted after an alarm, NaN elsewhere (None: it
        did not act)."""
        self.out_of_bounds, self.max_consecutive_faults = out_of_bounds, max_consecutive_faults
        self.max_rate, self.max_jerk = check_limit("max_rate", max_rate), check_limit("max_jerk", max_jerk)
        if queue not in MODES:
            raise ValueError(f"unknown action queue mode '{queue}'; expected one of {list(MODES)}")
        self.source, self.period = source, float(period_s)
        keymaps = getattr(source, "obs_keys", None)  # then it takes the env's own Dict too: mapped here for every
        self._keymap: KeyMap | None = keymaps if isinstance(keymaps, dict) else None  # reader, else by the source
        self._reads = tuple(dict.fromkeys([*source.groups, *(monitor.groups if monitor else ()),
                                           *(teacher.groups if teacher is not None else ())]))
        self._dims = dict(getattr(source, "group_dims", {}))
        self.kind = source.kind
        if async_inference and self.kind != "chunk":
            raise ValueError("async inference needs a chunk policy (one that returns action chunks); "
                             f"this source returns single actions: {self._describe_source()}")
        self.horizon = int(source.horizon)
        self.replan = int(n_action_steps or source.n_action_steps)
        if not 1 <= self.replan <= self.horizon:
            raise ValueError(f"n_action_steps must be in [1, horizon={self.horizon}], got {self.replan}")
        self.queue_mode, self.ensemble_m, self.blend_steps = queue, float(ensemble_m), int(blend_steps)
        if self.blend_steps < 0 or not math.isfinite(self.ensemble_m):
            raise ValueError(f"blend_steps must be >= 0 and ensemble_m finite, got {blend_steps} and {ensemble_m}")
        if latency_budget_s is not None and not (math.isfinite(latency_budget_s) and latency_budget_s > 0):
            raise ValueError(f"latency_budget_s must be a finite number of seconds > 0, got {latency_budget_s}")
        self.async_inference, self.fallback = bool(async_inference), fallback
        default_budget = max(1, self.horizon - self.replan) * self.period
        self.latency_budget = float(latency_budget_s) if latency_budget_s is not None else default_budget
        self.lead = math.ceil(self.latency_budget / self.period - 1e-9) + 1
        if self.async_inference and self.lead >= self.horizon:
            log.warning("latency budget %.1f ms is %d ticks at %.0f Hz, not less than the chunk horizon %d: the "
                        "queue will run dry whenever inference takes that long", self.latency_budget * 1e3,
                        self.lead, 1 / self.period, self.horizon)
        self._safe_given = safe_action
        self._single = self.kind == "action"
        self._prepare, self._predict = source.prepare, source.predict
        self._window = ObsWindow(source.n_obs_steps) if source.n_obs_steps > 1 else None
        low = source.action_low
        self.act_dim: int | None = int(getattr(source, "act_dim", 0) or (0 if low is None else len(low))) or None
        if self.act_dim is not None:  # checked now where the action size is known, else at the first tick
            safe_action_for(safe_action, self.act_dim, low, source.action_high)
        self._n: int | None = None
        self._shape: tuple[int, int] = (0, 0)
        self._guard: ActionGuard | None = None
        self._in_a_row = 0
        self.first_fault: str | None = None
        self.last_fault: str | None = None
        self.stopped: dict[str, Any] | None = None
        """Set when the controller stopped: {tick, reason, consecutive_faults, last_fault}."""
        self._tick = 0
        self._next_request = 0
        self._lock = threading.Lock()
        self.compute = LatencyRecorder()
        self._record = self.compute.add
        self.inference = LatencyRecorder(10_000)
        self.counts = dict.fromkeys(("ticks", "overruns", "missed", "starved_env_ticks", "cold_start_env_ticks",
                                     "chunks", "chunks_over_budget", "chunks_discarded_for_reset",
                                     "policy_faults", "monitor_alarms", "monitor_alarm_ticks", "teacher_env_ticks",
                                     *COUNTERS), 0)
        self._warned_at: dict[str, float] = {}
        self._pending: tuple[int, np.ndarray] | None = None
        self._results: collections.deque = collections.deque()
        self._requests: collections.deque = collections.deque()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.realtime_inference = bool(realtime_inference)
        if self.async_inference:
            self._thread = threading.Thread(target=self._worker, name="policydistill-inference", daemon=True)
            self._thread.start()

    # ---- Policy protocol ----------------------------------------------------------------------

    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(self.source.groups)

    def act(self, obs: Mapping[str, np.ndarray], deterministic: bool = True) -> np.ndarray:
        """:meth:`step` at the next tick."""
        return self.step(obs)

    def reset(self, env_mask: np.ndarray | None = None) -> None:
        """Forget the state, observation window and queued actions of the envs in ``env_mask`` (n,)
        bool, or of all envs; a chunk in flight is not used for them; their held action becomes the
        safe action."""
        mask = None if self._n is None else np.ones(self._n, bool) if env_mask is None \
            else reset_mask(env_mask, self._n)  # checked before anything is reset
        with self._lock:
            self.source.reset(env_mask)
        if self._window is not None:
            self._window.reset(env_mask)
        if mask is None:
            return
        if self._alarmed is not None:
            self._alarmed[mask] = False
            self._episode_ticks[mask] = 0
            self._starting = bool(self.monitor.start_scale)
            self._sums[:, mask] = 0.0
        if self._queue is not None:
            self._queue.clear(mask)
        self._epoch[mask] += 1
        self._fresh[mask] = True
        self._last[mask] = self._safe[mask]

    @property
    def alarmed(self) -> np.ndarray | None:
        """(n,) the envs whose monitor alarm was raised this episode (None: no monitor or no tick yet)."""
        return None if self._alarmed is None else self._alarmed.copy()

    # ---- the tick -----------------------------------------------------------------------------

    def step(self, obs: Mapping[str, np.ndarray], tick: int | None = None, deadline: float | None = None) -> np.ndarray:
        """The actions of control tick ``tick`` (default: the one after the last): (n, act_dim) float32.

        ``deadline``: a ``time.perf_counter()`` time; an action ready later is replaced by the
        fallback (an overrun). A fault executes the fallback (see the module docstring); after a
        stop, the safe action is sent and the policy is not called.
        """
        t0 = perf_counter()
        if self._keymap is not None and is_keyed(obs, self._keymap, self._reads):
            obs = groups_from_keys(obs, self._keymap, self._reads, self._dims)
        tick = self._tick if tick is None else int(tick)
        self._tick, self.taught = tick + 1, None
        if self._n is None and self.act_dim is not None:
            self._setup(self._batch_size(obs), self.act_dim)
        ok = None
        if self.stopped is None:
            try:
                actions, ok = self._compute(obs, tick)
            except Exception as e:
                if self._n is None:  # the action size is not known yet: nothing safe to send
                    raise
                self._fault(e, tick)
                actions = self._fallback_actions()
            if self.monitor is not None and self._n is not None:
                try:
                    actions = self._watch(obs, actions, tick)
                except Exception as e:
                    self._fault(e, tick)
                    actions = self._fallback_actions()
        if self.stopped is not None:
            actions, ok = self._fallback_actions(), None
        self.counts["ticks"] += 1
        if deadline is not None and perf_counter() > deadline:
            self.counts["overruns"] += 1
            actions, ok = self._fallback_actions(), None
        self._last = actions = self._guard(actions, ok)
        self._record(perf_counter() - t0)
        return actions

    def _compute(self, obs: Mapping[str, np.ndarray], tick: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The policy's actions for this tick and the envs that have one (None: all)."""
        x = self._prepare(obs)
        if self._window is not None:
            x = self._window.push(x)
        if not self._single:
            if self._n is None:
                self._setup(len(x))  # an error naming the missing action size
            return self._from_queue(x, tick)
        actions = self._predict(x)
        if self._n is None:
            if np.ndim(actions) != 2:
                raise ValueError(f"the policy returned actions of shape {np.shape(actions)}, expected (n, act_dim)")
            self._setup(len(actions), actions.shape[1])
        if actions.shape != self._shape:
            raise ValueError(f"the policy returned actions of shape {actions.shape}, expected {self._shape} "
                             "(n envs, act_dim)")
        # some envs' alone: replaced env by env, not a fault (the bounds first: the per-tick fast path, which the
        # guard then does not repeat)
        if not self._guard.inside(actions) and not np.isfinite(actions).all(axis=1).any():
            raise ValueError("the policy returned no finite action for any env")
        self._in_a_row = 0
        return actions, None

    def _watch(self, obs: Mapping[str, np.ndarray], actions: np.ndarray, tick: int) -> np.ndarray:
        """Score this tick's observations with the monitor, raise and act on alarms: the actions to send."""
        assert self.monitor is not None and self._n is not None
        t0 = perf_counter()
        if self._alarmed is None:
            self._alarmed, self._episode_ticks = np.zeros(self._n, dtype=bool), np.zeros(self._n, dtype=np.int64)
            self._sums, self._added = np.zeros((2, self._n)), np.full((2, self._n), self.monitor.threshold)
            self._starting = bool(self.monitor.start_scale)
        score = self.monitor.score(obs, self._episode_ticks if self._starting else None)
        self._advance_episodes()
        if self.monitor.statistic == "mean":  # the mean since reset passes the threshold: the sum passes its multiple
            self._added[0] = score  # one array operation on both rows: far cheaper than two on (n,) arrays
            self._sums += self._added
            over = self._sums[0] > self._sums[1]
        else:
            over = score > self.monitor.threshold
        self.monitor_time.add(perf_counter() - t0)
        if over.any():  # most ticks no env is over: one check
            self._raise(over, score, tick)
        if self.on_alarm not in ("fallback", "teacher") or not self._alarmed.any():
            return actions
        if self.on_alarm == "fallback":
            actions = np.where(self._alarmed[:, None], self._fallback_actions(), actions)
        else:
            own = np.asarray(self.teacher.act(select_groups(obs, self.teacher.groups), deterministic=True))
            actions = np.where(self._alarmed[:, None], own, actions)
            self.taught = np.where(self._alarmed[:, None], own, np.nan).astype(np.float32)
            self.counts["teacher_env_ticks"] += int(self._alarmed.sum())
        return actions

    def _raise(self, over: np.ndarray, score: np.ndarray, tick: int) -> None:
        """Count the envs over the threshold (n,) bool this tick, raise (log, and stop with ``on_alarm=stop``) the
        alarm of those not yet alarmed this episode."""
        fresh = over & ~self._alarmed
        self._alarmed |= over
        self.counts["monitor_alarm_ticks"] += int(over.sum())
        if not fresh.any():
            return
        self.counts["monitor_alarms"] += int(fresh.sum())
        envs = np.flatnonzero(fresh).tolist()
        threshold = self.monitor.threshold
        if self.monitor.statistic == "mean":
            score = threshold * self._sums[0] / self._sums[1]
        self._warn("monitor", f"failure monitor alarm at tick {tick} on envs {envs}: {self.monitor.statistic} "
                              f"score {float(score[fresh].max()):.3g} > threshold {threshold:.3g}")
        if self.on_alarm == "stop":
            self.stopped = {"tick": tick, "reason": "failure monitor alarm", "consecutive_faults": 0,
                            "last_fault": None}

    def _batch_size(self, obs: Mapping[str, np.ndarray]) -> int:
        """The number of envs of the first observation (a clear error if it is not (n, dim) arrays)."""
        try:
            shape = np.shape(obs[self.groups[0]])
        except Exception:
            shape = ()
        if len(shape) != 2:
            check_obs(obs, self.groups)  # raises the error naming what is wrong
        return int(shape[0])

    def _fault(self, e: BaseException, tick: int) -> None:
        """Count and log a fault on ``tick``; stop after ``max_consecutive_faults`` in a row."""
        self.counts["policy_faults"] += 1
        self._in_a_row += 1
        self.last_fault = message = f"tick {tick}: {_one_line(e)}"
        if self.first_fault is None:
            self.first_fault = message
            log.debug("the first policy fault", exc_info=e)
        if self._in_a_row >= self.max_consecutive_faults:
            self.stopped = {"tick": tick, "reason": "policy faults", "consecutive_faults": self._in_a_row,
                            "last_fault": message}
            log.error("stopping at tick %d after %d consecutive policy faults (last: %s); sending the safe action "
                      "from now on", tick, self._in_a_row, message)
        else:
            self._warn("fault", f"policy fault on {message} ({self.counts['policy_faults']} so far, "
                       f"{self._in_a_row} in a row); executing the fallback '{self.fallback}'")

    @property
    def halted(self) -> bool:
        """Whether the controller stopped and the action sent is the safe action."""
        return self.stopped is not None and self._guard.reached(self._safe)

    def skip(self, tick: int) -> np.ndarray:
        """The fallback actions of a tick the loop missed (its planned actions become stale)."""
        self._tick = int(tick) + 1
        self.taught = None
        self.counts["missed"] += 1
        if self._episode_ticks is not None:  # the envs' episodes go on without a score
            self._advance_episodes()
        self._last = actions = self._guard(self._fallback_actions())
        return actions

    def _advance_episodes(self) -> None:
        """One more tick of every env's episode; counted only while some env is in its start (the per-tick path
        past it does nothing)."""
        if self._starting:
            self._episode_ticks += 1
            self._starting = bool(self._episode_ticks.min() < len(self.monitor.start_scale))

    def _fallback_actions(self) -> np.ndarray:
        """The fallback of every env: ``hold`` the last action sent, or the safe action (always after a stop)."""
        return (self._last if self.fallback == "hold" and self.stopped is None else self._safe).copy()

    def _setup(self, n: int, act_dim: int | None = None) -> None:
        low, high = self.source.action_low, self.source.action_high
        act_dim = int(self.act_dim or act_dim or 0)
        if not act_dim:
            raise ValueError(f"{self._describe_source()}: the action size is unknown (no action_space)")
        if low is None:
            low, high = np.full(act_dim, -np.inf, np.float32), np.full(act_dim, np.inf, np.float32)
        safe = safe_action_for(self._safe_given, act_dim, low, high)
        self._n, self.act_dim, self._shape = n, act_dim, (n, act_dim)
        self._safe = np.repeat(safe[None], n, axis=0)
        self._last = self._safe.copy()
        self._guard = ActionGuard(low, high, self._safe, self._fallback_actions, self.counts, self.out_of_bounds,
                                  self.max_rate, self.max_jerk)
        self._epoch = np.zeros(n, np.int64)
        self._fresh = np.ones(n, bool)
        self._queue = None if self.kind == "action" else ActionQueue(
            n, act_dim, self.horizon, self.queue_mode, self.ensemble_m, self.blend_steps)

    # ---- chunks -------------------------------------------------------------------------------

    def _from_queue(self, x: Any, tick: int) -> tuple[np.ndarray, np.ndarray | None]:
        q = self._queue
        if self.async_inference:
            self._collect(tick)
            if self._pending is None and (tick >= self._next_request or q.remaining(tick).min() <= self.lead):
                self._submit(x, tick)
        else:
            has = q.has(tick)
            if tick >= self._next_request or not has.all():
                t0 = time.perf_counter()
                with self._lock:
                    chunk = self.source.predict(x)
                self._record_chunk(time.perf_counter() - t0)
                envs = None if tick >= self._next_request else ~has
                q.add(chunk, tick, tick, envs=envs)
                self._in_a_row = 0
                self._fresh[slice(None) if envs is None else envs] = False
                if tick >= self._next_request:
                    self._next_request = tick + self.replan
        actions, ok = q.pop(tick)
        if ok.all():
            return actions, None
        dry = ~ok
        cold = int((dry & self._fresh).sum())
        self.counts["cold_start_env_ticks"] += cold
        starved = int(dry.sum()) - cold
        if starved:
            self.counts["starved_env_ticks"] += starved
            self._warn("dry", f"action queue ran dry for {starved} env(s) at tick {tick} "
                       f"({self.counts['starved_env_ticks']} env-ticks so far); last inference "
                       f"{self._last_inference_ms():.1f} ms, budget {self.latency_budget * 1e3:.1f} ms")
        return actions, ok

    def _record_chunk(self, seconds: float) -> None:
        self.counts["chunks"] += 1
        self.inference.add(seconds)
        if self.async_inference and seconds > self.latency_budget:
            self.counts["chunks_over_budget"] += 1
            self._warn("budget", f"inference took {seconds * 1e3:.1f} ms, over the {self.latency_budget * 1e3:.1f} "
                       f"ms budget ({self.counts['chunks_over_budget']} chunks so far); the action queue may run dry")

    def _last_inference_ms(self) -> float:
        v = self.inference.values_us()
        return float(v[(self.inference.count - 1) % len(v)]) / 1e3 if len(v) else float("nan")

    def _warn(self, kind: str, message: str) -> None:
        """Log ``message``, at most once every WARN_EVERY_S seconds per ``kind``."""
        now = time.perf_counter()
        if now - self._warned_at.get(kind, -math.inf) >= WARN_EVERY_S:
            self._warned_at[kind] = now
            log.warning("%s", message)

    # ---- async inference ----------------------------------------------------------------------

    def _submit(self, x: Any, tick: int) -> None:
        snapshot = x.copy() if isinstance(x, np.ndarray) else {g: np.array(v) for g, v in x.items()}
        self._pending = (tick, self._epoch.copy())
        self._next_request = tick + self.replan
        self._requests.append((snapshot, time.perf_counter()))
        self._wake.set()

    def _collect(self, tick: int) -> None:
        if not self._results:
            return
        chunk, seconds, error = self._results.popleft()
        start, epochs = self._pending
        self._pending = None
        if error is not None:
            raise error  # a fault of this tick
        self._record_chunk(seconds)
        same = self._epoch == epochs
        self.counts["chunks_discarded_for_reset"] += int((~same).sum())
        if same.any():
            self._queue.add(chunk, start, tick, envs=same)
            self._fresh &= ~same
        self._in_a_row = 0

    def _worker(self) -> None:
        if self.realtime_inference:
            from policydistill.runtime.loop import INFERENCE_PRIORITY, set_realtime

            self.realtime_inference = set_realtime(INFERENCE_PRIORITY)
        while True:
            self._wake.wait()
            self._wake.clear()
            while self._requests:
                item = self._requests.popleft()
                if item is None:
                    return
                x, submitted = item
                try:
                    with self._lock:
                        chunk = self.source.predict(x)
                    self._results.append((chunk, time.perf_counter() - submitted, None))
                except Exception as e:  # handed to the control thread: a fault there
                    self._results.append((None, time.perf_counter() - submitted, e))

    def close(self) -> None:
        """Stop the background inference thread (if any)."""
        if self._thread is not None:
            self._requests.append(None)
            self._wake.set()
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> Controller:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- statistics ---------------------------------------------------------------------------

    def _describe_source(self) -> str:
        describe = getattr(self.source, "describe", None)
        return describe() if describe else type(self.source).__name__

    def stats(self) -> dict[str, Any]:
        """Counters and latency summaries (microseconds) as a JSON-able dict."""
        out: dict[str, Any] = {"source": self._describe_source(), "kind": self.kind,
                               "inference_mode": "async" if self.async_inference else "sync",
                               "realtime_inference": self.realtime_inference,
                               "fallback": self.fallback, "out_of_bounds": self.out_of_bounds,
                               "max_rate": self.max_rate, "max_jerk": self.max_jerk,
                               "max_consecutive_faults": self.max_consecutive_faults, **self.counts,
                               "first_fault": self.first_fault, "last_fault": self.last_fault,
                               "stopped": self.stopped, "compute": self.compute.summary()}
        if self.monitor is not None:
            out["monitor"] = {"threshold": self.monitor.threshold, "alpha": self.monitor.alpha,
                              "on_alarm": self.on_alarm, "alarms": self.counts["monitor_alarms"],
                              "compute": self.monitor_time.summary()}
        if self.kind == "chunk":
            out.update({"queue": self.queue_mode, "horizon": self.horizon, "n_action_steps": self.replan,
                        "ensemble_m": self.ensemble_m, "blend_steps": self.blend_steps,
                        "latency_budget_ms": self.latency_budget * 1e3, "lead_ticks": self.lead,
                        "stale_dropped": int(self._queue.dropped.sum()) if self._queue is not None else 0,
                        "inference": self.inference.summary()})
        return out

