#!/usr/bin/env bash
# SkyPilot's loader for the tests, beside the venv (see loader-requirements.txt): idempotent, re-installed only when
# the requirements change. Called by scripts/setup.sh; the tests put the folder on PYTHONPATH of a subprocess.
set -euo pipefail
cd "$(dirname "$0")/../.."
target=.cache/skypilot-loader
stamp="$target/.installed"
hash=$(sha256sum deploy/skypilot/loader-requirements.txt | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$hash" ]; then
  rm -rf "$target"
  .venv/bin/python -m pip install -q --no-deps --target "$target" -r deploy/skypilot/loader-requirements.txt
  echo "$hash" > "$stamp"
fi
