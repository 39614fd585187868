#!/usr/bin/env bash
# Prepare a training machine's checkout (a self-hosted runner in .github/workflows/train.yml, a SkyPilot node):
#  1. kedro-mlflow logs to the team's server: an mlflow.yml in the run environment's conf folder (untracked, not a
#     DVC dependency) with the URI from the environment; the password stays in MLFLOW_TRACKING_PASSWORD.
#  2. the DVC remote (DVC_REMOTE_URL, optional) and a DVC cache that outlives the workspace.
#  3. resume checkpoints in a folder outside the workspace (DIMO_CHECKPOINT_DIR; on a cluster a bucket mount), so
#     a cancelled or preempted job resumes from its last complete checkpoint when it is started again
#     (actions/checkout's `git clean` only removes the link).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=deploy/node_env.sh
source deploy/node_env.sh
state="${DIMO_RUNNER_STATE:-$HOME/dimo-runner}"

mkdir -p "$DIMO_CONF_DIR"
printf 'server:\n  mlflow_tracking_uri: "%s"\n' "$MLFLOW_TRACKING_URI" > "$DIMO_CONF_DIR/mlflow.yml"

if [ -n "${DVC_REMOTE_URL:-}" ]; then
  dvc remote add --local --force --default team "$DVC_REMOTE_URL"
fi
dvc cache dir --local "${DIMO_DVC_CACHE:-$state/dvc-cache}"

checkpoints="${DIMO_CHECKPOINT_DIR:-$state/checkpoints/${DIMO_ENV:-base}}"
mkdir -p "$checkpoints" data/06_models
if [ -d data/06_models/checkpoints ] && [ ! -L data/06_models/checkpoints ]; then
  cp -a data/06_models/checkpoints/. "$checkpoints/" && rm -rf data/06_models/checkpoints
fi
ln -sfn "$checkpoints" data/06_models/checkpoints
echo "checkpoints: data/06_models/checkpoints -> $checkpoints"
