"""Running an export graph with numpy arrays, whatever executes it (ONNX Runtime, TorchScript, torch).

:class:`ExportedPolicy` reads an export description (see :mod:`policydistill.runtime.export`) and
drives ``call(feed) -> outputs`` through the graph contract of :mod:`policydistill.graph`:

- ``state`` inputs are kept per env (zeros after :meth:`ExportedPolicy.reset`) and fed back from
  their paired outputs;
- ``noise`` inputs are drawn from a seeded numpy generator (N(0, 1)) or passed explicitly;
- a denoiser graph runs inside its K-step sampler (:mod:`policydistill.runtime.sampler`);
- a chunk policy conditioned on ``n_obs_steps`` observations gets them from an :class:`ObsWindow`;
- :meth:`ExportedPolicy.act` executes chunks from an :class:`ActionQueue`, ``n_action_steps``
  actions of each, as the torch chunk policies do.

This module imports numpy only; :class:`policydistill.runtime.onnx_policy.OnnxPolicy` adds
onnxruntime, :class:`policydistill.runtime.torch_policy.GraphPolicy` adds torch.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from policydistill.files import file_sha256
from policydistill.keymap import KeyMaps, call_task, groups_from_keys, is_keyed, task_keymap
from policydistill.runtime.action_queue import ActionQueue
from policydistill.runtime.sampler import SamplerSpec
from policydistill.types import TASK, all_finite, check_obs

SCHEMA_VERSION = 2
OBSERVATION = "observation"
"""The input group of a padded multi-task policy's export: a task's own groups at their columns."""
Call = Callable[[dict[str, np.ndarray]], Sequence[np.ndarray]]


class ExportedModelError(ValueError):
    """An exported model or its description that cannot be run; the message names the file."""


def description_path(path: str | Path) -> Path:
    """The ``.json`` description of a model path (a ``.json`` path is its own)."""
    path = Path(path)
    return path if path.suffix == ".json" else Path(f"{path}.json")


def read_export_info(path: str | Path) -> dict[str, Any]:
    """The validated description of an exported model (``path``: the model or its ``.json``)."""
    desc = description_path(path)
    try:
        doc = json.loads(desc.read_text())
    except FileNotFoundError as e:
        raise ExportedModelError(f"{desc}: missing; an exported model needs its description beside it") from e
    except (OSError, ValueError) as e:
        raise ExportedModelError(f"{desc}: not valid JSON ({e})") from e
    if not isinstance(doc, dict):
        raise ExportedModelError(f"{desc}: expected a JSON object, got {type(doc).__name__}")
    version = doc.get("schema_version")
    if not isinstance(version, int) or not 1 <= version <= SCHEMA_VERSION:
        raise ExportedModelError(f"{desc}: schema_version {version!r} is not supported "
                                 f"(this policydistill reads 1..{SCHEMA_VERSION})")
    needed = {"format": str, "model_file": str, "model_sha256": str, "groups": list, "obs_dim": int,
              "act_dim": int, "observation_space": dict, "action_space": dict, "inputs": list, "outputs": list,
              "stateful": bool}
    bad = [k for k, kind in needed.items() if not isinstance(doc.get(k), kind)]
    if bad:
        raise ExportedModelError(f"{desc}: missing or invalid keys {bad}")
    return doc


def model_path(path: str | Path, info: dict[str, Any], fmt: str, verify: bool = True) -> Path:
    """The model file that ``path`` (the model or its ``.json``) names, checked against ``info``."""
    desc = description_path(path)
    model = desc.parent / info["model_file"] if desc == Path(path) else Path(path)
    if info["format"] != fmt:
        raise ExportedModelError(f"{desc}: format '{info['format']}' is not '{fmt}'")
    if not model.is_file():
        raise ExportedModelError(f"{model}: missing")
    if verify and file_sha256(model) != info["model_sha256"]:
        raise ExportedModelError(f"{model}: sha256 does not match {desc} (modified model or mismatched pair)")
    return model


def _bound(value: Any, dim: int) -> np.ndarray:
    """A Box bound as policydistill.spaces writes it (number, "inf" string or flat list) -> (dim,)."""
    values = value if isinstance(value, list) else [value] * dim
    return np.array([float(v) for v in values], dtype=np.float32)


def reset_mask(env_mask: np.ndarray, n: int) -> np.ndarray:
    """``env_mask`` as a bool array (n,); any other shape is an error naming both."""
    mask = np.asarray(env_mask, dtype=bool)
    if mask.shape != (n,):
        raise ValueError(f"reset mask has shape {mask.shape}, expected ({n},)")
    return mask


class ObsWindow:
    """The last ``steps`` observations of every env, oldest first, as one row: (n, steps * dim).

    An env's window is filled with its first observation after a reset (and at the start).
    """

    def __init__(self, steps: int) -> None:
        self.steps = steps
        self._obs: np.ndarray | None = None
        self._fresh: np.ndarray | None = None

    def push(self, x: np.ndarray) -> np.ndarray:
        """Add this tick's observations x (n, dim); returns the windows (n, steps * dim), a new array."""
        if self._obs is None or self._obs.shape[0] != len(x) or self._obs.shape[2] != x.shape[1]:
            self._obs = np.repeat(x[:, None], self.steps, axis=1).astype(np.float32)
            self._fresh = np.zeros(len(x), dtype=bool)
        else:
            self._obs[:, :-1] = self._obs[:, 1:]
            self._obs[:, -1] = x
            if self._fresh.any():
                self._obs[self._fresh] = x[self._fresh, None]
                self._fresh[:] = False
        return self._obs.reshape(len(x), -1).copy()

    def reset(self, env_mask: np.ndarray | None = None) -> None:
        if env_mask is None or self._obs is None:
            self._obs = None
        else:
            self._fresh |= reset_mask(env_mask, len(self._fresh))


