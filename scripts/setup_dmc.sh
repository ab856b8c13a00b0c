#!/usr/bin/env bash
# A virtualenv of its own (.venv-dmc) for dm_control through shimmy (the `dmc` extra), kept apart so that the
# default .venv does not change.
set -euo pipefail
VENV=${DMC_VENV:-.venv-dmc}
bash "$(dirname "$0")/extra_venv.sh" "$VENV" dmc \
  "import shimmy, dm_control, mujoco; print('dmc venv: $VENV, shimmy', shimmy.__version__, 'mujoco', mujoco.__version__)"
