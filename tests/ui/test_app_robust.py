"""The viewer never hangs or crashes: NaN/Inf, empty runs, one layer, 2,000 layers,
tiny and resized terminals, NO_COLOR, a crashed run, a broken source."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import numpy as np
import pytest
from textual.pilot import Pilot
from ui_helpers import manual_app, run_start, step_stats, synthetic_source, text_of

from gradtui.model.commands import Command
from gradtui.model.events import Dropped, Event, RunEnd
from gradtui.sources.synthetic import ScriptedSource
from gradtui.ui.app import GradTUIApp
from gradtui.ui.screens.dialogs import RunErrorScreen
from gradtui.ui.widgets.alert_log import AlertLog
from gradtui.ui.widgets.layer_heatmap import LayerHeatmap
from gradtui.ui.widgets.status import StatusHeader

Body = Callable[[GradTUIApp, Pilot[None]], Awaitable[None]]


def drive(app: GradTUIApp, body: Body, size: tuple[int, int] = (80, 24)) -> None:
    async def main() -> None:
        async with app.run_test(size=size) as pilot:
            await pilot.pause()
            await body(app, pilot)

    asyncio.run(main())


def screen_text(app: GradTUIApp) -> str:
    """What the terminal shows, as plain text."""
    import re

    svg = app.export_screenshot()
    # Text runs of the SVG, in order; enough to check that something is drawn.
    return " ".join(re.findall(r">([^<]+)</text>", svg)).replace("&#160;", " ")


async def cycle_sizes(app: GradTUIApp, pilot: Pilot[None]) -> None:
    for size in ((80, 24), (200, 60), (40, 12), (120, 30), (80, 24)):
        await pilot.resize_terminal(*size)
        app.poll_source()
        await pilot.pause()
        assert app.query_one(LayerHeatmap).size.width > 0


def test_empty_source_shows_a_waiting_screen() -> None:
    app = manual_app(ScriptedSource([]))

    async def body(app: GradTUIApp, pilot: Pilot[None]) -> None:
        assert "waiting" in app.query_one(StatusHeader).plain
        assert "waiting for the first step" in screen_text(app)
        for key in "cmp+-[]sjkgGnNf":
            await pilot.press(key)
        await pilot.press("enter")
        await cycle_sizes(app, pilot)

    drive(app, body)


def test_run_start_without_steps_and_a_single_layer() -> None:
    src = ScriptedSource([run_start(1)])
    app = manual_app(src)

    async def body(app: GradTUIApp, pilot: Pilot[None]) -> None:
        await pilot.press("enter", "escape", "s", "s")
        src.feed([step_stats(0, [0.3]), step_stats(1, [float("inf")]), step_stats(2, [float("nan")], nonfinite=[4])])
        app.poll_source()
        await pilot.pause()
        assert "fc0" in screen_text(app)
        await pilot.press("enter")
        await pilot.press("escape")
        await cycle_sizes(app, pilot)

    drive(app, body)


def test_nan_and_inf_everywhere_do_not_crash() -> None:
    events: list[Event] = [run_start(5)]
    for s in range(50):
        g = np.full(5, np.nan if s % 3 else np.inf)
        events.append(step_stats(s, g, nonfinite=np.full(5, 7), loss=float("nan") if s % 2 else float("inf")))
    app = manual_app(ScriptedSource(events))

    async def body(app: GradTUIApp, pilot: Pilot[None]) -> None:
        text = app.query_one(StatusHeader).plain
        assert "loss nan" in text
        for _ in range(4):
            await pilot.press("s")
        await pilot.press("enter")
        await pilot.press("escape")
        await cycle_sizes(app, pilot)
        assert "×" in screen_text(app)

    drive(app, body)


def test_two_thousand_layers_scroll_and_filter() -> None:
    app = manual_app(synthetic_source("nan", layers=2000, prefill=130, detail_every=25))

    async def body(app: GradTUIApp, pilot: Pilot[None]) -> None:
        hm = app.query_one(LayerHeatmap)
        assert hm.rows.size == 2000
        await pilot.press("G")
        assert hm.cursor == 1999
        assert "blocks.499.mlp.fc2" in screen_text(app)
        await pilot.press("g", "n")
        assert hm.cursor > 0
        await pilot.press("f")
        assert 0 < hm.rows.size < 2000
        await pilot.press("s", "s", "s", "s")
        await cycle_sizes(app, pilot)

    drive(app, body, size=(120, 40))


def test_no_color_draws_cells_with_glyphs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    app = manual_app(synthetic_source("vanishing", layers=8, prefill=200))

    async def body(app: GradTUIApp, pilot: Pilot[None]) -> None:
        assert app.no_color
        hm = app.query_one(LayerHeatmap)
        assert not hm.color
        # The health view: healthy, low and vanishing cells as glyphs, and the legend in words.
        text = screen_text(app)
        assert "·" in text and "-" in text and "▼▼" in text and "vanishing" in text
        # The magnitude view: shades from cold to hot.
        await pilot.press("s")
        text = screen_text(app)
        assert "▒" in text and "." in text
        assert "▼" in text

    drive(app, body)


def test_a_crashed_run_shows_its_traceback() -> None:
    app = manual_app(synthetic_source(layers=4, prefill=10, fail_at=12))

    async def body(app: GradTUIApp, pilot: Pilot[None]) -> None:
        for _ in range(3):
            app.poll_source()
            await pilot.pause()
        assert isinstance(app.screen, RunErrorScreen)
        tb = text_of(app.screen.query_one("#traceback-text"))
        assert "Traceback (most recent call last)" in tb and "illegal memory access" in tb
        await pilot.press("escape")
        assert not isinstance(app.screen, RunErrorScreen)
        assert "✖ crashed" in app.query_one(StatusHeader).plain
        assert any("■ run crashed" in line for line in app.query_one(AlertLog).plain_lines)

    drive(app, body)


def test_pending_commands_are_abandoned_when_the_run_ends() -> None:
    src = synthetic_source(layers=4, prefill=3, steps_per_poll=0)
    app = manual_app(src)

    async def body(app: GradTUIApp, pilot: Pilot[None]) -> None:
        src.run = None  # nobody answers any more
        await pilot.press("+")
        assert "pending" in app.query_one(StatusHeader).plain
        src.feed([RunEnd(3, "ok")])
        app.poll_source()
        await pilot.pause()
        text = app.query_one(StatusHeader).plain
        assert "pending" not in text and "✓ finished" in text
        assert any("not applied: the run ended" in line for line in app.query_one(AlertLog).plain_lines)

    drive(app, body)


class BrokenSource(ScriptedSource):
    def poll(self, max_events: int = 100_000) -> list[Event]:
        raise ConnectionResetError("peer went away")

    def send(self, command: Command) -> str | None:
        return "not connected"


def test_a_failing_source_is_reported_not_fatal() -> None:
    app = manual_app(BrokenSource())

    async def body(app: GradTUIApp, pilot: Pilot[None]) -> None:
        app.poll_source()
        app.poll_source()
        await pilot.pause()
        lines = app.query_one(AlertLog).plain_lines
        assert sum("source failed: ConnectionResetError: peer went away" in line for line in lines) == 1

    drive(app, body)


def test_dropped_events_show_in_the_header() -> None:
    src = synthetic_source(layers=3, prefill=5, steps_per_poll=0)
    src.feed([Dropped(count=42, total=42)])
    app = manual_app(src)

    async def body(app: GradTUIApp, pilot: Pilot[None]) -> None:
        assert "dropped 42" in app.query_one(StatusHeader).plain

    drive(app, body)


def test_narrative_panel_shows_when_given() -> None:
    app = manual_app(synthetic_source(layers=3, prefill=5), narrative="# Chapter 1\nThe sigmoid saturates.")

    async def body(app: GradTUIApp, pilot: Pilot[None]) -> None:
        assert app.query_one("#narrative").display
        assert "The sigmoid saturates." in screen_text(app)
        app.narrative = None
        await pilot.pause()
        assert not app.query_one("#narrative").display

    drive(app, body, size=(140, 40))
