"""The probe's publishing thread: the loop never waits for the sinks, nothing is lost or reordered."""

from __future__ import annotations

import threading

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

