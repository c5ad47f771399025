"""The overhead budget: which steps are sampled when `every` is left to the probe."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import gradtui
from gradtui.model.events import RunStart, StepStats
from gradtui.model.store import RunStore
from gradtui.probe.budget import HOLD_STEPS, MAX_STRIDE, WARMUP_SAMPLES, Sampler, parse_budget


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def drive(
    sampler: Sampler, clock: FakeClock, steps: range, loop_s: float, sampled_s: float, plain_s: float
) -> list[int]:
    """Steps of a loop whose own work takes `loop_s` and whose probe takes `sampled_s` on a
    sampled step, `plain_s` on another; returns the sampled steps."""
    out = []
    for step in steps:
        sampled, _ = sampler.begin(step)
        clock.now += sampled_s if sampled else plain_s
        sampler.end(step)
        clock.now += loop_s
        if sampled:
            out.append(step)
    return out


def expected_stride(loop_s: float, sampled_s: float, plain_s: float, budget: float) -> int:
    """The smallest power of two whose amortized probe time fits the budget (independent of Sampler)."""
    for k in (1, 2, 4, 8, 16, 32):
        if (sampled_s + (k - 1) * plain_s) / k <= budget * loop_s:
            return k
    return MAX_STRIDE


@pytest.mark.parametrize(
    ("loop_ms", "sampled_ms", "plain_ms"),
    [(6.2, 0.8, 0.02), (33.0, 0.9, 0.02), (100.0, 0.5, 0.02), (1.0, 2.0, 0.05)],
    ids=["mlp-50x128", "mlp-12x512", "transformer", "tiny-over-budget"],
)
def test_the_stride_is_the_smallest_power_of_two_that_fits_the_budget(
    loop_ms: float, sampled_ms: float, plain_ms: float
) -> None:
    clock = FakeClock()
    sampler = Sampler(None, 0.01, detail_every=50, clock=clock)
    drive(sampler, clock, range(400), loop_ms / 1e3, sampled_ms / 1e3, plain_ms / 1e3)
    want = expected_stride(loop_ms / 1e3, sampled_ms / 1e3, plain_ms / 1e3, 0.01)
    assert sampler.stride == want
    sampled = drive(sampler, clock, range(400, 600), loop_ms / 1e3, sampled_ms / 1e3, plain_ms / 1e3)
    assert np.diff(sampled).tolist() == [want] * (len(sampled) - 1)  # steady: no flapping
    assert sampler.overhead(want) == pytest.approx((sampled_ms + (want - 1) * plain_ms) / want / loop_ms)


def test_every_step_is_sampled_until_the_probe_has_timed_enough_samples() -> None:
    clock = FakeClock()
    sampler = Sampler(None, 0.01, detail_every=50, clock=clock)
    sampled = drive(sampler, clock, range(WARMUP_SAMPLES + 1), 0.001, 0.002, 0.0)
    assert sampled == list(range(WARMUP_SAMPLES + 1))


def test_trouble_samples_every_step_for_a_while_then_the_stride_comes_back() -> None:
    clock = FakeClock()
    sampler = Sampler(None, 0.01, detail_every=50, clock=clock)
    drive(sampler, clock, range(300), 0.006, 0.0008, 0.00002)
    assert sampler.stride == 32
    sampler.trouble(299)
    sampled = drive(sampler, clock, range(300, 300 + HOLD_STEPS), 0.006, 0.0008, 0.00002)
    assert sampled == list(range(300, 300 + HOLD_STEPS))
    later = drive(sampler, clock, range(300 + HOLD_STEPS, 700 + HOLD_STEPS), 0.006, 0.0008, 0.00002)
    assert np.diff(later[-5:]).tolist() == [32] * 4


@pytest.mark.parametrize("loss", [math.nan, math.inf, -math.inf])
def test_a_non_finite_loss_or_norm_is_trouble(loss: float) -> None:
    clock = FakeClock()
    sampler = Sampler(None, 0.01, detail_every=50, clock=clock)
    drive(sampler, clock, range(100), 0.006, 0.0008, 0.00002)
    sampler.check(99, 1e30)  # large but finite: the detectors judge that, not the sampler
    assert sampler.stride == 32
    sampler.check(99, loss)
    assert drive(sampler, clock, range(100, 110), 0.006, 0.0008, 0.00002) == list(range(100, 110))


def test_a_fixed_every_samples_exactly_as_told_whatever_it_costs() -> None:
    clock = FakeClock()
    sampler = Sampler(3, 0.01, detail_every=4, clock=clock)
    assert not sampler.adaptive
    got = []
    for step in range(40):
        got.append(sampler.begin(step))
        clock.now += 1.0  # a probe slower than any loop: still every 3rd step
        sampler.end(step)
        sampler.trouble(step)
    assert [s for s, (sampled, _) in enumerate(got) if sampled] == list(range(0, 40, 3))
    assert [s for s, (_, detail) in enumerate(got) if detail] == list(range(0, 40, 12))


@pytest.mark.parametrize("every", [None, 1, 3])
def test_trouble_is_known_for_hold_steps_at_any_stride(every: int | None) -> None:
    """What the publishing thread's gathering asks (`RunWide.calm`): a fixed stride stays exact,
    and still knows it is in trouble."""
    sampler = Sampler(every, 0.01, detail_every=4, clock=FakeClock())
    assert not sampler.troubled(0)
    sampler.trouble(10)
    assert [sampler.troubled(s) for s in (10, 10 + HOLD_STEPS, 11 + HOLD_STEPS)] == [True, True, False]
    assert sampler.stride == (1 if every is None else every)


def test_detail_steps_are_every_detail_every_th_sampled_step_at_any_stride() -> None:
    clock = FakeClock()
    sampler = Sampler(None, 0.01, detail_every=5, clock=clock)
    details = []
    for step in range(600):
        sampled, detail = sampler.begin(step)
        clock.now += 0.0008 if sampled else 0.00002
        sampler.end(step)
        clock.now += 0.006
        if sampled:
            details.append(detail)
    assert details == [i % 5 == 0 for i in range(len(details))]


@pytest.mark.parametrize(("value", "share"), [(0.01, 0.01), ("2%", 0.02), ("0.05", 0.05), ("off", 0.0), (0, 0.0)])
def test_budget_values(value: object, share: float) -> None:
    assert parse_budget(value) == pytest.approx(share)


@pytest.mark.parametrize("value", [1.5, -0.1, "fast", math.nan, True, [0.1]])
def test_a_bad_budget_is_refused_with_what_is_accepted(value: object) -> None:
    with pytest.raises(ValueError, match="budget"):
        parse_budget(value)


def test_watch_refuses_both_every_and_budget_and_names_a_bad_environment_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = nn.Linear(3, 2)
    with pytest.raises(ValueError, match="not both"):
        gradtui.watch(model, every=2, budget=0.01)
    monkeypatch.setenv("GRADTUI_BUDGET", "lots")
    with pytest.raises(ValueError, match="GRADTUI_BUDGET"):
        gradtui.watch(model)


def _train(mon: gradtui.Monitor, model: nn.Module, steps: int) -> None:
    opt = mon.optimizer
    assert opt is not None
    x, y = torch.randn(16, 3), torch.randn(16, 2)
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        mon.step(loss)
        opt.step()
    mon.close()


@pytest.mark.parametrize("value", ["lots", "1e-400", "150%"])
def test_the_environment_budget_is_read_only_where_it_applies(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    """GRADTUI_BUDGET chooses the stride only without every= and budget=: a bad value there is refused,
    naming the variable, and stops no run that gave its own stride or budget."""
    monkeypatch.setenv("GRADTUI_BUDGET", value)
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with pytest.raises(ValueError, match="GRADTUI_BUDGET"):
        gradtui.watch(model, opt)
    fixed = gradtui.watch(model, opt, every=4, queue=True)
    _train(fixed, model, 9)
    assert fixed.events is not None
    assert [e.step for e in fixed.events.drain() if isinstance(e, StepStats)] == [0, 4, 8]
    own = gradtui.watch(model, opt, budget=0.5, queue=True)
    assert own.events is not None
    start = next(e for e in own.events.drain() if isinstance(e, RunStart))
    assert start.budget == 0.5
    own.close()


@pytest.mark.parametrize("value", ["1e-400", "1e-400%", "1e-323%"])
def test_a_budget_too_small_to_represent_is_refused_not_turned_off(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """0 means every step, the opposite of a tiny budget: a value that rounds to 0 is an error."""
    with pytest.raises(ValueError, match="too small"):
        parse_budget(value)
    with pytest.raises(ValueError, match="too small"):
        gradtui.watch(nn.Linear(3, 2), budget=value)
    monkeypatch.setenv("GRADTUI_BUDGET", value)
    with pytest.raises(ValueError, match="GRADTUI_BUDGET .*too small"):
        gradtui.watch(nn.Linear(3, 2))
    assert parse_budget("0.0") == parse_budget("0%") == 0.0  # a zero that says so is still off


def test_a_tiny_model_is_sampled_less_often_and_each_sample_is_exact() -> None:
    """A 2-layer net steps in well under a millisecond: sampling it every step would cost far more
    than 1%, so the stride rises; every sampled step still equals plain torch's norms, and a
    NaN loss brings sampling back to every step."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    mon = gradtui.watch(model, opt, queue=True, budget=0.01, detectors=False)
    x, y = torch.randn(16, 8), torch.randint(0, 2, (16,))
    reference: dict[int, list[float]] = {}
    for step in range(400):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        if step == 350:
            loss = loss * math.nan  # the loss and every gradient non-finite from here on
        loss.backward()
        reference[step] = [
            float(torch.linalg.vector_norm(torch.cat([p.grad.reshape(-1) for p in layer.parameters()])))
            for layer in (model[0], model[2])
        ]
        mon.step(loss)
        if step < 350:
            opt.step()
    stride = mon.sampling_stride
    mon.close()
    events = mon.source().poll(100_000)
    start = next(e for e in events if isinstance(e, RunStart))
    assert start.budget == 0.01
    steps = [e for e in events if isinstance(e, StepStats)]
    sampled = [e.step for e in steps]
    before = [s for s in sampled if s < 350]
    assert max(np.diff(before)) > 1, "the stride never rose on a model far too small for per-step sampling"
    assert sampled[-50:] == list(range(350, 400)) and stride == 1  # trouble: every step again
    for ev in steps:
        if ev.step < 350:
            np.testing.assert_allclose(ev.grad_norm, reference[ev.step], rtol=1e-6)
    store = RunStore()
    for ev in events:
        store.apply(ev)
    assert store.stride == 1
    store_before = RunStore()
    for ev in events:
        if not isinstance(ev, StepStats) or ev.step < 350:
            store_before.apply(ev)
    assert store_before.stride == before[-1] - before[-2] > 1
