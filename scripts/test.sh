#!/usr/bin/env bash
# Set everything up, then run every test and execute every notebook (random tiny weights, CPU, offline).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pytest tests
# One thread: the random-tiny models are too small for threads to pay off.
DPSLM_WEIGHTS=random-tiny MPLBACKEND=Agg OMP_NUM_THREADS=1 .venv/bin/python -m pytest --nbval-lax --nbval-current-env -p no:cacheprovider notebooks
