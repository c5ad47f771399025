"""What users of a Textual app expect: a command palette, themes, ctrl+c, keys that say why
they do nothing, help that lists the keys of the mode, a layout that uses the screen."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from textual.command import CommandPalette
from textual.events import MouseScrollDown
from textual.pilot import Pilot
from ui_helpers import manual_app, synthetic_source

from gradtui.model.commands import SetLR
from gradtui.model.events import RunEnd
from gradtui.sources.synthetic import SyntheticRun
from gradtui.ui.app import GradTUIApp
from gradtui.ui.bindings import INTERVENTION_BINDINGS, REPLAY_BINDINGS
from gradtui.ui.screens.help import HelpScreen
from gradtui.ui.themes import THEMES

Body = Callable[[GradTUIApp, Pilot[None]], Awaitable[None]]


def drive(app: GradTUIApp, body: Body, size: tuple[int, int] = (120, 40)) -> None:
    async def main() -> None:
        async with app.run_test(size=size) as pilot:
            await pilot.pause()
            app.poll_source()
            await pilot.pause()
            await body(app, pilot)

    asyncio.run(main())


def _replay_app(tmp_path: Path) -> GradTUIApp:
    from gradtui.sources.replay import ReplaySource
    from gradtui.wire.record import RecordWriter

    path = tmp_path / "run.gtr"
    writer = RecordWriter(path)
    for ev in SyntheticRun("healthy", 4).events(300):
        writer.write(ev)
    writer.write(RunEnd(300, "ok"))
    writer.close()
    return manual_app(ReplaySource(path, paused=True))  # type: ignore[arg-type]


def test_the_command_palette_lists_every_action_of_the_mode() -> None:
    app = manual_app(synthetic_source(layers=4, prefill=20))

    async def body(app: GradTUIApp, pilot: Pilot[None]) -> None:
        titles = {c.title for c in app.get_system_commands(app.screen)}
        for b in INTERVENTION_BINDINGS:
            assert (b.tooltip or b.description) in titles
        assert not any((b.tooltip or b.description) in titles for b in REPLAY_BINDINGS if b.key not in ("+", "-"))
        assert {f"Theme: {label}" for label in THEMES.values()} <= titles
        assert "Next flagged" in titles and "Layer detail" in titles
        await pilot.press("ctrl+p")
        await pilot.pause()
        assert isinstance(app.screen, CommandPalette)
        await pilot.press(*"release")
        await pilot.press("enter")
        await pilot.pause()
        app.poll_source()
        await pilot.pause()
        assert any(type(c).__name__ == "Release" for c in app.source.sent)  # type: ignore[attr-defined]

    drive(app, body)


def test_t_cycles_dark_light_and_high_contrast() -> None:
    app = manual_app(synthetic_source(layers=3, prefill=5))

    async def body(app: GradTUIApp, pilot: Pilot[None]) -> None:
        seen = [app.theme]
        for _ in range(3):
            await pilot.press("T")
            await pilot.pause()
            seen.append(app.theme)
        assert seen == [*THEMES, next(iter(THEMES))]
        await pilot.press("T", "T")
        await pilot.pause()
        assert app.theme == "gradtui-high-contrast"
        assert app.get_css_variables()["background"].lower() == "#000000"

    drive(app, body)


def test_ctrl_c_quits_as_q_does() -> None:
    app = manual_app(synthetic_source(layers=3, prefill=5))

    async def body(app: GradTUIApp, pilot: Pilot[None]) -> None:
        await pilot.press("ctrl+c")
        await pilot.pause()
        assert not app.is_running

    drive(app, body)


def test_a_live_key_in_a_replay_says_why_and_help_lists_only_the_replay_keys(tmp_path: Path) -> None:
    app = _replay_app(tmp_path)

    async def body(app: GradTUIApp, pilot: Pilot[None]) -> None:
        await pilot.press("c")
        await pilot.pause()
        said = [n.message for n in app._notifications]
        assert any("works on a live run" in m and "replay" in m for m in said), said
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        titles = [title for title, _ in app.screen.sections]
        assert "Replay" in titles and not any("Interventions" in t for t in titles)
        scroll = app.screen.query_one("#help-dialog")
        await pilot.press("j", "j", "j")
        await pilot.pause()
        assert scroll.scroll_y > 0, "j scrolls the help"

    drive(app, body, size=(100, 20))


@pytest.mark.parametrize("size", [(200, 60), (120, 40), (80, 24)])
def test_the_heatmap_takes_the_width_and_the_charts_the_height(size: tuple[int, int]) -> None:
    app = manual_app(synthetic_source(layers=5, prefill=60))

    async def body(app: GradTUIApp, pilot: Pilot[None]) -> None:
        width, height = size
        heatmap = app.heatmap.region
        assert heatmap.width == width, "no column beside the heatmap (without a story panel)"
        assert heatmap.height <= 5 + 4, "five layers take five rows, not the whole panel"
        charts = [app.query_one(f"#{name}").region for name in ("loss", "norm", "lr")]
        assert all(c.height >= 3 for c in charts)
        used = heatmap.height + max(c.bottom for c in charts) - min(c.y for c in charts)
        assert used >= height - 4, "the charts grow into the rest of the screen"
        header = app.status_header.region
        assert header.height == (1 if width < 120 else 2)

    drive(app, body, size=size)


def test_the_one_line_header_keeps_its_fields_in_place_as_values_change() -> None:
    app = manual_app(synthetic_source(layers=4, prefill=9))

    async def body(app: GradTUIApp, pilot: Pilot[None]) -> None:
        first = app.status_header.plain
        for _ in range(5):
            app.poll_source()
            await pilot.pause()
        later = app.status_header.plain
        assert "\n" not in first and "\n" not in later
        for field in ("step", "loss", "lr"):
            assert first.index(field) == later.index(field), (first, later)

    drive(app, body, size=(80, 24))


def test_the_lr_chart_shows_the_override_and_the_loops_own_value() -> None:
    src = synthetic_source(layers=3, prefill=30)
    app = manual_app(src)

    async def body(app: GradTUIApp, pilot: Pilot[None]) -> None:
        lr = app.query_one("#lr")
        app.interventions.send(SetLR(factor=0.25))
        for _ in range(4):
            app.poll_source()
            await pilot.pause()
        lines = ["".join(seg.text for seg in line) for line in lr.chart(lr.size.height).lines(lr.size.width, 8)]
        assert lines[0].startswith("lr 0.025 (loop 0.1)"), lines[0]
        assert any("─" in line for line in lines[1:-1]), "the loop's value drawn over the bars"
        assert "L" in lines[-1], "the intervention marked on the axis"

    drive(app, body)


@pytest.mark.parametrize("size", [(160, 48), (80, 24)])
def test_a_click_selects_the_row_clicked_and_the_wheel_scrolls(size: tuple[int, int]) -> None:
    app = manual_app(synthetic_source(layers=60, prefill=20))

    async def body(app: GradTUIApp, pilot: Pilot[None]) -> None:
        heatmap = app.heatmap
        content = heatmap.content_region
        row = 3  # the fourth layer row, below the legend and the axis
        await pilot.click("#heatmap", offset=(content.x - heatmap.region.x + 2, content.y - heatmap.region.y + 2 + row))
        await pilot.pause()
        assert heatmap.cursor == row
        before = heatmap.scroll_y
        y = heatmap.region.y + 5
        for _ in range(3):
            heatmap.post_message(MouseScrollDown(heatmap, 2, 5, 0, 1, 0, False, False, False, screen_x=2, screen_y=y))
        await pilot.pause()
        assert heatmap.scroll_y > before, "the wheel scrolls the layers"

    drive(app, body, size=size)
