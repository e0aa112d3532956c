#!/usr/bin/env python3
"""Peak resident-set increase of each PyTorch workload of benches/torch_baseline.py.

Usage:
    python scripts/torch_peak_rss.py TORCH.json [--baseline benches/torch_baseline.py]

Reads the thread counts and workloads from TORCH.json (written by torch_baseline.py) and,
for each (threads, workload), runs this script again as a fresh child process
(`--child NAME --threads T`) that imports the baseline (and so torch), reads VmHWM from
/proc/self/status, builds and runs the workload with the baseline's own builders (one
warm-up and two timed steps; `bench_transformer` trains and then infers, as in the
baseline; `transformer_infer*` alone builds the baseline's `TinyLM` in eval mode and runs
inference only), and reads VmHWM again. The difference, in MiB, is stored as
`peak_rss_mib` in that row of TORCH.json. This is the measurement `benches/workloads.rs
--rss` makes on the Flint side.
"""

import argparse
import importlib.util
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_BASELINE = os.path.join(HERE, "..", "benches", "torch_baseline.py")


def vm_hwm_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return float(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def load_baseline(path):
    spec = importlib.util.spec_from_file_location("torch_baseline", path)
    tb = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tb)
    return tb


def child(tb, name, threads):
    torch = tb.torch
    torch.set_num_threads(threads)
    w, n = 1, 2
    before = vm_hwm_kib()
    if name.startswith("matmul_"):
        tb.bench_matmul(int(name.split("_")[1]), w, n)
    elif name == "mlp_train":
        tb.bench_mlp(w, n)
    elif name in ("transformer_train", "transformer_train_sdpa"):
        tb.bench_transformer(w, n, sdpa=name.endswith("_sdpa"))
    elif name in ("transformer_infer", "transformer_infer_sdpa"):
        tf = tb.TF
        torch.manual_seed(0)
        tokens = torch.randint(0, tf["V"], (tf["B"], tf["T"]))
        _targets = torch.randint(0, tf["V"], (tf["B"], tf["T"]))
        model = tb.TinyLM(tf["V"], tf["D"], tf["H"], tf["F"], tf["T"], 0.1,
                          name.endswith("_sdpa"))
        model.eval()

        def infer():
            with torch.inference_mode():
                model(tokens)

        tb.time_it(infer, w, n)
    elif name == "cnn_train":
        tb.bench_cnn(w, n)
    elif name == "lstm_fwd_bwd":
        tb.bench_lstm(w, n)
    else:
        sys.exit(f"unknown workload {name!r}")
    print(f"peak_rss_mib={(vm_hwm_kib() - before) / 1024.0}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("json", nargs="?", help="results of torch_baseline.py, updated in place")
    ap.add_argument("--baseline", default=DEFAULT_BASELINE)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(load_baseline(a.baseline), a.child, a.threads)
        return
    if not a.json:
        ap.error("TORCH.json is required")
    with open(a.json) as f:
        results = json.load(f)
    for th, rows in results["runs"].items():
        for name, row in rows.items():
            out = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--baseline", a.baseline,
                 "--child", name, "--threads", th],
                capture_output=True, text=True)
            mib = None
            for line in out.stdout.splitlines():
                if line.startswith("peak_rss_mib="):
                    mib = float(line.split("=", 1)[1])
            if mib is None:
                print(f"peak RSS of {name} ({th} threads) failed:\n{out.stderr}", file=sys.stderr)
            row["peak_rss_mib"] = mib
        print(f"peak RSS at {th} threads done", file=sys.stderr)
    with open(a.json, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
