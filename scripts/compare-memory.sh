#!/usr/bin/env bash
# Bytes in use during workload C's training step at issue 8's model size (CPU, batch 2 by
# default), PyTorch against Flint, on this machine, as one markdown table:
#
#   scripts/compare-memory.sh [--batch N]
#
# PyTorch runs benches/torch_memory.py under the counting malloc of benches/peak_malloc.c
# (compiled here with cc into bench-out/); Flint runs benches/memory.rs, whose global
# allocator counts the same way. PyTorch: $TORCH_PYTHON, else the venv of
# scripts/bench-vs-torch.sh ($FLINT_TORCH_VENV, default ~/.venvs/flint-torch). Results go
# to bench-out/ (ignored by git).
set -euo pipefail
cd "$(dirname "$0")/.."
batch=2
while [ $# -gt 0 ]; do
    case "$1" in
        --batch) batch=$2; shift 2 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
py=${TORCH_PYTHON:-${FLINT_TORCH_VENV:-$HOME/.venvs/flint-torch}/bin/python}
"$py" -c 'import torch' || { echo "$py cannot import torch (see scripts/bench-vs-torch.sh)" >&2; exit 1; }
mkdir -p bench-out
cc -O2 -shared -fPIC benches/peak_malloc.c -o bench-out/peak_malloc.so
LD_PRELOAD=$PWD/bench-out/peak_malloc.so "$py" benches/torch_memory.py \
    bench-out/torch-memory.json --batch "$batch"
cargo bench -q --bench memory -- --batch "$batch" --json bench-out/flint-memory.json \
    --torch bench-out/torch-memory.json
