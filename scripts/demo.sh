#!/usr/bin/env bash
# The demo (README quick start): serve on a free loopback port, upload a real sequence live and
# watch a client decode every frame. Uses 60 frames of the real 8i "loot" capture when ../shared
# (or $SPLATCAST_SHARED) is present, else the package's built-in synthetic sequence.
# Extra arguments go to `splatcast demo` (e.g. --fps 10).
set -euo pipefail
cd "$(dirname "$0")/.."
shared="${SPLATCAST_SHARED:-../shared}"
if [ -f "$shared/data/loot_depth7.npz" ]; then
  frames=$(mktemp -d)
  trap 'rm -rf "$frames"' EXIT
  .venv/bin/python "$shared/tools/loot_to_ply.py" "$frames" --count 60
  .venv/bin/splatcast demo --input "$frames" "$@"
else
  echo "no $shared/data/loot_depth7.npz: streaming the built-in synthetic sequence"
  .venv/bin/splatcast demo "$@"
fi
