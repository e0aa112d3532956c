#!/usr/bin/env bash
# Builds Flint's CUDA test binaries (and the benchmarks) on this machine — no GPU and no
# CUDA needed — and packs them, with a runner, into one folder for a GPU machine that has
# a CUDA 13 driver and PyTorch (its pip wheels bring cuBLAS and NVRTC) but no Rust
# toolchain and no internet.
#
#   scripts/gpu-check.sh [--all] [--no-bench]
#
#   --all       every test binary of the workspace (built with the `cuda` feature), not
#               only the CUDA tests (`tests/cuda.rs`) and the runtime's unit tests
#   --no-bench  leave the benchmarks out (the GPU bench, and the CPU workloads that
#               `CPU_BENCH=1 bash gpu-check/run.sh` runs against PyTorch on two of the GPU
#               machine's cores: issue 7's table on another machine)
#
# Output: target/gpu-check/ (the binaries, run.sh, MANIFEST) and target/gpu-check.tar.gz.
# On the GPU machine, the one command (from the folder that holds gpu-check/):
#
#   bash gpu-check/run.sh
#
# It finds cuBLAS and NVRTC in the pip packages of PyTorch (nvidia/*/lib) or a CUDA
# toolkit, runs every binary, and ends with a table of passed / failed / skipped (tests
# that printed a "SKIPPED (...)" line, e.g. "SKIPPED (no CUDA)" where the GPU could not be
# used) per binary and a closing "gpu-check: N passed, N failed, N skipped" line; it exits
# non-zero when anything failed.
# The kernels' PTX for the GPU (GPU_ARCH, default 9.0) is compiled here too, with the
# NVRTC found in NVRTC_LIB_DIR or ~/.cache/flint, into gpu-check/ptx-cache.tar.gz, which
# run.sh unpacks and uses as the PTX cache: a fresh GPU machine then skips minutes of NVRTC compiles.
# Binaries are built with the `gpu` profile (release, no debug info, stripped) so the
# folder stays small. They need a glibc no older than this machine's.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

all=0 bench=1
while [ $# -gt 0 ]; do
    case "$1" in
        --all) all=1; shift ;;
        --no-bench) bench=0; shift ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

out=$repo/target/gpu-check
rm -rf "$out" "$out.tar.gz"
mkdir -p "$out/tests" "$out/benches"

# the executables cargo reports for a build, one "kind name path" line each
artifacts() {
    python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    kinds = m["target"]["kind"]
    kind = "bench" if "bench" in kinds else "test"
    name = m["target"]["name"]
    if any(k in kinds for k in ("lib", "rlib", "proc-macro")):
        name += "-unittests"
    print(kind, name, m["executable"])
'
}

build_tests() {
    echo "== building test binaries (profile gpu, feature cuda): $*" >&2
    cargo test --profile gpu --features cuda "$@" --no-run --message-format=json-render-diagnostics \
        | artifacts
}
if [ $all = 1 ]; then
    build_tests --workspace > "$out/.tests"
else
    { build_tests -p flint --test cuda; build_tests -p flint-runtime --lib; } > "$out/.tests"
fi
if [ $bench = 1 ]; then
    echo "== building the CUDA benchmark (profile gpu, feature cuda)" >&2
    cargo bench --profile gpu --features cuda -p flint --bench cuda --no-run \
        --message-format=json-render-diagnostics | artifacts | grep '^bench ' > "$out/.benches"
    # PyTorch's side of the comparison (benches/torch_gpu.py imports workload C's model
    # from torch_baseline.py)
    cp benches/torch_gpu.py benches/torch_baseline.py scripts/compare_workloads.py "$out/"
    echo "== building the CPU workloads (profile gpu)" >&2
    mkdir -p "$out/cpu"
    cargo bench --profile gpu -p flint --bench workloads --no-run \
        --message-format=json-render-diagnostics | artifacts | grep '^bench ' \
        | while read -r _ _ path; do cp "$path" "$out/cpu/workloads"; done
else
    : > "$out/.benches"
fi

{
    echo "# built $(date -u +%Y-%m-%dT%H:%M:%SZ) from $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo '+dirty')"
    echo "# kind name file"
} > "$out/MANIFEST"
while read -r kind name path; do
    dir=tests
    [ "$kind" = bench ] && dir=benches
    cp "$path" "$out/$dir/$name"
    echo "$kind $name $dir/$name" >> "$out/MANIFEST"
done < <(cat "$out/.tests" "$out/.benches")
rm -f "$out/.tests" "$out/.benches"

