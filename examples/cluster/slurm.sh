#!/bin/bash
# sdekit across the nodes of a SLURM cluster: one process per GPU, every process runs the
# same command; jax.distributed finds the coordinator, the process count and each id
# from SLURM's environment (--distributed). Process 0 prints and writes runs/funnel-pis/.
#
#   sbatch examples/cluster/slurm.sh
#   sbatch --export=ALL,RESUME=1 examples/cluster/slurm.sh    # continue after a failure
#
#SBATCH --job-name=sdekit
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4          # one task per GPU
#SBATCH --gpus-per-task=1
#SBATCH --cpus-per-task=8
#SBATCH --time=01:00:00
#SBATCH --output=sdekit-%j-%t.log

set -euo pipefail
OUT=${OUT:-runs/funnel-pis}
if [[ -n "${RESUME:-}" ]]; then
  ARGS=(--resume "$OUT")
else
  # the global batch and the number of samples must be multiples of the number of GPUs
  ARGS=(funnel --sampler pis --batch 2048 --train-iters 8000 -n 65536 --out "$OUT")
fi
# a shared file system holds $OUT: every process reads the checkpoint when resuming
srun python -m sdekit sample "${ARGS[@]}" --distributed --heartbeat-timeout 120
