"""Run a command of the CLI on N processes of this machine through ``torch.distributed.run`` (torchrun)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

log = logging.getLogger(__name__)


def under_torchrun() -> bool:
    """Whether this process was started by torchrun (one rank of a process group)."""
    return "TORCHELASTIC_RUN_ID" in os.environ or int(os.environ.get("WORLD_SIZE", 1)) > 1


def launch(command: str, overrides: list[str], nproc: int) -> None:
    """``policydistill <command> <overrides>`` as ``nproc`` standalone torchrun processes; waits for them and
    raises when they fail."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "policydistill", command, *overrides]
    log.info("launching %s", " ".join(cmd))
    result = subprocess.run(cmd)
    if result.returncode:
        raise RuntimeError(f"{command} on {nproc} processes failed (exit code {result.returncode})")
