#!/usr/bin/env bash
# Run: bash examples/distributed_precompute.sh [--max-samples 64 --out runs/precompute_dist ...]
#
# Distributed difficulty precompute with torchrun: every process computes its shards of the samples,
# rank 0 merges them into <out>/difficulty.safetensors and <out>/labels.jsonl (byte-identical to a
# one-process `python examples/precompute.py` run with the same --threads and --shard-size).
# CPU: NPROC processes (default 2) on the gloo backend, each with THREADS torch threads (default 1).
# GPUs: set NPROC to the number of GPUs (NPROC=$(nvidia-smi -L | wc -l)); the script then uses the
# nccl backend, one GPU per process (LOCAL_RANK), bfloat16. Several machines: run torchrun with
# --nnodes/--node_rank/--rdzv_endpoint instead and put --out on a shared file system.
# Extra arguments go to examples/precompute.py (--data, --max-samples, --out, --config, --cloud, --edge).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}"
NPROC="${NPROC:-2}"
THREADS="${THREADS:-1}"
export OMP_NUM_THREADS="$THREADS"
exec "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" \
    examples/precompute.py --threads "$THREADS" --out runs/precompute_dist "$@"
