"""`gradtui report` as tables: the head line says how the run went, not only how its process ended."""

from __future__ import annotations

from rich.console import Console
from ui_helpers import run_start, step_stats

from gradtui.model.events import Event, RunEnd
from gradtui.model.report import summarize
from gradtui.ui.report_view import print_report


def _head(events: list[Event]) -> str:
    console = Console(record=True, width=160, color_system=None)
    print_report(summarize(events), "r.gtr", console=console)
    return console.export_text().splitlines()[0]


def test_a_run_that_went_nan_is_not_reported_as_ok() -> None:
    """Before the fix the head read "status ok" for a run whose gradients went NaN at step 3."""
    nan = float("nan")
    events: list[Event] = [run_start(2)]
    events += [step_stats(s, [1.0, 1.0]) for s in range(3)]
    events += [step_stats(s, [nan, 1.0], nonfinite=[8, 0], loss=nan) for s in range(3, 6)]
    events.append(RunEnd(6, "ok"))
    head = _head(events)
    assert "ok" not in head.split()
    assert head == "test-run  steps 6  finished; went non-finite at step 3 (fc0)"


def test_a_healthy_run_and_an_unfinished_one() -> None:
    events: list[Event] = [run_start(2), *(step_stats(s, [1.0, 1.0]) for s in range(4))]
    assert _head([*events, RunEnd(4, "ok")]) == "test-run  steps 4  finished; no alarms"
    assert _head(events) == "test-run  steps 4  unfinished (no end on the record); no alarms"
