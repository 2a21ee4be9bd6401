#!/usr/bin/env bash
# Set everything up, then run the main job on the bundled example (outputs in ./outputs/demo).
# Downloads the official checkpoints (~2 GB, cached); without network it says so and uses random weights.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m dpslm_utils demo --out outputs/demo "$@"
