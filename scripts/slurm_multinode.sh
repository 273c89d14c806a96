#!/bin/bash
# S4AL+ on several nodes with SLURM: one torchrun launcher per node (srun), c10d rendezvous on the
# first node of the allocation, one process per GPU. Submit from the repository root, e.g.
#
#   sbatch --nodes 2 scripts/slurm_multinode.sh table1/cityscapes/row9
#   sbatch --nodes 2 scripts/slurm_multinode.sh table1/camvid/row5 data.eval_split=val
#
# Every node must see the repository, data.root and output_dir (runs/) at the same paths, on a
# shared file system: rank 0 writes the run directory (weights, pools, pseudo-label pass) that
# every rank reads, and a run refuses to start, naming the first rank that cannot see it, when it
# is not shared. Keep data.cache_dir on the shared file system too (or on each node's local disk:
# both are correct). Batch sizes are per GPU: 2 nodes x 4 GPUs train with 8x the per-GPU batch.
#SBATCH --job-name=s4al
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1          # one torchrun launcher per node; it starts the GPU processes
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=32           # data loader workers: the cores divided by the GPUs of a node
#SBATCH --time=24:00:00
#SBATCH --output=slurm-%x-%j.out
set -euo pipefail

CONFIG=${1:?usage: sbatch scripts/slurm_multinode.sh CONFIG [key=value ...]}
shift
GPUS_PER_NODE=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-4}}
HEAD_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
PORT=${PORT:-29500}
# Uncomment when the nodes have several network interfaces and NCCL picks the wrong one:
# export NCCL_SOCKET_IFNAME=ib0

SCRIPT=${SCRIPT:-train_al.py}      # SCRIPT=train_ssl.py for Table S1

# $SLURM_NODEID is read on each node (single quotes); the rest is passed as arguments, so
# overrides with spaces or brackets arrive intact.
srun --kill-on-bad-exit=1 bash -c 'exec python -m torch.distributed.run \
    --nnodes "$1" --node-rank "$SLURM_NODEID" --nproc-per-node "$2" \
    --rdzv-backend c10d --rdzv-endpoint "$3" --rdzv-id "$4" \
    "$5" --config "${@:6}"' _ "$SLURM_JOB_NUM_NODES" "$GPUS_PER_NODE" "$HEAD_NODE:$PORT" "$SLURM_JOB_ID" \
    "$SCRIPT" "$CONFIG" "$@"
