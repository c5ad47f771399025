"""One glyph and one word per concept, from one table (`gradtui.ui.scale`): the header, the
heatmap, the log, the layer page, the report and the help say non-finite and the guard's
actions alike."""

from __future__ import annotations

import asyncio

import numpy as np
from rich.console import Console
from textual.widgets import Static
from ui_helpers import manual_app, run_start, step_stats, text_of

from gradtui.model.events import Alert, Event, GuardAction, RunEnd
from gradtui.model.report import summarize
from gradtui.sources.synthetic import ScriptedSource
from gradtui.ui.renderables.heatmap import Heatmap, HeatmapLayout, heatmap_view, render_heatmap_text
from gradtui.ui.report_view import print_report
from gradtui.ui.scale import FLAG_GLYPHS, FLAG_WORDS, GUARD_GLYPHS, GUARD_WORDS, NONFINITE_GLYPH
from gradtui.ui.screens.detail import LayerDetailScreen
from gradtui.ui.screens.help import help_renderable
from gradtui.ui.widgets.alert_log import AlertLog

NONFINITE = f"{NONFINITE_GLYPH} {FLAG_WORDS['nonfinite']}"
""""× non-finite": the flag, as every part of the screen says it."""


def _nan_run() -> list[Event]:
    """fc0's gradients go NaN at step 3."""
    nan = float("nan")
    events: list[Event] = [run_start(2)]
    events += [step_stats(s, [1.0, 1.0]) for s in range(3)]
    events += [step_stats(s, [nan, 1.0], nonfinite=[8, 0], loss=nan) for s in range(3, 6)]
    events.append(Alert(3, "fc0", "nonfinite", True, 8.0, 0.0, level="critical"))
    return events


def _plain(renderable: object, width: int = 160) -> str:
    console = Console(record=True, width=width, color_system=None)
    console.print(renderable)
    return console.export_text()


def test_non_finite_is_one_glyph_everywhere() -> None:
    """Was: "!" in the header, the heatmap's rows and the log, "×" in the cells and on the charts."""
    assert FLAG_GLYPHS["nonfinite"] == NONFINITE_GLYPH
    app = manual_app(ScriptedSource(_nan_run()))

    async def main() -> None:
        async with app.run_test(size=(160, 40)) as pilot:
            app.poll_source()
            await pilot.pause()
            assert f"flags {NONFINITE_GLYPH}1 {FLAG_WORDS['nonfinite']}" in app.status_header.plain
            assert any(NONFINITE in line for line in app.query_one(AlertLog).plain_lines)
            await app.push_screen(LayerDetailScreen(app.store, 0))
            await pilot.pause()
            assert f"flags: {NONFINITE}" in text_of(app.screen.query_one("#detail-title", Static))

    asyncio.run(main())
    store = app.store
    layout = HeatmapLayout(60, name_width=6)
    rows = render_heatmap_text(Heatmap(heatmap_view(store, "grad_norm", layout.cells), layout=layout), 60)
    fc0 = rows.splitlines()[2]
    assert fc0.startswith(f"{NONFINITE_GLYPH} fc0") and fc0.rstrip().endswith(NONFINITE_GLYPH * 3)
    assert NONFINITE in rows.splitlines()[0], "the legend's word is the flag's"


def test_the_report_says_verdicts_and_guard_actions_in_the_viewers_words() -> None:
    events = _nan_run()
    events += [GuardAction(4, "rollback", "rolled back to step 2"), GuardAction(4, "lr_cut", "lr 0.1 -> 0.05")]
    events.append(RunEnd(6, "ok"))
    text = _plain_report(events)
    assert NONFINITE in text
    assert f"{GUARD_GLYPHS['rollback']} {GUARD_WORDS['rollback']}" in text
    assert f"{GUARD_GLYPHS['lr_cut']} {GUARD_WORDS['lr_cut']}" in text and "lr_cut" not in text


def _plain_report(events: list[Event]) -> str:
    console = Console(record=True, width=160, color_system=None)
    print_report(summarize(events), "r.gtr", console=console)
    return console.export_text()


def test_the_help_explains_the_guard_chip_and_the_chart_letters() -> None:
    """Was: the header's "guard ⟲2 ⤼0" explained nowhere."""
    text = _plain(help_renderable([]))
    for action in ("rollback", "skip"):
        line = next(line for line in text.splitlines() if line.strip().startswith(GUARD_GLYPHS[action]))
        assert GUARD_WORDS[action] in line
    flat = " ".join(text.split())
    assert "R guard rolled back" in flat and "P paused or resumed" in flat
    for kind, glyph in FLAG_GLYPHS.items():
        assert any(line.strip().startswith(f"{glyph} ") and FLAG_WORDS[kind] in line for line in text.splitlines())


def test_the_report_and_the_screen_colour_a_flag_by_its_role() -> None:
    """The report's verdicts take the flag's role on a plain console (`PLAIN_ROLES`), as the header does."""
    from gradtui.ui.report_view import verdict_text
    from gradtui.ui.scale import PLAIN_ROLES

    assert verdict_text("nonfinite").style == PLAIN_ROLES["nonfinite"]
    assert verdict_text("exploding").plain == f"{FLAG_GLYPHS['exploding']} {FLAG_WORDS['exploding']}"
    assert np.all([verdict_text(k).plain.startswith(FLAG_GLYPHS[k]) for k in FLAG_GLYPHS])
