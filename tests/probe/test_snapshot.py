"""Snapshots of the training state in host memory, and exact restores (the guard's rollback)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from gradtui.probe.snapshot import restore, state_bytes, take


def setup() -> tuple[nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=1e-4)
    warm = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=4)
    cos = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=20)
    sched = torch.optim.lr_scheduler.SequentialLR(opt, [warm, cos], milestones=[4])
    return model, opt, sched


def train(model: nn.Module, opt: torch.optim.Optimizer, sched: object, steps: int, seed: int) -> list[float]:
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        x, y = torch.randn(32, 6, generator=gen), torch.randint(0, 3, (32,), generator=gen)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        sched.step()  # type: ignore[attr-defined]
        losses.append(float(loss.detach()))
    return losses


def test_a_restore_gives_back_the_exact_state_and_the_same_future() -> None:
    """Adam (moments, step counts), a warm-up + cosine scheduler and BatchNorm's running stats:
    after a restore, the run continues bit for bit as it did from the snapshot."""
    model, opt, sched = setup()
    train(model, opt, sched, 6, seed=1)
    snap = take(6, model, [opt], [sched])
    params = copy.deepcopy(model.state_dict())
    moments = copy.deepcopy(opt.state_dict())
    lr = opt.param_groups[0]["lr"]
    future = train(model, opt, sched, 8, seed=2)
    after = copy.deepcopy(model.state_dict())

    restore(snap, model, [opt], [sched])
    for name, value in params.items():
        assert torch.equal(model.state_dict()[name], value), name
    now = opt.state_dict()
    for i, state in moments["state"].items():
        for key, value in state.items():
            assert torch.equal(now["state"][i][key], value), (i, key)
    assert opt.param_groups[0]["lr"] == lr
    assert train(model, opt, sched, 8, seed=2) == future  # the same losses, bit for bit
    for name, value in after.items():
        assert torch.equal(model.state_dict()[name], value), name


def test_the_snapshot_is_a_copy_and_can_be_restored_twice() -> None:
    model, opt, sched = setup()
    train(model, opt, sched, 3, seed=1)
    snap = take(3, model, [opt], [sched])
    first = copy.deepcopy(model.state_dict())
    train(model, opt, sched, 3, seed=2)
    restore(snap, model, [opt], [sched])
    once = train(model, opt, sched, 3, seed=2)
    restore(snap, model, [opt], [sched])
    assert train(model, opt, sched, 3, seed=2) == once
    restore(snap, model, [opt], [sched])
    for name, value in first.items():
        assert torch.equal(model.state_dict()[name], value), name
    # The parameters are the same objects: the optimizer (and a DDP wrapper) still hold them.
    assert [id(p) for p in model.parameters()] == [id(p) for g in opt.param_groups for p in g["params"]]


def test_its_size_is_what_the_state_holds() -> None:
    model, opt, sched = setup()
    train(model, opt, sched, 2, seed=1)
    snap = take(2, model, [opt], [sched])
    params = sum(p.numel() for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    # Adam: two float32 moments per parameter value, and a float32 step count per parameter.
    expected = 4 * params + buffers + 4 * 2 * params + 4 * len(list(model.parameters()))
    assert snap.nbytes == state_bytes(model, [opt]) == expected
    assert snap.ready()


def test_a_snapshot_of_other_optimizers_is_refused() -> None:
    model, opt, sched = setup()
    snap = take(0, model, [opt], [sched])
    with pytest.raises(ValueError, match="other optimizers"):
        restore(snap, model, [opt, opt], [sched])
