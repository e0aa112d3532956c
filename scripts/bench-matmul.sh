#!/usr/bin/env bash
# Workload A of shared/bench/torch_baseline.py (f32 `a @ b`, n = 512, 1024, 2048) timed in
# PyTorch and in Flint back to back on this machine, then one table of both with the ratio.
#
#   scripts/bench-matmul.sh [--threads 2,1] [--warmup 5] [--iters 30] [--repeats 3] [--quick]
#
# PyTorch comes from PyPI into a virtual environment outside the repository
# ($FLINT_TORCH_VENV, default ~/.venvs/flint-torch), made on first use. PyPI's Linux wheel
# of torch cannot be imported without its nvidia-* libraries (it preloads them), so this is
# a plain `pip install torch`: a few GB, once. The PyTorch side calls the baseline script's
# own `bench_matmul` (benches/torch_baseline.py; same data, warm-up, timing and medians),
# without its other workloads.
# JSON results go to bench-out/ (ignored by git).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

threads=2,1 warmup=5 iters=30 repeats=3
while [ $# -gt 0 ]; do
    case "$1" in
        --threads) threads=$2; shift 2 ;;
        --warmup) warmup=$2; shift 2 ;;
        --iters) iters=$2; shift 2 ;;
        --repeats) repeats=$2; shift 2 ;;
        --quick) warmup=2 iters=5 repeats=1; shift ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

baseline=${TORCH_BASELINE:-$repo/benches/torch_baseline.py}
[ -f "$baseline" ] || { echo "torch_baseline.py not found at $baseline (set TORCH_BASELINE)" >&2; exit 1; }
venv=${FLINT_TORCH_VENV:-$HOME/.venvs/flint-torch}
py=$venv/bin/python
if ! "$py" -c 'import torch' >/dev/null 2>&1; then
    echo "== installing PyTorch into $venv (first run only)" >&2
    python3 -m venv "$venv"
    "$py" -m pip install --quiet torch
fi

out=$repo/bench-out
mkdir -p "$out"
args=(--threads "$threads" --warmup "$warmup" --iters "$iters" --repeats "$repeats")

echo "== building the Flint benchmark (release)" >&2
cargo bench --bench workloads --no-run >&2

echo "== PyTorch" >&2
"$py" - "$baseline" "$out/torch-matmul.json" "${args[@]}" <<'EOF'
import argparse, importlib.util, json, statistics, sys
spec = importlib.util.spec_from_file_location("torch_baseline", sys.argv[1])
tb = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tb)
torch = tb.torch
ap = argparse.ArgumentParser()
ap.add_argument("out")
for a in ("threads", "warmup", "iters", "repeats"):
    ap.add_argument("--" + a)
a = ap.parse_args(sys.argv[2:])
threads = [int(t) for t in a.threads.split(",")]
W, N, R = int(a.warmup), int(a.iters), int(a.repeats)
per = {str(t): {} for t in threads}
for rep in range(R):
    for t in threads:
        torch.set_num_threads(t)
        for n in (512, 1024, 2048):  # the loop of torch_baseline.main(), matmul rows only
            r = tb.bench_matmul(n, W, max(N, 10) if n < 2048 else N)
            per[str(t)].setdefault(f"matmul_{n}", []).append(r)
    print(f"repeat {rep + 1}/{R} done", file=sys.stderr)
runs = {}
for t, byname in per.items():
    runs[t] = {}
    for name, reps in byname.items():
        meds = [r["median_ms"] for r in reps]
        fcs = [r["foreign_cores"] for r in reps if r["foreign_cores"] is not None]
        med = statistics.median(meds)
        runs[t][name] = {"median_ms": med, "min_ms": min(r["min_ms"] for r in reps),
                         "repeat_medians_ms": meds,
                         "spread_pct": 100.0 * (max(meds) - min(meds)) / med,
                         "foreign_cores_max": max(fcs) if fcs else None,
                         "flops": reps[0]["flops"],
                         "gflops_per_s": reps[0]["flops"] / (med * 1e-3) / 1e9}
with open(a.out, "w") as f:
    json.dump({"machine": tb.machine_facts(),
               "config": {"warmup": W, "iters": N, "repeats": R, "threads": threads},
               "runs": runs}, f, indent=1)
EOF

echo "== Flint" >&2
cargo bench --bench workloads -- "$out/flint-matmul.json" --only matmul_512,matmul_1024,matmul_2048 "${args[@]}" >&2

"$py" - "$out/torch-matmul.json" "$out/flint-matmul.json" <<'EOF'
import json, sys
torch, flint = (json.load(open(p)) for p in sys.argv[1:3])
m = torch["machine"]
print(f"\nf32 matmul, torch {m.get('torch')} ({m.get('cpu_capability')}) vs Flint, "
      f"{m.get('cpu_model', '?')}, {m.get('nproc')} CPUs; median of medians, "
      f"config {torch['config']}\n")
print("| size | threads | PyTorch GFLOP/s | Flint GFLOP/s | Flint / PyTorch | other load (cores) torch / flint |")
print("|---:|---:|---:|---:|---:|---|")
fmt = lambda x: "n/a" if x is None else f"{x:.2f}"
for n in (512, 1024, 2048):
    for t in torch["config"]["threads"]:
        a = torch["runs"][str(t)][f"matmul_{n}"]
        b = flint["runs"][str(t)][f"matmul_{n}"]
        print(f"| {n} | {t} | {a['gflops_per_s']:.1f} | {b['gflops_per_s']:.1f} "
              f"| {b['gflops_per_s'] / a['gflops_per_s']:.2f} "
              f"| {fmt(a['foreign_cores_max'])} / {fmt(b['foreign_cores_max'])} |")
EOF
