"""The probe's publishing thread: the loop never waits for the sinks, nothing is lost or reordered."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import torch
from torch import nn

import gradtui
from gradtui.model.commands import SetPaused
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


def test_idle_is_called_once_the_thread_has_caught_up() -> None:
    """Not after each item of a batch: what the training thread reads (the detectors' screens) is
    made once per batch."""
    gate = threading.Event()
    log: list[object] = []
    pub = Publisher(lambda item: (gate.wait(30), log.append(item)), idle=lambda: log.append("idle"))
    for i in range(5):
        pub.put(i)
    gate.set()
    assert pub.flush(10)
    assert log == [0, 1, 2, 3, 4, "idle"]  # the others came while the first was handled
    pub.close(10)


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
        self.alerts: list[tuple[Alert, tuple[str, int]]] = []

    def emit(self, event: Event, frame: bytes | None = None) -> None:
        if isinstance(event, StepStats):
            self.seen.append((event.step, self.phase[0]))
        elif isinstance(event, Alert):
            self.alerts.append((event, self.phase[0]))

    def close(self) -> None:
        pass


def _phases(guard: bool, steps: int, spike_at: int | None = None) -> tuple[PhaseSink, dict[str, int], nn.Module]:
    """Train through a 50 ms backward pass, noting the loop's phase as each sampled step comes out;
    at `spike_at` the batch is 1000x the others."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), _Slow(), nn.ReLU(), nn.Linear(8, 1))  # a big batch: a big gradient
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 4), torch.randn(8, 1)
    phase = [("start", -1)]
    mon = gradtui.watch(model, opt, queue=True, serve=False, guard=guard)
    sink = PhaseSink(phase)
    mon.add_sink(sink)
    for i in range(steps):
        phase[0] = ("forward", i)
        loss = nn.functional.mse_loss(model(x * 1000 if i == spike_at else x), y)
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
    early = [(s, p) for s, p in sink.seen if (p[1], order[p[0]]) < (s + 1, order["backward"])]
    assert not early, f"sampled steps handled before the next backward began: {early}"
    return sink, hooks, model


@pytest.mark.usefixtures("every_step_sampling")  # a sampled step at every step to place
def test_the_publishing_thread_works_while_a_later_backward_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not during the optimizer step or the next forward, whose Python calls would wait for it; and
    sampled steps gather into batches of `BATCH_ITEMS`, handled back to back."""
    # Only the signal at backward's start moves the thread, and only a full batch.
    monkeypatch.setattr(publisher_mod, "GATE_WAIT_S", 60.0)
    monkeypatch.setattr(publisher_mod, "BATCH_AGE_S", 60.0)
    batch = publisher_mod.BATCH_ITEMS
    steps = 3 * batch + 1
    sink, hooks, model = _phases(False, steps)
    seen = sink.seen
    placed = seen[: 3 * batch]  # the last comes out at close
    # Each batch is released by the backward pass after its last step.
    expected = [("backward", (s // batch + 1) * batch) for s, _ in placed]
    assert [p for _, p in placed] == expected, seen
    assert sum(hooks.values()) == 1 and hooks["3.weight"] + hooks["3.bias"] == 1, hooks
    assert all(p._backward_hooks is None for p in model.parameters()), "close leaves a hook (or its wrapper)"


@pytest.mark.usefixtures("every_step_sampling")
def test_with_a_guard_each_step_is_judged_while_the_next_backward_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The guard acts at each step on the alarms of the steps before: no batch waits for more steps."""
    monkeypatch.setattr(publisher_mod, "GATE_WAIT_S", 60.0)
    seen = _phases(True, 12)[0].seen
    placed = seen[:-1]
    during = sum(p == ("backward", s + 1) for s, p in placed)
    assert during >= 0.8 * len(placed), seen


@pytest.mark.usefixtures("every_step_sampling")
def test_a_step_the_detectors_might_flag_is_judged_at_the_next_backward(monkeypatch: pytest.MonkeyPatch) -> None:
    """Calm sampled steps gather; the first that looks unusual (a batch 1000x the others) is judged
    while the very next backward runs, with those gathered before it: its alarm starts what it starts
    (sampling every step, a capture) at once, as it did before steps gathered."""
    monkeypatch.setattr(publisher_mod, "GATE_WAIT_S", 60.0)
    monkeypatch.setattr(publisher_mod, "BATCH_AGE_S", 60.0)
    spike = 29
    sink = _phases(False, 34, spike_at=spike)[0]
    when = dict(sink.seen)
    assert when[spike] == ("backward", spike + 1), sink.seen
    assert any(when[s] != ("backward", s + 1) for s in range(spike - 8, spike)), "calm steps did not gather"
    raised = [(a.kind, phase) for a, phase in sink.alerts if a.step == spike and a.active and a.level != "info"]
    assert raised and all(phase == ("backward", spike + 1) for _, phase in raised), sink.alerts
    # While the alarm lasts, each step is judged alone, as each comes.
    assert [when[s] for s in (spike + 1, spike + 2)] == [("backward", spike + 2), ("backward", spike + 3)]


@pytest.mark.usefixtures("every_step_sampling")
def test_the_steps_up_to_a_pause_are_published_while_the_run_is_paused(monkeypatch: pytest.MonkeyPatch) -> None:
    """No backward pass comes to release what gathered: the pause does, and the viewer shows the step
    the run stopped at."""
    monkeypatch.setattr(publisher_mod, "GATE_WAIT_S", 60.0)
    monkeypatch.setattr(publisher_mod, "BATCH_AGE_S", 60.0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = gradtui.watch(model, opt, queue=True, serve=False)
    sink = PhaseSink([("any", 0)])
    mon.add_sink(sink)
    _train(mon, model, opt, 3)
    mon.send(SetPaused(True))
    loop = threading.Thread(target=_train, args=(mon, model, opt, 1))
    loop.start()
    deadline = time.monotonic() + 30  # a liveness bound
    while len(sink.seen) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    seen = [s for s, _ in sink.seen]
    paused = mon.paused and loop.is_alive()
    mon.send(SetPaused(False))
    loop.join(30)
    mon.close()
    assert paused and seen == [0, 1, 2, 3]


@pytest.mark.usefixtures("every_step_sampling")
def test_a_slow_run_is_published_within_the_batch_age(monkeypatch: pytest.MonkeyPatch) -> None:
    """Steps slower than `BATCH_AGE_S` / `BATCH_ITEMS`: the viewer still follows the run live."""
    monkeypatch.setattr(publisher_mod, "GATE_WAIT_S", 60.0)
    monkeypatch.setattr(publisher_mod, "BATCH_AGE_S", 0.12)  # the 50 ms backward: 3 steps
    seen = _phases(False, 13)[0].seen
    lags = [p[1] - s for s, p in seen[:-1]]
    assert max(lags) <= 4 and min(lags) >= 1, seen


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
    deadline = time.monotonic() + 30  # a liveness bound: GATE_WAIT_S is 0.5 s
    while len(sink.seen) < 8 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [s for s, _ in sink.seen] == list(range(8))
    mon.close()
