"""Honest axes: the labels name the steps under them, each value sits at its own step, bars
rise from zero, a flat series is one line, and the tour's own pauses stay off the charts."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import numpy as np
from textual.pilot import Pilot
from ui_helpers import manual_app, run_start, step_stats, store_of, synthetic_source

from gradtui.model.commands import SetPaused
from gradtui.model.events import Event, GuardAction, RunSteps
from gradtui.sources.synthetic import ScriptedSource, SyntheticRun
from gradtui.ui.app import GradTUIApp
from gradtui.ui.renderables.chart import SeriesChart
from gradtui.ui.renderables.heatmap import Heatmap, HeatmapLayout, heatmap_view, render_heatmap_text
from gradtui.ui.widgets.charts import SeriesChartWidget

Body = Callable[[GradTUIApp, Pilot[None]], Awaitable[None]]


def drive(app: GradTUIApp, body: Body, size: tuple[int, int] = (200, 60)) -> None:
    async def main() -> None:
        async with app.run_test(size=size) as pilot:
            await pilot.pause()
            app.poll_source()
            await pilot.pause()
            await body(app, pilot)

    asyncio.run(main())


def chart_lines(app: GradTUIApp, name: str) -> list[str]:
    """The chart as drawn in its widget, one string a line."""
    widget = app.query_one(f"#{name}", SeriesChartWidget)
    width, height = widget.content_region.size
    return ["".join(seg.text for seg in line) for line in widget.chart(height).lines(width, height)]


def label_columns(axis: str) -> dict[str, int]:
    """Where each label of an axis line starts."""
    out: dict[str, int] = {}
    for word in axis.replace("─", " ").split():
        out.setdefault(word, axis.index(word))
    return out


def test_ten_steps_in_the_last_columns_are_labelled_where_they_are() -> None:
    """Was: "0───…───9" across the whole width, the ten bars in the last ten columns."""
    chart = SeriesChart(np.arange(10), np.linspace(1.0, 2.0, 10), title="loss", height=5, log=False)
    lines = ["".join(seg.text for seg in line) for line in chart.lines(40, 5)]
    bars = [i for i, ch in enumerate(lines[-2]) if ch != " "]
    assert bars == list(range(30, 40))
    assert lines[-1] == "─" * 30 + "0" + "─" * 8 + "9"


def test_the_heatmap_axis_starts_under_its_first_column_of_data() -> None:
    store = store_of([run_start(1), *(step_stats(s, [0.1]) for s in range(10))])
    layout = HeatmapLayout(57, name_width=6)
    text = render_heatmap_text(Heatmap(heatmap_view(store, "grad_norm", layout.cells), layout=layout, color=False), 57)
    axis, row = text.splitlines()[1:3]
    cells = layout.label_width  # where the cells start
    first = next(i for i in range(cells, 57) if row[i] != " ")
    assert first == 57 - 10, "ten steps in the last ten columns"
    assert axis.index("0", cells) == first and axis.rstrip().endswith("9") and len(axis.rstrip()) == 57


def test_guard_marks_sit_at_their_steps_on_every_chart() -> None:
    """Was: rollbacks at steps 9 and 20 drawn near the middle of an axis labelled 0…82 (the learning
    rate, sampled every 8 steps, placed its marks by sample, not by step)."""
    run = SyntheticRun("healthy", 5, every=8)
    events: list[Event] = run.events(83)
    for step in (9, 20):
        events += [GuardAction(step, "rollback", "rolled back"), GuardAction(step, "lr_cut", "lr 0.1 -> 0.05")]
    app = manual_app(ScriptedSource(events))

    async def body(app: GradTUIApp, pilot: Pilot[None]) -> None:
        loss, lr = chart_lines(app, "loss"), chart_lines(app, "lr")
        assert len(loss[-1]) == len(lr[-1]) and len(loss[-1]) >= 83, "one column a step"
        start = label_columns(loss[-1])["0"]
        assert loss[-1].rstrip().endswith("82")
        assert [i for i, ch in enumerate(loss[-1]) if ch == "R"] == [start + 9, start + 20]
        assert [i for i, ch in enumerate(lr[-1]) if ch == "L"] == [start + 9, start + 20]
        # The loss of step 0 is drawn in the column labelled 0.
        assert loss[-2][start] != " " and loss[-2][start - 1] == " "

    drive(app, body)


def test_the_global_norm_sits_at_the_steps_that_measured_it() -> None:
    """Steps 1-7 and 9-15 screened only canary layers (no global norm): the chart leaves their
    columns empty. Was: the three norms in three adjacent columns."""
    events: list[Event] = [run_start(2)]
    for s in (0, 8, 16):
        if s:
            between = np.arange(s - 7, s)
            events.append(RunSteps(s - 1, between, np.ones(7), None))
        events.append(step_stats(s, [0.5 * (1 + s), 0.5]))
    app = manual_app(ScriptedSource(events))

    async def body(app: GradTUIApp, pilot: Pilot[None]) -> None:
        norm = chart_lines(app, "norm")
        start = label_columns(norm[-1])["0"]
        assert [i for i, ch in enumerate(norm[-2]) if ch != " "] == [start, start + 8, start + 16]

    drive(app, body)


def test_halving_the_learning_rate_halves_its_bar() -> None:
    """Bars rise from zero. Was: min..max stretched over the rows, so 0.05 after 0.1 was the
    lowest eighth of a bar (a drop to zero, to the eye)."""
    lr = np.concatenate([np.full(5, 0.1), np.full(5, 0.05)])
    chart = SeriesChart(np.arange(10), lr, title="lr", height=6, log=False)
    lines = ["".join(seg.text for seg in line) for line in chart.lines(10, 6)]
    bars = lines[1:-1]
    assert [row[:5] for row in bars] == ["█████"] * 4
    assert [row[5:] for row in bars] == ["     ", "     ", "█████", "█████"]


def test_a_flat_series_is_one_line() -> None:
    """Was: a flat learning rate filled its whole panel with solid bars."""
    app = manual_app(synthetic_source("healthy", layers=5, prefill=60))

    async def body(app: GradTUIApp, pilot: Pilot[None]) -> None:
        lr = app.query_one("#lr", SeriesChartWidget)
        assert lr.content_region.height == 1
        assert chart_lines(app, "lr")[0].startswith("lr 0.1  flat since step 0")
        loss = app.query_one("#loss", SeriesChartWidget)
        assert loss.content_region.height >= 10, "the rows it gave up go to the other charts"

    drive(app, body, size=(120, 40))


def test_the_tours_own_pauses_stay_off_the_charts() -> None:
    """A quiet pause (the tour holds a chapter while its story is open) changed nothing in the
    run: no "P" on the charts. A pause by a key is on them."""
    src = synthetic_source("healthy", layers=4, prefill=30, steps_per_poll=1)
    app = manual_app(src)

    async def body(app: GradTUIApp, pilot: Pilot[None]) -> None:
        for paused in (True, False):
            app.interventions.send(SetPaused(paused), quiet=True)
            app.poll_source()
            await pilot.pause()
        for _ in range(3):
            app.poll_source()
        await pilot.pause()
        assert any(r.kind == "set_paused" for r in app.store.results)
        assert "P" not in chart_lines(app, "loss")[-1]
        await pilot.press("p")
        app.poll_source()
        await pilot.pause()
        assert "P" in chart_lines(app, "loss")[-1]

    drive(app, body, size=(120, 40))
