#!/usr/bin/env bash
# `kedro run` in a configuration environment ('base' = the default local-over-base); used by MLproject.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
env_name=$1; shift
if [ "$env_name" = base ]; then exec kedro run "$@"; else exec kedro run --env="$env_name" "$@"; fi
