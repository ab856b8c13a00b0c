"""Lazy Ray: import it with a clear error naming the extra, start a local instance or join a cluster."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from policydistill.configs import require_int, require_number, set_keys

log = logging.getLogger(__name__)


@dataclass
class RayConfig:
    """Where Ray work runs (``launcher=ray`` / ``collector=ray``; needs ``pip install policydistill[ray]``).

    ``address`` None starts a local Ray instance of ``num_cpus`` CPUs (default: all) for the run;
    ``auto`` or ``host:port`` / ``ray://host:10001`` joins an existing cluster. Each expert task asks for
    ``cpus_per_task``/``gpus_per_task``; ``workers`` rollout actors collect distillation rounds, each asking
    ``cpus_per_task``.
    """

    address: str | None = None
    num_cpus: int | None = None
    cpus_per_task: float = 1.0
    gpus_per_task: float = 0.0
    workers: int = 2

    def __post_init__(self) -> None:
        require_int("ray.workers", self.workers)
        require_number("ray.cpus_per_task", self.cpus_per_task, 0.0)
        require_number("ray.gpus_per_task", self.gpus_per_task, 0.0)
        if self.num_cpus is not None:
            require_int("ray.num_cpus", self.num_cpus)

ENGINES = ("local", "ray")


def refuse_ray_keys(ray: RayConfig, setting: str) -> None:
    """A ValueError when ``ray`` sets any key: ``<setting>=local`` (``launcher``, ``collector``) does not read
    the ray.* keys."""
    keys = set_keys(ray)
    if keys:
        raise ValueError(f"{setting}=local does not read {', '.join('ray.' + k for k in keys)}: "
                         f"the ray.* keys are read with {setting}=ray")


def require_ray() -> Any:
    """The ``ray`` module, or an ImportError saying how to install it."""
    try:
        import ray
    except ImportError as e:
        raise ImportError("Ray is not installed: pip install 'policydistill[ray]' (needed for launcher=ray and "
                          f"collector=ray) ({e})") from e
    return ray


@contextmanager
def ray_session(cfg: RayConfig) -> Iterator[Any]:
    """Yield ``ray`` connected as ``cfg`` says. A Ray already initialised in this process is used as is;
    an instance this call starts (or a cluster it joins) is shut down on exit."""
    ray = require_ray()
    started = not ray.is_initialized()
    if started:
        if cfg.address:
            log.info("joining the Ray cluster at %s", cfg.address)
            ray.init(address=cfg.address, log_to_driver=False)
        else:
            log.info("starting a local Ray instance (%s CPUs)", cfg.num_cpus or "all")
            # Ray runs workers at niceness 15 by default; on a shared machine that puts the rollouts this
            # run asks for behind every other job, so its workers get the driver's own priority instead.
            ray.init(num_cpus=cfg.num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
                     log_to_driver=False, _system_config={"worker_niceness": os.nice(0)})
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()
