"""The demo chapters' claims that need more than a detector: lanes through time, live
interventions that cure a run, and the optimisers compared side by side."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch

import gradtui
from gradtui.demo.scenarios import get
from gradtui.model.commands import SetClip, SetLR
from gradtui.model.events import Alert, StepStats
from gradtui.probe.monitor import Monitor


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run_scenario(
    name: str, steps: int, on_step: Callable[[Monitor, int, list[Alert]], None] | None = None
) -> tuple[list[StepStats], list[Alert], list[float]]:
    """Train like the demo worker does (lanes, scheduler), calling `on_step` as a user at the keys."""
    scenario = get(name)
    run = scenario.build(0, "cpu")
    mon = gradtui.watch(
        run.model, run.optimizer, queue=100_000, lanes=run.lanes, scheduler=run.scheduler, **scenario.watch_options
    )
    run.use_monitor_lanes(mon.lane)
    stats: list[StepStats] = []
    alerts: list[Alert] = []
    losses: list[float] = []
    assert mon.events is not None
    with mon:
        for step in range(steps):
            losses.append(run.train_step(mon))
            for e in mon.events.drain():
                if isinstance(e, StepStats):
                    stats.append(e)
                elif isinstance(e, Alert):
                    alerts.append(e)
            if on_step is not None:
                on_step(mon, step, alerts)
    return stats, alerts, losses


def test_tanh_rnn_gradient_vanishes_through_time_and_the_gru_carries_it() -> None:
    tanh, _, _ = run_scenario("rnn-tanh", 20)
    gru, _, _ = run_scenario("rnn-gru", 20)
    t_lanes = np.array([s.lanes for s in tanh[5:]])  # dL/dh_t at t = 0 ... 69
    g_lanes = np.array([s.lanes for s in gru[5:]])
    # Through 70 tanh steps the gradient reaching the first time step is ~1e-12 of the last's.
    assert np.median(t_lanes[:, 0] / t_lanes[:, -1]) < 1e-8
    assert np.all(np.diff(np.log10(np.median(t_lanes, axis=0))) > 0)  # it fades step by step
    # The GRU's gated state keeps it within a couple of orders of magnitude.
    assert np.median(g_lanes[:, 0] / g_lanes[:, -1]) > 1e-2


def test_clipping_turned_on_live_when_exploding_is_flagged_saves_the_run() -> None:
    def press_c(mon: Monitor, step: int, alerts: list[Alert]) -> None:
        if mon.clip_mode == "off" and any(a.kind == "exploding" and a.active for a in alerts):
            mon.send(SetClip(mode="norm", threshold=1.0))

    stats, alerts, losses = run_scenario("relu-explode", 200, press_c)
    assert any(a.kind == "exploding" for a in alerts)
    assert all(np.isfinite(s.global_norm) for s in stats), "the run blew up although clipping came in time"
    assert stats[-1].clip_mode == "norm"
    assert np.mean(losses[-20:]) < 0.5 * np.mean(losses[:20])


def test_lowering_the_learning_rate_live_calms_the_high_lr_run() -> None:
    def press_minus_three_times(mon: Monitor, step: int, alerts: list[Alert]) -> None:
        if step == 40:
            for _ in range(3):
                mon.send(SetLR(factor=0.5))

    _, _, plain = run_scenario("high-lr", 150)
    stats, _, calmed = run_scenario("high-lr", 150, press_minus_three_times)
    assert stats[-1].lrs[0] == pytest.approx(stats[0].lrs[0] / 8)
    # After the change the loss settles: lower and steadier than the run left alone.
    assert np.mean(calmed[-50:]) < np.mean(plain[-50:])
    assert np.std(calmed[-50:]) < np.std(plain[-50:])


def test_optimisers_side_by_side() -> None:
    final = {name: float(np.mean(run_scenario(name, 300)[2][-30:])) for name in ("opt-sgd", "opt-momentum", "opt-adam")}
    assert final["opt-momentum"] < final["opt-sgd"] and final["opt-adam"] < final["opt-sgd"]
    step_lr = [s.lrs[0] for s in run_scenario("opt-step-lr", 210)[0]]
    assert step_lr[99] == pytest.approx(0.1) and step_lr[100] == pytest.approx(0.01)
    assert step_lr[200] == pytest.approx(0.001)
    exp_lr = [s.lrs[0] for s in run_scenario("opt-exp-lr", 100)[0]]
    assert all(b < a for a, b in zip(exp_lr, exp_lr[1:], strict=False)) and math.isclose(exp_lr[0], 0.1)
