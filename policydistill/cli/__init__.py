"""The ``policydistill`` command line (Hydra at this edge only)."""

from policydistill.cli.main import ConfigError, compose_config, main

__all__ = ["ConfigError", "compose_config", "main"]
