"""The layer detail page: a dead layer reads dead, the histogram of log2|g| is drawn with its
axes, and the footer fits 80 columns."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable

import numpy as np
import pytest
from rich.console import Console
from textual.pilot import Pilot
from textual.widget import Widget
from textual.widgets import Footer, Static
from textual.widgets._footer import FooterKey, FooterLabel
from ui_helpers import manual_app, run_start, step_stats, store_of, text_of

from gradtui.demo.catalog import TOUR
from gradtui.demo.launcher import chapter_of
from gradtui.model.advice import zclip_preview
from gradtui.model.events import GRAD_HIST_BUCKETS, GRAD_HIST_LO, Alert, Event, StepStats
from gradtui.sources.synthetic import ScriptedSource
from gradtui.ui.app import GradTUIApp, make_app
from gradtui.ui.controls import clip_preview
from gradtui.ui.renderables.detail_charts import HistogramChart, HistoryChart
from gradtui.ui.screens.detail import LayerDetailScreen
from gradtui.ui.tour import Tour

NAMES = ["conv1", "fc1", "fc2"]


def plain(renderable: object, width: int) -> str:
    console = Console(width=width, color_system=None, force_terminal=False, legacy_windows=False)
    with console.capture() as cap:
        console.print(renderable)
    return cap.get()


def column(exponent: int) -> int:
    return 1 + exponent - GRAD_HIST_LO


def hist_row(counts: dict[int, int], zero: int = 0, bad: int = 0) -> np.ndarray:
    row = np.zeros(GRAD_HIST_BUCKETS, np.int32)
    for e, c in counts.items():
        row[column(e)] = c
    row[0], row[-1] = zero, bad
    return row


def dead_run(steps: int = 30) -> list[Event]:
    """conv1 learns for 5 steps and then gets exactly zero gradient; fc1 and fc2 stay healthy.
    Every 10th step is a detail step with histograms."""
    events: list[Event] = [run_start(3, names=NAMES)]
    for s in range(steps):
        conv = 1e-2 if s < 5 else 0.0
        ev = step_stats(s, [conv, 0.5, 0.3])
        if s % 10 == 0:
            hists = np.stack([
                hist_row({-8: 4, -7: 6}) if s < 5 else hist_row({}, zero=10),
                hist_row({-2: 3, -1: 5, 0: 2}),
                hist_row({-3: 10}, bad=0),
            ])
            ev = dataclasses.replace(ev, grad_hist=hists, mean_abs=np.array([conv / 3, 0.1, 0.1]))
        events.append(ev)
    return events


def drive(
    events: list[Event],
    body: Callable[[GradTUIApp, Pilot[None]], Awaitable[None]],
    size: tuple[int, int] = (120, 40),
    *,
    tour: bool = False,
) -> None:
    if tour:
        # The guided tour's footer carries its own keys too.
        chapters = [chapter_of(n) for n in TOUR[:2]]
        app = make_app(None, tour=Tour(chapters, lambda _c: ScriptedSource(events)), refresh_hz=0.001)
    else:
        app = manual_app(ScriptedSource(events))

    async def main() -> None:
        async with app.run_test(size=size) as pilot:
            app.poll_source()
            await pilot.pause()
            await body(app, pilot)

    asyncio.run(main())


# ---------------------------------------------------------------- the renderables


def test_history_marks_exact_zeros_apart_from_small_values() -> None:
    """Was: zeros dropped from the log sparkline, so a layer that died drew full bars."""
    died = np.array([1e-2] * 5 + [0.0] * 15)
    assert plain(HistoryChart(died, log=True), 20) == "▄▄▄▄▄○○○○○○○○○○○○○○○\n"
    # A small value is the lowest bar, zero its own glyph, a gap blank, ±Inf a cross.
    mixed = np.array([1e-3, 1e-2, 0.0, np.nan, np.inf, 1e-1])
    assert plain(HistoryChart(mixed, log=True), 6) == "▁▄○ ×█\n"
    # NaN from NaN gradients is not a gap.
    assert plain(HistoryChart(np.array([1.0, np.nan, 2.0]), log=True, bad=np.array([0, 1, 0])), 3) == "▁×█\n"
    # Linear statistics (counts, fractions) start at 0: a zero is the floor, not a mark.
    assert plain(HistoryChart(np.array([0.0, 0.0, 4.0, 8.0]), log=False), 4) == "▁▁▄█\n"
    assert plain(HistoryChart(np.zeros(4), log=False, height=2), 4) == "    \n▁▁▁▁\n"
    # Two rows: twice the resolution, the zero mark on the bottom row.
    assert plain(HistoryChart(np.array([1e-3, 1e-1, 0.0]), log=True, height=2), 3) == " █ \n▁█○\n"


def test_history_of_a_long_run_keeps_the_newest_at_the_right() -> None:
    values = np.concatenate([np.full(90, 1.0), np.full(10, 0.0)])
    text = plain(HistoryChart(values, log=True), 10)
    # Columns of 12 steps aligned to step numbers: the first holds none of steps 0..99.
    assert text == " ▄▄▄▄▄▄▄▄○\n"


def test_histogram_draws_its_columns_and_axes() -> None:
    counts = hist_row({-20: 2, -10: 6, 0: 2}, zero=1, bad=1)
    text = plain(HistogramChart(counts, height=5), 80).splitlines()
    assert len(text) == 5
    bars = text[:3]
    x0 = HistogramChart.Y_AXIS + 2  # first exponent column
    # The y axis reads the largest share; each bar sits over its exponent; 0 and NaN/Inf at the ends.
    assert bars[0].startswith(" 50%│") and bars[2].startswith("  0%│")
    assert bars[0][x0 + (-10 - GRAD_HIST_LO)] == "█"
    assert bars[2][x0 + (-20 - GRAD_HIST_LO)] != " " and bars[1][x0 + (-20 - GRAD_HIST_LO)] != "█"
    assert bars[2][HistogramChart.Y_AXIS] != " "  # the zero column
    assert bars[2][x0 + 64 + 1] != " "  # the NaN/Inf column
    ticks = text[3]
    assert ticks[HistogramChart.Y_AXIS] == "0" and ticks.rstrip().endswith("nan")
    assert ticks[x0 + (-20 - GRAD_HIST_LO) :].startswith("2⁻²⁰") and ticks[x0 + 40 :].startswith("2⁰")
    assert text[4].startswith("12 values, 8.3% zero, 1 NaN/Inf · 2⁻²⁰ ≈ 9.5e-07 · 2⁰ ≈ 1.0e+00")


def test_histogram_merges_exponents_when_narrow() -> None:
    counts = hist_row({-20: 2, -19: 2})
    chart = HistogramChart(counts, height=4)
    assert chart.layout(45) == (2, 1)  # 36 cells for 64 exponents
    assert chart.layout(40) == (3, 1) and chart.layout(80) == (1, 1) and chart.layout(150) == (1, 2)
    bars = plain(chart, 45).splitlines()[:2]
    x0 = HistogramChart.Y_AXIS + 2
    assert bars[0][x0 + (-20 - GRAD_HIST_LO) // 2] == "█"  # -20 and -19 share one cell
    assert all(len(line) <= 45 for line in plain(chart, 45).splitlines())


# ---------------------------------------------------------------- the screen


def test_a_dead_layer_looks_dead_on_its_page() -> None:
    async def body(app: GradTUIApp, pilot: Pilot[None]) -> None:
        await app.push_screen(LayerDetailScreen(app.store, 0))
        await pilot.pause()
        screen = app.screen
        title = text_of(screen.query_one("#detail-title"))
        assert title.startswith("conv1") and "‖g‖ is exactly 0" in title and "no flags" not in title
        spark = text_of(screen.query_one("#spark-grad_norm", Static), width=60).splitlines()
        assert spark[-1].rstrip().endswith("○" * 10), spark
        assert "█" not in spark[-1].split("○")[-1]
        values = text_of(screen.query_one("#values-grad_norm", Static))
        assert values.startswith("0 @29") and "0 … 1.0e-02" in values
        # fc1 (a healthy, steady layer) next: a flat bar at half height, no zero marks.
        await pilot.press("j")
        spark = text_of(app.screen.query_one("#spark-grad_norm", Static), width=60).splitlines()
        assert spark[0].strip() == "" and spark[1].strip() == "█" * 30

    drive(dead_run(), body)


def test_the_page_shows_the_latest_histogram_with_its_step() -> None:
    async def body(app: GradTUIApp, pilot: Pilot[None]) -> None:
        await app.push_screen(LayerDetailScreen(app.store, 1))
        await pilot.pause()
        panel = app.screen.query_one("#detail-hist", Static)
        assert panel.border_title == "gradient values, log₂|g| at step 20"
        text = text_of(panel, width=80)
        assert "50%│" in text and "2⁻²⁰" in text and "10 values, 0% zero, 0 NaN/Inf" in text
        # The dead layer's histogram: every value in the zero column.
        await pilot.press("k")
        text = text_of(app.screen.query_one("#detail-hist", Static), width=80)
        assert "100%│" in text and "10 values, 100% zero" in text

    drive(dead_run(), body)


def test_no_histogram_yet_says_so() -> None:
    events: list[Event] = [run_start(2), step_stats(1, [0.1, 0.2])]

    async def body(app: GradTUIApp, pilot: Pilot[None]) -> None:
        await app.push_screen(LayerDetailScreen(app.store, 0))
        await pilot.pause()
        assert "no histogram yet" in text_of(app.screen.query_one("#detail-hist", Static), width=80)

    drive(events, body)


def test_a_histogram_of_another_shape_is_left_out() -> None:
    bad = dataclasses.replace(step_stats(2, [0.1, 0.2]), grad_hist=np.ones((2, 5), np.int32))
    events: list[Event] = [run_start(2), bad]

    async def body(app: GradTUIApp, pilot: Pilot[None]) -> None:
        assert app.store.last is not None and app.store.last.step == 2
        assert app.store.latest_hist(0) is None

    drive(events, body, size=(80, 24))


def _footer(app: GradTUIApp) -> tuple[list[Widget], str]:
    parts = [w for w in app.screen.query_one(Footer).query("*") if isinstance(w, (FooterKey, FooterLabel))]
    shown = [w for w in parts if w.region.width > 0]
    labels = " ".join(f"{w.key_display} {w.description}" if isinstance(w, FooterKey) else str(w.content) for w in shown)
    return shown, labels


@pytest.mark.parametrize("tour", [False, True], ids=["run", "tour"])
def test_the_footer_fits_80_columns(tour: bool) -> None:
    """Was: "esc back jk layer . next c clip m mode ][ thr +- lr l lr= p pause▏^p": "? help" cut."""

    async def body(app: GradTUIApp, pilot: Pilot[None]) -> None:
        if tour:
            await pilot.press("escape")  # the chapter's story: its run starts
            await pilot.pause()
        app.poll_source()
        await pilot.pause()
        await app.push_screen(LayerDetailScreen(app.store, 0))
        await pilot.pause()
        shown, labels = _footer(app)
        assert shown and all(w.region.right <= 80 for w in shown), labels
        assert "? help" in labels and "esc back" not in labels, labels
        # The page's keys still work, and its title names them.
        assert "j/k: next/previous layer · Esc: back" in text_of(app.screen.query_one("#detail-title"))
        await pilot.press("j")
        assert isinstance(app.screen, LayerDetailScreen) and app.screen.layer_index == 1
        # Wide enough, they are in the footer too.
        await pilot.resize_terminal(120, 30)
        await pilot.pause()
        shown, labels = _footer(app)
        assert "esc back" in labels and "j  k  layer" in labels and "? help" in labels, labels
        await pilot.press("k", "escape")
        assert not isinstance(app.screen, LayerDetailScreen)

    drive(dead_run(), body, size=(80, 24), tour=tour)


def test_the_heatmap_keys_say_why_they_do_nothing_here() -> None:
    async def body(app: GradTUIApp, pilot: Pilot[None]) -> None:
        await app.push_screen(LayerDetailScreen(app.store, 0))
        await pilot.pause()
        stat = app.stat
        await pilot.press("s")
        await pilot.pause()
        assert any("Esc returns to the heatmap" in str(n.message) for n in app._notifications)
        assert app.stat == stat

    drive(dead_run(), body)


def test_a_sparse_statistic_sits_at_its_own_steps_on_the_pages_axis() -> None:
    """Was: mean|g|, measured every 10th step, drawn as four columns packed at the right, so its
    step-0 value sat under step 36 of the ‖g‖ row above it; and no axis said which steps."""
    events = dead_run(40)

    async def body(app: GradTUIApp, pilot: Pilot[None]) -> None:
        await app.push_screen(LayerDetailScreen(app.store, 1))
        await pilot.pause()

        def line(name: str) -> str:
            return text_of(app.screen.query_one(f"#spark-{name}", Static), width=60).splitlines()[-1]

        norm, mean, axis = line("grad_norm"), line("mean_abs"), line("axis")
        # 40 steps in 60 columns, one a step: steps 0..39 in columns 20..59.
        assert [i for i, ch in enumerate(norm) if ch != " "] == list(range(20, 60))
        assert [i for i, ch in enumerate(mean) if ch != " "] == [20, 30, 40, 50]
        assert axis.index("0") == 20 and axis.rstrip().endswith("39") and len(axis.rstrip()) == 60

    drive(events, body)


def test_detail_statistics_mark_nan_gradients_only_where_they_were_computed() -> None:
    """mean|g| is computed every 10th step: after the gradients go NaN it is × at those steps,
    not at the nine steps between that never computed it. Was: blank once the weights went NaN
    too (their norm told the detail steps apart)."""
    events: list[Event] = [run_start(2)]
    for s in range(40):
        nan = s >= 20
        ev = step_stats(s, [np.nan if nan else 0.5, 0.3], nonfinite=[5 if nan else 0, 0])
        if s % 10 == 0:
            ev = dataclasses.replace(
                ev,
                mean_abs=np.array([np.nan if nan else 0.1, 0.1]),
                weight_norm=np.array([np.nan if s > 20 else 3.0, 3.0]),
                zero_frac=np.array([0.0, 0.0]),
            )
        events.append(ev)

    async def body(app: GradTUIApp, pilot: Pilot[None]) -> None:
        await app.push_screen(LayerDetailScreen(app.store, 0))
        await pilot.pause()
        spark = text_of(app.screen.query_one("#spark-mean_abs", Static), width=40).splitlines()
        assert spark[-1] == "█         █         ×         ×         "
        norm = text_of(app.screen.query_one("#spark-grad_norm", Static), width=40).splitlines()
        assert norm[-1] == "█" * 20 + "×" * 20

    drive(events, body)


def test_step_stats_default_has_no_histogram() -> None:
    s = step_stats(0, [1.0])
    assert isinstance(s, StepStats) and s.grad_hist is None


def test_store_keeps_each_layers_latest_histogram() -> None:
    first = np.stack([hist_row({-3: 4}), hist_row({-5: 2})])
    second = np.stack([hist_row({0: 7}), np.zeros(GRAD_HIST_BUCKETS, np.int32)])
    events: list[Event] = [
        run_start(2),
        dataclasses.replace(step_stats(0, [0.1, 0.2]), grad_hist=first),
        step_stats(1, [0.1, 0.2]),
        # Layer 1 had no gradient at step 10: its histogram from step 0 stays the latest.
        dataclasses.replace(step_stats(10, [0.1, np.nan], has_grad=[True, False]), grad_hist=second),
    ]
    store = store_of(events)
    got0, got1 = store.latest_hist(0), store.latest_hist(1)
    assert got0 is not None and got1 is not None
    np.testing.assert_array_equal(got0[0], second[0])
    assert got0[1] == 10
    np.testing.assert_array_equal(got1[0], first[1])
    assert got1[1] == 0
    assert store.latest_hist(2) is None
    store.reset()
    assert store.latest_hist(0) is None


def test_a_flagged_layer_shows_what_to_change() -> None:
    start = dataclasses.replace(run_start(3, names=NAMES), activations=("Sigmoid",))
    events: list[Event] = [start] + [step_stats(s, [1e-6, 0.5, 0.3]) for s in range(12)]
    events.append(Alert(8, "conv1", "vanishing", True, 1e-6, 1e-3, level="warning"))

    async def body(app: GradTUIApp, pilot: Pilot[None]) -> None:
        await app.push_screen(LayerDetailScreen(app.store, 0))
        await pilot.pause()
        text = text_of(app.screen.query_one("#detail-alert-list"), width=200)
        assert "What to change (vanishing)" in text
        assert "the net uses Sigmoid" in text and "sigmoid-relu-he" in text
        await pilot.press("j")  # fc1 carries no flag: no advice
        assert "What to change" not in text_of(app.screen.query_one("#detail-alert-list"), width=200)

    drive(events, body)


def test_the_clip_preview_counts_what_each_rule_would_have_clipped() -> None:
    norms = [1.0 + 0.01 * (s % 5) for s in range(60)]
    norms[40] = 50.0
    store = store_of([run_start(1)] + [step_stats(s, [g]) for s, g in enumerate(norms)])
    text = clip_preview(store, {"norm": 1.02}, 1.0)
    expected_norm = sum(g > 1.02 for g in norms)
    assert f"Over the last 60 steps: norm ≤1.02 would have clipped {expected_norm}," in text
    assert "value ≤1 unknown (no detail step yet)" in text
    assert f"auto 2.5σ {zclip_preview(np.array(norms))} " in text and zclip_preview(np.array(norms)) >= 1
