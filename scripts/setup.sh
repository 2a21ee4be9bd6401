#!/usr/bin/env bash
# Create ./.venv (needs Python >= 3.11) and install dpslm_utils with its notebook, test and evaluation extras.
# Idempotent: re-running only installs what changed. Set PYTHON=/path/to/python3.11 to choose the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
# The exact versions this project is tested with (pyproject.toml itself asks only for compatible ranges).
export PIP_CONSTRAINT="$PWD/scripts/constraints.txt"
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "dp-slm needs Python >= 3.11, found " + sys.version.split()[0])'
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -qq --disable-pip-version-check -e ".[dev,notebooks,eval]"
