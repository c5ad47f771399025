"""Issue 28, items 7 and 11: a snapshot holds only a finite state, and a skip holds for closure
optimizers. A NaN gradient under a finite loss at a step whose gradients were not read leaves
NaN in embedding rows the next batches do not use; no snapshot takes them in, and the guard
rolls the poisoned state back at once. `optimizer.step(closure)` recomputes the gradients a
skip threw away: the guard puts the step back. LBFGS keeps its state in lists: the snapshot
size counts them."""

from __future__ import annotations

import copy
import logging
import math
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils._pytree import tree_leaves

import gradtui
from gradtui import Guard
from gradtui.model.events import GuardAction, LogLine
from gradtui.probe.monitor import Monitor
from gradtui.probe.options import Instruments, Output, Sampling, Serving
from gradtui.probe.snapshot import state_bytes, take

# ---------------------------------------------------------------- 7. poisoned snapshots

ROWS, USED, RETURNS = 64, 32, 60
"""Embedding rows; the batches use rows below USED until step RETURNS, then all of them."""


class Bag(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(ROWS, 8)
        self.head = nn.Linear(8, 1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.emb(ids).mean(1))


def tokens(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(500 + step)
    rows = ROWS if step >= RETURNS else USED
    return torch.randint(0, rows, (16, 4), generator=g), torch.randn(16, 1, generator=g)


def test_a_nan_row_the_next_batches_do_not_use_never_enters_a_snapshot() -> None:
    torch.manual_seed(0)
    model = Bag()
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    # As on CUDA: gradients read at sampled steps only (a stride of 4), the loss at every step. No
    # detectors: the alarm the NaN norm raises a step late would hold snapshots back by as many
    # steps as the publishing thread lags.
    mon = Monitor(
        model,
        opt,
        sampling=Sampling(every=4),
        output=Output(queue_size=10_000),
        serving=Serving(connect=False),
        instruments=Instruments(detectors=False, guard=Guard(snapshot_every=10), defer=True),
    )
    losses = []
    for it in range(90):
        ids, y = tokens(it)
        loss = nn.functional.mse_loss(model(ids), y)
        opt.zero_grad()
        loss.backward()
        if it == 5:  # unsampled, the loss finite: the NaN goes in unseen
            model.emb.weight.grad[ROWS - 1, 0] = math.nan  # type: ignore[index]
        losses.append(loss.item())
        mon.step(loss)
        opt.step()
    mon.close()
    actions = [(e.step, e.action, e.detail) for e in mon.events.drain() if isinstance(e, GuardAction)]
    assert [a[1] for a in actions] == ["rollback", "lr_cut"], actions
    assert "(the weights are not finite at step " in actions[0][2] and "rolled back to step 0 " in actions[0][2]
    assert all(math.isfinite(x) for x in losses), "a NaN loss when the row came back into use"
    assert mon.guard is not None
    for snap in (mon.guard.confirmed, mon.guard.candidate):
        assert snap is not None
        assert all(torch.isfinite(t).all() for t in tree_leaves((snap.model, snap.optimizers)) if torch.is_tensor(t))


# ---------------------------------------------------------------- 11. closure optimizers


def regression(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(700 + step)
    x = torch.randn(64, 5, generator=g)
    if step == 4:
        x[3, 1] = math.nan  # a corrupt record: every evaluation of this batch is NaN
    return x, x @ torch.arange(1.0, 6.0)[:, None] + 0.1 * torch.randn(64, 1, generator=g)


def lbfgs_run(watched: bool, steps: int = 8) -> tuple[nn.Module, torch.optim.Optimizer, Any, dict[int, Any]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 1))
    opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=5, history_size=4)
    mon = gradtui.watch(model, opt, queue=1000, serve=False, every=1, guard=True) if watched else None
    starts = {}
    for it in range(steps):
        x, y = regression(it)

        def closure(x: torch.Tensor = x, y: torch.Tensor = y) -> torch.Tensor:
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            return loss

        starts[it] = (copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()))
        loss = closure()
        if mon is not None:
            mon.step(loss)
        if watched or it != 4:  # plain torch leaves the corrupt batch out itself
            opt.step(closure)
    if mon is not None:
        mon.close()
    return model, opt, mon, starts


def test_a_skip_holds_when_the_optimizer_steps_with_a_closure() -> None:
    model, opt, mon, starts = lbfgs_run(True)
    plain, _, _, _ = lbfgs_run(False)
    assert [(e.step, e.action) for e in mon.events.drain() if isinstance(e, GuardAction)] == [(4, "skip")]
    for (name, a), b in zip(model.state_dict().items(), plain.state_dict().values(), strict=True):
        assert torch.equal(a, b), name  # the bad step undone, weights and LBFGS history alike


def test_a_skip_inside_a_closure_that_is_called_once_holds_as_lightning_steps() -> None:
    def run(watched: bool) -> nn.Module:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 1))
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        mon = gradtui.watch(model, opt, queue=1000, serve=False, every=1, guard=True) if watched else None
        for it in range(8):
            x, y = regression(it)

            def closure(x: torch.Tensor = x, y: torch.Tensor = y) -> torch.Tensor:
                opt.zero_grad()
                loss = nn.functional.mse_loss(model(x), y)
                loss.backward()
                if mon is not None:
                    mon.step(loss)
                return loss

            if watched or it != 4:
                opt.step(closure)
        if mon is not None:
            mon.close()
        return model

    for a, b in zip(run(True).parameters(), run(False).parameters(), strict=True):
        assert torch.equal(a, b)


def test_lbfgs_calling_mon_step_in_its_closure_gets_one_line_and_a_guard_that_stands_down(
    caplog: pytest.LogCaptureFixture,
) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 1))
    opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=5)
    mon = gradtui.watch(model, opt, queue=1000, serve=False, every=1, guard=True)
    with caplog.at_level(logging.WARNING, logger="gradtui"):
        for it in range(3):
            x, y = regression(it)

            def closure(x: torch.Tensor = x, y: torch.Tensor = y) -> torch.Tensor:
                opt.zero_grad()
                loss = nn.functional.mse_loss(model(x), y)
                loss.backward()
                mon.step(loss)
                return loss

            opt.step(closure)
        mon.close()
    lines = [r.getMessage() for r in caplog.records if "stands down" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("gradtui guard: LBFGS.step() calls its closure")


def test_the_snapshot_size_counts_state_kept_in_lists(caplog: pytest.LogCaptureFixture) -> None:
    model, opt, _, _ = lbfgs_run(False, steps=6)
    assert any(isinstance(v, list) for st in opt.state.values() for v in st.values())  # LBFGS's history
    expected = sum(
        t.numel() * t.element_size()
        for t in tree_leaves((model.state_dict(), opt.state_dict()["state"]))
        if torch.is_tensor(t)
    )
    assert state_bytes(model, [opt]) == expected
    assert take(0, model, [opt]).nbytes == expected
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    assert expected > 4 * params, "the history is most of it"
    # A bound the parameters and the moments kept in dicts fit, the lists not: no snapshot.
    torch.manual_seed(0)
    mon = gradtui.watch(model, opt, queue=1000, serve=False, guard=Guard(max_snapshot_bytes=2 * params))
    x, y = regression(0)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    mon.step(closure())
    opt.step(closure)
    mon.close()
    logs = [e.text for e in mon.events.drain() if isinstance(e, LogLine)]
    assert any("over max_snapshot_bytes" in t and "no snapshots" in t for t in logs), logs
    assert mon.guard is not None and mon.guard.snapshots_taken == 0
