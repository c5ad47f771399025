"""The ring-buffer store against a plain list of the same events."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gradtui.model.events import (
    Alert,
    CommandResult,
    Dropped,
    LayerInfo,
    RunStart,
    RunSteps,
    StepStats,
    UpdateStats,
)
from gradtui.model.store import RunStore


def start(n: int) -> RunStart:
    return RunStart(
        run="r", pid=1, started=0.0, layers=tuple(LayerInfo(f"l{i}", "Linear", 4) for i in range(n)), lrs=(0.1,),
        clip_mode="off", clip_threshold=1.0, every=1, detail_every=2, device="cpu",
    )


def step(i: int, n: int, detail: bool = False) -> StepStats:
    g = np.arange(n, dtype=np.float64) + i * 100
    return StepStats(
        step=i, time=float(i), loss=1.0 / (i + 1), lrs=(0.1,), grad_norm=g, has_grad=np.ones(n, bool),
        nonfinite=np.zeros(n, np.int64), global_norm=float(np.sqrt((g**2).sum())), clipped_norm=0.0,
        clip_factor=1.0, clip_mode="off", clip_threshold=1.0, steps_per_sec=1.0,
        mean_abs=g / 10 if detail else None,
    )


@pytest.mark.parametrize("total", [5, 16, 37])
def test_windows_match_the_events_in_order_across_the_wrap(total: int) -> None:
    n, cap = 6, 16
    store = RunStore(capacity=cap)
    store.apply(start(n))
    for i in range(total):
        store.apply(step(i, n, detail=i % 2 == 0))
    kept = list(range(max(0, total - cap), total))
    assert store.steps().tolist() == kept
    full = np.array([step(i, n).grad_norm for i in kept], np.float32)
    np.testing.assert_array_equal(store.window("grad_norm"), full)
    for last in (1, 3, cap, cap + 5):
        for layers in (None, np.array([2, 3, 4]), np.array([0, 5])):
            got = store.window("grad_norm", last, layers)
            want = full[-min(last, len(kept)) :]
            want = want if layers is None else want[:, layers]
            np.testing.assert_array_equal(got, want)
            for skip in (1, 4, cap):
                # The `last` steps before the newest `skip`, as a slice of everything held would give.
                held = full[: max(0, len(kept) - skip)]
                want = held[len(held) - min(last, len(held)) :]
                want = want if layers is None else want[:, layers]
                np.testing.assert_array_equal(store.window("grad_norm", last, layers, skip), want)
                assert store.steps(last, skip).tolist() == kept[: max(0, len(kept) - skip)][-last:][: len(want)]
    mean = store.window("mean_abs")
    assert np.isnan(mean[[k % 2 == 1 for k in kept]]).all()
    last_detail = max(i for i in kept if i % 2 == 0)
    np.testing.assert_allclose(store.latest("mean_abs"), step(last_detail, n).grad_norm / 10)
    assert store.total_steps == total


def test_updates_alerts_results_and_reset() -> None:
    store = RunStore(capacity=8)
    store.apply(start(2))
    store.apply(step(0, 2))
    store.apply(step(1, 2))
    store.apply(UpdateStats(step=0, update_ratio=np.array([1e-3, 2e-3])))
    np.testing.assert_allclose(store.window("update_ratio")[:, 0], [1e-3, np.nan])
    store.apply(Alert(1, "l1", "vanishing", True, 1e-9, 1e-6))
    assert store.layer_flags("l1") == ["vanishing"]
    store.apply(Alert(2, "l1", "vanishing", False, 1e-3, 1e-5))
    assert store.layer_flags("l1") == []
    store.apply(CommandResult("a", "set_lr", True, 1, "lr 0.1 -> 0.05"))
    store.apply(CommandResult("b", "set_lr", False, 1, "refused"))
    assert [(m.step, m.kind) for m in store.markers] == [(1, "set_lr")]
    store.apply(Dropped(3, 3))
    store.apply(Dropped(2, 5))
    assert store.dropped_total == 5
    version = store.version
    store.reset()
    assert store.count == 0 and store.layers == () and store.markers == [] and store.version == version + 1


def run_steps(steps: list[int], loss: list[float], norm: list[float]) -> RunSteps:
    return RunSteps(
        step=steps[-1], steps=np.array(steps, np.int64), loss=np.array(loss, np.float64),
        global_norm=np.array(norm, np.float64),
    )


@pytest.mark.parametrize("run_capacity", [7, 64])
def test_loss_and_global_norm_are_kept_at_every_step_across_both_event_types(run_capacity: int) -> None:
    """Sampled steps at stride 1, then 4, then 8 (the steps between them in batches): the every-step
    series hold each step once, in order, against a plain list of what was sent."""
    n = 2
    store = RunStore(capacity=16, run_capacity=run_capacity)
    store.apply(start(n))
    sent: list[tuple[int, float, float]] = []  # (step, loss, global norm) of every step, in order
    sampled: list[int] = []
    pending: list[int] = []
    stride = {range(0, 6): 1, range(6, 22): 4, range(22, 47): 8}
    for s in range(47):
        every = next(v for r, v in stride.items() if s in r)
        if s % every:
            pending.append(s)
            continue
        if pending:
            store.apply(run_steps(pending, [10.0 + p for p in pending], [100.0 + p for p in pending]))
            sent += [(p, 10.0 + p, 100.0 + p) for p in pending]
            pending = []
        ev = step(s, n)
        store.apply(ev)
        sent.append((s, ev.loss, ev.global_norm))
        sampled.append(s)
    store.apply(run_steps(pending, [10.0 + p for p in pending], [100.0 + p for p in pending]))  # 41..46
    sent += [(p, 10.0 + p, 100.0 + p) for p in pending]
    kept = sent[-run_capacity:]
    assert store.run_steps().tolist() == [s for s, _, _ in kept]
    np.testing.assert_array_equal(store.series("loss"), [x for _, x, _ in kept])
    np.testing.assert_array_equal(store.series("global_norm"), [g for _, _, g in kept])
    assert store.series_steps("loss").tolist() == [s for s, _, _ in kept]
    assert store.run_total == len(sent) == 47 and store.run_count == min(run_capacity, 47)
    # The per-layer ring and the other run-wide series stay at the sampled steps.
    assert store.steps().tolist() == sampled[-16:] and store.series("lr").size == min(16, len(sampled))
    assert store.series_steps("lr").tolist() == sampled[-16:]
    assert store.last_step == 46 and store.last is not None and store.last.step == 40
    assert (store.last_loss, store.last_global_norm) == (sent[-1][1], sent[-1][2]) == (56.0, 146.0)
    assert store.series("loss", last=3).tolist() == [x for _, x, _ in sent[-3:]]


def test_a_batch_larger_than_the_ring_and_repeated_steps_keep_each_step_once() -> None:
    store = RunStore(run_capacity=5)
    store.apply(start(1))
    store.apply(step(0, 1))
    store.apply(run_steps(list(range(1, 13)), [float(s) for s in range(1, 13)], [1.0] * 12))
    assert store.run_steps().tolist() == [8, 9, 10, 11, 12] and store.run_total == 13
    store.apply(run_steps([11, 12, 13], [0.0, 0.0, 13.0], [1.0] * 3))  # 11 and 12 again: left out
    store.apply(step(12, 1))  # a sampled step already held: its run-wide values are not repeated
    assert store.run_steps().tolist() == [9, 10, 11, 12, 13]
    assert store.series("loss").tolist() == [9.0, 10.0, 11.0, 12.0, 13.0] and store.run_total == 14


def test_a_non_finite_global_norm_at_an_unsampled_step_is_the_first_non_finite_step() -> None:
    store = RunStore()
    store.apply(start(2))
    store.apply(step(0, 2))
    store.apply(run_steps([1, 2, 3], [1.0, math.nan, math.nan], [1.0, 5.0, math.inf]))
    store.apply(step(4, 2))
    assert store.first_nonfinite_step == 3 and store.first_nonfinite_layers == ()
    assert math.isnan(store.series("loss")[2]) and store.last_step == 4


def canary_steps(steps: list[int], loss: list[float]) -> RunSteps:
    return RunSteps(
        step=steps[-1], steps=np.array(steps, np.int64), loss=np.array(loss, np.float64), global_norm=None,
        canary_layers=np.array([0], np.int64), canary_norm=np.ones((len(steps), 1)),
    )


def test_steps_that_measured_canaries_have_a_loss_and_no_global_norm() -> None:
    """The global-norm series holds the steps that measured it, at their own steps; the loss every step."""
    store = RunStore(capacity=16, run_capacity=8)
    store.apply(start(2))
    store.apply(step(0, 2))
    store.apply(run_steps([1, 2], [11.0, 12.0], [101.0, 102.0]))
    store.apply(canary_steps([3, 4, 5], [13.0, 14.0, 15.0]))
    assert store.last_global_norm == 102.0  # the newest measured, not a canary step's
    ev = step(6, 2)
    store.apply(ev)
    store.apply(canary_steps([7, 8, 9], [17.0, 18.0, 19.0]))  # the ring (8) now starts at step 2
    assert store.run_steps().tolist() == list(range(2, 10))
    assert store.series("loss").tolist() == [12.0, 13.0, 14.0, 15.0, ev.loss, 17.0, 18.0, 19.0]
    assert store.series_steps("global_norm").tolist() == [2, 6]
    assert store.series("global_norm").tolist() == [102.0, ev.global_norm]
    assert store.last_global_norm == ev.global_norm
    assert store.first_nonfinite_step is None  # an unmeasured norm is not a non-finite one