# the kernels' PTX for the GPU's architecture (GPU_ARCH, default 9.0: H100/H200), compiled
# here with this machine's NVRTC into the cache folder run.sh points FLINT_PTX_CACHE at,
# so the GPU machine loads the modules instead of compiling them (minutes of device time
# on a fresh machine). Only used there when its NVRTC has the same version (the cache
# key holds it); otherwise it compiles as before.
nvrtc_dir=${NVRTC_LIB_DIR:-}
if [ -z "$nvrtc_dir" ]; then
    lib=$(find "$HOME/.cache/flint" /opt -name 'libnvrtc.so.13' -print -quit 2>/dev/null || true)
    [ -n "$lib" ] && nvrtc_dir=$(dirname "$lib")
fi
if [ -x "$out/benches/cuda" ] && [ -n "$nvrtc_dir" ]; then
    echo "== PTX cache for compute ${GPU_ARCH:-9.0} (NVRTC in $nvrtc_dir)" >&2
    # packed (18 MB of PTX text is 3 MB compressed; the folder travels under a size limit)
    if FLINT_PTX_CACHE=$out/ptx-cache LD_LIBRARY_PATH=$nvrtc_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} \
        "$out/benches/cuda" --warm-ptx-cache "${GPU_ARCH:-9.0}" >&2; then
        tar -C "$out" -czf "$out/ptx-cache.tar.gz" ptx-cache
    else
        echo "== (no PTX cache: the GPU machine will compile the kernels)" >&2
    fi
    rm -rf "$out/ptx-cache"
else
    echo "== no NVRTC here (NVRTC_LIB_DIR) or no bench: no PTX cache shipped" >&2
fi

cat > "$out/run.sh" <<'RUN'
#!/usr/bin/env bash
# Runs every binary listed in MANIFEST (built by scripts/gpu-check.sh) and prints a
# summary table. Needs the CUDA driver (libcuda) and cuBLAS + NVRTC, which are found in
# PyTorch's pip packages or a CUDA toolkit. Extra arguments go to every test binary
# (e.g. `bash run.sh --nocapture`); BENCH_ARGS go to the benchmarks (e.g. --quick). The
# `cuda` benchmark is compared with benches/torch_gpu.py, run first on the same GPU when
# python3 has PyTorch. A test binary that fails is run again one failing test per process
# (a CUDA error that poisons the context would otherwise fail every test after it);
# TEST_TIMEOUT (default 600) seconds bound each binary.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"

# cuBLAS / NVRTC from pip wheels (nvidia/cu13/lib, nvidia/cublas/lib, ...) or a toolkit
libs=()
for py in python3 python; do
    command -v "$py" >/dev/null 2>&1 || continue
    while IFS= read -r d; do libs+=("$d"); done < <("$py" - <<'PY' 2>/dev/null
import glob, os, site, sys
roots = set(site.getsitepackages() + [site.getusersitepackages()] + sys.path)
seen = set()
for r in roots:
    for lib in glob.glob(os.path.join(r, "nvidia", "**", "lib"), recursive=True):
        if lib not in seen and (glob.glob(os.path.join(lib, "libcublas*")) or glob.glob(os.path.join(lib, "libnvrtc*"))):
            seen.add(lib)
            print(lib)
PY
)
    break
done
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
    [ -d "$d" ] && libs+=("$d")
