"""The alert log: one line per event (step, kind, direction), opened with enter or a click,
and numbers that always carry their unit."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable

from textual.app import App, ComposeResult
from textual.pilot import Pilot

from gradtui.model.events import Alert, GuardAction
from gradtui.ui.widgets.alert_log import MAX_GROUPS_PER_BATCH, AlertGroup, AlertLog, alert_text

LAYERS = ["0", "2", "4", "6", "8", "10"]


class LogApp(App[None]):
    def compose(self) -> ComposeResult:
        yield AlertLog(id="alerts")


def drive(body: Callable[[LogApp, AlertLog, Pilot[None]], Awaitable[None]], size: tuple[int, int] = (100, 20)) -> None:
    async def main() -> None:
        app = LogApp()
        async with app.run_test(size=size) as pilot:
            await pilot.pause()
            await body(app, app.query_one(AlertLog), pilot)

    asyncio.run(main())


def exploding(step: int, values: list[float], glob: float | None = 890.0, active: bool = True) -> list[Alert]:
    """What the detectors send when the layers in LAYERS (and the global norm) trip at once."""
    out = [Alert(step, name, "exploding", active, v, 120.0) for name, v in zip(LAYERS, values, strict=False)]
    if glob is not None:
        out.append(Alert(step, None, "exploding", active, glob, 300.0))
    return out


def test_one_line_per_event_for_every_layer_that_tripped() -> None:
    async def body(app: LogApp, log: AlertLog, pilot: Pilot[None]) -> None:
        log.add_alerts(exploding(7, [630.0, 480, 510, 550, 540, 520]))
        log.add_alerts(exploding(40, [1.0] * 6, glob=2.0, active=False))
        await pilot.pause()
        assert log.plain_lines == [
            "▸ step 7 ▲ exploding: 6 layers (0, 2, 4 …) and the global norm, up to ‖g‖ 8.9e+02",
            "▸ step 40 ✓ exploding cleared: 6 layers (0, 2, 4 …) and the global norm",
        ]
        assert log.count == 14

    drive(body)


def test_an_event_split_over_two_polls_stays_one_group() -> None:
    async def body(app: LogApp, log: AlertLog, pilot: Pilot[None]) -> None:
        alerts = exploding(7, [630.0, 480, 510, 550, 540, 520])
        log.add_alerts(alerts[:2])
        log.add_note("… clip norm ≤ 1 pending")  # something else logged in between
        log.add_alerts([*alerts[2:], Alert(7, "0", "nonfinite", True, 12.0, 0.0)])
        await pilot.pause()
        assert log.plain_lines == [
            "▸ step 7 ▲ exploding: 6 layers (0, 2, 4 …) and the global norm, up to ‖g‖ 8.9e+02",
            "… clip norm ≤ 1 pending",
            "▸ step 7 × non-finite: layer 0, 12 NaN/Inf values",
        ]
        # A later step starts new groups, even of the same kind.
        log.add_alerts([Alert(8, "4", "exploding", True, 700.0, 120.0)])
        assert log.plain_lines[-1] == "▸ step 8 ▲ exploding: layer 4, up to ‖g‖ 7.0e+02"

    drive(body)


def test_enter_and_a_click_open_the_group_under_them() -> None:
    async def body(app: LogApp, log: AlertLog, pilot: Pilot[None]) -> None:
        log.add_alerts(exploding(7, [630.0, 480], glob=None))
        log.add_alerts([Alert(9, None, "loss_spike", True, 4400.0, 550.0)])
        log.add_alerts(exploding(12, [2.0e4], glob=3.0e4))
        await pilot.pause()
        assert len(log.plain_lines) == 3
        # A click on the second line opens the second group (and only it).
        await pilot.click(AlertLog, offset=(5, 1))
        await pilot.pause()
        groups = log.groups
        assert [g.expanded for g in groups] == [False, True, False]
        assert log.plain_lines[1] == "▾ step 9 ^ loss spike: loss 4.4e+03 (threshold 5.5e+02)"
        assert log.plain_lines[2] == "    the loss: loss 4.4e+03 (threshold 5.5e+02)"
        # Enter on the cursor: up to the first group, open it; its layers are listed by name.
        log.focus()
        await pilot.press("home", "enter")
        await pilot.pause()
        assert log.plain_lines[:3] == [
            "▾ step 7 ▲ exploding: 2 layers (0, 2), up to ‖g‖ 6.3e+02",
            "    layer 0: ‖g‖ 6.3e+02 (threshold 1.2e+02)",
            "    layer 2: ‖g‖ 4.8e+02 (threshold 1.2e+02)",
        ]

        # The cursor (while focused) marks the group's own line, not its layers.
        def marked(y: int) -> bool:
            return any(seg.style is not None and seg.style.reverse for seg in log.render_line(y))

        assert [marked(y) for y in range(4)] == [True, False, False, False]
        # The rows moved: a click on the last line now lands on the third group.
        await pilot.click(AlertLog, offset=(5, len(log.plain_lines) - 1))
        await pilot.pause()
        assert [g.expanded for g in log.groups] == [True, True, True]
        assert log.plain_lines[-2:] == [
            "    layer 0: ‖g‖ 2.0e+04 (threshold 1.2e+02)",
            "    the global norm: ‖g‖ 3.0e+04 (threshold 3.0e+02)",
        ]
        await pilot.press("enter")  # the cursor followed the click: enter closes it again
        assert [g.expanded for g in log.groups] == [True, True, False]

    drive(body)


def test_a_number_never_runs_into_a_layer_name() -> None:
    """Was: "7 ▲ exploding 4 6.3e+02", read as "exploding 46.3e+02" where it wrapped."""
    alerts = [
        Alert(7, "4", "exploding", True, 630.0, 120.0),
        Alert(9, "conv1", "vanishing", True, 1.2e-5, 3e-4),
        Alert(9, "10", "nonfinite", True, 640.0, 0.0),
        Alert(11, "conv1", "dead", True, 0.0, 0.0),
        Alert(12, "4", "exploding", False, 26.0, 48.0),
    ]
    lines = [alert_text(a).plain for a in alerts]
    assert lines == [
        "step 7 ▲ exploding: layer 4, ‖g‖ 6.3e+02 (threshold 1.2e+02)",
        "step 9 ▼ vanishing: layer conv1, ratio 1.2e-05 (threshold 3.0e-04)",
        "step 9 × non-finite: layer 10, 640 NaN/Inf values",
        "step 11 ○ dead: layer conv1, ‖g‖ 0",
        "step 12 ✓ exploding cleared: layer 4, ‖g‖ 2.6e+01 (threshold 4.8e+01)",
    ]
    for a, line in zip(alerts, lines, strict=True):
        assert not re.search(rf"\b{re.escape(str(a.layer))} [-\d]", line), line


def test_a_flood_of_events_keeps_the_newest_and_counts_the_rest() -> None:
    async def body(app: LogApp, log: AlertLog, pilot: Pilot[None]) -> None:
        flood = [Alert(s, "0", "exploding", s % 2 == 0, 500.0, 100.0) for s in range(MAX_GROUPS_PER_BATCH + 10)]
        log.add_alerts(flood)
        await pilot.pause()
        lines = log.plain_lines
        assert lines[0] == "… 10 earlier alert events (5 alerts raised, 5 cleared)"
        assert len(lines) == MAX_GROUPS_PER_BATCH + 1
        assert lines[-1].startswith(f"▸ step {MAX_GROUPS_PER_BATCH + 9} ✓ exploding cleared")
        assert all(isinstance(e, AlertGroup) for e in log.entries[1:])

    drive(body)


def test_an_open_group_that_grows_is_redrawn_in_place() -> None:
    async def body(app: LogApp, log: AlertLog, pilot: Pilot[None]) -> None:
        alerts = exploding(7, [630.0, 480], glob=None)
        log.add_alerts(alerts[:1])
        log.toggle(0)
        log.add_note("between")
        log.add_alerts(alerts[1:])
        await pilot.pause()
        assert log.plain_lines == [
            "▾ step 7 ▲ exploding: 2 layers (0, 2), up to ‖g‖ 6.3e+02",
            "    layer 0: ‖g‖ 6.3e+02 (threshold 1.2e+02)",
            "    layer 2: ‖g‖ 4.8e+02 (threshold 1.2e+02)",
            "between",
        ]
        # What is drawn is what the entries say, line for line.
        drawn = [log.render_line(y).text.rstrip() for y in range(4)]
        assert drawn == log.plain_lines

    drive(body)


def test_the_guard_says_what_it_did_and_a_run_of_skips_is_one_line() -> None:
    async def body(app: LogApp, log: AlertLog, pilot: Pilot[None]) -> None:
        for step in (41, 42, 43):
            log.add_guard(GuardAction(step, "skip", "non-finite loss or gradients"))
        log.add_guard(
            GuardAction(44, "rollback", "rolled back to step 25 (non-finite gradients at step 44), lr 0.02 -> 0.005")
        )
        log.add_guard(GuardAction(44, "lr_cut", "lr 0.02 -> 0.005 (x0.25, cut 1)"))
        log.add_guard(GuardAction(50, "skip", "non-finite loss or gradients"))
        await pilot.pause()
        assert log.plain_lines == [
            "steps 41-43 ⤼ 3 non-finite steps skipped (updates not applied)",
            "step 44 ⟲ rolled back to step 25 (non-finite gradients at step 44), lr 0.02 -> 0.005",
            "step 50 ⤼ non-finite loss or gradients",
        ]

    drive(body)
