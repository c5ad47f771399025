"""A plain PyTorch loop with gradtui: three added lines (marked ###).

    .venv/bin/python demos/plain_loop.py --record moons.gtr && .venv/bin/gradtui report moons.gtr
"""

from __future__ import annotations

import argparse

import torch
from sklearn.datasets import make_moons
from torch import nn

import gradtui


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--record", default=None, help="record file to write")
    args = parser.parse_args()

    torch.manual_seed(0)
    x_np, y_np = make_moons(n_samples=1024, noise=0.2, random_state=0)
    x, y = torch.tensor(x_np, dtype=torch.float32), torch.tensor(y_np)
    model = nn.Sequential(nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

    mon = gradtui.watch(model, optimizer, record=args.record)  ###
    for step in range(args.steps):
        idx = torch.randint(0, len(x), (128,))
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        optimizer.zero_grad()
        loss.backward()
        mon.step(loss)  ###
        optimizer.step()
        if step % 100 == 0:
            print(f"step {step}: loss {loss.item():.4f}")
    mon.close()  ###


if __name__ == "__main__":
    main()
