"""Run a command of the CLI on N processes of this machine through ``torch.distributed.run`` (torchrun)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

log = logging.getLogger(__name__)

LOCKED_BY_LAUNCHER = "POLICYDISTILL_LAUNCHER_HOLDS_LOCK"
"""Set for the ranks :func:`launch` starts: the launching process holds the output folder's lock."""


def under_torchrun() -> bool:
    """Whether this process was started by torchrun (one rank of a process group)."""
    return "TORCHELASTIC_RUN_ID" in os.environ or int(os.environ.get("WORLD_SIZE", 1)) > 1


def launch(command: str, overrides: list[str], nproc: int) -> None:
    """``policydistill <command> <overrides>`` as ``nproc`` standalone torchrun processes; waits for them and
    raises when they fail."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "policydistill", command, *overrides]
    log.info("launching %s", " ".join(cmd))
    result = subprocess.run(cmd, env={**os.environ, LOCKED_BY_LAUNCHER: "1"})
    if result.returncode:
        raise RuntimeError(f"{command} on {nproc} processes failed (exit code {result.returncode})")


def holds_lock() -> bool:
    """Whether this process takes its output folder's lock: not when it is a rank that :func:`launch` started,
    nor a rank but 0 of a torchrun the user started."""
    if not under_torchrun():
        return True
    return LOCKED_BY_LAUNCHER not in os.environ and int(os.environ.get("RANK", 0)) == 0


def exit_rank(code: int) -> None:
    """End a torchrun rank whose work is done (files written, process group destroyed) without the
    interpreter's teardown: tearing down torch's distributed C++ state there has aborted (SIGABRT) a finished
    rank, which fails the whole job. Logs and standard streams are flushed first."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
