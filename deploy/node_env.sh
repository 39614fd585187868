# shellcheck shell=bash
# Sourced on a training machine (the steps of .github/workflows/train.yml, SkyPilot's deploy/skypilot/train.yaml):
# the project's settings (scripts/env.sh), then the team's MLflow server instead of the local sqlite store that env.sh points the mlflow
# CLI at. The URI and credentials come from the job's environment (repository or SkyPilot secrets), never from a file.
# shellcheck source=/dev/null
source scripts/env.sh
if [ -z "${DIMO_TEAM_TRACKING_URI:-}" ]; then
  echo "deploy/node_env.sh: DIMO_TEAM_TRACKING_URI is empty: set the repository secret MLFLOW_TRACKING_URI" >&2
  return 1
fi
export MLFLOW_TRACKING_URI="$DIMO_TEAM_TRACKING_URI"
# Kedro's run environment: 'base' means the default (local over base), as in MLproject.
if [ "${DIMO_ENV:-base}" = base ]; then unset KEDRO_ENV; DIMO_CONF_DIR=conf/local; else
  export KEDRO_ENV="$DIMO_ENV"; DIMO_CONF_DIR="conf/$DIMO_ENV"; fi
export DIMO_CONF_DIR
