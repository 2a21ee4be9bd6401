#!/usr/bin/env bash
# Re-create the bundled example recordings with Debian's espeak-ng and sox:
#   sudo apt-get install espeak-ng sox && bash data/make_examples.sh
# Each is synthesised at espeak-ng's native 22.05 kHz, then resampled to 16 kHz mono 16-bit FLAC, into
# dpslm_utils/examples/ (package data: they ship in the wheel, read with importlib.resources).
set -euo pipefail
cd "$(dirname "$0")/../dpslm_utils/examples"
say() {  # say OUT_NAME VOICE TEXT
    local tmp
    tmp=$(mktemp --suffix=.wav)
    espeak-ng -v "$2" -s 150 -w "$tmp" "$3"
    sox "$tmp" -r 16000 -c 1 -b 16 "$1.flac"
    rm -f "$tmp"
}
say mister_quilter en-us "Mister Quilter is the apostle of the middle classes, and we are glad to welcome his gospel."
# A word / non-word pair (the sWUGGY idea): espeak-ng pronounces the non-word by its spelling rules.
say manufacture en-us "manufacture"
say manufelture en-us "manufelture"
