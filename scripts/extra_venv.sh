#!/usr/bin/env bash
# A virtualenv of its own for an optional extra whose pins the default .venv must not take:
#   bash scripts/extra_venv.sh <venv> <extra> <python check>
# CPU torch first (pinned: an unpinned torch pulls a multi-GB CUDA build), then policydistill with the extra
# and the test runner; the check prints what was installed. Safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=$1 EXTRA=$2 CHECK=$3
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
echo "*" > "$VENV/.gitignore"  # the venv is never committed
"$VENV/bin/python" -m pip install -q --disable-pip-version-check torch==2.13.0
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[$EXTRA]" "pytest>=8" "pytest-xdist>=3.5"
"$VENV/bin/python" -c "$CHECK"
