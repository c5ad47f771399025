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
from gradtui.model.events import Alert, RunSteps, StepStats, run_rows
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
            rows = [(s, lo, math.nan if g is None else g, False) for s, lo, g, _ in run_rows(e)]
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


def test_an_unusual_step_is_sampled_whole_at_the_default_settings() -> None:
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
        if step == spike + 1:
            mon.flush()  # the publishing thread has judged the spike (the lag is the machine's, not asserted)
        if step == spike - 1:
            assert mon.sampling_stride == 32  # the budget has spread sampling out by then
    mon.close()
    assert mon.events is not None
    events = mon.events.drain()
    seen = every_step(events)
    assert sorted(seen) == list(range(200))
    assert any(isinstance(e, RunSteps) and e.canary_layers is not None and e.step < spike for e in events), (
        "the budget did not choose canaries: this test no longer covers them"
    )
    assert seen[spike][2], "the bad batch's step was not sampled whole"
    assert math.isfinite(seen[spike][1]) and seen[spike][1] > 10 * np.nanmedian([v[1] for v in seen.values()])
    alerts = [e for e in events if isinstance(e, Alert) and e.active]
    assert {(a.step, a.kind) for a in alerts if a.level != "info"} >= {(spike, "loss_spike")}
    # The alarm brings every step back, once the publishing thread has judged the step.
    assert all(seen[s][2] for s in range(spike + 2, spike + 42))
    assert sum(seen[s][2] for s in range(100, spike)) <= 4  # and before it, sampling was sparse


def test_the_screen_of_an_unsampled_step_looks_at_each_layer() -> None:
    """A jump in one layer that the global norm does not show (a bigger layer dominates it) still has
    its step sampled whole: the screen compares every layer's norm with that layer's own limit."""
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
    unusual = mon._runwide.unusual
    calm = np.array([0.05, 5.0, 5.0]) ** 2
    assert not unusual(float(np.sqrt(calm.sum())), 1.0, calm)
    jumped = np.array([0.5, 5.0, 5.0]) ** 2  # 10x in the small layer; the global norm barely moves
    assert math.sqrt(jumped.sum()) < 10.0
    assert unusual(float(np.sqrt(jumped.sum())), 1.0, jumped)
    assert not unusual(float(np.sqrt(jumped.sum())), 1.0, None)  # read a step late: no per-layer view
    mon.close()


class _HeadFirst(nn.Module):
    """Registered head first, used last: the canaries follow backward, not the order of definition."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(32, 1)
        self.mid = nn.Linear(32, 32)
        self.inp = nn.Linear(8, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.mid(torch.relu(self.inp(x)))))


def _canary_run(freeze_at: int | None = None) -> tuple[list[object], list[dict[str, float]], list[str]]:
    """200 steps at a budget too small for a pass over every gradient; torch's own per-layer norms."""
    torch.manual_seed(0)
    model = _HeadFirst()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    mon = gradtui.watch(model, opt, queue=10_000, serve=False, budget=1e-6)
    gen = torch.Generator().manual_seed(1)
    ref: list[dict[str, float]] = []
    for step in range(200):
        if step == freeze_at:
            model.inp.requires_grad_(False)
            for p in model.inp.parameters():
                p.grad = None
        x = torch.randn(64, 8, generator=gen)
        loss = nn.functional.mse_loss(model(x), x.sum(dim=1, keepdim=True))
        opt.zero_grad()
        loss.backward()
        mon.step(loss)
        ref.append(
            {
                name: float(torch.linalg.vector_norm(torch.cat([p.grad.reshape(-1) for p in m.parameters()])))
                for name, m in model.named_children()
                if all(p.grad is not None for p in m.parameters())
            }
        )
        opt.step()
    mon.close()
    assert mon.events is not None
    return mon.events.drain(), ref, mon.layer_names


def test_where_a_pass_over_every_gradient_costs_too_much_unsampled_steps_measure_the_canaries() -> None:
    events, ref, names = _canary_run()
    runs = [e for e in events if isinstance(e, RunSteps)]
    canary = [e for e in runs if e.canary_layers is not None]
    assert canary, "the budget never chose canaries"
    for e in canary:
        assert e.global_norm is None  # a norm over some layers is not the global norm
        # The layer backward fills last (the input end) and the one it fills first (the head).
        assert [names[i] for i in e.canary_layers.tolist()] == ["head", "inp"]
        assert e.canary_norm is not None
        for row, step in zip(e.canary_norm, e.steps.tolist(), strict=True):
            np.testing.assert_allclose(row, [ref[step]["head"], ref[step]["inp"]], rtol=1e-6)
    seen = every_step(events)
    assert sorted(seen) == list(range(200))  # every step once, its loss included
    assert all(math.isfinite(v[0]) for v in seen.values())


def test_a_frozen_canary_has_its_steps_measured_whole() -> None:
    events, ref, _ = _canary_run(freeze_at=120)
    seen = every_step(events)
    assert sorted(seen) == list(range(200))
    after = [s for s in range(121, 200) if not seen[s][2]]
    assert after, "no unsampled step after the freeze"
    for s in after:  # the input layer has no gradient now: the step is measured whole, not by canaries
        want = math.sqrt(sum(v * v for v in ref[s].values()))
        assert seen[s][1] == pytest.approx(want, rel=1e-6)
