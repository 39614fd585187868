#!/usr/bin/env bash
# One node's part of a multi-node training stage; SkyPilot runs it on every node (deploy/skypilot/train.yaml).
#   bash deploy/skypilot/launch.sh <dvc stage, e.g. train_stage1>
# Each node starts its own DeepSpeed launcher for its GPUs (--no_ssh, --node_rank): no pdsh, no ssh between nodes;
# rank 0 (on the head node, the first IP) is the rendezvous and the one that saves and registers the weights.
# KEDRO_ENV picks the configuration environment; MASTER_PORT the rendezvous port (default 29500).
set -euo pipefail
cd "$(dirname "$0")/../.."
dvc_stage=${1:?usage: launch.sh <dvc stage>}
# shellcheck source=/dev/null
source scripts/env.sh
key=$(python -c "import sys; from dimo.training import stages
print(next((s.key for s in stages.STAGES if s.pipeline == sys.argv[1]), ''))" "$dvc_stage")
[ -n "$key" ] || { echo "launch.sh: $dvc_stage is not a training stage (dimo.training.stages.STAGES)" >&2; exit 2; }
hostfile=${DIMO_HOSTFILE:-$(mktemp -t dimo-hostfile.XXXXXX)}
bash deploy/skypilot/hostfile.sh > "$hostfile"
master=$(head -n 1 "$hostfile" | cut -d' ' -f1)
echo "node ${SKYPILOT_NODE_RANK:?} of ${SKYPILOT_NUM_NODES:?}: $dvc_stage ($key), rendezvous $master:${MASTER_PORT:-29500}"
exec deepspeed --no_ssh --node_rank "$SKYPILOT_NODE_RANK" --hostfile "$hostfile" \
  --num_nodes "$SKYPILOT_NUM_NODES" --num_gpus "$SKYPILOT_NUM_GPUS_PER_NODE" \
  --master_addr "$master" --master_port "${MASTER_PORT:-29500}" \
  --module dimo.training.launch --stage "$key" ${KEDRO_ENV:+--env "$KEDRO_ENV"}
