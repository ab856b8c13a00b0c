"""Checks shared by the config dataclasses (each lives beside the code that reads it and validates itself in
``__post_init__``): value ranges, choices, and keys that the chosen option does not read.

A key is *set* when its value differs from the dataclass default; a set key that the chosen method, student
kind, schedule or denoiser does not read is an error naming what reads it, never silently ignored.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from typing import Any


def require_int(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum``, else a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def require_number(name: str, value: Any, low: float = -math.inf, high: float = math.inf,
                   low_open: bool = False) -> float:
    """``value`` as a finite number in [low, high] ((low, high] with ``low_open``), else a ValueError."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and value <= high
    if not ok:
        interval = f"{'(' if low_open else '['}{low}, {high}]"
        raise ValueError(f"{name} must be a finite number in {interval}, got {value!r}")
    return float(value)


def require_lr(name: str, value: Any) -> float:
    """A learning rate: a finite number in (0, 1] (larger steps only diverge), else a ValueError."""
    return require_number(name, value, 0.0, 1.0, low_open=True)


def require_device(value: Any) -> str:
    """``value`` if it names a device (``auto``, ``cpu``, ``cuda``, ``cuda:<i>``, ...), else a ValueError. Whether
    the device is there is checked where it is used."""
    import torch

    try:
        if not isinstance(value, str) or (value != "auto" and torch.device(value) is None):
            raise ValueError
    except (RuntimeError, ValueError):
        raise ValueError(f"unknown device {value!r}: expected 'auto', 'cpu', 'cuda' or 'cuda:<i>'") from None
    return value


def require_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``, else a ValueError listing them."""
    if value not in choices:
        raise ValueError(f"unknown {name} '{value}'; expected one of {list(choices)}")
    return value


def require_ints(name: str, values: Any, minimum: int = 1) -> list[int]:
    """A non-empty list of ints >= ``minimum`` (layer widths), else a ValueError."""
    if not isinstance(values, (list, tuple)) or not values or any(
            isinstance(v, bool) or not isinstance(v, int) or v < minimum for v in values):
        raise ValueError(f"{name} must be a non-empty list of ints >= {minimum}, got {values!r}")
    return list(values)


def set_keys(cfg: Any) -> list[str]:
    """The fields of dataclass ``cfg`` whose value differs from the field's default."""
    out = []
    for f in dataclasses.fields(cfg):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            continue
        if getattr(cfg, f.name) != default:
            out.append(f.name)
    return out


def refuse_unread(cfg: Any, read: Iterable[str], owner: str, prefix: str = "") -> None:
    """A ValueError when ``cfg`` sets a key outside ``read``: ``owner`` (e.g. "schedule 'step'") names who
    reads the keys that may be set; ``prefix`` is the keys' path (e.g. "method.")."""
    read = set(read)
    unread = [k for k in set_keys(cfg) if k not in read]
    if unread:
        valid = ", ".join(prefix + k for k in sorted(read))
        raise ValueError(f"{owner} does not read {', '.join(prefix + k for k in unread)}; it reads: {valid}")
