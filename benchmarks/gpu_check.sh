#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): `bash benchmarks/gpu_check.sh` on one GPU, `--dry-run` on a CPU.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/env.sh  # offline, project-local caches (the fused Adam op builds once into .cache/)
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
exec python benchmarks/gpu_check.py "$@"
