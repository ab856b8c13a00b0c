"""The distillation methods by name (``method=<name>``): each one class and its config dataclass."""

from __future__ import annotations

from typing import Any

from policydistill.distill.algorithm import Algorithm
from policydistill.distill.dagger import BC, DAgger, OnPolicy
from policydistill.distill.diffusion import Diffusion
from policydistill.distill.gated import Gated
from policydistill.distill.kickstart import Kickstart
from policydistill.distill.onestep import OneStepAlgorithm

METHODS: dict[str, type[Algorithm]] = {cls.name: cls for cls in (BC, DAgger, Gated, OnPolicy, Kickstart, Diffusion,
                                                                  OneStepAlgorithm)}


def method_of(cfg: Any) -> type[Algorithm]:
    """The method whose config ``cfg`` is (an instance of its config dataclass)."""
    for cls in METHODS.values():
        if type(cfg) is cls.config:
            return cls
    raise ValueError(f"{type(cfg).__name__} is not the config of a distillation method; methods: {sorted(METHODS)}")


def method_config(name: str, values: dict[str, Any] | None = None) -> Any:
    """The config of method ``name`` from ``values`` (defaults for missing keys)."""
    if name not in METHODS:
        raise ValueError(f"unknown distillation method '{name}'; expected one of {sorted(METHODS)}")
    return METHODS[name].config(**(values or {}))
