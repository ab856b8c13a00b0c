"""Export a policy's deterministic path to TorchScript or ONNX, with a JSON description beside it.

Any policy class with ``export_graph()`` (see :mod:`policydistill.graph`) can be exported:
the graph maps ``obs`` (n, obs_dim) float32, the concatenated observation groups with n dynamic, plus
any ``state`` and ``noise`` inputs, to the ``action`` (n, act_dim) or ``chunk`` (n, horizon, act_dim)
in the env's action space, and the next ``state``: normalisation and action post-processing are
inside it. ``<out>.json`` (written atomically after the model) describes it::

    schema_version, format, model_file, model_sha256,
    groups: [{name, dim, start}, ...]   (reading order, slice of obs)
    obs_dim, act_dim, observation_space, action_space   (spaces as in policydistill.spaces)
    inputs / outputs: [{name, role, shape, dtype}, ...]   (shape entries: int or "n")
    stateful, state: [{input, output, shape, init}, ...]   (empty for stateless policies)
    deterministic   (false when the graph takes noise or runs in a sampler)
    chunk: {horizon, n_action_steps, n_obs_steps} | null   (chunk policies and denoisers)
    sampler: SamplerSpec JSON | null   (the K-step loop around a denoiser graph)
    source: {bundle, policy_class, weights_sha256, control_period}, policy_config,
    exporter, versions
    tasks: [{task, columns: {group: [start, dim]}, act_dim, action_low, action_high}, ...]
        (a student padded over tasks with different spaces only, see below)
    monitor: {folder, sha256: {file: sha256}} | absent   (the bundle's failure monitor, copied to
        <out>.monitor/; see policydistill.runtime.monitor)

``state`` pairs a graph input with the graph output that feeds it at the next step (history or
recurrent students); it starts at ``init`` (0) after a reset. A student padded over tasks with different
spaces (:class:`~policydistill.models.generalist.GeneralistPolicy`) takes the task one-hot and the task's
own observation: ``groups`` are ``task`` and ``observation`` (its groups but ``task``, zero-filled to the
widest task's), ``tasks`` says where each task's groups sit, and the ``action`` holds the task's own
action in its first ``act_dim`` entries. Schema 2 added ``chunk`` and
``sampler``. Run exported models with :class:`policydistill.runtime.onnx_policy.OnnxPolicy` (numpy
and onnxruntime only) or :class:`policydistill.runtime.torch_policy.GraphPolicy` (TorchScript).
"""

from __future__ import annotations

import copy
import logging
import shutil
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from policydistill.bundle import POLICY_CLASSES, library_versions, load_bundle, policy_class, read_bundle_info
from policydistill.configs import require_choice, require_int
from policydistill.files import atomic_write_json, atomic_write_with, file_sha256
from policydistill.graph import ExportGraph
from policydistill.runtime.exported import OBSERVATION, SCHEMA_VERSION
from policydistill.runtime.monitor import EXPORTED, SETTINGS, file_hashes, load_monitor
from policydistill.spaces import space_to_json
from policydistill.types import TASK

log = logging.getLogger(__name__)

FORMATS = ("torchscript", "onnx")
MIN_OPSET, MAX_OPSET = 7, 20
"""The ONNX opsets torch's TorchScript-based exporter writes."""
BATCH = "n"
DEFAULT_OPSET = 17
TOLERANCE = {"torchscript": 1e-5, "onnx": 1e-4}
"""Largest |exported - torch| action difference accepted by the check after export."""

_QUIET = (r".*legacy TorchScript-based ONNX export.*", r".*torch\.jit\.\w+` is deprecated.*",
          r".*The feature will be removed.*")


@dataclass
class ExportConfig:
    """``policydistill export``: a bundle's policy (normalisation and post-processing inside) to ``format`` at
    ``out``, checked against the torch policy unless ``check=false``."""

    policy: str = "???"
    format: str = "onnx"
    out: str = "???"
    opset: int = 17
    check: bool = True

    def __post_init__(self) -> None:
        require_choice("format", self.format, FORMATS)
        require_int("opset", self.opset, MIN_OPSET)
        if self.opset > MAX_OPSET:
            raise ValueError(f"opset must be an int in [{MIN_OPSET}, {MAX_OPSET}] (what torch's ONNX exporter "
                             f"writes), got {self.opset}")


