"""DistributedDataParallel on 2 processes (gloo on CPU, nccl on GPUs), watched from rank 0.

    .venv/bin/torchrun --nproc-per-node 2 demos/ddp.py --steps 2000
    .venv/bin/gradtui attach          # from another terminal: rank 0 serves the stream

Every rank calls `watch` and `mon.step`; rank 0 reports the global statistics, and a
command sent from the viewer is applied on every rank at the same step.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
from sklearn.datasets import make_regression
from torch import nn

import gradtui


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000)
    args = parser.parse_args()

    cuda = torch.cuda.is_available() and torch.cuda.device_count() >= int(os.environ.get("WORLD_SIZE", "1"))
    dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank()
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}") if cuda else torch.device("cpu")
    x_np, y_np = make_regression(n_samples=4096, n_features=20, noise=5.0, random_state=rank)
    x = torch.tensor(x_np, dtype=torch.float32, device=device)
    y = torch.tensor(y_np, dtype=torch.float32, device=device).unsqueeze(1) / 100.0
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 1)).to(device)
    ddp = nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=1e-2, momentum=0.9)

    with gradtui.watch(ddp, optimizer, serve=True, run="ddp-demo") as mon:
        for _ in range(args.steps):
            idx = torch.randint(0, len(x), (128,), device=device)
            loss = nn.functional.mse_loss(ddp(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            mon.step(loss)
            optimizer.step()
    dist.barrier()  # gloo aborts a rank that tears down while its peer still talks to it
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
