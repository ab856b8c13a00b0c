#!/usr/bin/env bash
# A third virtualenv (.venv-datasets) for the dataset formats (`policydistill dataset`): the `minari` extra
# (with its DataCollector's jax), kept apart so that the default .venv does not change.
set -euo pipefail
VENV=${DATASETS_VENV:-.venv-datasets}
bash "$(dirname "$0")/extra_venv.sh" "$VENV" minari \
  "import minari; print('datasets venv: $VENV, minari', minari.__version__)"
