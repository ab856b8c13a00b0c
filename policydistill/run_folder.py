"""A command's output folder: locked while its run writes, refused when it holds something else, resumed only
with the config it started with.

Every command that writes a run (``distill``, ``train-experts``, ``train-student``, ``pipeline``) opens its
``out`` as a :class:`RunFolder`. The folder holds ``run.json`` (the command and its config, written first) and
``.lock`` (see :class:`~policydistill.files.RunLock`). A rerun with the same config resumes. ``resume`` chooses
what else happens:

- ``auto`` (default): a changed config is refused with the changed keys, ``old -> new``;
- ``extend``: the keys that extend a run (more rounds, more steps, a stop score) may change, no other;
- ``false``: the previous run in the folder is removed and the run starts over.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from policydistill.configs import require_choice
from policydistill.files import (
    LOCK,
    RunLock,
    atomic_write_json,
    check_writable,
    is_temp,
    read_json_object,
    refuse_foreign,
)

log = logging.getLogger(__name__)

RUN_JSON = "run.json"
RESUME = ("auto", "extend", "false")
ALWAYS_FREE = ("out", "resume", "device")
"""Keys that may differ on any resume: where the run is, how it resumes, which device it runs on."""


def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_diff(old: dict[str, Any], new: dict[str, Any], ignore: tuple[str, ...] = ()) -> list[str]:
    """``key: old -> new`` for every differing key of two nested configs, but the ``ignore`` keys (and the keys
    below them)."""
    a, b = flat(old), flat(new)
    return [f"{k}: {a.get(k, '(none)')} -> {b.get(k, '(none)')}" for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k) and not any(k == i or k.startswith(f"{i}.") for i in ignore)]


def resume_mode(value: Any) -> str:
    """``resume`` as one of :data:`RESUME` (YAML turns ``false`` into a bool)."""
    value = "false" if value is False or value == "False" else value
    require_choice("resume", value, list(RESUME))
    return value


class RunFolder:
    """``out`` of a ``command`` run with ``config`` (JSON-able, with ``resume``); ``extendable``: the keys
    ``resume=extend`` lets change; ``free``: keys that may change on any resume (they do not change results).
    Use as a context manager: entering checks the folder, takes its lock and
    writes ``run.json``; ``resuming`` then says whether a previous run is continued."""

    def __init__(self, out: str | Path, command: str, config: dict[str, Any],
                 extendable: tuple[str, ...] = (), free: tuple[str, ...] = ()) -> None:
        self.out, self.command, self.config, self.extendable = Path(out), command, config, extendable
        self.free = ALWAYS_FREE + free
        self.mode = resume_mode(config.get("resume", "auto"))
        self.resuming = False
        self._lock = RunLock(self.out, command)

    def check(self) -> dict[str, Any] | None:
        """Refuse what cannot be run in ``out`` (without writing): a file, a read-only place, a folder holding
        something else, a run of another command or config. Returns the previous run's ``run.json``."""
        check_writable(self.out, "folder")
        refuse_foreign(self.out, RUN_JSON, self.command)
        path = self.out / RUN_JSON
        if not path.exists():
            return None
        old = read_json_object(path, ("command", "config"), f"a policydistill run folder ({RUN_JSON})")
        if old["command"] != self.command:
            raise ValueError(f"out={self.out} holds a '{old['command']}' run, not a '{self.command}' run; "
                             "choose another out")
        if self.mode == "false":
            return old
        free = self.free + (self.extendable if self.mode == "extend" else ())
        changed = config_diff(old["config"], self.config, free)
        if changed:
            extendable = [k for k in self.extendable if any(c.startswith(f"{k}:") for c in changed)]
            hint = (f"resume=extend lets {', '.join(extendable)} change; " if extendable and self.mode != "extend"
                    else "")
            raise ValueError(f"out={self.out} holds a run with another config, refusing to resume it: "
                             f"{'; '.join(changed)}. Rerun with its config, or {hint}resume=false starts it "
                             "over, or choose another out")
        return old

    def __enter__(self) -> RunFolder:
        old = self.check()
        self._lock.acquire()
        try:
            old = self.check()  # as it is now that no other run can change it
            if old is not None and self.mode == "false":
                self._clear()
                old = None
            self._remove_temp()
            self.resuming = old is not None
            atomic_write_json(self.out / RUN_JSON, {"command": self.command, "config": self.config})
        except BaseException:
            self._lock.release()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()

    def _remove_temp(self) -> None:
        """Remove the temp files and folders that writes killed before their rename left in ``out``."""
        for p in sorted(self.out.rglob(".*"), reverse=True):
            if is_temp(p.name) and p.exists():
                log.warning("removing %s, left by an interrupted write", p)
                shutil.rmtree(p) if p.is_dir() else p.unlink()

    def _clear(self) -> None:
        """Remove the previous run (resume=false): everything in ``out`` but the lock."""
        log.warning("resume=false: removing the previous '%s' run in %s", self.command, self.out)
        for p in self.out.iterdir():
            if p.name != LOCK:
                shutil.rmtree(p) if p.is_dir() else p.unlink()
