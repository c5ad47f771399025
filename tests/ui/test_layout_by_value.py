"""The screen shared by what it shows: the heatmap's rows first, and at 80x24 and in a 120x19
pane the essentials stay (the header, the heatmap, the latest alert, and how to get help and
leave); the header never wraps."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from textual.pilot import Pilot
from textual.widgets import Footer
from textual.widgets._footer import FooterKey
from ui_helpers import manual_app, synthetic_source

from gradtui.demo.catalog import TOUR
from gradtui.demo.launcher import chapter_of
from gradtui.sources.synthetic import ScriptedSource, SyntheticRun
from gradtui.ui.app import GradTUIApp, make_app
from gradtui.ui.tour import Tour
from gradtui.ui.widgets.alert_log import AlertLog
from gradtui.ui.widgets.charts import SeriesChartWidget

Body = Callable[[GradTUIApp, Pilot[None]], Awaitable[None]]


def drive(app: GradTUIApp, body: Body, size: tuple[int, int]) -> None:
    async def main() -> None:
        async with app.run_test(size=size) as pilot:
            await pilot.pause()
            app.poll_source()
            await pilot.pause()
            await pilot.pause()
            await body(app, pilot)

    asyncio.run(main())


def screen_lines(app: GradTUIApp) -> list[str]:
    """What the terminal shows, a string a line."""
    return ["".join(seg.text for seg in strip) for strip in app.screen._compositor.render_strips()]


def test_the_heatmap_takes_the_rows_it_needs_before_the_charts_do() -> None:
    """40 layers at 200x60: every one on screen, the charts in what is left. Was: the heatmap
    stopped at 60% of the height (34 layers, the rest scrolled) under three tall charts."""
    app = manual_app(synthetic_source("healthy", layers=40, prefill=60))

    async def body(app: GradTUIApp, pilot: Pilot[None]) -> None:
        heatmap = app.heatmap
        assert heatmap.max_scroll_y == 0, "every layer shows without scrolling"
        assert heatmap.content_region.height >= 40 + 2
        charts = [app.query_one(f"#{n}", SeriesChartWidget) for n in ("loss", "norm", "lr")]
        assert all(c.region.y > heatmap.region.bottom - 1 for c in charts)
        assert all(c.region.height >= 5 for c in charts if not c.has_class("-flat")), "a title, bars and an axis"

    drive(app, body, (200, 60))


def test_with_more_layers_than_rows_the_heatmap_scrolls_and_the_panels_keep_a_share() -> None:
    app = manual_app(synthetic_source("healthy", layers=300, prefill=30))

    async def body(app: GradTUIApp, pilot: Pilot[None]) -> None:
        assert app.heatmap.max_scroll_y > 0
        assert app.query_one("#side").region.height >= 60 // 4

    drive(app, body, (200, 60))


def _alerting_app(tour: bool) -> GradTUIApp:
    """Twelve layers that blow up: many alerts, the newest at the end of the log; alone, or as
    a chapter of the tour (its keys in the footer too, its banner above the heatmap when narrow)."""
    events = SyntheticRun("exploding", 12, run="exploding-mlp").events(300)
    if not tour:
        return manual_app(ScriptedSource(events, name="replay: exploding.gtr"))
    chapters = [chapter_of(n) for n in TOUR[:2]]
    return make_app(None, tour=Tour(chapters, lambda _c: ScriptedSource(events)), refresh_hz=0.001)


@pytest.mark.parametrize("tour", [False, True], ids=["run", "tour"])
@pytest.mark.parametrize("size", [(80, 24), (120, 19)], ids=["80x24", "120x19"])
def test_the_essentials_stay_on_a_small_screen(size: tuple[int, int], tour: bool) -> None:
    """Was: at 80 columns the tour's footer cut "? help" and "q quit" (never shown how to
    leave); in a 120x19 pane the charts were bare titles."""
    app = _alerting_app(tour)

    async def body(app: GradTUIApp, pilot: Pilot[None]) -> None:
        if tour:
            await pilot.press("escape")  # the chapter's story: its run starts
            await pilot.pause()
            app.poll_source()
            await pilot.pause()
            await pilot.pause()
        width = size[0]
        keys = [k for k in app.screen.query_one(Footer).query(FooterKey) if k.region.width > 0]
        # The palette's key is docked at the right, over whatever the others leave there.
        edge = min([width, *(k.region.x for k in keys if k.has_class("-command-palette"))])
        shown = {f"{k.key_display} {k.description}" for k in keys if k.region.right <= edge}
        assert {"? help", "q quit"} <= shown, shown
        lines = screen_lines(app)
        assert "step 299" in lines[0], "the header"
        heatmap = app.heatmap
        assert heatmap.content_region.height >= 2 + 3, "the heatmap's legend, axis and three rows at least"
        assert any("blocks.0.attn.qkv" in line for line in lines), "its first layer on screen"
        log = app.query_one(AlertLog)
        assert log.region.height >= 3
        newest = log.plain_lines[-1]
        assert newest.startswith("▸ step 298")
        assert any(newest[:24] in line for line in lines), "the latest alert on screen"
        for name in ("loss", "norm"):
            chart = app.query_one(f"#{name}", SeriesChartWidget)
            assert chart.content_region.height >= 3, f"{name}: a title, a bar row and an axis, not a bare title"

    drive(app, body, size)


@pytest.mark.parametrize("width", [120, 121, 130, 160])
def test_the_header_never_wraps_once_sampling_is_sparse(width: int) -> None:
    """Was: three lines at exactly 120 columns once "sampled 1/32" appeared."""
    run = SyntheticRun("exploding", 8, run="a-rather-long-run-name", every=32)
    app = manual_app(ScriptedSource(run.events(200), name="replay: a-rather-long-run-name.gtr"))

    async def body(app: GradTUIApp, pilot: Pilot[None]) -> None:
        assert app.store.stride == 32
        header = app.status_header
        assert all(len(line) <= width - 2 for line in header.plain.splitlines()), header.plain
        assert header.region.height == 2, header.plain
        assert "step 199" in header.plain and "loss" in header.plain

    drive(app, body, (width, 40))
