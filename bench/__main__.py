"""``python -m bench <name> [args...]`` runs benchmark ``bench/<name>.py``; ``python -m bench list`` lists them."""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
HELPERS = {"common", "envelope"}


def benchmarks() -> dict[str, str]:
    """Every benchmark's name and the first line of its module docstring (read without importing it)."""
    out = {}
    for path in sorted(HERE.glob("*.py")):
        if path.stem.startswith("_") or path.stem in HELPERS:
            continue
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        out[path.stem] = doc.splitlines()[0] if doc else ""
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    names = benchmarks()
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.splitlines()[0] + "\n\nbenchmarks: " + ", ".join(names) + "\n"
              "every benchmark takes --smoke (a tiny budget) and --results-dir DIR; "
              "python -m bench <name> --help lists its arguments")
        return 0 if argv else 2
    if argv[0] == "list":
        width = max(map(len, names))
        for name, line in names.items():
            print(f"{name:<{width}}  {line}")
        return 0
    if argv[0] not in names:
        print(f"unknown benchmark '{argv[0]}'; benchmarks: {', '.join(names)}", file=sys.stderr)
        return 2
    importlib.import_module(f"bench.{argv[0]}").main(argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
