"""The viewer over a run sampled every few steps: the charts and the header follow every step
(sampled steps and `RunSteps` alike), the heatmap's columns stay steps and show the gaps."""

from __future__ import annotations

import asyncio

import numpy as np
from ui_helpers import manual_app

from gradtui.model.events import RunSteps, StepStats
from gradtui.sources.synthetic import ScriptedSource, SyntheticRun
from gradtui.ui.app import GradTUIApp
from gradtui.ui.scale import EMPTY, NO_SAMPLE
from gradtui.ui.widgets.charts import SeriesChartWidget

STEPS = 43


def test_the_charts_and_the_header_follow_every_step_when_only_one_in_eight_is_sampled() -> None:
    events = SyntheticRun("healthy", 3, every=8).events(STEPS)
    assert [e.step for e in events if isinstance(e, StepStats)] == list(range(0, STEPS, 8))
    assert sum(e.steps.size for e in events if isinstance(e, RunSteps)) == STEPS - 6
    # The same run sampled at every step: the loss and global norm every step should show.
    every = [e for e in SyntheticRun("healthy", 3, every=1).events(STEPS) if isinstance(e, StepStats)]
    app = manual_app(ScriptedSource(events))

    async def main() -> None:
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.pause()
            app.poll_source()
            await pilot.pause()
            check(app)

    def check(app: GradTUIApp) -> None:
        loss = app.query_one("#loss", SeriesChartWidget).chart(8)
        assert loss.steps.tolist() == list(range(STEPS))
        np.testing.assert_allclose(loss.values, [e.loss for e in every])
        norm = app.query_one("#norm", SeriesChartWidget).chart(8)
        assert norm.steps.tolist() == list(range(STEPS))
        assert norm.values.size == STEPS and np.isfinite(norm.values).all()
        lr = app.query_one("#lr", SeriesChartWidget).chart(8)
        assert lr.steps.tolist() == list(range(0, STEPS, 8))  # known at sampled steps only
        header = app.status_header.plain
        assert "step 42" in header and "sampled 1/8" in header
        view = app.heatmap._view
        assert view is not None and view.steps_per_col == 1 and view.last_step == STEPS - 1
        # One column a step: the sampled ones 8 apart, the others drawn as not sampled, none before step 0.
        row = view.codes[0, -STEPS:]
        assert np.flatnonzero(row != NO_SAMPLE).tolist() == list(range(0, STEPS, 8))
        assert (view.codes[0, :-STEPS] == EMPTY).all()

    asyncio.run(main())


def test_a_chart_column_shows_its_worst_value_and_a_nan_among_its_steps_on_top() -> None:
    """One column a step (eight columns, six steps: two blank before the first, and the axis's
    first label under the first step drawn); in columns of two steps the NaN's column is marked
    and the others hold the largest of their values. Bars rise from zero."""
    from gradtui.ui.renderables.chart import ChartStyles, SeriesChart

    values = np.array([1.0, 2.0, np.nan, 4.0, 8.0, 8.0])
    chart = SeriesChart(np.arange(10, 16), values, title="loss", height=5, log=False)
    lines = chart.lines(8, 5)
    assert ["".join(seg.text for seg in line) for line in lines] == [
        "loss 8  ",
        "    × ██",
        "     ▄██",
        "  ▃▆ ███",
        "──10──15",
    ]
    assert [seg.style for seg in lines[1] if seg.text == "×"] == [ChartStyles().nonfinite]
    # Steps 10..15 in columns of two aligned to step numbers: (8, 9) empty, (10, 11), (12, NaN 13), (14, 15);
    # the title keeps the latest value whole, the axis has room for the last step only.
    assert ["".join(seg.text for seg in line) for line in chart.lines(4, 4)] == ["8   ", "  ×█", " ▄██", "──15"]
