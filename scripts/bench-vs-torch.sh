#!/usr/bin/env bash
# Every workload of benches/torch_baseline.py timed in PyTorch and in Flint
# (benches/workloads.rs) back to back on this machine, with each workload's peak
# resident-set increase on both sides, then one markdown table with the ratio.
#
#   scripts/bench-vs-torch.sh [--threads 2,1] [--warmup 5] [--iters 30] [--repeats 3] [--quick]
#                             [--no-rss]
#
# PyTorch: $TORCH_PYTHON if set (a python that can `import torch`), else the virtual
# environment $FLINT_TORCH_VENV (default ~/.venvs/flint-torch, outside the repository),
# made on first use with the CPU-only wheel from download.pytorch.org (PyPI's default
# wheel as a fallback). The PyTorch side is the baseline script itself, unchanged; peak
# RSS comes from scripts/torch_peak_rss.py (a fresh process per workload, VmHWM before
# and after), the Flint side measures the same way (`--rss`). JSON results and the table
# go to bench-out/ (ignored by git). `--quick`: 2 warm-up, 5 timed, 1 repeat (a smoke test;
# the numbers are not for the record).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

threads=2,1 warmup=5 iters=30 repeats=3 rss=1 quick=
while [ $# -gt 0 ]; do
    case "$1" in
        --threads) threads=$2; shift 2 ;;
        --warmup) warmup=$2; shift 2 ;;
        --iters) iters=$2; shift 2 ;;
        --repeats) repeats=$2; shift 2 ;;
        --quick) warmup=2 iters=5 repeats=1 quick=1; shift ;;
        --no-rss) rss=; shift ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

if [ -n "${TORCH_PYTHON:-}" ]; then
    py=$TORCH_PYTHON
    "$py" -c 'import torch' || { echo "TORCH_PYTHON=$py cannot import torch" >&2; exit 1; }
else
    venv=${FLINT_TORCH_VENV:-$HOME/.venvs/flint-torch}
    py=$venv/bin/python
    if ! "$py" -c 'import torch' >/dev/null 2>&1; then
        echo "== installing PyTorch (CPU) into $venv (first run only)" >&2
        python3 -m venv "$venv"
        "$py" -m pip install --quiet --upgrade pip
        "$py" -m pip install --quiet torch --index-url https://download.pytorch.org/whl/cpu \
            || "$py" -m pip install --quiet torch
    fi
fi

out=$repo/bench-out
mkdir -p "$out"
args=(--threads "$threads" --warmup "$warmup" --iters "$iters" --repeats "$repeats")

echo "== building the Flint benchmark (release)" >&2
cargo bench --bench workloads --no-run >&2

echo "== PyTorch ($("$py" -c 'import torch; print(torch.__version__)'))" >&2
"$py" benches/torch_baseline.py "$out/torch-workloads.json" "${args[@]}" >"$out/torch-workloads.md"
if [ -n "$rss" ]; then
    echo "== PyTorch peak RSS" >&2
    "$py" scripts/torch_peak_rss.py "$out/torch-workloads.json"
fi

echo "== Flint" >&2
flint_args=("${args[@]}")
[ -n "$rss" ] && flint_args+=(--rss)
cargo bench --bench workloads -- "$out/flint-workloads.json" "${flint_args[@]}" \
    >"$out/flint-workloads.md"

"$py" scripts/compare_workloads.py "$out/torch-workloads.json" "$out/flint-workloads.json" "$quick" \
    | tee "$out/vs-torch.md"
