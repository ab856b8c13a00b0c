"""Benchmarks: ``python -m bench list`` names them, ``python -m bench <name> [args]`` runs one."""
