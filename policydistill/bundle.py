"""Policy bundles: a directory with ``policy.json`` and ``model.safetensors``; never pickled.

``policy.json`` holds the schema version, the policy class (from the allow-list
:data:`POLICY_CLASSES`), its config (spaces, observation groups in reading order, normalisation,
action post-processing), the control period, the caller's meta (training config, ...), the library
versions, the sha256 of ``model.safetensors`` and ``bundle_sha256``: the sha256 of the rest of
``policy.json`` as canonical JSON (sorted keys, no spaces, ASCII), which holds the weights' hash, so
one hash covers the whole bundle. Schema 1 bundles (no ``bundle_sha256``) still load, with a warning.
A policy acting on an env's own Dict records its key map, or one per task (``obs_keys``, see
:mod:`policydistill.keymap`).
A bundle may also hold the policy's failure monitor (``monitor.npz``, ``monitor.json``; their sha256 under
``monitor`` in ``policy.json``, see :mod:`policydistill.runtime.monitor`).

A load verifies both hashes, reads the shapes in the safetensors header, builds the policy under an
element budget (twice the header's element count plus 4M) so a config asking for more refuses before
allocating it, compares the built shapes with the header and only then reads the tensors.

A save builds the bundle in a sibling temp dir, fsyncs it, renames an existing bundle aside
(``.<name>.old``), renames the new one in and removes the old one; a kill at any moment leaves the
complete old bundle or the complete new one (a load finding only the aside copy restores it).
One writer per bundle path at a time.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import logging
import math
import os
import platform
import shutil
import uuid
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol, TypeVar, overload

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch.overrides import TorchFunctionMode

import policydistill
from policydistill.files import file_mode, file_sha256
from policydistill.keymap import KeyMaps
from policydistill.runtime.monitor import FILES as MONITOR_FILES
from policydistill.runtime.monitor import FailureMonitor, file_hashes

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
BUNDLE_HASH = "bundle_sha256"
POLICY_JSON = "policy.json"
WEIGHTS = "model.safetensors"
_BUNDLE_FILES = {POLICY_JSON, WEIGHTS, *MONITOR_FILES}
_ASIDE = ".old"
_TMP = ".tmp-"

POLICY_CLASSES: dict[str, type | str] = {
    "MLPPolicy": "policydistill.models.mlp:MLPPolicy",
    "GeneralistPolicy": "policydistill.models.generalist:GeneralistPolicy",
    "DiffusionPolicy": "policydistill.models.diffusion:DiffusionPolicy",
    "OneStepPolicy": "policydistill.models.onestep:OneStepPolicy",
    "HistoryPolicy": "policydistill.models.history:HistoryPolicy",
}
"""Allow-list of policy classes a bundle may name: a class, or ``"module:Class"`` imported on first use."""


class BundleError(ValueError):
    """A bundle that cannot be saved or loaded; the message names the file and the problem."""


class BundlePolicy(Protocol):
    """What a policy class needs to be saved as a bundle (``torch.nn.Module`` gives the state dict)."""

    groups: tuple[str, ...]

    def config(self) -> dict[str, Any]: ...

    @classmethod
    def from_config(cls, cfg: dict[str, Any], device: str | torch.device = "cpu") -> BundlePolicy: ...

    def state_dict(self) -> dict[str, torch.Tensor]: ...

    def load_state_dict(self, state_dict: dict[str, torch.Tensor], strict: bool = True) -> Any: ...


T = TypeVar("T", bound=type)


@overload
def register_policy_class(cls: T, name: str | None = None) -> T: ...


@overload
def register_policy_class(cls: str, name: str | None = None) -> str: ...


def register_policy_class(cls: T | str, name: str | None = None) -> T | str:
    """Add a class (usable as a decorator) or a lazy ``"module:Class"`` to :data:`POLICY_CLASSES`."""
    if isinstance(cls, str):
        key = name or cls.rpartition(":")[2]
    else:
        needed = ("config", "from_config", "state_dict", "load_state_dict")
        missing = [m for m in needed if not hasattr(cls, m)]
        if missing:
            raise TypeError(f"{cls.__name__} cannot be bundled: it lacks {missing}")
        key = name or cls.__name__
    POLICY_CLASSES[key] = cls
    return cls


def policy_class(name: str) -> type:
    """The allow-listed class called ``name``."""
    entry = POLICY_CLASSES.get(name)
    if entry is None:
        raise BundleError(f"unknown policy class '{name}'; allowed: {sorted(POLICY_CLASSES)}")
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        entry = getattr(importlib.import_module(module), attr)
        POLICY_CLASSES[name] = entry
    return entry


def _class_name(policy: Any) -> str:
    for name in list(POLICY_CLASSES):
        if policy_class(name) is type(policy):
            return name
    raise BundleError(f"cannot save a {type(policy).__name__}: it is not in the allow-list "
                      f"{sorted(POLICY_CLASSES)} (add it with register_policy_class)")


def library_versions() -> dict[str, str | None]:
    """Versions of python and the libraries a bundle depends on (None when not installed)."""
    return dict(_versions())


@functools.cache
def _versions() -> tuple[tuple[str, str | None], ...]:
    """:func:`library_versions`, read once per process (reading package metadata costs milliseconds a call)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for dist in ("torch", "numpy", "gymnasium", "stable-baselines3", "safetensors"):
        try:
            out[dist.replace("-", "_")] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist.replace("-", "_")] = None
    out["policydistill"] = policydistill.__version__
    return tuple(out.items())


