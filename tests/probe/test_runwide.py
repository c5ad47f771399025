"""The run-wide tier of the probe: every step's loss and global norm leave the training process,
whatever the sampling stride, equal to torch's own figures; an unusual unsampled step is sampled
whole at once."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from bare_monitor import bare_monitor
from torch import nn

import gradtui
from gradtui.model.detectors import Limits
from gradtui.model.events import Alert, RunSteps, StepStats
from gradtui.probe.monitor import Monitor


def mlp(seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1))
    return model, torch.optim.SGD(model.parameters(), lr=0.01)


def every_step(events: list[object]) -> dict[int, tuple[float, float, bool]]:
    """step -> (loss, global norm, sampled) from StepStats and RunSteps; each step must come once."""
    out: dict[int, tuple[float, float, bool]] = {}
    for e in events:
        rows: list[tuple[int, float, float, bool]] = []
        if isinstance(e, StepStats):
            rows = [(e.step, e.loss, e.global_norm, True)]
        elif isinstance(e, RunSteps):
            rows = [(s, lo, g, False) for s, lo, g in zip(
                e.steps.tolist(), e.loss.tolist(), e.global_norm.tolist(), strict=True
            )]
        for step, loss, norm, sampled in rows:
            assert step not in out, f"step {step} sent twice"
            out[step] = (loss, norm, sampled)
    return out


def train(mon: Monitor, model: nn.Module, opt: torch.optim.Optimizer, steps: int) -> list[tuple[float, float]]:
    """The loop, and the reference: the loss and torch's own total norm of the gradients."""
    gen = torch.Generator().manual_seed(1)
    ref: list[tuple[float, float]] = []
    for _ in range(steps):
        x = torch.randn(64, 8, generator=gen)
        loss = nn.functional.mse_loss(model(x), x.sum(dim=1, keepdim=True))
        opt.zero_grad()
        loss.backward()
        mon.step(loss)
        norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
        ref.append((loss.item(), norm.item()))
        opt.step()
    return ref


@pytest.mark.parametrize("defer", [False, True], ids=["host", "deferred"])
def test_unsampled_steps_send_their_loss_and_global_norm(defer: bool) -> None:
    model, opt = mlp()
    mon = bare_monitor(model, opt, queue_size=10_000, every=5, defer=defer)
    ref = train(mon, model, opt, 43)
    mon.close()
    assert mon.events is not None
    seen = every_step(mon.events.drain())
    assert sorted(seen) == list(range(43))
    assert [s for s, v in seen.items() if v[2]] == list(range(0, 43, 5))  # the stride stays exact
    got = np.array([seen[s][:2] for s in range(43)])
    np.testing.assert_allclose(got, np.array(ref), rtol=1e-6)


def test_an_unusual_step_is_sampled_whole_at_the_default_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRADTUI_BUDGET", raising=False)
    model, opt = mlp()
    mon = gradtui.watch(model, opt, queue=10_000, serve=False, budget=1e-6)  # as sparse as sampling gets
    gen = torch.Generator().manual_seed(1)
    spike = 150
    for step in range(200):
        x = torch.randn(64, 8, generator=gen)
        target = x.sum(dim=1, keepdim=True)
        if step == spike:
            target = target * 1000.0  # one bad batch (not applied: the loop skips it, as a careful loop would)
        loss = nn.functional.mse_loss(model(x), target)
        opt.zero_grad()
        loss.backward()
        mon.step(loss)
        if step != spike:
            opt.step()
        if step == spike - 1:
            assert mon.sampling_stride == 32  # the budget has spread sampling out by then
    mon.close()
    assert mon.events is not None
    events = mon.events.drain()
    seen = every_step(events)
    assert sorted(seen) == list(range(200))
    assert seen[spike][2], "the bad batch's step was not sampled whole"
    assert math.isfinite(seen[spike][1]) and seen[spike][1] > 10 * np.median([v[1] for v in seen.values()])
    alerts = [e for e in events if isinstance(e, Alert) and e.active]
    assert {(a.step, a.kind) for a in alerts if a.level != "info"} >= {(spike, "loss_spike")}
    # The alarm brings every step back, once the publishing thread has judged the step (a step or two).
    assert sum(seen[s][2] for s in range(spike + 1, spike + 41)) >= 30
    assert sum(seen[s][2] for s in range(100, spike)) <= 4  # and before it, sampling was sparse


def test_the_screen_of_an_unsampled_step_looks_at_each_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    """A jump in one layer that the global norm does not show (a bigger layer dominates it) still has
    its step sampled whole: the screen compares every layer's norm with that layer's own limit."""
    monkeypatch.delenv("GRADTUI_BUDGET", raising=False)
    model, opt = mlp()
    mon = gradtui.watch(model, opt, serve=False)
    train(mon, model, opt, 120)
    mon.flush()
    limits = mon.detectors.run_limits() if mon.detectors is not None else None
    assert limits is not None and np.isfinite(limits.layers).all() and math.isfinite(limits.global_norm)
    # The screen the probe uses is the detectors' (replaced whole by the publishing thread).
    assert mon._judge.limits.global_norm == limits.global_norm
    # A small layer's limit well below the global one: a big layer dominates the global norm.
    mon._judge.limits = Limits(10.0, math.inf, np.array([0.1, 100.0, 100.0]))
    calm = np.array([0.05, 5.0, 5.0]) ** 2
    assert not mon._unusual(float(np.sqrt(calm.sum())), 1.0, calm)
    jumped = np.array([0.5, 5.0, 5.0]) ** 2  # 10x in the small layer; the global norm barely moves
    assert math.sqrt(jumped.sum()) < 10.0
    assert mon._unusual(float(np.sqrt(jumped.sum())), 1.0, jumped)
    assert not mon._unusual(float(np.sqrt(jumped.sum())), 1.0, None)  # read a step late: no per-layer view
    mon.close()
