# Sourced by the setup, run and test scripts: project-local caches, no telemetry, CPU-friendly defaults.
_DIMO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export KEDRO_DISABLE_TELEMETRY=true DO_NOT_TRACK=1 DVC_NO_ANALYTICS=1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HOME="$_DIMO_ROOT/.cache/hf"
export MPLCONFIGDIR="$_DIMO_ROOT/.cache/matplotlib" MPLBACKEND=Agg
export TORCH_EXTENSIONS_DIR="$_DIMO_ROOT/.cache/torch_extensions"
export DVC_SITE_CACHE_DIR="$_DIMO_ROOT/.cache/dvc_site"
export ANNY_CACHE_DIR="$_DIMO_ROOT/.cache/anny" WARP_CACHE_PATH="$_DIMO_ROOT/.cache/warp"
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false GIT_PYTHON_REFRESH=quiet
export PYOPENGL_PLATFORM=egl
mkdir -p "$_DIMO_ROOT/.cache"
export PATH="$_DIMO_ROOT/.venv/bin:$PATH"
# The project's own MLflow store for the mlflow CLI (`mlflow run`, `mlflow ui`) and kedro-mlflow (conf/base/mlflow.yml),
# unless MLFLOW_TRACKING_URI already names another store (a team's server: docs/tracking.md), which is kept.
export MLFLOW_TRACKING_URI="${MLFLOW_TRACKING_URI:-sqlite:///$_DIMO_ROOT/mlflow.db}" MLFLOW_EXPERIMENT_NAME=dimo
