#!/usr/bin/env bash
# A virtualenv of its own (.venv-robotics) for gymnasium-robotics' goal envs (the `robotics` extra), kept apart so
# that the default .venv does not change.
set -euo pipefail
VENV=${ROBOTICS_VENV:-.venv-robotics}
bash "$(dirname "$0")/extra_venv.sh" "$VENV" robotics \
  "import gymnasium_robotics, mujoco; print('robotics venv: $VENV, gymnasium-robotics', gymnasium_robotics.__version__, 'mujoco', mujoco.__version__)"