def bundle_sha256(doc: dict[str, Any]) -> str:
    """The sha256 of ``policy.json``'s content without :data:`BUNDLE_HASH`, as canonical JSON."""
    rest = {k: v for k, v in doc.items() if k != BUNDLE_HASH}
    text = json.dumps(rest, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _non_finite(tensors: dict[str, torch.Tensor]) -> list[str]:
    return [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def _aside(path: Path) -> Path:
    return path.parent / f".{path.name}{_ASIDE}"


def _recover(path: Path) -> None:
    """Restore the old bundle if a save was killed between renaming it aside and renaming the new one in."""
    aside = _aside(path)
    if not path.exists() and (aside / POLICY_JSON).is_file():
        os.rename(aside, path)
        log.warning("restored bundle %s from %s left by an interrupted save", path, aside)


def is_bundle(path: str | Path) -> bool:
    """True if ``path`` is a bundle directory (or one an interrupted save left recoverable)."""
    path = Path(path)
    return (path / POLICY_JSON).is_file() or (not path.exists() and (_aside(path) / POLICY_JSON).is_file())


def save_bundle(policy: Any, path: str | Path, meta: dict[str, Any] | None = None,
                monitor: FailureMonitor | None = None, obs_keys: KeyMaps | None = None) -> Path:
    """Write ``policy`` as a bundle at ``path`` atomically, replacing an existing bundle there (and the
    monitor it held: a monitor belongs to the policy it was calibrated on).

    ``meta["control_period"]`` (seconds) is stored at the top level; the rest of ``meta`` (training
    config, task, ...) under ``"meta"``. Non-finite weights or non-JSON meta are refused. ``monitor``: the
    policy's failure monitor, stored with it. ``obs_keys``: the key map of the env whose own Dict the policy
    acts on (see :mod:`policydistill.keymap`; default: the policy's ``obs_keys``, which a load sets).
    """
    path = Path(path)
    name = _class_name(policy)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in policy.state_dict().items()}
    bad = _non_finite(tensors)
    if bad:
        raise BundleError(f"refusing to save {path}: non-finite values in tensors {bad}")
    meta = dict(meta or {})
    control_period = meta.pop("control_period", None)
    doc: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "policy_class": name, "groups": list(policy.groups),
        "config": policy.config(), "control_period": control_period, "meta": meta,
        "versions": library_versions(), "weights": {"file": WEIGHTS, "sha256": ""},
    }
    obs_keys = obs_keys if obs_keys is not None else getattr(policy, "obs_keys", None)
    if obs_keys is not None:
        doc["obs_keys"] = obs_keys
    try:
        json.dumps(doc, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise BundleError(f"refusing to save {path}: policy.json content is not strict JSON ({e})") from e

    path.parent.mkdir(parents=True, exist_ok=True)
    _recover(path)
    if path.exists() and not (path.is_dir() and {p.name for p in path.iterdir()} <= _BUNDLE_FILES):
        raise BundleError(f"refusing to replace {path}: it exists and is not a policy bundle")
    for stale in path.parent.iterdir():
        if stale.name.startswith(f".{path.name}{_TMP}"):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = path.parent / f".{path.name}{_TMP}{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        save_file(tensors, str(tmp / WEIGHTS), metadata={"policy_class": name})
        os.chmod(tmp / WEIGHTS, file_mode())  # safetensors writes 0600
        _fsync(tmp / WEIGHTS)
        doc["weights"]["sha256"] = file_sha256(tmp / WEIGHTS)
        if monitor is not None:
            doc["monitor"] = {"sha256": file_hashes(monitor.save(tmp)), "threshold": monitor.threshold,
                              "alpha": monitor.alpha}
        doc[BUNDLE_HASH] = bundle_sha256(doc)
        with open(tmp / POLICY_JSON, "w") as f:
            f.write(json.dumps(doc, indent=2, allow_nan=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        _fsync(tmp)
        _swap_in(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("saved %s bundle %s", name, path)
    return path


def attach_monitor(path: str | Path, monitor: FailureMonitor) -> Path:
    """Store ``monitor`` in the bundle at ``path``: the bundle saved again with the same weights, meta and
    control period, and the monitor."""
    doc = read_bundle_info(path)
    meta = {**(doc.get("meta") or {}), "control_period": doc.get("control_period")}
    return save_bundle(load_bundle(path, device="cpu"), path, meta=meta, monitor=monitor)


def _swap_in(tmp: Path, path: Path) -> None:
    aside = _aside(path)
    if path.exists():
        if aside.exists():
            shutil.rmtree(aside)
        os.rename(path, aside)
    os.rename(tmp, path)
    _fsync(path.parent)
    shutil.rmtree(aside, ignore_errors=True)


def read_bundle_info(path: str | Path) -> dict[str, Any]:
    """The validated content of a bundle's ``policy.json`` (no weights are read)."""
    path = Path(path)
    _recover(path)
    file = path / POLICY_JSON
    if not path.is_dir():
        raise BundleError(f"no bundle at {path}: not a directory")
    if not file.is_file():
        raise BundleError(f"{file}: missing (not a policy bundle)")
    try:
        doc = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{file}: not valid JSON ({e})") from e
    if not isinstance(doc, dict):
        raise BundleError(f"{file}: expected a JSON object, got {type(doc).__name__}")
    version = doc.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise BundleError(f"{file}: missing or invalid schema_version {version!r}")
    if version > SCHEMA_VERSION:
        raise BundleError(f"{file}: schema_version {version} is newer than this policydistill supports "
                          f"({SCHEMA_VERSION}); upgrade policydistill")
    if version < 1:
        raise BundleError(f"{file}: invalid schema_version {version}")
    for key, kind in (("policy_class", str), ("config", dict), ("weights", dict)):
        if not isinstance(doc.get(key), kind):
            raise BundleError(f"{file}: missing or invalid '{key}' (expected {kind.__name__})")
    if not isinstance(doc["weights"].get("sha256"), str):
        raise BundleError(f"{file}: missing weights.sha256")
    if version >= 2 and not isinstance(doc.get(BUNDLE_HASH), str):
        raise BundleError(f"{file}: missing {BUNDLE_HASH}")
    return doc


def _verify_json(file: Path, doc: dict[str, Any]) -> None:
    """Refuse a ``policy.json`` edited after saving (schema 1 has no hash over it: a warning)."""
    if doc["schema_version"] < 2:
        log.warning("%s: schema_version 1 bundle, policy.json is not covered by a hash; load it and save it "
                    "again to add one", file)
    elif bundle_sha256(doc) != doc[BUNDLE_HASH]:
        raise BundleError(f"{file}: content does not match its {BUNDLE_HASH} (edited after saving; a changed "
                          f"config must be saved with save_bundle)")


def _header_shapes(weights: Path) -> dict[str, tuple[int, ...]]:
    """Tensor shapes from the safetensors header (no tensor data is read)."""
    try:
        with safe_open(str(weights), framework="pt") as f:
            names = f.keys()
            return {k: tuple(f.get_slice(k).get_shape()) for k in names}
    except Exception as e:  # safetensors raises its own error types
        raise BundleError(f"{weights}: unreadable safetensors file ({e})") from e


class _ElementBudget(TorchFunctionMode):
    """Refuse torch tensor factories once they would allocate more than ``budget`` elements in total."""

    SIZED = (torch.empty, torch.zeros, torch.ones, torch.full, torch.rand, torch.randn, torch.empty_strided)

    def __init__(self, held: int, what: str) -> None:
        super().__init__()
        self.held, self.budget, self.what, self.used = held, 2 * held + (1 << 22), what, 0

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        n = self._numel(func, args, kwargs)
        if n is not None:
            self.used += n
            if self.used > self.budget:
                raise BundleError(f"{self.what} asks for more than {self.budget} tensor elements (one tensor of "
                                  f"{n}) while {WEIGHTS} holds {self.held}: refused before allocating them")
        return func(*args, **kwargs)

    @classmethod
    def _numel(cls, func: Any, args: tuple, kwargs: dict[str, Any]) -> int | None:
        try:
            if func in cls.SIZED:
                size = kwargs.get("size", args[0] if args and isinstance(args[0], (tuple, list)) else args)
                return math.prod(int(s) for s in size)
            if func in (torch.linspace, torch.logspace):
                return int(kwargs.get("steps", args[2] if len(args) > 2 else 0))
            if func is torch.arange:
                names = ("end",) if len(args) == 1 else ("start", "end", "step")
                given = dict(zip(names, args[:3], strict=False)) | kwargs
                start, end, step = (float(given.get(k, d)) for k, d in (("start", 0), ("end", 0), ("step", 1)))
                return max(0, math.ceil((end - start) / step))
            if func is torch.eye:
                return int(args[0]) * int(args[1] if len(args) > 1 else args[0])
        except (TypeError, ValueError, IndexError, ZeroDivisionError, OverflowError):
            return None
        return None


def _check_box_sizes(node: Any, budget: int, file: Path) -> None:
    """Refuse a Box in the config with more elements than ``budget`` (its bounds would be allocated)."""
    if isinstance(node, dict):
        if node.get("type") == "Box" and isinstance(node.get("shape"), list):
            try:
                n = math.prod(int(s) for s in node["shape"])
            except (TypeError, ValueError, OverflowError):
                n = 0
            if n > budget:
                raise BundleError(f"{file}: a Box of shape {node['shape']} has more elements than the weights "
                                  f"hold ({budget} at most)")
        for v in node.values():
            _check_box_sizes(v, budget, file)
    elif isinstance(node, list):
        for v in node:
            _check_box_sizes(v, budget, file)


def load_bundle(path: str | Path, device: str | torch.device = "auto", frozen: bool = True) -> Any:
    """Load, verify and build the policy of a bundle (eval mode; weights frozen unless ``frozen=False``)."""
    path = Path(path)
    doc = read_bundle_info(path)
    _verify_json(path / POLICY_JSON, doc)
    cls = policy_class(doc["policy_class"])
    weights = path / WEIGHTS
    if not weights.is_file():
        raise BundleError(f"{weights}: missing")
    sha = file_sha256(weights)
    if sha != doc["weights"]["sha256"]:
        raise BundleError(f"{weights}: sha256 {sha[:16]}… does not match {doc['weights']['sha256'][:16]}… "
                          f"recorded in {POLICY_JSON} (truncated or modified weights)")
    shapes = _header_shapes(weights)
    budget = _ElementBudget(sum(math.prod(s) for s in shapes.values()), f"{path / POLICY_JSON}: the config")
    _check_box_sizes(doc["config"], budget.budget, path / POLICY_JSON)
    try:
        with budget:
            policy = cls.from_config(doc["config"], device=device)
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, BundleError):
            raise
        raise BundleError(f"{path / POLICY_JSON}: config does not build a {doc['policy_class']}: {e}") from e
    expected = policy.state_dict()
    missing, extra = sorted(set(expected) - set(shapes)), sorted(set(shapes) - set(expected))
    if missing or extra:
        raise BundleError(f"{weights}: tensors do not match the {doc['policy_class']} config: "
                          f"missing {missing}, unexpected {extra}")
    wrong = [f"{k} {s} != {tuple(expected[k].shape)}" for k, s in shapes.items() if s != tuple(expected[k].shape)]
    if wrong:
        raise BundleError(f"{weights}: tensor shapes do not match the config: {wrong}")
    try:
        tensors = load_file(str(weights))
    except Exception as e:  # safetensors raises its own error types
        raise BundleError(f"{weights}: unreadable safetensors file ({e})") from e
    bad = _non_finite(tensors)
    if bad:
        raise BundleError(f"{weights}: non-finite values in tensors {bad}")
    policy.load_state_dict(tensors)
    policy.obs_keys = doc.get("obs_keys")
    if isinstance(policy, torch.nn.Module):
        policy.eval()
        if frozen:
            policy.requires_grad_(False)
    return policy


def find_bundles(root: str | Path) -> dict[str, Path]:
    """Bundles in a folder by name: ``root/<name>/policy.json`` or ``root/<name>/bundle/policy.json``."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no folder of bundles at {root}")
    names = set()
    for child in root.iterdir():
        if not child.name.startswith("."):
            names.add(child.name)
        elif child.name.endswith(_ASIDE) and _TMP not in child.name:
            names.add(child.name[1:-len(_ASIDE)])
    found: dict[str, Path] = {}
    for name in sorted(names):
        for candidate in (root / name, root / name / "bundle"):
            if is_bundle(candidate):
                found[name] = candidate
                break
    return found