done
if [ ${#libs[@]} -gt 0 ]; then
    LD_LIBRARY_PATH=$(IFS=:; echo "${libs[*]}")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    export LD_LIBRARY_PATH
fi
echo "== LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
# the kernels' PTX compiled where this folder was built (when its NVRTC version matches
# this machine's, the modules load without compiling)
if [ -f "$here/ptx-cache.tar.gz" ] && [ -z "${FLINT_PTX_CACHE:-}" ]; then
    tar -C "$here" -xzf "$here/ptx-cache.tar.gz"
    export FLINT_PTX_CACHE=$here/ptx-cache
    echo "== FLINT_PTX_CACHE=$FLINT_PTX_CACHE ($(ls "$here/ptx-cache" | wc -l) modules)"
fi
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

logs=$here/logs
mkdir -p "$logs"
rows=()
bad=0
while read -r kind name file; do
    case "$kind" in ''|'#'*) continue ;; esac
    log=$logs/$kind-$name.log
    echo "== $kind $name"
    start=$(date +%s.%N)
    if [ "$kind" = bench ]; then
        torch_json=()
        if [ -f torch_gpu.py ] && python3 -c 'import torch' 2>/dev/null; then
            echo "-- PyTorch on the same GPU: torch_gpu.py"
            # shellcheck disable=SC2086
            if PYTHONUNBUFFERED=1 python3 torch_gpu.py "$logs/torch_gpu.json" --profile ${BENCH_ARGS:-} \
                >"$logs/torch_gpu.log" 2>&1; then
                torch_json=(--torch "$logs/torch_gpu.json")
            fi
            cat "$logs/torch_gpu.log" # the table and the kernel profiles
        fi
        # shellcheck disable=SC2086
        # --profile: one more step of each transformer workload with Flint's device-time
        # profiler on (the time per kernel, largest first)
        timeout "${TEST_TIMEOUT:-600}" "./$file" "$logs/$name.json" "${torch_json[@]}" --profile \
            ${BENCH_ARGS:-} >"$log" 2>&1
    else
        timeout "${TEST_TIMEOUT:-600}" "./$file" --test-threads=1 "$@" >"$log" 2>&1
    fi
    rc=$?
    if [ "$kind" = test ] && [ $rc != 0 ]; then
        # each failing test again in a process of its own, to tell a test's own failure
        # from one caused by an earlier test's error
        for t in $(sed -n 's/^test \(.*\) \.\.\. FAILED$/\1/p' "$log"); do
            echo "-- alone: $t" >>"$logs/$kind-$name.alone.log"
            timeout 120 "./$file" --exact "$t" --test-threads=1 --nocapture "$@" \
                >>"$logs/$kind-$name.alone.log" 2>&1
            echo "-- alone: $t: exit $?" | tee -a "$logs/$kind-$name.alone.log"
        done
    fi
    secs=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')
    if [ "$kind" = bench ]; then
        cat "$log" # the comparison table and the profiles
    else
        tail -n 3 "$log"
    fi
    # a test that printed a "SKIPPED (...)" line passed without doing its work: it is
    # counted as skipped, not passed
    skipped=$(grep -c 'SKIPPED (' "$log")
    if [ "$kind" = bench ]; then
        passed=$([ $rc = 0 ] && [ "$skipped" = 0 ] && echo 1 || echo 0)
        failed=$([ $rc = 0 ] && echo 0 || echo 1)
    else
        passed=$(grep -E '^test result:' "$log" | awk '{ s += $4 } END { print s + 0 }')
        failed=$(grep -E '^test result:' "$log" | awk '{ s += $6 } END { print s + 0 }')
        passed=$((passed > skipped ? passed - skipped : 0))
    fi
    status=ok
    if [ $rc != 0 ]; then
        status="FAIL (exit $rc)"
        bad=1
        grep -E '^(test .* FAILED|---- |thread .* panicked)' "$log" | head -n 40
    fi
    rows+=("$kind|$name|$status|$passed|$failed|$skipped|$secs")
done < MANIFEST

# issue 7's CPU table on this machine: PyTorch's CPU kernels and Flint's CPU workloads on
# two cores (as the machine the CPU numbers come from), only when asked (CPU_BENCH=1;
# CPU_REPEATS repeats, default 1)
if [ "${CPU_BENCH:-0}" = 1 ] && [ -x cpu/workloads ]; then
    echo "== CPU workloads against PyTorch on cores 0 and 1"
    cpu_args=(--threads 2,1 --repeats "${CPU_REPEATS:-1}")
    if taskset -c 0,1 python3 torch_baseline.py "$logs/torch-cpu.json" "${cpu_args[@]}" \
        >"$logs/torch-cpu.md" 2>&1 \
        && taskset -c 0,1 ./cpu/workloads "$logs/flint-cpu.json" "${cpu_args[@]}" \
            >"$logs/flint-cpu.md" 2>&1; then
        python3 compare_workloads.py "$logs/torch-cpu.json" "$logs/flint-cpu.json" ""
    else
        echo "the CPU workloads failed: see $logs/torch-cpu.md and $logs/flint-cpu.md"
        bad=1
    fi
fi

echo
echo "| kind | binary | status | passed | failed | skipped | seconds |"
echo "|---|---|---|---:|---:|---:|---:|"
tp=0 tf=0 ts=0
for r in "${rows[@]}"; do
    IFS='|' read -r kind name status passed failed skipped secs <<<"$r"
    echo "| $kind | $name | $status | $passed | $failed | $skipped | $secs |"
    tp=$((tp + passed)) tf=$((tf + failed)) ts=$((ts + skipped))
done
echo
echo "gpu-check: $tp passed, $tf failed, $ts skipped"
echo "(logs in $logs)"
exit $bad
RUN
chmod +x "$out/run.sh"

tar -C "$repo/target" -czf "$out.tar.gz" gpu-check
echo >&2
cat "$out/MANIFEST" >&2
echo "== packed $(du -sh "$out" | cut -f1) into target/gpu-check/ and target/gpu-check.tar.gz" >&2
echo "== on the GPU machine: tar xzf gpu-check.tar.gz && bash gpu-check/run.sh" >&2
