#!/usr/bin/env python3
"""PyTorch's side of benches/memory.rs: bytes in use during workload C's training step.

Usage (scripts/compare-memory.sh does this):
    LD_PRELOAD=peak_malloc.so python benches/torch_memory.py OUT.json [--batch 2]

Needs the counting malloc of benches/peak_malloc.c preloaded. Builds the baseline's
TinyLM (benches/torch_baseline.py) at issue 8's model size (d_model 1024, 16 heads,
d_ff 4096, sequence 512, vocabulary 1000, dropout 0.1) with a small batch, CPU, f32,
written-out attention and F.scaled_dot_product_attention; after one warm-up step, a
second step reports, above the bytes in use before it, what the forward and the loss
keep (`kept_mib`) and the step's peak (`peak_mib`: forward, backward, AdamW,
zero_grad(set_to_none=True)), as benches/memory.rs measures Flint.
"""

import argparse
import ctypes
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from torch_baseline import TinyLM  # noqa: E402

MIB = 1024.0 * 1024.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--batch", type=int, default=2)
    a = ap.parse_args()
    lib = ctypes.CDLL(None)
    try:
        in_use, peak, reset = lib.peak_malloc_in_use, lib.peak_malloc_peak, lib.peak_malloc_reset
    except AttributeError:
        sys.exit("benches/peak_malloc.c is not preloaded (LD_PRELOAD); see scripts/compare-memory.sh")
    in_use.restype = peak.restype = ctypes.c_long
    torch.set_num_threads(2)
    V, D, H, F, T, B = 1000, 1024, 16, 4096, 512, a.batch
    rows = {}
    for sdpa in (False, True):
        torch.manual_seed(0)
        tokens = torch.randint(0, V, (B, T))
        targets = torch.randint(0, V, (B, T))
        model = TinyLM(V, D, H, F, T, 0.1, sdpa)
        loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.999), eps=1e-8,
                                weight_decay=0.01)
        model.train()
        for _ in range(2):
            before = in_use()
            reset()
            loss = loss_fn(model(tokens).view(B * T, V), targets.view(B * T))
            kept = in_use() - before
            loss.backward()
            del loss
            opt.step()
            opt.zero_grad(set_to_none=True)
            result = {"batch": B, "kept_mib": kept / MIB, "peak_mib": (peak() - before) / MIB}
        name = "transformer_train_sdpa" if sdpa else "transformer_train"
        rows[name] = result
        print(f"{name}: {result}", file=sys.stderr)
    with open(a.out, "w") as f:
        json.dump({**rows, "torch": torch.__version__}, f, indent=1)


if __name__ == "__main__":
    main()
