#!/usr/bin/env bash
# Set up (idempotent) and run the test suite. .ci/run calls exactly this script.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
exec python -m pytest "$@"
