#!/usr/bin/env bash
# The image's entry point: `kedro run` with the arguments `docker run dimo ...` was given (e.g. --env=paper
# --pipelines=train_stage1), after the project's offline settings and caches (scripts/env.sh).
# Another command: `docker run --entrypoint bash dimo -c "..."`.
set -euo pipefail
cd /opt/dimo
# shellcheck source=/dev/null
source scripts/env.sh
exec kedro run "$@"
