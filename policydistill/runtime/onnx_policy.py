"""An exported ONNX policy run by ONNX Runtime: numpy in, numpy out, no torch.

Reads the model and its ``<model>.json`` description (see :mod:`policydistill.runtime.export`).
At run time it needs only ``numpy`` and ``onnxruntime``; gymnasium is imported only when
``observation_space`` / ``action_space`` are asked for as gymnasium spaces.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1


class ExportedModelError(ValueError):
    """An exported model or its description that cannot be run; the message names the file."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _description(path: Path) -> Path:
    """The ``.json`` description of a model path (a ``.json`` path is its own)."""
    return path if path.suffix == ".json" else Path(f"{path}.json")


def read_export_info(path: str | Path) -> dict[str, Any]:
    """The validated description of an exported model (``path``: the model or its ``.json``)."""
    desc = _description(Path(path))
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


class OnnxPolicy:
    """A stateless exported policy as a Policy: ``act({group: (n, dim)}) -> (n, act_dim)`` float32.

    ``path``: the ``.onnx`` model or its ``.json`` description. The groups are concatenated in the
    recorded order into ``obs`` (n, obs_dim) float32 and run in one ONNX Runtime session with
    ``intra_op_threads`` threads (1: run on the caller's thread). ``verify`` checks the model's
    sha256 against the description. The graph is the deterministic path, so ``deterministic=False``
    acts the same.
    """

    def __init__(self, path: str | Path, intra_op_threads: int = 1, inter_op_threads: int = 1,
                 providers: Sequence[str] = ("CPUExecutionProvider",), verify: bool = True) -> None:
        desc = _description(Path(path))
        info = read_export_info(desc)
        model = desc.parent / info["model_file"] if desc == Path(path) else Path(path)
        if info["format"] != "onnx":
            raise ExportedModelError(f"{desc}: format '{info['format']}' is not 'onnx'")
        if info["stateful"] or info.get("state"):
            raise ExportedModelError(f"{desc}: a stateful model (state {info.get('state')}) needs a runtime that "
                                     "carries state between steps; OnnxPolicy runs stateless models only")
        if len(info["inputs"]) != 1 or len(info["outputs"]) != 1:
            raise ExportedModelError(f"{desc}: expected one input and one output, got "
                                     f"{[i.get('name') for i in info['inputs']]} -> "
                                     f"{[o.get('name') for o in info['outputs']]}")
        if not model.is_file():
            raise ExportedModelError(f"{model}: missing")
        if verify and _sha256(model) != info["model_sha256"]:
            raise ExportedModelError(f"{model}: sha256 does not match {desc} (modified model or mismatched pair)")
        self.path, self.info = model, info
        self.groups: tuple[str, ...] = tuple(g["name"] for g in info["groups"])
        self.group_dims: dict[str, int] = {g["name"]: int(g["dim"]) for g in info["groups"]}
        self.obs_dim, self.act_dim = int(info["obs_dim"]), int(info["act_dim"])
        if sum(self.group_dims.values()) != self.obs_dim or len(self.group_dims) != len(self.groups):
            raise ExportedModelError(f"{desc}: groups {info['groups']} do not add up to obs_dim {self.obs_dim}")
        self._input, self._output = info["inputs"][0]["name"], info["outputs"][0]["name"]

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(intra_op_threads)
        opts.inter_op_num_threads = int(inter_op_threads)
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = ort.InferenceSession(str(model), opts, providers=list(providers))
        inputs = {i.name: i.shape for i in self._session.get_inputs()}
        outputs = {o.name: o.shape for o in self._session.get_outputs()}
        if list(inputs) != [self._input] or inputs[self._input][-1] != self.obs_dim \
                or self._output not in outputs or outputs[self._output][-1] != self.act_dim:
            raise ExportedModelError(f"{model}: graph inputs {inputs} / outputs {outputs} do not match {desc} "
                                     f"({self._input} (n, {self.obs_dim}) -> {self._output} (n, {self.act_dim}))")
        self._spaces: tuple[Any, Any] | None = None
        log.debug("loaded %s: %s -> (n, %d)", model, self.group_dims, self.act_dim)

    # ---- Policy protocol ----------------------------------------------------------------------

    def act(self, obs: Mapping[str, np.ndarray], deterministic: bool = True) -> np.ndarray:
        """obs {group: (n, dim)} -> actions float32 (n, act_dim)."""
        return self.run(self.concat(obs))

    def reset(self, env_mask: np.ndarray | None = None) -> None:
        """Stateless (no history, hidden state or action queue): nothing to forget."""

    # ---- parts --------------------------------------------------------------------------------

    def concat(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        """The groups of ``obs`` in reading order: float32 (n, obs_dim); extra groups are ignored."""
        missing = [g for g in self.groups if g not in obs]
        if missing:
            raise KeyError(f"observation lacks groups {missing}; it has {sorted(obs)}")
        parts = [np.asarray(obs[g], dtype=np.float32) for g in self.groups]
        for g, a in zip(self.groups, parts, strict=True):
            if a.ndim != 2 or a.shape[1] != self.group_dims[g] or len(a) != len(parts[0]):
                raise ValueError(f"observation group '{g}' has shape {a.shape}, expected "
                                 f"({len(parts[0])}, {self.group_dims[g]})")
        return np.concatenate(parts, axis=1) if len(parts) > 1 else np.ascontiguousarray(parts[0])

    def run(self, x: np.ndarray) -> np.ndarray:
        """Concatenated observations x (n, obs_dim) -> actions float32 (n, act_dim)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.obs_dim:
            raise ValueError(f"observation has shape {x.shape}, expected (n, {self.obs_dim})")
        return self._session.run([self._output], {self._input: x})[0]

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

    def __repr__(self) -> str:
        return f"OnnxPolicy({str(self.path)!r}, groups={list(self.groups)}, act_dim={self.act_dim})"
