#!/usr/bin/env python3
"""PyTorch eager on one CUDA GPU: the comparison for Flint's `cuda` bench.

Usage:
    python3 benches/torch_gpu.py OUT.json [--warmup 5] [--iters 20] [--quick] [--profile]

Workloads (the GPU counterparts of `torch_baseline.py`'s, same definitions, larger sizes):

  matmul_{dtype}_{n}  a, b = randn(n, n) on cuda:0; time `a @ b` (a fresh output each call),
                      dtype f32 (TF32 off), tf32 (f32 tensors, TF32 tensor cores allowed),
                      bf16; n in 2048, 4096, 8192. FLOPs = 2 n^3.
  transformer_train   workload C's TinyLM and training step (AdamW, label smoothing 0.1,
                      dropout 0.1, causal masked attention written out) at the size of
                      issue 8: batch 64, seq 512, d_model 1024, 16 heads (head_dim 64),
                      d_ff 4096, vocab 1000; f32 with TF32 off.
  transformer_train_sdpa  the same with F.scaled_dot_product_attention (is_causal).
  attention_sdpa      that step's attention core alone: F.scaled_dot_product_attention of
                      q, k, v = randn(64, 16, 512, 64) (f32, requires_grad), is_causal,
                      dropout_p 0.1, then backward from a fixed randn output gradient.
  attention_sdpa_bf16 the same in bf16 (PyTorch's flash-attention kernels).
                      FLOPs 2 B H T^2 D (2 + 5) / 2 (causal half; the backward recomputes
                      q k^T).

With --profile, one more step of each transformer workload runs under torch.profiler and
its CUDA kernels are printed, largest total first (the counterpart of Flint's `--profile`).

Each time is the median of `iters` steps, each followed by torch.cuda.synchronize() and
timed with time.perf_counter (as Flint's bench does: each step queued, then waited for),
after `warmup` untimed steps. Prints a markdown table and writes JSON
{"device": ..., "runs": {name: {"median_ms", "min_ms", "flops"}}}.
"""

import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_baseline import TinyLM  # noqa: E402  (workload C's model, same definition)

# the size issue 8 names for the GPU transformer step
GPU_TF = dict(V=1000, D=1024, H=16, F=4096, T=512, B=64)


def time_cuda(fn, warmup, iters):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        ts.append(time.perf_counter() - t0)
    ts.sort()
    return {"median_ms": statistics.median(ts) * 1e3, "min_ms": ts[0] * 1e3}


def bench_matmul(dtype, n, warmup, iters):
    torch.backends.cuda.matmul.allow_tf32 = dtype == "tf32"
    torch.manual_seed(0)
    dt = torch.bfloat16 if dtype == "bf16" else torch.float32
    a = torch.randn(n, n, device="cuda", dtype=dt)
    b = torch.randn(n, n, device="cuda", dtype=dt)
    r = time_cuda(lambda: a @ b, warmup, iters)
    torch.backends.cuda.matmul.allow_tf32 = False
    r["flops"] = 2.0 * n**3
    return r


def transformer_flops(c):
    V, D, H, Fd, T, B = c["V"], c["D"], c["H"], c["F"], c["T"], c["B"]
    return 2.0 * B * T * (D * 3 * D + D * D + 2 * D * Fd + D * V) + 4.0 * B * H * T * T * (D // H)


def profile_step(name, step):
    """One step under torch.profiler: a table of the CUDA kernels, largest total first."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    rows = []
    for e in prof.key_averages():
        t = getattr(e, "device_time_total", None)
        if t is None:
            t = getattr(e, "cuda_time_total", 0)
        if t > 0:
            rows.append((t / 1e3, e.count, e.key))
    rows.sort(reverse=True)
    total = sum(r[0] for r in rows)
    print(f"profile of one step ({name}): {total:.3f} ms of device time in "
          f"{sum(r[1] for r in rows)} kernels")
    print("| ms | % | calls | kernel |")
    print("|---:|---:|---:|---|")
    for ms, calls, key in rows[:40]:
        print(f"| {ms:.3f} | {100 * ms / total:.1f} | {calls} | {key[:110]} |")


def bench_transformer(c, sdpa, warmup, iters, profile=False):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    V, T, B = c["V"], c["T"], c["B"]
    tokens = torch.randint(0, V, (B, T)).cuda()
    targets = torch.randint(0, V, (B, T)).cuda()
    model = TinyLM(V, c["D"], c["H"], c["F"], T, 0.1, sdpa).cuda()
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=0.01)

    def step():
        logits = model(tokens)
        loss = loss_fn(logits.view(B * T, V), targets.view(B * T))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    model.train()
    r = time_cuda(step, warmup, iters)
    if profile:
        profile_step("sdpa" if sdpa else "attention written out", step)
    r["flops"] = 3 * transformer_flops(c)
    r["peak_mem_mib"] = torch.cuda.max_memory_allocated() / 2**20
    torch.cuda.reset_peak_memory_stats()
    return r


ATTN = dict(B=64, H=16, T=512, D=64)


def bench_attention(warmup, iters, dtype=torch.float32):
    import torch.nn.functional as F

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    B, H, T, D = ATTN["B"], ATTN["H"], ATTN["T"], ATTN["D"]
    q, k, v = (torch.randn(B, H, T, D, device="cuda").to(dtype).requires_grad_()
               for _ in range(3))
    g = torch.randn(B, H, T, D, device="cuda").to(dtype)

    def step():
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=0.1)
        o.backward(g)
        for x in (q, k, v):
            x.grad = None

    r = time_cuda(step, warmup, iters)
    r["flops"] = 2.0 * B * H * T * T * D * 7 / 2
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("json_out")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="warmup 2, iters 5")
    ap.add_argument("--profile", action="store_true",
                    help="print the CUDA kernels of one transformer step")
    args = ap.parse_args()
    if args.quick:
        args.warmup, args.iters = 2, 5
    if not torch.cuda.is_available():
        print("SKIPPED (no CUDA): torch_gpu")
        return
    runs = {}
    for dtype in ("f32", "tf32", "bf16"):
        for n in (2048, 4096, 8192):
            runs[f"matmul_{dtype}_{n}"] = bench_matmul(dtype, n, args.warmup, args.iters)
    for sdpa in (False, True):
        name = "transformer_train" + ("_sdpa" if sdpa else "")
        runs[name] = bench_transformer(GPU_TF, sdpa, args.warmup, args.iters, args.profile)
    runs["attention_sdpa"] = bench_attention(args.warmup, args.iters)
    runs["attention_sdpa_bf16"] = bench_attention(args.warmup, args.iters, torch.bfloat16)
    out = {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "config": GPU_TF,
        "runs": runs,
    }
    with open(args.json_out, "w") as f:
        json.dump(out, f, indent=1)
    print(f"PyTorch {torch.__version__} on {out['device']}")
    print("| workload | median ms | min ms | TFLOP/s |")
    print("|---|---:|---:|---:|")
    for name, r in runs.items():
        print(f"| {name} | {r['median_ms']:.3f} | {r['min_ms']:.3f} | "
              f"{r['flops'] / r['median_ms'] / 1e9:.1f} |")


if __name__ == "__main__":
    main()