class ExportError(ValueError):
    """A policy or request that cannot be exported; the message says what is supported."""


def sidecar_path(out: str | Path) -> Path:
    """The JSON description written beside an exported model: ``<out>.json``."""
    return Path(f"{out}.json")




def _versions() -> dict[str, str | None]:
    out = library_versions()
    for dist in ("onnx", "onnxruntime"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def exportable_classes() -> list[str]:
    """Names of the allow-listed bundle policy classes that implement ``export_graph``."""
    return sorted(name for name in POLICY_CLASSES if hasattr(policy_class(name), "export_graph"))


def _resolve(source: Any) -> tuple[Any, dict[str, Any]]:
    """The policy to export and where it came from."""
    if isinstance(source, (str, Path)):
        info = read_bundle_info(source)
        if info["policy_class"] not in POLICY_CLASSES or info["policy_class"] not in exportable_classes():
            raise ExportError(f"cannot export bundle {source}: policy class '{info['policy_class']}' is not "
                              f"supported; supported policy classes are {exportable_classes()}")
        policy = load_bundle(source, device="cpu")
        return policy, {"bundle": str(source), "policy_class": info["policy_class"],
                        "weights_sha256": info["weights"]["sha256"], "control_period": info.get("control_period")}
    if not hasattr(source, "export_graph"):
        raise ExportError(f"cannot export a {type(source).__name__}: supported policy classes are "
                          f"{exportable_classes()} (an instance or a bundle directory)")
    return source, {"bundle": None, "policy_class": type(source).__name__, "weights_sha256": None,
                    "control_period": None}


def _export_torchscript(graph: ExportGraph, path: Path) -> dict[str, Any]:
    traced = torch.jit.trace(graph.module, graph.example_inputs(4, seed=1),
                             check_inputs=[graph.example_inputs(1, seed=2)])
    torch.jit.save(traced, str(path))
    return {"name": "torch.jit.trace"}


def _export_onnx(graph: ExportGraph, path: Path, opset: int) -> dict[str, Any]:
    import onnx

    names_in, names_out = [s.name for s in graph.inputs], [s.name for s in graph.outputs]
    torch.onnx.export(graph.module, graph.example_inputs(4, seed=1), str(path), dynamo=False,
                      opset_version=opset, input_names=names_in, output_names=names_out, do_constant_folding=True,
                      dynamic_axes={name: {0: BATCH} for name in (*names_in, *names_out)})
    onnx.checker.check_model(str(path))
    return {"name": "torch.onnx.export(dynamo=False)", "opset": opset}


def _run_exported(fmt: str, graph: ExportGraph, path: Path, inputs: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
    if fmt == "torchscript":
        loaded = torch.jit.load(str(path), map_location="cpu")
        with torch.inference_mode():
            out = loaded(*inputs)
        return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feed = {s.name: x.numpy() for s, x in zip(graph.inputs, inputs, strict=True)}
    return session.run([s.name for s in graph.outputs], feed)


def _check(fmt: str, graph: ExportGraph, path: Path) -> float:
    """Largest |exported - torch| output difference on batches of 1 and 33; raise above the tolerance."""
    worst = 0.0
    for n, seed in ((1, 3), (33, 4)):
        inputs = graph.example_inputs(n, seed)
        want = [t.numpy() for t in graph.run(*inputs)]
        got = _run_exported(fmt, graph, path, inputs)
        for spec, w, g in zip(graph.outputs, want, got, strict=True):
            if g.shape != w.shape:
                raise ExportError(f"exported {fmt} model returns '{spec.name}' of shape {g.shape} for batch {n}, "
                                  f"expected {w.shape}")
            worst = max(worst, float(np.max(np.abs(g - w))))
    if not worst <= TOLERANCE[fmt]:
        raise ExportError(f"exported {fmt} model differs from the torch policy by {worst:.3g} "
                          f"(tolerance {TOLERANCE[fmt]:g})")
    return worst


def describe_graph(policy: Any, graph: ExportGraph) -> dict[str, Any]:
    """The file-independent part of the export description of ``policy``'s ``graph`` (see module doc).

    Also what :class:`policydistill.runtime.torch_policy.GraphPolicy` runs an in-memory graph from.
    """
    keyed = {"obs_keys": policy.obs_keys} if getattr(policy, "obs_keys", None) is not None else {}
    layout = policy.export_layout() if hasattr(policy, "export_layout") else None
    if layout is not None:
        return {**keyed, **_describe_padded(policy, graph, layout)}
    groups, start = [], 0
    for name in policy.groups:
        dim = int(policy.observation_space[name].shape[0])
        groups.append({"name": name, "dim": dim, "start": start})
        start += dim
    first = graph.outputs[0]
    chunk = None
    if first.role in ("chunk", "prediction"):
        horizon = int(first.shape[0])
        chunk = {"horizon": horizon, "n_action_steps": int(getattr(policy, "n_action_steps", None) or horizon),
                 "n_obs_steps": int(getattr(policy, "n_obs_steps", None) or 1)}
        if not 1 <= chunk["n_action_steps"] <= horizon or chunk["n_obs_steps"] < 1:
            raise ExportError(f"chunk policy has n_action_steps {chunk['n_action_steps']} and n_obs_steps "
                              f"{chunk['n_obs_steps']}; expected 1 <= n_action_steps <= horizon ({horizon}) and "
                              "n_obs_steps >= 1")
    n_obs_steps = chunk["n_obs_steps"] if chunk else 1
    if graph.inputs[0].shape[0] != n_obs_steps * start:
        raise ExportError(f"the graph's obs input has {graph.inputs[0].shape[0]} features; expected n_obs_steps "
                          f"({n_obs_steps}) x the groups' {start}")
    sampler = None
    if graph.sampler is not None:
        from policydistill.runtime.sampler import SamplerSpec

        try:
            sampler = SamplerSpec.from_json(graph.sampler).to_json()
        except (TypeError, ValueError) as e:
            raise ExportError(f"the denoiser graph's sampler is invalid: {e}") from e
    specs = {s.name: s for s in graph.inputs}
    return {
        **keyed, "schema_version": SCHEMA_VERSION, "groups": groups, "obs_dim": graph.inputs[0].shape[0],
        "act_dim": first.shape[-1],
        "observation_space": space_to_json(policy.observation_space),
        "action_space": space_to_json(policy.action_space),
        "inputs": [s.to_json() for s in graph.inputs], "outputs": [s.to_json() for s in graph.outputs],
        "stateful": graph.stateful,
        "state": [{"input": i, "output": o, "shape": [BATCH, *specs[i].shape], "init": 0.0} for i, o in graph.state],
        "deterministic": not any(s.role == "noise" for s in graph.inputs) and sampler is None,
        "chunk": chunk, "sampler": sampler, "policy_config": policy.config(),
    }


def _describe_padded(policy: Any, graph: ExportGraph, layout: list[dict[str, Any]]) -> dict[str, Any]:
    """The description of a padded multi-task student's graph (:class:`~policydistill.models.generalist.TaskInput`):
    ``groups`` are ``task`` (the one-hot) and ``observation`` (the task's own groups but ``task``, concatenated
    and zero-filled to the widest), ``tasks`` where each task's groups sit in ``obs`` and its action dims and
    bounds; the ``action`` holds the task's own action in its first ``act_dim`` entries."""
    from gymnasium import spaces

    n_tasks, obs_dim, act_dim = len(layout), graph.inputs[0].shape[0], graph.outputs[0].shape[0]
    groups = [{"name": TASK, "dim": n_tasks, "start": 0},
              {"name": OBSERVATION, "dim": obs_dim - n_tasks, "start": n_tasks}]
    low, high = np.zeros(act_dim, np.float32), np.zeros(act_dim, np.float32)
    for t in layout:
        low[:t["act_dim"]] = np.minimum(low[:t["act_dim"]], t["action_low"])
        high[:t["act_dim"]] = np.maximum(high[:t["act_dim"]], t["action_high"])
    observation = spaces.Dict({TASK: spaces.Box(0.0, 1.0, (n_tasks,), np.float32),
                               OBSERVATION: spaces.Box(-np.inf, np.inf, (obs_dim - n_tasks,), np.float32)})
    return {
        "schema_version": SCHEMA_VERSION, "groups": groups, "obs_dim": obs_dim, "act_dim": act_dim,
        "observation_space": space_to_json(observation), "action_space": space_to_json(spaces.Box(low, high)),
        "inputs": [s.to_json() for s in graph.inputs], "outputs": [s.to_json() for s in graph.outputs],
        "stateful": False, "state": [], "deterministic": True, "chunk": None, "sampler": None,
        "tasks": layout, "policy_config": policy.config(),
    }


def _describe(fmt: str, description: dict[str, Any], out: Path, source: dict[str, Any],
              exporter: dict[str, Any]) -> dict[str, Any]:
    return {**description, "format": fmt, "model_file": out.name, "model_sha256": file_sha256(out),
            "source": source, "exporter": exporter, "versions": _versions()}


def _export_monitor(bundle: str | None, out: Path) -> dict[str, Any] | None:
    """Copy the bundle's failure monitor to ``<out>.monitor/`` (a stale one there is removed): its entry of
    ``<out>.json``, or None when the bundle has none."""
    folder = Path(f"{out}{EXPORTED}")
    if folder.is_dir():
        shutil.rmtree(folder)
    if bundle is None or not (Path(bundle) / SETTINGS).is_file():
        return None
    monitor = load_monitor(bundle)
    return {"folder": folder.name, "sha256": file_hashes(monitor.save(folder))}


def export_policy(source: Any, format: str, out: str | Path, *, opset: int = DEFAULT_OPSET,
                  check: bool = True) -> Path:
    """Export the ``export_graph()`` of a policy (instance or bundle directory) to ``out``.

    ``format``: ``"torchscript"`` (``torch.jit.trace``) or ``"onnx"`` (the TorchScript-based
    ``torch.onnx.export``, needing ``onnx``; ``opset`` is the ONNX opset). With ``check``, the
    exported model is reloaded (ONNX with ``onnxruntime``) and compared with the torch module on
    example inputs before it replaces ``out``. Writes ``out`` and ``<out>.json`` atomically (and the
    bundle's failure monitor to ``<out>.monitor/``) and returns ``out``.
    """
    if format not in FORMATS:
        raise ExportError(f"unknown export format '{format}'; expected one of {list(FORMATS)}")
    out = Path(out)
    if out.is_dir():
        raise ExportError(f"out '{out}' is a directory; expected the path of the model file to write, such as "
                          f"'{out / ('policy.onnx' if format == 'onnx' else 'policy.pt')}'")
    policy, origin = _resolve(source)
    policy = copy.deepcopy(policy).to(device="cpu", dtype=torch.float32).eval().requires_grad_(False)
    graph = policy.export_graph()
    description = describe_graph(policy, graph)

    exporter: dict[str, Any] = {}

    def write(path: Path) -> None:
        if format == "torchscript":
            exporter.update(_export_torchscript(graph, path))
        else:
            exporter.update(_export_onnx(graph, path, opset))
        if check:
            exporter["check_max_abs_diff"] = _check(format, graph, path)

    with warnings.catch_warnings():
        for pattern in _QUIET:
            warnings.filterwarnings("ignore", message=pattern)
        atomic_write_with(out, write)
    exporter["torch"] = torch.__version__
    described = _describe(format, description, out, origin, exporter)
    monitor = _export_monitor(origin["bundle"], out)
    if monitor is not None:
        described["monitor"] = monitor
    atomic_write_json(sidecar_path(out), described)
    log.info("exported %s (%s) to %s (%s)", origin["bundle"] or origin["policy_class"], origin["policy_class"], out,
             format)
    return out
