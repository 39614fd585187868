#!/usr/bin/env bash
# Set up (idempotent) and run the main job: `kedro run` of the default pipeline on the embedded data.
# Extra arguments go to kedro, e.g. `bash scripts/run.sh --env=smoke --pipelines=ingest,validate`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
exec kedro run "$@"
