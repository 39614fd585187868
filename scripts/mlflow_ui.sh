#!/usr/bin/env bash
# Open the MLflow UI on the project's own store, bound to 127.0.0.1 only. Usage: bash scripts/mlflow_ui.sh [PORT] (default 5000)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
exec mlflow ui --backend-store-uri sqlite:///mlflow.db --default-artifact-root ./mlruns \
  --host 127.0.0.1 --port "${1:-${PORT:-5000}}" --workers 1
