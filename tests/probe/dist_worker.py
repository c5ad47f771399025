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
from gradtui.model.commands import Rollback, SetLR
from gradtui.model.events import GuardAction, StepStats

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
    if inject == "guard":
        guarded(model, rank, out)
        return
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


def guarded(model: nn.Module, rank: int, out: Path) -> None:
    """Adam + StepLR under the guard: rank 0 asks for a rollback at step 1 (as its detectors
    would), rank 1's gradients turn NaN at step 3 (patience 1: one non-finite step rolls back);
    both ranks must act at the same steps."""
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.9)
    guard = gradtui.Guard(snapshot_every=2, lr_factor=0.5, patience=1)
    mon = gradtui.watch(model, opt, queue=True, every=1, guard=guard)
    xs, ys = data()
    per = xs.shape[1] // 2
    start: dict[str, torch.Tensor] = {}
    back, lrs = [], []
    covered: list[bool] = []
    for step in range(STEPS):
        if step == 0:
            start = {k: v.clone() for k, v in model.state_dict().items()}
        x, y = xs[step, rank * per : (rank + 1) * per], ys[step, rank * per : (rank + 1) * per]
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        if step == 3 and rank == 1:
            next(iter(model.parameters())).grad.view(-1)[0] = float("nan")  # type: ignore[union-attr]
        if step == 1 and rank == 0:
            mon.send(Rollback("asked by the test"))
        if step == 0 and rank == 0:
            mon.capture(2)  # asked on rank 0 alone: every rank must arm it at the same step
        mon.step()
        covered.append(mon._capture.covers(step + 1))  # armed at this boundary for the next steps
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        if all(torch.equal(v, start[k]) for k, v in model.state_dict().items()):
            back.append(step)  # rolled back, and the optimizer step after it applied nothing
        sched.step()
    mon.close()
    actions = [[e.step, e.action] for e in mon.events.drain() if isinstance(e, GuardAction)] if mon.events else []
    weights = [v.tolist() for v in model.state_dict().values()]
    found = {"back": back, "lrs": lrs, "actions": actions, "w": weights, "covered": covered}
    (out / f"rank{rank}.json").write_text(json.dumps(found))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    # Results are written and the group destroyed: leave without the interpreter's teardown, where
    # gloo's threads now and then abort the process ("terminate called without an active exception").
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
