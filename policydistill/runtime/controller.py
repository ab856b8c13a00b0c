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
  (default: zeros clipped into the action bounds).

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

from policydistill.runtime.action_queue import MODES, ActionQueue
from policydistill.runtime.exported import ExportedPolicy, ObsWindow, reset_mask
from policydistill.runtime.latency import LatencyRecorder
from policydistill.types import select_groups

log = logging.getLogger(__name__)

FALLBACKS = ("hold", "safe")
BACKENDS = ("torch", "torchscript", "onnx")
WARN_EVERY_S = 5.0
perf_counter, isfinite = time.perf_counter, np.isfinite


def _all_finite(a: np.ndarray) -> bool:
    """Whether every value of ``a`` is finite (may say False for huge finite values: callers check rows then).

    A Python sum for small arrays: far cheaper per tick than a numpy ufunc and reduction."""
    return math.isfinite(sum(a.ravel().tolist()) if a.size <= 64 else float(a.sum(dtype=np.float64)))


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
        self.observation_space = getattr(policy, "observation_space", None)
        self.action_space = space = getattr(policy, "action_space", None)
        self.action_low = None if space is None else np.asarray(space.low, np.float32)
        self.action_high = None if space is None else np.asarray(space.high, np.float32)

    def prepare(self, obs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return select_groups(obs, self.groups)

    def predict(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        if self.kind == "chunk":
            return np.asarray(self.policy.predict_chunk(obs, True), dtype=np.float32)
        return np.asarray(self.policy.act(obs, True), dtype=np.float32)

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
    periods); ``safe_action`` (act_dim,): the fallback action of ``fallback="safe"`` and of ``hold``
    before any action; ``realtime_inference``: run the inference thread with SCHED_FIFO, below a
    real-time control loop, so that other processes cannot stall it while it holds the GIL.
    """

    def __init__(self, source: Any, period_s: float, *, queue: str = "replace", ensemble_m: float = 0.0,
                 blend_steps: int = 0, n_action_steps: int | None = None, async_inference: bool = False,
                 latency_budget_s: float | None = None, fallback: str = "hold",
                 safe_action: Any = None, realtime_inference: bool = False) -> None:
        if not period_s > 0:
            raise ValueError(f"control period must be > 0 s, got {period_s}")
        if fallback not in FALLBACKS:
            raise ValueError(f"unknown fallback '{fallback}'; expected one of {list(FALLBACKS)}")
        if queue not in MODES:
            raise ValueError(f"unknown action queue mode '{queue}'; expected one of {list(MODES)}")
        self.source, self.period = source, float(period_s)
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
        self._n: int | None = None
        self._tick = 0
        self._next_request = 0
        self._lock = threading.Lock()
        self.compute = LatencyRecorder()
        self._record = self.compute.add
        self.inference = LatencyRecorder(10_000)
        self.counts = dict.fromkeys(("ticks", "overruns", "missed", "starved_env_ticks", "cold_start_env_ticks",
                                     "nonfinite_env_ticks", "chunks", "chunks_over_budget",
                                     "chunks_discarded_for_reset"), 0)
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
        if self._queue is not None:
            self._queue.clear(mask)
        self._epoch[mask] += 1
        self._fresh[mask] = True
        self._last[mask] = self._safe[mask]

    # ---- the tick -----------------------------------------------------------------------------

    def step(self, obs: Mapping[str, np.ndarray], tick: int | None = None, deadline: float | None = None) -> np.ndarray:
        """The actions of control tick ``tick`` (default: the one after the last): (n, act_dim) float32.

        ``deadline``: a ``time.perf_counter()`` time; an action ready later is replaced by the
        fallback (an overrun).
        """
        t0 = perf_counter()
        tick = self._tick if tick is None else int(tick)
        self._tick = tick + 1
        x = self._prepare(obs)
        if self._window is not None:
            x = self._window.push(x)
        ok = None
        if self._single:
            actions = self._predict(x)
            if self._n is None:
                self._setup(len(actions), actions.shape[1])
            if not _all_finite(actions):
                ok = isfinite(actions).all(axis=1)
                self.counts["nonfinite_env_ticks"] += int((~ok).sum())
                ok = None if ok.all() else ok
        else:
            if self._n is None:
                self._setup(len(x) if isinstance(x, np.ndarray) else len(next(iter(x.values()))))
            actions, ok = self._from_queue(x, tick)
        self.counts["ticks"] += 1
        if ok is not None:
            actions = np.where(ok[:, None], actions, self._fallback_actions()).astype(np.float32)
        if deadline is not None and perf_counter() > deadline:
            self.counts["overruns"] += 1
            actions = self._fallback_actions()
        else:
            self._last = actions
        self._record(perf_counter() - t0)
        return actions

    def skip(self, tick: int) -> np.ndarray:
        """The fallback actions of a tick the loop missed (its planned actions become stale)."""
        self._tick = int(tick) + 1
        self.counts["missed"] += 1
        return self._fallback_actions()

    def _fallback_actions(self) -> np.ndarray:
        return (self._last if self.fallback == "hold" else self._safe).copy()

    def _setup(self, n: int, act_dim: int | None = None) -> None:
        low, high = self.source.action_low, self.source.action_high
        act_dim = int(getattr(self.source, "act_dim", 0) or act_dim or (0 if low is None else len(low)))
        if not act_dim:
            raise ValueError(f"{self._describe_source()}: the action size is unknown (no action_space)")
        if low is None:
            low, high = np.full(act_dim, -np.inf, np.float32), np.full(act_dim, np.inf, np.float32)
        safe = np.zeros(act_dim) if self._safe_given is None else np.asarray(self._safe_given, dtype=np.float64)
        if safe.shape != (act_dim,) or not np.all(np.isfinite(safe)):
            raise ValueError(f"safe_action must be {act_dim} finite numbers, got {self._safe_given}")
        self._n, self.act_dim = n, act_dim
        self._safe = np.repeat(np.clip(safe, low, high).astype(np.float32)[None], n, axis=0)
        self._last = self._safe.copy()
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
                self._fresh[slice(None) if envs is None else envs] = False
                if tick >= self._next_request:
                    self._next_request = tick + self.replan
        actions, ok = q.pop(tick)
        if not _all_finite(actions):
            finite = np.isfinite(actions).all(axis=1)
            self.counts["nonfinite_env_ticks"] += int((ok & ~finite).sum())
            ok = ok & finite
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
            raise RuntimeError(f"background inference failed: {error}") from error
        self._record_chunk(seconds)
        same = self._epoch == epochs
        self.counts["chunks_discarded_for_reset"] += int((~same).sum())
        if same.any():
            self._queue.add(chunk, start, tick, envs=same)
            self._fresh &= ~same

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
                except Exception as e:  # handed to the control thread, which raises it
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
                               "fallback": self.fallback, **self.counts, "compute": self.compute.summary()}
        if self.kind == "chunk":
            out.update({"queue": self.queue_mode, "horizon": self.horizon, "n_action_steps": self.replan,
                        "ensemble_m": self.ensemble_m, "blend_steps": self.blend_steps,
                        "latency_budget_ms": self.latency_budget * 1e3, "lead_ticks": self.lead,
                        "stale_dropped": int(self._queue.dropped.sum()) if self._queue is not None else 0,
                        "inference": self.inference.summary()})
        return out

