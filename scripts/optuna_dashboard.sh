#!/usr/bin/env bash
# optuna-dashboard on the annealing sweep's sqlite study (the catalog's `annealing_sweep_study` file), 127.0.0.1 only.
# Usage: bash scripts/optuna_dashboard.sh [PORT] (default 8080); STORAGE=sqlite:///other.db to open another study,
# KEDRO_ENV to read the catalog of another configuration environment.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
if [ -z "${STORAGE:-}" ]; then
  DB=$(python - <<'PY'
import os
from kedro.config import OmegaConfigLoader
conf = OmegaConfigLoader("conf", base_env="base", default_run_env=os.environ.get("KEDRO_ENV") or "local")
print(conf["catalog"]["annealing_sweep_study"]["filepath"])
PY
)
  [ -f "$DB" ] || { echo "optuna_dashboard.sh: $DB does not exist yet (run: kedro run --pipelines=annealing_sweep)" >&2; exit 2; }
  STORAGE="sqlite:///$DB"
fi
exec optuna-dashboard "$STORAGE" --host 127.0.0.1 --port "${1:-${PORT:-8080}}"
