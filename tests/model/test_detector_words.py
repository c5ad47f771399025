"""The detectors' words: every alert message, on streams that reach every branch, is the text
the detectors gave before their messages moved to gradtui/model/detector_words.py (the
expected alerts below were computed once by that code and pasted in)."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import pytest
from test_alert_levels import converged_run
from test_detectors import feed, stats

from gradtui.model.detector_words import Change, Severity, message
from gradtui.model.detectors import DetectorConfig, Detectors
from gradtui.model.events import OVERFLOW_NORM, Alert


class Said(NamedTuple):
    """An alert as the test expects it."""

    step: int
    layer: str | None
    kind: str
    active: bool
    level: str
    value: float
    threshold: float
    message: str


def hard_batch_then_clear() -> list[Alert]:
    """A hard batch on a converged run: exploding (layer and run) and a loss spike at info, then cleared."""
    det = Detectors(["a"])
    base = converged_run(np.random.default_rng(0))
    t = len(base)
    return feed(det, [*base, stats(t, [0.3], loss=0.3), *(stats(t + 1 + i, [0.01], loss=0.01) for i in range(10))])


def compounding() -> list[Alert]:
    """Info at the first jump, escalated to critical by compounding growth at the next."""
    det = Detectors(["a"])
    base = converged_run(np.random.default_rng(1))
    t = len(base)
    return feed(det, [*base, stats(t, [0.15], loss=0.15), stats(t + 1, [0.4], loss=0.5), stats(t + 2, [0.5], loss=0.6)])


def raised_by_height() -> list[Alert]:
    """Jumps raised at once at critical (50x the scale) and warning (5x the scale); the loss spikes past
    anything the run has had (warning)."""
    out: list[Alert] = []
    for jump in (50.0, 5.0):
        det = Detectors(["a"])
        base = converged_run(np.random.default_rng(3))
        out += feed(det, [*base, stats(len(base), [jump], loss=jump)])
    return out


def escalations() -> list[Alert]:
    """A jump with the loss in range (info), still up (escalated to warning), then 10x the scale
    (escalated to critical by scale); the loss spike escalates from info to warning; then the ceiling."""
    det = Detectors(["a"])
    base = converged_run(np.random.default_rng(3))
    t = len(base)
    return feed(det, [*base, stats(t, [5.0], loss=0.3), stats(t + 1, [5.0], loss=0.3),
                      stats(t + 2, [50.0], loss=5.0), stats(t + 3, [5e6], loss=6.0)])


def escalated_past_the_ceiling() -> list[Alert]:
    """An info-level flag that passes the ceiling at its next sample."""
    det = Detectors(["a"], DetectorConfig(explode_ceiling=1e3))
    base = converged_run(np.random.default_rng(0))
    t = len(base)
    return feed(det, [*base, stats(t, [0.3], loss=0.3), stats(t + 1, [2e3], loss=0.3)])


def ceiling_without_history() -> list[Alert]:
    det = Detectors(["fc1", "fc2"], DetectorConfig(explode_ceiling=1e5))
    return det.update(stats(0, [1.0, 2e5]))


def vanishing_by_depth_and_weight() -> list[Alert]:
    """fc1 vanishing by depth, fc2 by ||g||/||w||, both cleared."""
    cfg = DetectorConfig(vanish_steps=5, clear_steps=3)
    det = Detectors(["fc1", "fc2", "fc3"], cfg)
    w = [1.0, 1e6, 1.0]
    low = [stats(t, [1e-6, 1e-2, 1.0], weight_norm=w) for t in range(8)]
    back = [stats(8 + t, [0.5, 0.5, 1.0], weight_norm=w) for t in range(5)]
    return feed(det, [*low, *back])


def dead_and_back() -> list[Alert]:
    det = Detectors(["fc1", "fc2"], DetectorConfig(dead_steps=4, clear_steps=2))
    return feed(det, [*(stats(t, [1.0, 0.0]) for t in range(6)), *(stats(6 + t, [1.0, 2.5e-3]) for t in range(3))])


def nonfinite_layers_and_run() -> list[Alert]:
    """A NaN norm with no count (the first), non-finite values (a count), an overflowed norm, all
    cleared; then a non-finite global norm at an unsampled step, cleared."""
    det = Detectors(["fc1", "fc2", "fc3"], DetectorConfig(clear_steps=2))
    out = feed(det, [stats(t, [1.0, 1.0, 1.0], loss=1.0) for t in range(3)])
    out += det.update(stats(3, [math.nan, math.nan, math.inf], nonfinite=[0, 12, 0], loss=math.nan))
    out += feed(det, [stats(4 + t, [1.0, 1.0, 1.0], loss=1.0) for t in range(2)])
    out += det.update_run(6, 1.0, math.inf)
    out += det.update_run(7, math.nan, math.nan)
    for step in (8, 9):
        out += det.update_run(step, 1.0, 1.7)
    return out


def amp_skips_that_persist() -> list[Alert]:
    det = Detectors(["a"])
    return feed(det, [stats(t, [math.inf], nonfinite=[5], amp_skipped=True) for t in range(31)])


def run_wide_between_samples() -> list[Alert]:
    """The global norm blows up at unsampled steps, the loss spikes there too; then settles."""
    det = Detectors(["fc1", "fc2"])
    rng = np.random.default_rng(7)
    out: list[Alert] = []
    for step in range(80):
        norm = 1.0 * 10 ** (0.05 * rng.standard_normal())
        loss = 2.0 * 10 ** (0.02 * rng.standard_normal())
        if 60 <= step < 63:
            norm *= 5.0 ** (step - 59)
            loss *= 3.0 ** (step - 59)
        if step % 8 == 0:
            out += det.update(stats(step, [norm / 2, norm / 2], loss=loss, global_norm=norm))
        else:
            out += det.update_run(step, loss, norm)
    return out


def nonpositive_losses() -> list[Alert]:
    """A loss that is not positive: the spike rule on a linear scale."""
    det = Detectors(["a"])
    rng = np.random.default_rng(8)
    losses = [-1.0 + 0.01 * float(x) for x in rng.standard_normal(30)]
    out = feed(det, [stats(t, [1.0], loss=losses[t]) for t in range(30)])
    out += feed(det, [stats(30, [1.0], loss=3.0), *(stats(31 + t, [1.0], loss=-1.0) for t in range(5))])
    return out


SCENARIOS = {f.__name__: f for f in (
    hard_batch_then_clear, compounding, raised_by_height, escalations, escalated_past_the_ceiling,
    ceiling_without_history, vanishing_by_depth_and_weight, dead_and_back, nonfinite_layers_and_run,
    amp_skips_that_persist, run_wide_between_samples, nonpositive_losses)}


EXPECTED: dict[str, list[Said]] = {
    "hard_batch_then_clear": [
        Said(660, "a", "exploding", True, "info", 0.3, 0.10138777493336329,
             "gradient norm 0.3 jumped past 0.101, over 10x its recent level; info: within 3x of the run's scale "
             "1.05, as a hard batch is"),
        Said(660, None, "exploding", True, "info", 0.3, 0.10138777493336329,
             "global gradient norm 0.3 jumped past 0.101, over 10x its recent level; info: within 3x of the run's "
             "scale 1.05, as a hard batch is"),
        Said(660, None, "loss_spike", True, "info", 0.3, 0.04118799161062176,
             "loss 0.3 above 0.04119, far above its recent range; info: within the run's earlier range (up to 1.052)"),
        Said(665, "a", "exploding", False, "info", 0.01, 0.030416332480008985,
             "gradient norm 0.01 back within 3x of its recent median"),
        Said(665, None, "exploding", False, "info", 0.01, 0.030416332480008985,
             "global gradient norm 0.01 back within 3x of its recent median"),
        Said(665, None, "loss_spike", False, "info", 0.01, 0.01492863779354773,
             "loss 0.01 back within its recent range"),
    ],
    "compounding": [
        Said(660, "a", "exploding", True, "info", 0.15, 0.10664940684880278,
             "gradient norm 0.15 jumped past 0.107, over 10x its recent level; info: within 3x of the run's scale "
             "1.04, as a hard batch is"),
        Said(660, None, "exploding", True, "info", 0.15, 0.10664940684880278,
             "global gradient norm 0.15 jumped past 0.107, over 10x its recent level; info: within 3x of the run's "
             "scale 1.04, as a hard batch is"),
        Said(660, None, "loss_spike", True, "info", 0.15, 0.026042347869786747,
             "loss 0.15 above 0.02604, far above its recent range; info: within the run's earlier range (up to 1.079)"),
        Said(661, "a", "exploding", True, "critical", 0.4, 0.29999999999999993,
             "gradient norm 0.4 past 0.3; critical: grown 2x or more at 2 samples in a row"),
        Said(661, None, "exploding", True, "critical", 0.4, 0.29999999999999993,
             "global gradient norm 0.4 past 0.3; critical: grown 2x or more at 2 samples in a row"),
    ],
    "raised_by_height": [
        Said(660, "a", "exploding", True, "critical", 50.0, 0.10356623886208727,
             "gradient norm 50 jumped past 0.104, over 10x its recent level; critical: 39.5x the run's scale 1.26"),
        Said(660, None, "exploding", True, "critical", 50.0, 0.10356623886208727,
             "global gradient norm 50 jumped past 0.104, over 10x its recent level; critical: 39.5x the run's scale "
             "1.26"),
        Said(660, None, "loss_spike", True, "warning", 50.0, 0.025935146414722943,
             "loss 50 above 0.02594, far above its recent range; warning: above the run's earlier range (up to 1.023)"),
        Said(660, "a", "exploding", True, "warning", 5.0, 0.10356623886208727,
             "gradient norm 5 jumped past 0.104, over 10x its recent level; warning: 3.95x the run's scale 1.26"),
        Said(660, None, "exploding", True, "warning", 5.0, 0.10356623886208727,
             "global gradient norm 5 jumped past 0.104, over 10x its recent level; warning: 3.95x the run's scale "
             "1.26"),
        Said(660, None, "loss_spike", True, "warning", 5.0, 0.025935146414722943,
             "loss 5 above 0.02594, far above its recent range; warning: above the run's earlier range (up to 1.023)"),
    ],
    "escalations": [
        Said(660, "a", "exploding", True, "info", 5.0, 0.10356623886208727,
             "gradient norm 5 jumped past 0.104, over 10x its recent level; info: within 3x of the run's scale 1.26, "
             "as a hard batch is"),
        Said(660, None, "exploding", True, "info", 5.0, 0.10356623886208727,
             "global gradient norm 5 jumped past 0.104, over 10x its recent level; info: within 3x of the run's scale"
             " 1.26, as a hard batch is"),
        Said(660, None, "loss_spike", True, "info", 0.3, 0.025935146414722943,
             "loss 0.3 above 0.02594, far above its recent range; info: within the run's earlier range (up to 1.023)"),
        Said(661, "a", "exploding", True, "warning", 5.0, 3.794610558358711,
             "gradient norm 5 past 3.79; warning: 3.95x the run's scale 1.26"),
        Said(661, None, "exploding", True, "warning", 5.0, 3.794610558358711,
             "global gradient norm 5 past 3.79; warning: 3.95x the run's scale 1.26"),
        Said(662, "a", "exploding", True, "critical", 50.0, 12.6487018611957,
             "gradient norm 50 past 12.6; critical: 39.5x the run's scale 1.26"),
        Said(662, None, "exploding", True, "critical", 50.0, 12.6487018611957,
             "global gradient norm 50 past 12.6; critical: 39.5x the run's scale 1.26"),
        Said(662, None, "loss_spike", True, "warning", 5.0, 0.014892378807075035,
             "loss 5 above its recent range; warning: above the run's earlier range (up to 1.023)"),
    ],
    "escalated_past_the_ceiling": [
        Said(660, "a", "exploding", True, "info", 0.3, 0.10138777493336329,
             "gradient norm 0.3 jumped past 0.101, over 10x its recent level; info: within 3x of the run's scale "
             "1.05, as a hard batch is"),
        Said(660, None, "exploding", True, "info", 0.3, 0.10138777493336329,
             "global gradient norm 0.3 jumped past 0.101, over 10x its recent level; info: within 3x of the run's "
             "scale 1.05, as a hard batch is"),
        Said(660, None, "loss_spike", True, "info", 0.3, 0.04118799161062176,
             "loss 0.3 above 0.04119, far above its recent range; info: within the run's earlier range (up to 1.052)"),
        Said(661, "a", "exploding", True, "critical", 2000.0, 1000.0,
             "gradient norm 2e+03 past 1e+03"),
        Said(661, None, "exploding", True, "critical", 2000.0, 1000.0,
             "global gradient norm 2e+03 past 1e+03"),
    ],
    "ceiling_without_history": [
        Said(0, "fc2", "exploding", True, "critical", 200000.0, 100000.0,
             "gradient norm 2e+05 above the ceiling 100000"),
        Said(0, None, "exploding", True, "critical", 200000.0000025, 100000.0,
             "global gradient norm 2e+05 above the ceiling 100000"),
    ],
    "vanishing_by_depth_and_weight": [
        Said(4, "fc1", "vanishing", True, "warning", 1e-06, 0.0003,
             "gradient RMS 1e-06x the largest layer's, below 0.0003, for 5 steps"),
        Said(4, "fc2", "vanishing", True, "warning", 1e-08, 1e-07,
             "||g||/||w|| = 1e-08, below 1e-07, for 5 steps"),
        Said(8, "fc1", "exploding", True, "critical", 0.5, 1e-05,
             "gradient norm 0.5 jumped past 1e-05, over 10x its recent level; critical: 5e+05x the run's scale 1e-06"),
        Said(8, "fc2", "exploding", True, "critical", 0.5, 0.1,
             "gradient norm 0.5 jumped past 0.1, over 10x its recent level; critical: 50x the run's scale 0.01"),
        Said(10, "fc1", "vanishing", False, "warning", 0.5, 0.001,
             "gradient RMS back to 0.5x the largest layer's"),
        Said(10, "fc2", "vanishing", False, "warning", 0.5, 0.001,
             "gradient RMS back to 0.5x the largest layer's"),
    ],
    "dead_and_back": [
        Said(3, "fc2", "dead", True, "warning", 0.0, 0.0,
             "gradient exactly zero for 4 steps"),
        Said(7, "fc2", "dead", False, "warning", 0.0025, 0.0,
             "gradient nonzero again (0.0025)"),
    ],
    "nonfinite_layers_and_run": [
        Said(3, "fc1", "nonfinite", True, "critical", math.nan, 0.0,
             "gradient norm nan; first in the run: layer 'fc1' at step 3"),
        Said(3, "fc2", "nonfinite", True, "critical", 12.0, 0.0,
             "12 non-finite gradient values; first in the run: layer 'fc1' at step 3"),
        # An overflowed norm over no non-finite value (issue 29): once "inf non-finite gradient values".
        Said(3, "fc3", "exploding", True, "critical", OVERFLOW_NORM, 1e6,
             "gradient norm overflowed float32: ‖g‖ ≥ 1.8e+19 (its sum of squares passed float32's max, 3.4e38), "
             "every gradient value finite"),
        Said(5, "fc1", "nonfinite", False, "critical", 1.0, 0.0,
             "gradient finite again"),
        Said(5, "fc2", "nonfinite", False, "critical", 1.0, 0.0,
             "gradient finite again"),
        Said(5, "fc3", "exploding", False, "critical", 1.0, 3.0,
             "gradient norm 1 back within 3x of its recent median"),
        Said(6, None, "nonfinite", True, "critical", math.inf, 0.0,
             "global gradient norm inf at a step whose layers were not sampled"),
        Said(9, None, "nonfinite", False, "critical", 1.7, 0.0,
             "gradient finite again"),
    ],
    "amp_skips_that_persist": [
        Said(30, "a", "nonfinite", True, "critical", 5.0, 0.0,
             "5 non-finite gradient values; first in the run: layer 'a' at step 30"),
    ],
    "run_wide_between_samples": [
        Said(60, None, "loss_spike", True, "warning", 5.838895240113606, 3.9709125892555606,
             "loss 5.839 above 3.971, far above its recent range; warning: above the run's earlier range (up to "
             "1.998)"),
        Said(61, None, "exploding", True, "critical", 24.66093380593561, 9.990264215236989,
             "global gradient norm 24.7 jumped past 9.99, over 10x its recent level; critical: 24.7x the run's scale "
             "1"),
        Said(67, None, "exploding", False, "critical", 1.1546688171789807, 2.993847176881808,
             "global gradient norm 1.15 back within 3x of its recent median"),
        Said(67, None, "loss_spike", False, "warning", 2.137293371079651, 2.5493194256240397,
             "loss 2.137 back within its recent range"),
    ],
    "nonpositive_losses": [
        Said(30, None, "loss_spike", True, "warning", 3.0, -0.9364879042886117,
             "loss 3 above -0.9365, far above its recent range; warning: above the run's earlier range (up to -1)"),
        Said(35, None, "loss_spike", False, "warning", -1.0, -0.9841509752014793,
             "loss -1 back within its recent range"),
    ],
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_every_message_is_the_text_it_was(name: str) -> None:
    alerts = SCENARIOS[name]()
    expected = EXPECTED[name]
    facts = [(a.step, a.layer, a.kind, a.active, a.level) for a in alerts]
    assert facts == [(e.step, e.layer, e.kind, e.active, e.level) for e in expected]
    assert [a.message for a in alerts] == [e.message for e in expected]
    assert [a.value for a in alerts] == pytest.approx([e.value for e in expected], rel=1e-9, nan_ok=True)
    assert [a.threshold for a in alerts] == pytest.approx([e.threshold for e in expected], rel=1e-9, nan_ok=True)


def test_the_scenarios_reach_every_branch() -> None:
    said = {(e.kind, e.layer is None, e.active) for cases in EXPECTED.values() for e in cases}
    for kind in ("nonfinite", "exploding"):
        assert {(kind, False, True), (kind, False, False), (kind, True, True), (kind, True, False)} <= said
    assert {("loss_spike", True, True), ("loss_spike", True, False)} <= said
    for kind in ("vanishing", "dead"):
        assert {(kind, False, True), (kind, False, False)} <= said
    text = [e.message for cases in EXPECTED.values() for e in cases]
    for words in (
        "as a hard batch is",  # exploding raised at info ...
        "jumped past 0.104, over 10x its recent level; warning",  # ... at warning
        "jumped past 0.104, over 10x its recent level; critical: 39.5x",  # ... at critical by scale
        "past 3.79; warning",  # escalated to warning
        "past 12.6; critical",  # escalated to critical by scale ...
        "past 0.3; critical: grown 2x or more",  # ... and by compounding
        "norm 2e+03 past 1e+03",  # escalated past the ceiling
        "above the ceiling",
        "||g||/||w||",
        "below 0.0003",
        "not sampled",
        "gradient norm nan;",
        "12 non-finite gradient values",
        "info: within the run's earlier range",
        "warning: above the run's earlier range",
        "loss 5 above its recent range; warning",  # a loss spike escalated
    ):
        assert any(words in t for t in text), words


def test_the_words_are_a_pure_function_of_the_change() -> None:
    cfg = DetectorConfig(dead_steps=7, explode_compound_ratio=3.0)
    dead = Change(kind="dead", layer="fc1", up=True, escalated=False, value=0.0, threshold=0.0, level="warning")
    assert message(dead, cfg) == "gradient exactly zero for 7 steps"
    grown = Change(
        kind="exploding", layer=None, up=True, escalated=True, value=40.0, threshold=20.0, level="critical",
        severity=Severity(scale=1.0, times=40.0, rise=2),
    )
    assert message(grown, cfg) == "global gradient norm 40 past 20; critical: grown 3x or more at 2 samples in a row"
    assert message(grown._replace(severity=None), cfg) == "global gradient norm 40 past 20"
