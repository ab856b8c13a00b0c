"""Files the project writes: atomic writes (a kill at any moment leaves either the old file or the new one)
with the user's umask, one lock per run folder, and checks of an output path before any work."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def _umask() -> int:
    """The process's umask: read from /proc where there is one (setting it to read it races other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """Mode of the files written here: what ``open()`` would give under the process's umask (temp files are
    0600)."""
    return 0o666 & ~_umask()
LOCK = ".lock"


def is_temp(name: str) -> bool:
    """Whether a file name is one of the temp files :func:`atomic_write_with` writes (left by a kill)."""
    return name.startswith(".") and ".tmp" in name


def atomic_write_with(path: str | Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` writes a temp file beside ``path`` (named ``.<name>.<random>.tmp<suffix>``: writers that
    infer the format from the name see the right one), which is then given
    the umask's mode, fsynced and renamed over ``path``: a kill leaves the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, file_mode())
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write_with`)."""
    atomic_write_with(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """JSON with ``allow_nan=False``: a non-finite number is an error, never a file."""
    atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def read_json(path: str | Path) -> Any:
    """The JSON in ``path``; an empty or invalid file is a ValueError naming it."""
    try:
        with open(path) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); it is damaged or not this program's file") from None


def read_json_object(path: str | Path, required: tuple[str, ...], what: str) -> dict[str, Any]:
    """The JSON object in ``path`` holding ``required`` keys; otherwise a ValueError saying it is not ``what``."""
    data = read_json(path)
    missing = [k for k in required if not isinstance(data, dict) or k not in data]
    if missing:
        raise ValueError(f"{path} is not {what} (it lacks {', '.join(missing)}); choose another out or remove it")
    return data


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class RunLock:
    """An exclusive lock on a run folder, held from :meth:`acquire` until :meth:`release` or the process's end.

    It is an ``flock`` on ``<folder>/.lock``: the kernel drops it when its owner dies, however it dies, so a
    lock never outlives its run. The file names the owner (host, pid, command, start) for the refusal message.
    ``shared=True`` takes a shared lock: readers of a run exclude its writer, not each other.
    """

    def __init__(self, folder: str | Path, command: str, shared: bool = False) -> None:
        self.folder, self.command, self.shared = Path(folder), command, shared
        self._file: IO[str] | None = None

    def acquire(self) -> RunLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / LOCK
        f = open(path, "a+")  # noqa: SIM115 (held until release or the process ends)
        try:
            fcntl.flock(f, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = ""
            for _ in range(50):  # the owner writes its name right after it locks: give it that moment
                f.seek(0)
                owner = " ".join(f.read().split())
                if owner:
                    break
                time.sleep(0.01)
            f.close()
            owner = owner or "another process"
            raise ValueError(f"{self.folder} is in use by another run ({owner}); wait for it to end or choose "
                             "another out") from None
        if not self.shared:
            f.seek(0)
            f.truncate()
            f.write(f"{self.command} pid {os.getpid()} on {socket.gethostname()} since "
                    f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            f.flush()
        self._file = f
        return self

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def foreign_entries(folder: str | Path, marker: str) -> list[str]:
    """Entries of an existing ``folder`` when it is not empty and holds no ``marker`` (a file a run of the
    command writes first), so it is not that command's run folder; else []. The lock file does not count, nor do
    atomic-write temp files (a run writing its marker at this moment leaves one)."""
    folder = Path(folder)
    if not folder.is_dir() or (folder / marker).exists():
        return []
    return sorted(p.name for p in folder.iterdir() if p.name != LOCK and not is_temp(p.name))


def refuse_foreign(folder: str | Path, marker: str, command: str) -> None:
    """A ValueError when ``folder`` exists, is not empty and is not a ``command`` run (see :func:`foreign_entries`)."""
    found = foreign_entries(folder, marker)
    if found:
        shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
        raise ValueError(f"out={folder} is not empty and is not a '{command}' run (it holds {shown}); "
                         "choose a new or empty folder")


def check_writable(path: str | Path, kind: str = "folder") -> None:
    """Refuse, before any work, an output ``path`` that cannot be written as a ``kind`` (``folder`` or ``file``):
    an existing entry of the other kind, or a nearest existing parent this process may not write to."""
    path = Path(path)
    if kind == "file" and path.is_dir():
        raise ValueError(f"out={path} is a directory; expected a file path")
    if kind == "folder" and path.exists() and not path.is_dir():
        raise ValueError(f"out={path} is a file; expected a folder")
    existing = path if path.is_dir() else path.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"out={path}: {existing} is a file, so nothing can be written below it")
    target = path if path.is_dir() else existing
    if not os.access(target, os.W_OK | os.X_OK):
        raise ValueError(f"out={path}: {target} is not writable by this user; choose another out")
