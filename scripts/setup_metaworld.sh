#!/usr/bin/env bash
# A second virtualenv (.venv-metaworld) for the Metaworld suites (mt10, mt50, mt10_heldout, mt50_heldout):
# metaworld 3.1.1 pins mujoco 3.3.0, which the default .venv (newer mujoco) must not be downgraded to.
# The CPU build of torch goes in first (pinned: an unpinned torch pulls a multi-GB CUDA build), then
# policydistill with its `metaworld` extra and the test runner. Safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${METAWORLD_VENV:-.venv-metaworld}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
echo "*" > "$VENV/.gitignore"  # the venv is never committed
"$VENV/bin/python" -m pip install -q --disable-pip-version-check torch==2.13.0
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[metaworld]" "pytest>=8" "pytest-xdist>=3.5"
"$VENV/bin/python" -c "import metaworld, mujoco; print('metaworld venv:', '$VENV', 'mujoco', mujoco.__version__)"
