"""Alert levels: a hard batch on a converged run is info, a blow-up is critical, and every
consumer (store, alert log, report, wire) keeps the level."""

from __future__ import annotations

import math

import numpy as np
import pytest
from rich.console import Console
from test_detectors import feed, raised, stats
from test_report import _start, _step

from gradtui.model.detectors import DetectorConfig, Detectors
from gradtui.model.events import ALERT_LEVELS, Alert, level_rank
from gradtui.model.report import summarize
from gradtui.model.store import RunStore
from gradtui.ui.report_view import print_report
from gradtui.ui.widgets.alert_log import AlertGroup, group_lines
from gradtui.wire import codec


def converged_run(rng: np.random.Generator, start: float = 1.0, end: float = 0.01) -> list:
    """A run that trains at norm `start` for 60 samples, converges to `end` over 400 and stays there.

    The loss follows the norm down: a healthy run whose gradients shrink as it learns.
    """
    out = []
    t = 0
    for level, n in ((start, 60), (None, 400), (end, 200)):
        for i in range(n):
            if level is None:
                norm = start * (end / start) ** (i / n)
            else:
                norm = level
            noisy = norm * 10 ** (0.05 * rng.standard_normal())
            out.append(stats(t, [noisy], loss=noisy * 10 ** (0.05 * rng.standard_normal())))
            t += 1
    return out


def test_a_hard_batch_on_a_converged_run_is_info_and_not_a_flag() -> None:
    rng = np.random.default_rng(0)
    base = converged_run(rng)
    det = Detectors(["a"])
    store = RunStore()
    for s in base:
        store.apply(s)
    assert feed(det, base) == []
    # One batch 30x the recent median (the loss up with it), still below the run's earlier scale.
    t = len(base)
    jump = det.update(stats(t, [0.3], loss=0.3))
    up = raised(jump, "exploding")
    assert {a.layer for a in up} == {"a", None}
    assert {a.level for a in raised(jump)} == {"info"}
    assert "within the run's earlier range" in raised(jump, "loss_spike")[0].message
    assert all("within 3x of the run's scale" in a.message for a in up)
    for a in jump:
        store.apply(a)
    assert store.active_flags == {}
    assert set(store.info_flags) == {("a", "exploding"), (None, "exploding"), (None, "loss_spike")}
    assert det.verdicts() == {"a": "healthy"}
    # It returns at once: nothing escalates, the flag clears.
    after = feed(det, [stats(t + 1 + i, [0.01], loss=0.01) for i in range(10)])
    assert [a for a in after if a.active] == []
    assert {(a.layer, a.kind, a.active, a.level) for a in after} == {
        ("a", "exploding", False, "info"),
        (None, "exploding", False, "info"),
        (None, "loss_spike", False, "info"),
    }
    for a in after:
        store.apply(a)
    assert store.info_flags == {} and store.active_flags == {}


def test_compounding_growth_escalates_the_same_flag_to_critical() -> None:
    rng = np.random.default_rng(1)
    base = converged_run(rng)
    det = Detectors(["a"])
    store = RunStore()
    feed(det, base)
    t = len(base)
    first = raised(det.update(stats(t, [0.15], loss=0.15)), "exploding")
    assert {a.level for a in first} == {"info"}
    # Still growing 2x or more a sample, past the raise threshold: a blow-up, long before 10x the scale.
    second = raised(det.update(stats(t + 1, [0.4], loss=0.5)), "exploding")
    assert {(a.layer, a.level) for a in second} == {("a", "critical"), (None, "critical")}
    assert all("grown 2x or more at 2 samples in a row" in a.message for a in second)
    layer = next(a for a in second if a.layer == "a")
    assert layer.value == pytest.approx(0.4) and layer.threshold == pytest.approx(0.3, rel=1e-6)
    for a in first + second:
        store.apply(a)
    assert store.info_flags == {} and store.active_flags[("a", "exploding")].level == "critical"
    assert det.verdicts() == {"a": "exploding"}
    # Critical stays critical while the flag is up: no further raise, whatever the norm does.
    assert raised(det.update(stats(t + 2, [0.5], loss=0.6))) == []


def test_a_noisy_norm_that_doubles_twice_below_the_raise_threshold_does_not_escalate() -> None:
    rng = np.random.default_rng(2)
    base = converged_run(rng)
    det = Detectors(["a"])
    feed(det, base)
    t = len(base)
    assert {a.level for a in raised(det.update(stats(t, [0.3], loss=0.3)))} == {"info"}
    # Back down, then up 2.5x twice while the flag is still up, but never past the raise threshold again.
    later = feed(det, [stats(t + 1 + i, [v], loss=0.01) for i, v in enumerate([0.004, 0.01, 0.025])])
    assert raised(later) == []


