#!/usr/bin/env bash
# A second virtualenv (.venv-metaworld) for the Metaworld suites (mt10, mt50, mt10_heldout, mt50_heldout):
# metaworld 3.1.1 pins mujoco 3.3.0, which the default .venv (newer mujoco) must not be downgraded to.
set -euo pipefail
VENV=${METAWORLD_VENV:-.venv-metaworld}
bash "$(dirname "$0")/extra_venv.sh" "$VENV" metaworld \
  "import metaworld, mujoco; print('metaworld venv: $VENV, mujoco', mujoco.__version__)"
