#!/usr/bin/env python3
"""The table of PyTorch against Flint from the two workload JSON files.

Usage: compare_workloads.py TORCH.json FLINT.json [QUICK]

TORCH.json is benches/torch_baseline.py's output, FLINT.json benches/workloads.rs's;
a non-empty QUICK marks the table as a smoke test. Used by scripts/bench-vs-torch.sh and
by the CPU run of scripts/gpu-check.sh.
"""
import json, sys
torch, flint = (json.load(open(p)) for p in sys.argv[1:3])
m, c = torch["machine"], torch["config"]
print(f"torch {m.get('torch')} ({m.get('cpu_capability')}) vs Flint; {m.get('cpu_model', '?')}, "
      f"{m.get('nproc')} CPUs; each cell = median over {c['repeats']} repeats of the median "
      f"of {c['iters']} timed steps after {c['warmup']} warm-up"
      + (" (--quick: a smoke test, not for the record)" if sys.argv[3] else "") + "\n")
print("| workload | threads | PyTorch ms | Flint ms | Flint / PyTorch | PyTorch peak RSS MiB "
      "| Flint peak RSS MiB | max other load (cores) torch / flint |")
print("|---|---:|---:|---:|---:|---:|---:|---|")
f2 = lambda x: "n/a" if x is None else f"{x:.2f}"
f1 = lambda x: "n/a" if x is None else f"{x:.1f}"
threads = c["threads"]
for name in torch["runs"][str(threads[0])]:
    for t in threads:
        a = torch["runs"][str(t)][name]
        b = flint["runs"].get(str(t), {}).get(name)
        if b is None:
            continue
        print(f"| {name} | {t} | {a['median_ms']:.2f} | {b['median_ms']:.2f} "
              f"| {b['median_ms'] / a['median_ms']:.2f} "
              f"| {f1(a.get('peak_rss_mib'))} | {f1(b.get('peak_rss_mib'))} "
              f"| {f2(a['foreign_cores_max'])} / {f2(b['foreign_cores_max'])} |")