@pytest.mark.parametrize(
    ("start", "jump", "level"),
    [
        (1.0, 50.0, "critical"),  # 50x the recent median, 50x the run's scale
        (1.0, 5.0, "warning"),  # 500x the converged median, 5x the run's scale
        (1.0, 0.2, "info"),  # 20x the converged median, within the run's scale
    ],
)
def test_the_level_of_a_jump_follows_its_height_over_the_run_scale(start: float, jump: float, level: str) -> None:
    det = Detectors(["a"])
    feed(det, converged_run(np.random.default_rng(3), start=start))
    up = raised(det.update(stats(700, [jump], loss=jump)), "exploding")
    assert {a.level for a in up} == {level}, [a.message for a in up]


def test_the_ceiling_and_nonfinite_values_are_critical_vanishing_a_warning() -> None:
    det = Detectors(["a", "b"], DetectorConfig(explode_ceiling=1e5))
    ceiling = det.update(stats(0, [1.0, 2e5]))
    assert {a.level for a in ceiling} == {"critical"}
    det = Detectors(["a", "b"])
    alerts = feed(det, [stats(t, [1.0, 1e-6], loss=1.0) for t in range(12)])
    assert {(a.kind, a.level) for a in raised(alerts)} == {("vanishing", "warning")}
    nan = det.update(stats(12, [math.nan, 1e-6], nonfinite=[3, 0], loss=1.0))
    assert {(a.kind, a.level) for a in raised(nan, "nonfinite")} == {("nonfinite", "critical")}


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"explode_warn_ratio": "0.5"}, "explode_warn_ratio must be in [1, explode_scale_ratio]"),
        ({"explode_warn_ratio": "20"}, "explode_warn_ratio must be in [1, explode_scale_ratio]"),
        ({"explode_compound_ratio": "1"}, "explode_compound_ratio must be above 1"),
        ({"explode_critical_steps": "0"}, "explode_critical_steps must be at least 1"),
        ({"explode_critical_steps": "1.5"}, "explode_critical_steps: '1.5' is not a whole number"),
    ],
)
def test_level_options_are_validated(options: dict[str, str], expected: str) -> None:
    with pytest.raises(ValueError, match=r"^.*" + expected.replace("[", r"\[").replace("]", r"\]")):
        DetectorConfig.from_options(options)


def test_a_stricter_scale_ratio_makes_the_same_jump_critical() -> None:
    def level(config: DetectorConfig) -> set[str]:
        det = Detectors(["a"], config)
        feed(det, converged_run(np.random.default_rng(3)))
        return {a.level for a in raised(det.update(stats(700, [5.0], loss=5.0)), "exploding")}

    assert level(DetectorConfig()) == {"warning"}
    assert level(DetectorConfig(explode_scale_ratio=3.0)) == {"critical"}


def _alert(level: str, active: bool = True, layer: str | None = "fc1") -> Alert:
    return Alert(step=7, layer=layer, kind="exploding", active=active, value=630.0, threshold=120.0, level=level)


def test_the_alert_log_says_the_level_and_dims_info() -> None:
    lines = {lvl: group_lines(AlertGroup(7, "exploding", True, lvl, [_alert(lvl)]))[0] for lvl in ALERT_LEVELS}
    assert "▲ exploding (critical): layer fc1" in lines["critical"].plain
    assert "▲ exploding (info): layer fc1" in lines["info"].plain
    assert "▲ exploding: layer fc1" in lines["warning"].plain  # the plain flag
    console = Console(color_system="truecolor", width=120)
    dims = {
        lvl: any(s.style is not None and console.get_style(s.style).dim for s in t.spans) for lvl, t in lines.items()
    }
    bold_layer = {
        lvl: any(t.plain[s.start : s.end] == "layer fc1" and "bold" in str(s.style) for s in t.spans)
        for lvl, t in lines.items()
    }
    assert bold_layer == {"info": False, "warning": True, "critical": True}
    assert dims["info"]


def test_levels_cross_the_wire_and_old_records_read_as_warning() -> None:
    a = _alert("critical")
    assert codec.decode_event(codec.encode_message(a)) == a
    payload = codec.encode_message(_alert("info"))
    del payload["level"]
    assert codec.decode_event(payload).level == "warning"  # type: ignore[union-attr]
    assert level_rank("emergency") == level_rank("warning")  # a newer writer's level


def test_the_report_lists_levels() -> None:
    events = [_start(), _step(0), _alert("info", layer="a"), _step(1), _alert("critical", layer="a")]
    summary = summarize(events, recompute=False)
    assert [e["level"] for e in summary["alerts"]] == ["info", "critical"]
    assert {e["name"]: e["verdict"] for e in summary["layers"]}["a"] == "exploding"
    # An info-level flag alone is no verdict.
    info_only = summarize(events[:3], recompute=False)
    assert {e["name"]: e["verdict"] for e in info_only["layers"]}["a"] == "healthy"
    console = Console(record=True, width=120, color_system=None)
    print_report(summary, "r.gtr", console=console)
    lines = console.export_text().splitlines()
    cells = [[c.strip() for c in line.strip("│┃ ").split(line[0])] for line in lines if line[:1] in "│┃" and line]
    header = next(row for row in cells if "threshold" in row)
    assert header == ["step", "layer", "kind", "level", "value", "threshold"]
    assert [row[3] for row in cells if len(row) == 6 and "exploding" in row] == ["info", "critical"]
