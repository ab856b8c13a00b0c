#!/usr/bin/env bash
# A virtualenv of its own (.venv-imitation) for the peer library that `bench imitation_peer` runs beside
# policydistill: imitation 1.0.1 pins stable-baselines3 2.2 and gymnasium 0.29, which the default .venv must
# not take. policydistill is not installed there: the bench runs bench/peers/imitation_dagger.py in it.
# CPU torch first (pinned: an unpinned torch pulls a multi-GB CUDA build). Safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${IMITATION_VENV:-.venv-imitation}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
echo "*" > "$VENV/.gitignore"  # the venv is never committed
"$VENV/bin/python" -m pip install -q --disable-pip-version-check torch==2.13.0
"$VENV/bin/python" -m pip install -q --disable-pip-version-check imitation==1.0.1 "gymnasium[mujoco]==0.29.1" \
  mujoco==3.3.0
"$VENV/bin/python" -c "import imitation, stable_baselines3, gymnasium; print('imitation venv: $VENV, imitation', \
imitation.__version__, 'stable-baselines3', stable_baselines3.__version__, 'gymnasium', gymnasium.__version__)"
