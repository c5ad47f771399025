"""The probe's publishing thread: the loop never waits for the sinks, nothing is lost or reordered."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import torch
from torch import nn

import gradtui
from gradtui.model.detectors import Detectors
from gradtui.model.events import Alert, Event, RunEnd, RunStart, StepStats
from gradtui.probe import publisher as publisher_mod
from gradtui.probe.publisher import Publisher


class BlockingSink:
    """Holds every event until `release` is set; records the thread each arrived on."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.events: list[Event] = []
        self.threads: set[int] = set()

    def emit(self, event: Event, frame: bytes | None = None) -> None:
        self.threads.add(threading.get_ident())
        self.release.wait(30)
        self.events.append(event)

    def close(self) -> None:
        pass


def _train(mon: gradtui.Monitor, model: nn.Module, opt: torch.optim.Optimizer, steps: int) -> None:
    x, y = torch.randn(8, 4), torch.randn(8, 1)
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        mon.step(loss)
        opt.step()


@pytest.mark.usefixtures("every_step_sampling")  # counts sampled steps
def test_the_loop_goes_on_while_a_sink_is_stuck_and_every_event_arrives_in_order() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = gradtui.watch(model, opt, queue=True, serve=False)
    sink = BlockingSink()
    mon.add_sink(sink)
    loop = threading.Thread(target=_train, args=(mon, model, opt, 40))
    loop.start()
    loop.join(20)  # a liveness bound, not a speed one: with the sink stuck, a blocking probe never ends
    stuck = loop.is_alive()
    sink.release.set()
    loop.join()
    assert not stuck, "mon.step waited for a sink"
    mon.close()
    assert threading.get_ident() not in sink.threads and loop.ident not in sink.threads
    steps = [e.step for e in sink.events if isinstance(e, StepStats)]
    assert steps == list(range(40))
    assert isinstance(sink.events[-1], RunEnd)
    assert mon.events is not None
    queued = [e for e in mon.events.drain() if not isinstance(e, RunStart)]
    assert [type(e) for e in queued] == [type(e) for e in sink.events]


def test_a_failing_detector_costs_its_step_alerts_not_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    original = Detectors.update

    def update(self: Detectors, stats: StepStats) -> list[Alert]:
        calls.append(stats.step)
        if stats.step == 3:
            raise RuntimeError("a detector bug")
        return original(self, stats)

    monkeypatch.setattr(Detectors, "update", update)
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradtui.watch(model, opt, queue=True, serve=False) as mon:
        _train(mon, model, opt, 8)
    assert mon.events is not None
    steps = [e.step for e in mon.events.drain() if isinstance(e, StepStats)]
    assert steps == list(range(8)) and calls == list(range(8))


def test_a_backlog_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(publisher_mod, "MAX_BACKLOG", 4)
    gate = threading.Event()
    seen: list[object] = []
    pub = Publisher(lambda item: (gate.wait(30), seen.append(item)))
    putter = threading.Thread(target=lambda: [pub.put(i) for i in range(10)])
    putter.start()
    putter.join(0.5)
    assert putter.is_alive() and pub.backlog <= 5  # four queued and one being handled
    gate.set()
    putter.join(10)
    assert pub.flush(10) and seen == list(range(10))
    pub.close(10)



class _SlowBackward(torch.autograd.Function):
    """Identity whose backward takes 50 ms without the GIL: a backward pass long enough to watch."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        time.sleep(0.05)
        return grad


class _Slow(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _SlowBackward.apply(x)


class PhaseSink:
    """Notes the training loop's phase when each sampled step's statistics come out."""

    def __init__(self, phase: list[tuple[str, int]]) -> None:
        self.phase = phase
        self.seen: list[tuple[int, tuple[str, int]]] = []

    def emit(self, event: Event, frame: bytes | None = None) -> None:
        if isinstance(event, StepStats):
            self.seen.append((event.step, self.phase[0]))

    def close(self) -> None:
        pass


@pytest.mark.usefixtures("every_step_sampling")  # a sampled step at every step to place
def test_the_publishing_thread_works_while_the_next_backward_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not during the optimizer step or the next forward, whose Python calls would wait for it."""
    # Only the signal at backward's start moves the thread (raising=False: the test runs on older probes too).
    monkeypatch.setattr(publisher_mod, "GATE_WAIT_S", 60.0, raising=False)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), _Slow(), nn.Tanh(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 4), torch.randn(8, 1)
    phase = [("start", -1)]
    mon = gradtui.watch(model, opt, queue=True, serve=False)
    sink = PhaseSink(phase)
    mon.add_sink(sink)
    steps = 12
    for i in range(steps):
        phase[0] = ("forward", i)
        loss = nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        phase[0] = ("backward", i)
        loss.backward()
        phase[0] = ("step", i)
        mon.step(loss)
        opt.step()
    # One hook stays on the model: on the gradient backward fills first (the last Linear's).
    hooks = {n: len(p._backward_hooks or {}) for n, p in model.named_parameters()}
    phase[0] = ("close", steps)
    mon.close()
    assert [s for s, _ in sink.seen] == list(range(steps))
    order = {"forward": 0, "backward": 1, "step": 2, "close": 3}
    placed = sink.seen[:-1]  # the last comes out at close
    early = [(s, p) for s, p in placed if (p[1], order[p[0]]) < (s + 1, order["backward"])]
    assert not early, f"sampled steps handled before the next backward began: {early}"
    during = sum(p == ("backward", s + 1) for s, p in placed)
    assert during >= 0.8 * len(placed), sink.seen
    assert sum(hooks.values()) == 1 and hooks["3.weight"] + hooks["3.bias"] == 1, hooks
    assert all(p._backward_hooks is None for p in model.parameters()), "close leaves a hook (or its wrapper)"


def test_without_the_signal_the_publishing_thread_goes_on_by_its_timer() -> None:
    """A backward pass that no longer fills the signalling gradient (its parameter frozen) still
    has its steps published, without a flush."""
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = gradtui.watch(model, opt, queue=True, serve=False, every=1)
    sink = PhaseSink([("any", 0)])
    mon.add_sink(sink)
    _train(mon, model, opt, 2)
    for p in model[2].parameters():
        p.requires_grad_(False)
    _train(mon, model, opt, 6)
    deadline = time.monotonic() + 30  # a liveness bound: GATE_WAIT_S is 0.1 s
    while len(sink.seen) < 8 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [s for s, _ in sink.seen] == list(range(8))
    mon.close()
