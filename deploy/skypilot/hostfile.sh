#!/usr/bin/env bash
# DeepSpeed's hostfile from SkyPilot's node list: one "<ip> slots=<GPUs per node>" line per node, head node first
# (SKYPILOT_NODE_IPS is newline-separated, in node-rank order).
set -euo pipefail
: "${SKYPILOT_NODE_IPS:?SKYPILOT_NODE_IPS is not set (SkyPilot sets it on every node)}"
: "${SKYPILOT_NUM_GPUS_PER_NODE:?SKYPILOT_NUM_GPUS_PER_NODE is not set}"
while read -r ip; do
  if [ -n "$ip" ]; then echo "$ip slots=$SKYPILOT_NUM_GPUS_PER_NODE"; fi
done <<< "$SKYPILOT_NODE_IPS"
