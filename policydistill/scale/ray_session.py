"""Lazy Ray: import it with a clear error naming the extra, start a local instance or join a cluster."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from policydistill.config import RayConfig

log = logging.getLogger(__name__)

ENGINES = ("local", "ray")


def check_engine(name: str, what: str) -> str:
    if name not in ENGINES:
        raise ValueError(f"unknown {what} '{name}'; expected one of {list(ENGINES)}")
    return name


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
