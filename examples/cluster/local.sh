#!/bin/bash
# sdekit in N processes on this machine (one device each): the same command in every
# process, with the coordinator's address, the number of processes and each one's id.
# On a host with GPUs, process i gets GPU i (CUDA_VISIBLE_DEVICES), so N <= the GPUs.
#
#   bash examples/cluster/local.sh 2 funnel --sampler pis --out runs/funnel-pis-2
set -euo pipefail
N=$1; shift
PORT=${PORT:-12321}
pids=()
for ((i = 0; i < N; i++)); do
  if command -v nvidia-smi > /dev/null; then export CUDA_VISIBLE_DEVICES=$i; fi
  SDEKIT_COORDINATOR=localhost:$PORT SDEKIT_PROCESSES=$N SDEKIT_PROCESS_ID=$i \
    python -m sdekit sample "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
