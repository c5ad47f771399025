"""Mixed precision with torch.amp, the standard recipe: `mon.step(loss, scaler=scaler)` right
after backward; gradtui reads the scale (never touching the scaler), so the statistics
describe the unscaled gradients, and `unscale_`, `clip_grad_norm_` and `scaler.step` stay
yours. The record shows the norm before clipping and the norm the optimizer stepped with.

    .venv/bin/python demos/amp_loop.py --record amp.gtr && .venv/bin/gradtui report amp.gtr
"""

from __future__ import annotations

import argparse

import torch
from sklearn.datasets import make_classification
from torch import nn

import gradtui


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--record", default=None)
    args = parser.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.bfloat16
    torch.manual_seed(0)
    x_np, y_np = make_classification(n_samples=2048, n_features=32, n_informative=16, random_state=0)
    x = torch.tensor(x_np, dtype=torch.float32, device=device)
    y = torch.tensor(y_np, device=device)
    model = nn.Sequential(nn.Linear(32, 256), nn.GELU(), nn.Linear(256, 256), nn.GELU(), nn.Linear(256, 2)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler(device)

    with gradtui.watch(model, optimizer, record=args.record) as mon:
        for step in range(args.steps):
            idx = torch.randint(0, len(x), (256,), device=device)
            with torch.autocast(device, dtype=dtype):
                loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad()
            scaler.scale(loss).backward()
            mon.step(loss, scaler=scaler)  # after backward, before unscale_ and clipping
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(optimizer)
            scaler.update()
            if step % 100 == 0:
                print(f"step {step}: loss {loss.item():.4f} scale {scaler.get_scale():g}")


if __name__ == "__main__":
    main()
