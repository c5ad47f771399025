"""The ring-buffer store against a plain list of the same events."""

from __future__ import annotations

import numpy as np
import pytest

from gradtui.model.events import Alert, CommandResult, Dropped, LayerInfo, RunStart, StepStats, UpdateStats
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
