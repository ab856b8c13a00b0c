"""The one result envelope every benchmark writes: ``<results dir>/<name><tag>.json``.

Keys: ``bench`` (name), ``created`` (UTC, ISO 8601, when the run started), ``wall_time_s``, ``machine`` (CPU
model, its family/model and widest vector extension, logical cores, load average at the start and the end of the
run), ``versions`` (python and the packages a result depends on), ``args`` (the parsed arguments), ``runs``
(repeated runs or seeds), ``medians``, ``ratios`` (the side-by-side ratios the benchmark exists for) and
``results`` (everything else it measured).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import platform
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from policydistill.files import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("torch", "numpy", "gymnasium", "mujoco", "stable-baselines3", "onnxruntime", "onnx", "ray",
            "rsl-rl-lib", "minari", "h5py", "policydistill")


@dataclass(frozen=True)
class Start:
    """When a benchmark run started and the machine's load average then (see :func:`start`)."""

    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    loadavg: tuple[float, ...] = field(default_factory=os.getloadavg)
    t0: float = field(default_factory=time.perf_counter)


def start() -> Start:
    """Mark the start of a run (the envelope's ``created`` and start load average)."""
    return Start()


@functools.cache
def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of ``/proc/cpuinfo`` (empty where there is none)."""
    try:
        block = Path("/proc/cpuinfo").read_text().split("\n\n", 1)[0]
    except OSError:
        return {}
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in block.splitlines())}


def cpu_model() -> str:
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def cpu_kind() -> str:
    """The CPU's family/model and widest vector extension, e.g. ``25/17 avx512f``: seeded runs round differently
    across CPUs, and a model name alone (``AMD EPYC``) may not tell two apart."""
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    vector = next((f for f in ("avx512f", "avx2", "avx", "neon", "asimd") if f in flags), "")
    return f"{info.get('cpu family', '?')}/{info.get('model', '?')} {vector}".strip()


def versions() -> dict[str, str]:
    """Python and the installed version of each of :data:`PACKAGES` (those not installed left out)."""
    out = {"python": platform.python_version()}
    for dist in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    return out


def _flat(ratios: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in ratios.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _shown(value: Any) -> Any:
    """Paths inside the repository relative to it (a result never names this machine's paths)."""
    if isinstance(value, (list, tuple)):
        return [_shown(v) for v in value]
    if isinstance(value, (str, Path)) and str(value).startswith(f"{ROOT}{os.sep}"):
        return str(Path(value).relative_to(ROOT))
    return str(value) if isinstance(value, Path) else value


def write(name: str, args: argparse.Namespace, started: Start, *, runs: int, medians: dict[str, Any],
          ratios: dict[str, Any], results: dict[str, Any], tag: str = "", cpu: dict[str, Any] | None = None
          ) -> dict[str, Any]:
    """Write the envelope of benchmark ``name`` atomically to ``args.results_dir``/``<name><tag>.json``, print its
    ratios and the path; returns the envelope. ``cpu``: the ``cpu`` and ``cpu_kind`` the results ran on when that was
    not this machine (results merged from earlier runs; a kind None: not recorded)."""
    out = Path(args.results_dir) / f"{name}{tag}.json"
    envelope = {
        "bench": name, "created": started.created, "wall_time_s": round(time.perf_counter() - started.t0, 1),
        "machine": {"cpu": cpu_model(), "cpu_kind": cpu_kind(), **(cpu or {}), "logical_cores": os.cpu_count(),
                    "loadavg_start": [round(x, 2) for x in started.loadavg],
                    "loadavg_end": [round(x, 2) for x in os.getloadavg()]},
        "versions": versions(), "args": {k: _shown(v) for k, v in vars(args).items()}, "runs": runs,
        "medians": medians, "ratios": ratios, "results": results,
    }
    atomic_write_json(out, envelope)
    flat = _flat(ratios)
    width = max((len(k) for k in flat), default=0)
    print(f"\nratios ({name}{tag}, {runs} run{'s' * (runs != 1)}):")
    for k, v in flat.items():
        print(f"  {k:<{width}}  {'n/a' if v is None else f'{v:.3f}' if isinstance(v, float) else v}")
    print(f"wrote {out}")
    return envelope
