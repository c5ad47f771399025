"""steps/s as the probe reports it: steps over the time they took, paced, jittery or paused."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import gradtui
from gradtui.model.commands import SetPaused
from gradtui.model.events import StepStats
from gradtui.model.rate import StepRate, shown_rate
from gradtui.probe import monitor as monitor_module


class FakeClock:
    """`time` for the monitor, with a `perf_counter` the test moves (the rest is the real module)."""

    def __init__(self) -> None:
        self.now = 100.0
        self.lock = threading.Lock()

    def perf_counter(self) -> float:
        with self.lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self.lock:
            self.now += seconds

    def module(self) -> SimpleNamespace:
        names = {n: getattr(time, n) for n in dir(time) if not n.startswith("_")}
        return SimpleNamespace(**{**names, "perf_counter": self.perf_counter})


# A loop paced at 20 steps/s that wakes late once a second and catches up at once:
# 19 intervals of 50 ms minus the catch-up, one of 97 ms and one of 3 ms (20 steps a second).
PACED = [0.05] * 18 + [0.097, 0.003]


def test_the_rate_is_steps_over_time_however_the_intervals_vary() -> None:
    rate = StepRate(window=2.0)
    t = 0.0
    got = []
    for step, dt in enumerate(PACED * 5):
        got.append(rate.update(step, t))
        t += dt
    assert got[2 * len(PACED) :] == pytest.approx([20.0] * 3 * len(PACED), rel=0.05)
    assert StepRate().update(0, 0.0) == 0.0, "one sample measures nothing"


def test_paused_time_is_left_out_and_the_viewer_shows_no_speed_paused_or_ended() -> None:
    rate = StepRate(window=2.0)
    for step in range(60):
        rate.update(step, step * 0.05)
    rate.pause(30.0)  # paused for 30 s after step 59
    assert rate.update(60, 59 * 0.05 + 30.0 + 0.05) == pytest.approx(20.0)
    assert shown_rate(20.0, paused=False, ended=False) == 20.0
    assert shown_rate(20.0, paused=True, ended=False) == 0.0
    assert shown_rate(20.0, paused=False, ended=True) is None
    assert shown_rate(float("nan"), paused=False, ended=False) is None


def _net() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    return model, torch.optim.SGD(model.parameters(), lr=0.01)


def _step(model: nn.Module, opt: torch.optim.Optimizer, mon: gradtui.Monitor) -> None:
    loss = model(torch.ones(2, 4)).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    mon.step(loss)
    opt.step()


@pytest.mark.usefixtures("every_step_sampling")  # counts sampled steps
def test_the_probe_reports_the_paced_rate_and_leaves_a_pause_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before the fix the probe averaged per-interval rates: 82/s here, 116/s and 173/s on demos paced at 20/s."""
    clock = FakeClock()
    monkeypatch.setattr(monitor_module, "time", clock.module())
    model, opt = _net()
    mon = gradtui.watch(model, opt, queue=10_000, serve=False)
    assert mon.events is not None
    stats: list[StepStats] = []
    with mon:
        for dt in PACED * 3:
            _step(model, opt, mon)
            clock.advance(dt)
        mon.send(SetPaused(True))

        def resume_later() -> None:
            time.sleep(0.3)  # real time: the probe waits for commands in 0.2 s rounds
            clock.advance(60.0)
            mon.send(SetPaused(False))

        resumer = threading.Thread(target=resume_later)
        resumer.start()
        _step(model, opt, mon)  # pauses here until the resume
        resumer.join()
        clock.advance(0.05)
        for _ in range(3):
            _step(model, opt, mon)
            clock.advance(0.05)
        stats = [e for e in mon.events.drain() if isinstance(e, StepStats)]
    paused = [s for s in stats if s.paused]
    assert len(paused) == 1
    # Once two seconds have passed, every step reports 20/s, the one after the 3 ms catch-up too.
    assert [round(s.steps_per_sec) for s in stats[2 * len(PACED) : 3 * len(PACED)]] == [20] * len(PACED)
    # After a minute paused, still the training speed: the pause is not time spent training.
    assert stats[-1].steps_per_sec == pytest.approx(20.0, rel=0.03)


def test_a_fast_run_keeps_a_bounded_number_of_samples() -> None:
    from gradtui.model.rate import MAX_SAMPLES, StepRate

    rate = StepRate()
    for step in range(10_000):
        got = rate.update(step, step * 1e-5)  # 100k steps/s: all 10k inside the 2 s window
    assert len(rate._samples) <= MAX_SAMPLES
    assert abs(got - 1e5) < 1.0
