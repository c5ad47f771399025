"""One rank of a 2-process gloo run, for tests/probe/test_distributed.py (not a test module).

    python tests/probe/dist_worker.py MODE RANK WORLD PORT OUT_DIR
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

import gradtui
from gradtui.model.commands import SetLR
from gradtui.model.events import StepStats

STEPS = 4
LR_CHANGE_STEP = 2


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))


def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(STEPS, 8, 6, generator=g), torch.randint(0, 3, (STEPS, 8), generator=g)


def main() -> None:
    mode, rank, world, port, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], Path(sys.argv[5])
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    mode, _, inject = mode.partition("-")
    model = make_model()
    if mode == "ddp":
        model = nn.parallel.DistributedDataParallel(model)
    elif mode == "fsdp1":
        from torch.distributed.fsdp import FullyShardedDataParallel

        model = FullyShardedDataParallel(model, use_orig_params=True)
    elif mode == "fsdp2":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (world,))
        for layer in model:
            if isinstance(layer, nn.Linear):
                fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = gradtui.watch(model, opt, queue=True, detail_every=1, detectors=False)
    xs, ys = data()
    per = xs.shape[1] // world
    lrs = []
    for step in range(STEPS):
        x, y = xs[step, rank * per : (rank + 1) * per], ys[step, rank * per : (rank + 1) * per]
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        if inject == "nan" and rank == 1 and step == STEPS - 1:
            first = next(p for p in model.parameters() if p.grad is not None)
            grad = first.grad.to_local() if hasattr(first.grad, "to_local") else first.grad  # type: ignore[union-attr]
            grad.view(-1)[0] = float("nan")
        if step == LR_CHANGE_STEP and rank == 0:
            mon.send(SetLR(value=0.05))  # as if a viewer attached to rank 0 sent it
        mon.step(loss)
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
    mon.close()
    result: dict[str, object] = {"lrs": lrs, "layers": mon.layer_names}
    if mon.events is not None:
        steps = [e for e in mon.events.drain() if isinstance(e, StepStats)]
        result["grad_norm"] = [s.grad_norm.tolist() for s in steps]
        result["mean_abs"] = [s.mean_abs.tolist() for s in steps if s.mean_abs is not None]
        result["max_abs"] = [s.max_abs.tolist() for s in steps if s.max_abs is not None]
        result["weight_norm"] = [s.weight_norm.tolist() for s in steps if s.weight_norm is not None]
        result["grad_hist"] = [s.grad_hist.tolist() for s in steps if s.grad_hist is not None]
        result["loss"] = [s.loss for s in steps]
        result["stat_lrs"] = [list(s.lrs) for s in steps]
        result["nonfinite_ranks"] = [list(s.nonfinite_ranks) for s in steps]
        result["nonfinite"] = [s.nonfinite.tolist() for s in steps]
    (out / f"rank{rank}.json").write_text(json.dumps(result))
    dist.barrier()  # neither rank tears down gloo while the other still talks to it
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
