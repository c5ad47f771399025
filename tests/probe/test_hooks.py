"""The probe's hooks on the watched parameters go without a trace: torch keeps a wrapper around a
tensor's hooks after the last one is removed, and calls it, taking the GIL, at every backward pass
(on the 50x128 MLP of `benchmarks/phases.py` that alone slowed backward by 0.1-0.4 ms a step)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import gradtui
from gradtui.model.events import Capture


def hooked(model: nn.Module) -> list[nn.Parameter]:
    """The parameters torch still calls into Python for during backward."""
    return [
        p for p in model.parameters() if p._backward_hooks is not None or p._post_accumulate_grad_hooks is not None
    ]


def test_the_fill_order_and_a_capture_leave_only_the_backward_signal_and_the_users_own_hook() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    fired: list[int] = []
    users = model[2].weight
    users.register_hook(lambda _g: fired.append(1))  # a hook of the loop's own: it stays, and fires
    mon = gradtui.watch(model, opt, queue=True)
    x, y = torch.randn(32, 8), torch.randn(32, 1)

    def step() -> None:
        loss = F.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        mon.step(loss)
        opt.step()

    step()  # the first backward pass: its fill order is learned, and the hooks that learned it go
    mon.capture(3)
    for _ in range(6):
        step()
    assert mon.events is not None
    captures = [e for e in mon.events.drain() if isinstance(e, Capture)]
    assert [c.ended for c in captures] == [False, True]  # a capture armed its checks, ran and ended

    first = mon._order.params[mon._order.order[0]]  # the signal at each backward's start
    assert first is model[4].weight or first is model[4].bias
    assert {id(p) for p in hooked(model)} == {id(first), id(users)}
    mon.close()
    assert hooked(model) == [users]
    before = len(fired)
    F.mse_loss(model(x), y).backward()
    assert len(fired) == before + 1
