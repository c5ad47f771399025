"""The header's steps/s: the probe's measure while training, 0 while paused, none once the run ended."""

from __future__ import annotations

import asyncio
import dataclasses

from textual.pilot import Pilot
from ui_helpers import manual_app, run_start, step_stats

from gradtui.model.events import RunEnd
from gradtui.sources.synthetic import ScriptedSource
from gradtui.ui.app import GradTUIApp


def test_the_header_shows_the_rate_then_zero_paused_then_none_after_the_end() -> None:
    """Before the fix the header kept the last measure: 19.4/s while paused, 124.6/s after the end."""
    source = ScriptedSource([run_start(3), dataclasses.replace(step_stats(0, [1.0, 1.0, 1.0]), steps_per_sec=19.4)])
    app = manual_app(source)

    async def body(app: GradTUIApp, pilot: Pilot[None]) -> None:
        assert "19.4/s" in app.status_header.plain
        paused = dataclasses.replace(step_stats(1, [1.0, 1.0, 1.0]), steps_per_sec=19.4, paused=True)
        source.feed([paused])
        app.poll_source()
        assert "0.0/s" in app.status_header.plain and "19.4/s" not in app.status_header.plain
        source.feed([dataclasses.replace(step_stats(2, [1.0, 1.0, 1.0]), steps_per_sec=124.6), RunEnd(3, "ok")])
        app.poll_source()
        assert "—/s" in app.status_header.plain and "124.6" not in app.status_header.plain

    async def main() -> None:
        async with app.run_test(size=(160, 40)) as pilot:
            await pilot.pause()
            await body(app, pilot)

    asyncio.run(main())
