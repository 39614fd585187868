#!/usr/bin/env bash
# `kedro run` in a configuration environment ('base' = the default local-over-base); used by MLproject.
# An empty `--params=` (MLproject's default) is dropped.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
env_name=$1; shift
args=()
for a in "$@"; do [ "$a" = "--params=" ] || args+=("$a"); done
if [ "$env_name" = base ]; then exec kedro run "${args[@]}"; else exec kedro run --env="$env_name" "${args[@]}"; fi
