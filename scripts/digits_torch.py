#!/usr/bin/env python3
"""PyTorch twin of `cargo run --release --example digits`, for the time/accuracy comparison.

Same data (data/digits/digits.csv.gz, pixels / 16, rows whose index % 5 == 0 held out),
same model (Linear 64-128-128-10 with ReLU), same training (AdamW lr 1e-3, weight decay
0.01, cross-entropy with label smoothing 0.1, batch 32 shuffled, 30 epochs). Prints the
training time (data loading excluded, evaluation included) and the held-out accuracy.

    ~/.venvs/flint-torch/bin/python scripts/digits_torch.py [--epochs 30] [--threads N]
"""
import argparse
import gzip
import time

import torch
from torch import nn

p = argparse.ArgumentParser()
p.add_argument("--epochs", type=int, default=30)
p.add_argument("--threads", type=int, default=0)
p.add_argument("--data", default="data/digits/digits.csv.gz")
a = p.parse_args()
if a.threads:
    torch.set_num_threads(a.threads)
torch.manual_seed(0)

rows = [list(map(int, line.split(","))) for line in gzip.open(a.data, "rt") if line.strip()]
x = torch.tensor([r[:64] for r in rows], dtype=torch.float32) / 16.0
y = torch.tensor([r[64] for r in rows], dtype=torch.int64)
test = torch.arange(len(rows)) % 5 == 0
xtr, ytr, xte, yte = x[~test], y[~test], x[test], y[test]
loader = torch.utils.data.DataLoader(
    torch.utils.data.TensorDataset(xtr, ytr), batch_size=32, shuffle=True
)
model = nn.Sequential(
    nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10)
)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)

start = time.perf_counter()
for epoch in range(a.epochs):
    model.train()
    for xb, yb in loader:
        loss = loss_fn(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(xte).argmax(-1) == yte).float().mean().item()
elapsed = time.perf_counter() - start
print(f"pytorch {torch.__version__}: {a.epochs} epochs in {elapsed:.2f} s, "
      f"held-out accuracy {100 * acc:.1f}% ({int(round(acc * len(yte)))}/{len(yte)}), "
      f"threads {torch.get_num_threads()}")
