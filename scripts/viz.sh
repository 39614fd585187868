#!/usr/bin/env bash
# kedro-viz: draws the registered pipelines (nodes, datasets, parameters), bound to 127.0.0.1 only.
# Usage: bash scripts/viz.sh [PORT]   (default 4141; KEDRO_ENV picks the configuration environment)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
exec kedro viz run --host 127.0.0.1 --port "${1:-${PORT:-4141}}" --no-browser ${KEDRO_ENV:+--env "$KEDRO_ENV"}
