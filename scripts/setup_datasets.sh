#!/usr/bin/env bash
# A third virtualenv (.venv-datasets) for the dataset formats (`policydistill dataset`): the `minari` extra
# (with its DataCollector's jax), kept apart so that the default .venv does not change. CPU torch first
# (pinned: an unpinned torch pulls a multi-GB CUDA build). Safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${DATASETS_VENV:-.venv-datasets}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
echo "*" > "$VENV/.gitignore"  # the venv is never committed
"$VENV/bin/python" -m pip install -q --disable-pip-version-check torch==2.13.0
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[minari]" "pytest>=8" "pytest-xdist>=3.5"
"$VENV/bin/python" -c "import minari; print('datasets venv:', '$VENV', 'minari', minari.__version__)"