class ExportedPolicy:
    """An export graph as a Policy over numpy arrays (see the module docstring).

    ``info``: the export description; ``call(feed)``: runs the graph on ``{input name: array}`` and
    returns its outputs in the description's order; ``call_obs(x)``, optional, the same for a graph
    whose only input is ``obs``, returning the first output (the per-tick fast path). ``seed`` seeds
    the noise generator; ``sampler_steps`` runs a denoiser's sampler with that many steps instead of
    the exported ones.

    Attributes: ``kind`` (``"action"`` or ``"chunk"``), ``groups``, ``obs_dim`` (one tick's groups),
    ``act_dim``, ``horizon``, ``n_action_steps``, ``n_obs_steps``, ``action_low``/``action_high``.
    """

    def __init__(self, info: dict[str, Any], call: Call, seed: int = 0, where: str = "exported policy",
                 sampler_steps: int | None = None, call_obs: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        self.info, self._call, self.where = info, call, where
        ins, outs = info["inputs"], info["outputs"]
        roles_in = {s.get("role") for s in ins}
        if not ins or ins[0].get("role") != "observation" or not outs or \
                outs[0].get("role") not in ("action", "chunk", "prediction"):
            raise ExportedModelError(f"{where}: expected 'obs' first and an action, chunk or prediction output "
                                     f"first, got {[s.get('name') for s in ins]} -> {[s.get('name') for s in outs]}")
        self.groups: tuple[str, ...] = tuple(g["name"] for g in info["groups"])
        self.group_dims: dict[str, int] = {g["name"]: int(g["dim"]) for g in info["groups"]}
        self.obs_keys: KeyMaps | None = info.get("obs_keys")
        self.obs_dim, self.act_dim = sum(self.group_dims.values()), int(info["act_dim"])
        chunk = info.get("chunk") or {}
        self.kind = "action" if outs[0]["role"] == "action" else "chunk"
        self.horizon = int(chunk.get("horizon", 1))
        self.n_action_steps = int(chunk.get("n_action_steps", self.horizon))
        self.n_obs_steps = int(chunk.get("n_obs_steps", 1))
        if self.kind == "chunk" and not chunk:
            raise ExportedModelError(f"{where}: a chunk or denoiser graph needs 'chunk' (horizon, n_action_steps, "
                                     "n_obs_steps) in its description")
        if len(self.group_dims) != len(self.groups) or int(info["obs_dim"]) != self.n_obs_steps * self.obs_dim:
            raise ExportedModelError(f"{where}: groups {info['groups']} x n_obs_steps {self.n_obs_steps} do not "
                                     f"add up to obs_dim {info['obs_dim']}")
        space = info["action_space"]
        self.action_low = _bound(space.get("low"), self.act_dim)
        self.action_high = _bound(space.get("high"), self.act_dim)

        self._obs_name = ins[0]["name"]
        out_index = {s["name"]: i for i, s in enumerate(outs)}
        shapes = {s["name"]: tuple(s["shape"][1:]) for s in ins}
        pairs = [(p["input"], p["output"]) for p in info.get("state") or []]
        if info["stateful"] != bool(pairs) or any(i not in shapes or o not in out_index for i, o in pairs) or \
                {i for i, _ in pairs} != {s["name"] for s in ins if s["role"] == "state"}:
            raise ExportedModelError(f"{where}: 'stateful' {info['stateful']} and state pairs {pairs} do not match "
                                     f"the graph's state inputs/outputs")
        self._pairs = [(i, out_index[o], shapes[i]) for i, o in pairs]
        self._noise = [(s["name"], shapes[s["name"]]) for s in ins if s["role"] == "noise"]
        self.sampler: SamplerSpec | None = None
        if outs[0]["role"] == "prediction":
            if not {"sample", "timestep"} <= roles_in or not info.get("sampler") or self._pairs:
                raise ExportedModelError(f"{where}: a denoiser graph needs 'sample' and 'timestep' inputs, a "
                                         "'sampler' description and no state")
            try:
                self.sampler = SamplerSpec.from_json(info["sampler"])
            except (TypeError, ValueError) as e:
                raise ExportedModelError(f"{where}: {e}") from e
            if sampler_steps is not None:
                self.sampler = self.sampler.with_steps(sampler_steps)
            self._sample_name = next(s["name"] for s in ins if s["role"] == "sample")
            self._timestep_name = next(s["name"] for s in ins if s["role"] == "timestep")
        self._plain = not self._pairs and not self._noise and self.sampler is None and len(ins) == 1
        obs_name = self._obs_name
        self._call_obs = call_obs or (lambda x: call({obs_name: x})[0])
        self.rng = np.random.default_rng(seed)
        self._state: dict[str, np.ndarray] | None = None
        self._window = ObsWindow(self.n_obs_steps) if self.n_obs_steps > 1 else None
        self._queue: ActionQueue | None = None
        self._tick = 0
        self._spaces: tuple[Any, Any] | None = None
        self._x: np.ndarray | None = None
        self._columns: list[tuple[str, tuple[int, ...], np.ndarray]] = []  # (group, its shape, its columns of _x)

    @property
    def stateful(self) -> bool:
        return bool(self._pairs)

    # ---- one graph evaluation ----------------------------------------------------------------

    def predict(self, x: np.ndarray, noise: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        """The graph's first output for its obs input x (n, n_obs_steps * obs_dim) float32.

        Returns actions (n, act_dim) or a chunk (n, horizon, act_dim) in the action space. State is
        carried per env; ``noise`` {input name: array} replaces the drawn noise (for a denoiser,
        ``"sample"`` is the sampler's initial x).
        """
        if self._plain:
            return self._call_obs(x)
        n = len(x)
        if self.sampler is not None:
            return self._sample(x, noise or {})
        feed = {self._obs_name: x}
        if self._pairs:
            if self._state is None or len(next(iter(self._state.values()))) != n:
                if self._state is not None:
                    raise ValueError(f"{self.where}: batch size changed from "
                                     f"{len(next(iter(self._state.values())))} to {n}; reset() first")
                self._state = {name: np.zeros((n, *shape), np.float32) for name, _, shape in self._pairs}
            feed.update(self._state)
        for name, shape in self._noise:
            feed[name] = self._noise_for(name, (n, *shape), noise)
        out = self._call(feed)
        if self._pairs:
            self._state = {name: np.asarray(out[k], np.float32) for name, k, _ in self._pairs}
        return out[0]

    def _noise_for(self, name: str, shape: tuple[int, ...], noise: Mapping[str, np.ndarray] | None) -> np.ndarray:
        if noise is not None and name in noise:
            given = np.ascontiguousarray(noise[name], dtype=np.float32)
            if given.shape != shape:
                raise ValueError(f"{self.where}: noise '{name}' has shape {given.shape}, expected {shape}")
            return given
        return self.rng.standard_normal(shape, dtype=np.float32)

    def _sample(self, x: np.ndarray, noise: Mapping[str, np.ndarray]) -> np.ndarray:
        """The K-step sampler loop around the denoiser: chunk (n, horizon, act_dim)."""
        spec, n = self.sampler, len(x)
        shape = (n, self.horizon, self.act_dim)
        sample = self._noise_for("sample", shape, noise)
        feed = {self._obs_name: x, **{name: self._noise_for(name, (n, *s), noise) for name, s in self._noise}}
        for i, t in enumerate(spec.timesteps):
            feed[self._sample_name] = sample
            feed[self._timestep_name] = np.full((n, 1), t, np.float32)
            z = self.rng.standard_normal(shape, dtype=np.float32) if spec.stochastic else None
            sample = spec.step(i, sample, self._call(feed)[0], z).astype(np.float32, copy=False)
        return spec.postprocess(sample)

    # ---- Policy protocol --------------------------------------------------------------------

    def prepare(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        """The groups of ``obs`` in reading order: float32 (n, obs_dim); extra groups are ignored.

        A policy that records its env's key map (``obs_keys``) also takes the env's own Dict {key: (n, *shape)}
        (see :func:`~policydistill.keymap.groups_from_keys`). A missing group is a KeyError; None, a wrong
        shape or a non-finite value a ValueError naming the group (:func:`check_obs`). The result is written
        into a buffer that the next call overwrites (copy it to keep it).
        """
        try:  # the per-tick path: every group of the batch shape checked last time, copied into its columns
            for group, shape, columns in self._columns:
                part = obs[group]
                if part.shape != shape:
                    break
                columns[...] = part
            else:
                if self._columns and all_finite(self._x):
                    return self._x
        except (KeyError, TypeError, AttributeError, IndexError, ValueError):
            pass
        return self._prepare_checked(obs)

    def _prepare_checked(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        """:meth:`prepare` with every check (a new batch shape, env keys, an error naming what is wrong)."""
        try:
            parts = [obs[g] for g in self.groups]
            shapes = [a.shape for a in parts]
        except (KeyError, TypeError, AttributeError, IndexError):
            if is_keyed(obs, self.obs_keys, self.groups):
                return self.prepare(self._from_keys(obs))
            check_obs(obs, self.groups, self.group_dims)  # raises the error naming the group
            raise
        if is_keyed(obs, self.obs_keys, self.groups):  # an env key named like a group
            return self.prepare(self._from_keys(obs))
        check_obs(obs, self.groups, self.group_dims)
        n = len(parts[0])
        for g, shape in zip(self.groups, shapes, strict=True):
            if shape != (n, self.group_dims[g]):
                raise ValueError(f"observation group '{g}' has shape {shape}, expected ({n}, "
                                 f"{self.group_dims[g]}): every group one row per env")
        self._x = x = np.empty((n, self.obs_dim), np.float32)
        ends = np.cumsum([self.group_dims[g] for g in self.groups]).tolist()
        self._columns = [(g, shape, x[:, end - self.group_dims[g]:end])
                         for g, shape, end in zip(self.groups, shapes, ends, strict=True)]
        np.concatenate(parts, axis=1, out=x, casting="unsafe")
        return x

    def _from_keys(self, obs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The groups of the env's own Dict ``obs`` (see :mod:`policydistill.keymap`). A padded multi-task policy
        (``tasks`` in its description) reads ``task`` and ``observation``: the task's groups at their columns,
        zeros elsewhere."""
        keymap, task = task_keymap(obs, self.obs_keys)
        layout = self.info.get("tasks")
        if layout is None:
            return groups_from_keys(obs, keymap, self.groups, self.group_dims)
        n_tasks = self.group_dims[TASK]
        columns = layout[call_task(obs, n_tasks) if task is None else task]["columns"]
        own = tuple(g for g in columns if g != TASK)
        groups = groups_from_keys(obs, keymap, (*own, TASK), {**{g: columns[g][1] for g in own}, TASK: n_tasks})
        x = np.zeros((len(groups[TASK]), self.group_dims[OBSERVATION]), np.float32)
        for g in own:
            start, dim = columns[g][0] - n_tasks, columns[g][1]
            x[:, start:start + dim] = groups[g]
        return {TASK: groups[TASK], OBSERVATION: x}

    def act(self, obs: Mapping[str, np.ndarray], deterministic: bool = True) -> np.ndarray:
        """obs {group: (n, dim)} -> actions float32 (n, act_dim).

        A chunk policy computes a chunk for the envs whose queue is empty and executes its first
        ``n_action_steps`` actions over the next ticks. The graph is the exported path, so
        ``deterministic`` does not change it (noise, where the graph takes some, is always drawn).
        """
        x = self.prepare(obs)
        if self._window is not None:
            x = self._window.push(x)
        if self.kind == "action":
            return self.predict(x)
        n = len(x)
        if self._queue is None or self._queue.n_envs != n:
            self._queue = ActionQueue(n, self.act_dim, self.horizon)
        tick, self._tick = self._tick, self._tick + 1
        empty = ~self._queue.has(tick)  # nothing planned for this tick
        if empty.any():
            chunk = self.predict(x)
            self._queue.add(chunk[:, :self.n_action_steps], tick, tick, envs=empty)
        return self._queue.pop(tick)[0]

    def reset(self, env_mask: np.ndarray | None = None) -> None:
        """Zero the state and forget the observation window and queued actions of the envs in
        ``env_mask`` (n,) bool, or of all envs."""
        if env_mask is None:
            self._state, self._queue = None, None
        else:
            sizes = [len(v) for v in (self._state or {}).values()][:1] or \
                ([self._queue.n_envs] if self._queue is not None else [])
            if sizes:  # nothing is kept before the first act(): nothing to check or clear
                mask = reset_mask(env_mask, sizes[0])
                for v in (self._state or {}).values():
                    v[mask] = 0.0
                if self._queue is not None:
                    self._queue.clear(mask)
        if self._window is not None:
            self._window.reset(env_mask)

    def reseed(self, seed: int) -> None:
        """Restart the noise generator from ``seed``."""
        self.rng = np.random.default_rng(seed)

    # ---- spaces -------------------------------------------------------------------------------

    @property
    def observation_spec(self) -> dict[str, Any]:
        """The observation groups' space as JSON (a Dict of Boxes, as ``policydistill.spaces`` writes it)."""
        return self.info["observation_space"]

    @property
    def action_spec(self) -> dict[str, Any]:
        """The action space as JSON (a Box, as ``policydistill.spaces`` writes it)."""
        return self.info["action_space"]

    def _gym_spaces(self) -> tuple[Any, Any]:
        if self._spaces is None:
            from policydistill.spaces import space_from_json

            self._spaces = (space_from_json(self.observation_spec), space_from_json(self.action_spec))
        return self._spaces

    @property
    def observation_space(self) -> Any:
        """The observation groups as a gymnasium Dict (imports gymnasium on first use)."""
        return self._gym_spaces()[0]

    @property
    def action_space(self) -> Any:
        """The action space as a gymnasium Box (imports gymnasium on first use)."""
        return self._gym_spaces()[1]

    def describe(self) -> str:
        parts = [f"groups={list(self.groups)}", f"act_dim={self.act_dim}", f"kind={self.kind}"]
        if self.kind == "chunk":
            parts.append(f"horizon={self.horizon}, n_action_steps={self.n_action_steps}, "
                         f"n_obs_steps={self.n_obs_steps}")
        if self.stateful:
            parts.append(f"state={[name for name, _, _ in self._pairs]}")
        if self.sampler is not None:
            parts.append(f"sampler={self.sampler.kind}x{self.sampler.steps}")
        return ", ".join(parts)

