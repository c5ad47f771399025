"""The heatmap as a pure Rich renderable: known inputs rendered to strings."""

from __future__ import annotations

import numpy as np
import pytest
from rich.color import ColorSystem
from rich.style import Style
from ui_helpers import run_start, step_stats, store_of

from gradtui.model.events import Event, RunSteps
from gradtui.model.store import RunStore
from gradtui.ui.renderables.heatmap import (
    Heatmap,
    HeatmapLayout,
    bucket_size,
    heatmap_view,
    render_heatmap_text,
)
from gradtui.ui.scale import (
    EMPTY,
    EXPLODING_CELL,
    HEALTH,
    HEALTH_GLYPHS,
    HEALTH_LEVELS,
    HEALTH_MID,
    HEALTH_STYLES,
    N_BINS,
    NO_SAMPLE,
    NONFINITE,
    NONFINITE_STYLE,
    PALETTE,
    STAT_SCALES,
    VANISHING_CELL,
    shade_glyph,
    truncate_left,
)

WIDTH = 40


def _bg(code: int) -> str:
    """The truecolor SGR fragment of a colour bin's background."""
    c = PALETTE[code].bgcolor
    assert c is not None
    r, g, b = c.get_truecolor()
    return f"48;2;{r};{g};{b}m"


def _three_layer_store(steps: int = 5) -> RunStore:
    """fc0 cold (1e-9), fc1 healthy (0.1), fc2 hot (1e6); fc2 goes NaN at the last step."""
    events: list[Event] = [run_start(3, names=["cold", "ok", "hot"])]
    for s in range(steps):
        norms = [1e-9, 0.1, 1e6]
        nf = [0, 0, 0]
        if s == steps - 1:
            norms[2] = float("nan")
            nf[2] = 12
        events.append(step_stats(s, norms, nonfinite=nf))
    return store_of(events)


def _rows(text: str) -> list[str]:
    return text.splitlines()[2:]


def test_cold_hot_and_nan_without_colour_read_from_glyphs() -> None:
    store = _three_layer_store()
    layout = HeatmapLayout(WIDTH, name_width=6)
    view = heatmap_view(store, "grad_norm", layout.cells)
    text = render_heatmap_text(Heatmap(view, layout=layout, color=False), WIDTH)
    cold, ok, hot = _rows(text)
    cells = layout.cells
    # Right-aligned, newest at the right: 5 steps in 5 columns.
    assert cold == "  cold   1.0e-09 " + " " * (cells - 5) + "....."
    assert ok.startswith("  ok     1.0e-01 ")
    assert ok.endswith(shade_glyph(int(STAT_SCALES["grad_norm"].codes(np.array([0.1]))[0])) * 5)
    assert hot == "  hot        nan " + " " * (cells - 5) + "████×"


def test_colours_cold_is_coldest_bin_hot_is_hottest_nan_is_magenta() -> None:
    store = _three_layer_store()
    layout = HeatmapLayout(WIDTH, name_width=6)
    view = heatmap_view(store, "grad_norm", layout.cells)
    assert view.codes[0, -1] == 0
    assert view.codes[2, -2] == N_BINS - 1
    assert view.codes[2, -1] == NONFINITE
    text = render_heatmap_text(Heatmap(view, layout=layout, header=False), WIDTH, color_system="truecolor")
    cold, ok, hot = text.splitlines()
    assert _bg(0) in cold and _bg(N_BINS - 1) not in cold
    assert _bg(N_BINS - 1) in hot
    # Non-finite: a "×" on its own colour, on no part of the scale (its hue: test_health_colours).
    nan_bg = NONFINITE_STYLE.bgcolor
    assert nan_bg is not None and "×" in hot
    assert "48;2;{};{};{}m".format(*nan_bg.get_truecolor()) in hot
    assert all(_bg(code) != "48;2;{};{};{}m".format(*nan_bg.get_truecolor()) for code in range(N_BINS))
    # Runs of equal colour are merged: one background escape per run, not per cell.
    assert cold.count(_bg(0)) == 1


def test_flag_glyphs_and_names_do_not_depend_on_colour() -> None:
    from gradtui.model.events import Alert

    store = _three_layer_store()
    store.apply(Alert(4, "hot", "nonfinite", True, float("nan"), 0.0))
    store.apply(Alert(4, "cold", "vanishing", True, 1e-9, 1e-6))
    layout = HeatmapLayout(WIDTH, name_width=6)
    view = heatmap_view(store, "grad_norm", layout.cells)
    cold, ok, hot = _rows(render_heatmap_text(Heatmap(view, layout=layout, color=False), WIDTH))
    assert cold.startswith("▼ cold")
    assert ok.startswith("  ok")
    assert hot.startswith("× hot")


def test_layer_without_gradient_is_blank_not_nonfinite() -> None:
    events: list[Event] = [run_start(2)]
    for s in range(4):
        events.append(step_stats(s, [0.1, float("nan")], has_grad=[True, False]))
    store = store_of(events)
    view = heatmap_view(store, "grad_norm", 10)
    assert (view.codes[1] == EMPTY).all()
    assert (view.codes[0, -4:] >= 0).all()
    text = render_heatmap_text(Heatmap(view, layout=HeatmapLayout(30, 6), color=False), 30)
    assert _rows(text)[1] == "  fc1          — " + " " * 13


def test_infinite_norm_is_nonfinite_even_without_a_count() -> None:
    store = store_of([run_start(1), step_stats(0, [1.0]), step_stats(1, [float("inf")])])
    view = heatmap_view(store, "grad_norm", 4)
    assert view.codes[0].tolist() == [EMPTY, EMPTY, int(view.codes[0, 2]), NONFINITE]


def test_detail_stat_gaps_carry_the_last_value_instead_of_nonfinite() -> None:
    events: list[Event] = [run_start(1)]
    for s in range(20):
        events.append(step_stats(s, [0.1], mean_abs=[1e-3] if s % 10 == 0 else None))
    store = store_of(events)
    view = heatmap_view(store, "mean_abs", 20)
    code = int(STAT_SCALES["mean_abs"].codes(np.array([1e-3]))[0])
    # Sampled at steps 0 and 10 only; every column shows the last known value.
    assert view.codes[0].tolist() == [code] * 20
    assert NONFINITE not in view.codes


def test_detail_stat_of_a_nan_layer_is_nonfinite() -> None:
    events: list[Event] = [run_start(1)]
    for s in range(10):
        nan = s >= 5
        events.append(step_stats(s, [float("nan") if nan else 0.1], nonfinite=[3 if nan else 0]))
    store = store_of(events)
    view = heatmap_view(store, "max_abs", 10)
    assert view.codes[0, 5:].tolist() == [NONFINITE] * 5


def test_buckets_take_the_worst_finite_value_and_stay_aligned() -> None:
    events: list[Event] = [run_start(1)]
    for s in range(8):
        events.append(step_stats(s, [1e3 if s == 2 else 1e-3]))
    store = store_of(events)
    view = heatmap_view(store, "grad_norm", 4)
    assert view.steps_per_col == 2
    hot = int(STAT_SCALES["grad_norm"].codes(np.array([1e3]))[0])
    cool = int(STAT_SCALES["grad_norm"].codes(np.array([1e-3]))[0])
    assert view.codes[0].tolist() == [cool, hot, cool, cool]
    # A ninth step needs 3 steps per column: buckets are aligned to sample numbers...
    store.apply(step_stats(8, [1e-3]))
    view2 = heatmap_view(store, "grad_norm", 4)
    assert view2.steps_per_col == 3
    assert view2.codes[0].tolist() == [EMPTY, hot, cool, cool]
    # ...so a step that opens a new bucket shifts the old columns by exactly one.
    store.apply(step_stats(9, [1e-3]))
    view3 = heatmap_view(store, "grad_norm", 4)
    assert view3.codes[0].tolist() == [*view2.codes[0].tolist()[1:], cool]


@pytest.mark.parametrize(("count", "cols", "k"), [(0, 10, 1), (10, 10, 1), (11, 10, 2), (25, 10, 3), (1000, 10, 128)])
def test_bucket_size_ladder(count: int, cols: int, k: int) -> None:
    assert bucket_size(count, cols) == k


def test_empty_store_single_layer_and_two_thousand_layers_render() -> None:
    empty = render_heatmap_text(Heatmap(heatmap_view(RunStore(), "grad_norm", 20)), 40)
    assert "no layers yet" in empty
    one = store_of([run_start(1), step_stats(0, [0.5])])
    assert "fc0" in render_heatmap_text(Heatmap(heatmap_view(one, "grad_norm", 20)), 40)
    many = store_of([run_start(2000), step_stats(0, np.full(2000, 0.5)), step_stats(1, np.full(2000, np.nan))])
    view = heatmap_view(many, "grad_norm", 30, layers=np.arange(1990, 2000))
    assert view.rows == 10
    assert "fc1999" in render_heatmap_text(Heatmap(view), 60)


def test_header_shows_scale_and_step_range() -> None:
    store = _three_layer_store(steps=50)
    layout = HeatmapLayout(80, 6)
    text = render_heatmap_text(Heatmap(heatmap_view(store, "grad_norm", layout.cells), layout=layout), 80)
    legend, axis = text.splitlines()[:2]
    assert "‖g‖₂" in legend and "1e-07" in legend and "1e+03" in legend and "non-finite" in legend
    assert axis.split()[:2] == ["layer", "value"]
    assert axis.rstrip().endswith("49") and " 0 " in axis


def test_long_names_keep_their_tail() -> None:
    assert truncate_left("encoder.layers.11.attention.self.query", 16) == "…tion.self.query"
    assert truncate_left("fc1", 16) == "fc1"


def _health_store() -> RunStore:
    """ok steady; cold a billion times below it (flagged vanishing at 30); hot jumps 10,000x at 35 (flagged)."""
    from gradtui.model.events import Alert

    events: list[Event] = [run_start(3, names=["ok", "cold", "hot"])]
    for s in range(40):
        events.append(step_stats(s, [0.1, 1e-9, 1e3 if s >= 35 else 0.1]))
        if s == 30:
            events.append(Alert(30, "cold", "vanishing", True, 1e-8, 3e-4))
        if s == 35:
            events.append(Alert(35, "hot", "exploding", True, 1e3, 1.0))
    return store_of(events)


def test_health_view_without_colour_whole() -> None:
    layout = HeatmapLayout(57, name_width=6)
    view = heatmap_view(_health_store(), HEALTH, layout.cells)
    assert render_heatmap_text(Heatmap(view, layout=layout, color=False), 57) == (
        " ▼ vanish - low · ok + high ▲ explode × non-finite       \n"
        "  layer     ‖g‖₂ 0                step                 39\n"
        "  ok     1.0e-01 ········································\n"
        "▼ cold   1.0e-09 ------------------------------▼▼▼▼▼▼▼▼▼▼\n"
        "▲ hot    1.0e+03 ···································▲▲▲▲▲\n"
    )


def test_health_view_in_colour_whole() -> None:
    layout = HeatmapLayout(57, name_width=6)
    view = heatmap_view(_health_store(), HEALTH, layout.cells)
    text = render_heatmap_text(Heatmap(view, layout=layout, header=False), 57, color_system="truecolor")

    def run(code: int, n: int) -> str:
        style = HEALTH_STYLES[code]
        return style.render(HEALTH_GLYPHS[code] * n, color_system=ColorSystem.TRUECOLOR)

    ok, cold, hot = text.splitlines()
    assert ok.endswith(run(HEALTH_MID, 40))
    assert cold.endswith(run(0, 30) + run(VANISHING_CELL, 10))
    assert hot.endswith(run(HEALTH_MID, 35) + run(EXPLODING_CELL, 5))


@pytest.mark.parametrize("stat", [HEALTH, "grad_norm", "mean_abs"])
@pytest.mark.parametrize("scenario", ["exploding", "healthy"])
def test_incremental_view_matches_a_fresh_one_at_every_frame(stat: str, scenario: str) -> None:
    """A view built from the last frame's columns equals one built from scratch: as the ring
    wraps (capacity 256), as buckets grow, under a stream of alerts, on a scrolled window of rows."""
    from gradtui.model.events import StepStats
    from gradtui.sources.synthetic import SyntheticRun
    from gradtui.ui.renderables.health import HealthIndex

    events = SyntheticRun(scenario, 12, detail_every=7).events(900)
    store = RunStore(capacity=256)
    rows = np.arange(3, 11)
    kept = HealthIndex()
    previous = None
    reused = 0
    steps_in_poll = 0
    for i, ev in enumerate(events):
        store.apply(ev)
        steps_in_poll += isinstance(ev, StepStats)
        if steps_in_poll < 1 + i % 13 or store.count == 0:
            continue
        steps_in_poll = 0
        cols = 40 if i < 600 else 31  # a resize
        view = heatmap_view(store, stat, cols, rows, health=kept, previous=previous)
        # The same references (a fresh HealthIndex would judge from the held steps only).
        fresh = heatmap_view(store, stat, cols, rows, health=kept)
        np.testing.assert_array_equal(view.codes, fresh.codes, err_msg=f"event {i}, step {store.total_steps}")
        assert (view.first_step, view.last_step, view.steps_per_col) == (
            fresh.first_step,
            fresh.last_step,
            fresh.steps_per_col,
        )
        if previous is not None and previous.basis == view.basis:
            reused += 1
        previous = view
    assert reused > 20


def test_an_alert_about_an_old_step_repaints_the_kept_columns() -> None:
    from gradtui.model.events import Alert
    from gradtui.sources.synthetic import SyntheticRun
    from gradtui.ui.renderables.health import HealthIndex

    store = RunStore(capacity=256)
    for ev in SyntheticRun("healthy", 6).events(200):
        store.apply(ev)
    kept = HealthIndex()
    before = heatmap_view(store, HEALTH, 40, health=kept)
    name = store.layers[2].name
    store.apply(Alert(step=int(store.steps()[50]), layer=name, kind="exploding", active=True, value=1e3, threshold=1.0))
    after = heatmap_view(store, HEALTH, 40, health=kept, previous=before)
    assert (after.codes[2] == EXPLODING_CELL).sum() > 20
    np.testing.assert_array_equal(after.codes, heatmap_view(store, HEALTH, 40, health=kept).codes)


def _stride_change_store() -> RunStore:
    """fc0 at 0.1, sampled at every step from 0 to 16 (1e3 at step 5), then every 8 steps up to 64,
    the steps between them sent as RunSteps."""
    events: list[Event] = [run_start(1)]
    for s in range(17):
        events.append(step_stats(s, [1e3 if s == 5 else 0.1]))
    for s in range(24, 65, 8):
        between = np.arange(s - 7, s)
        events.append(RunSteps(s - 1, between, np.ones(7), np.ones(7)))
        events.append(step_stats(s, [0.1]))
    return store_of(events)


def test_columns_cover_a_fixed_number_of_steps_when_the_stride_changes() -> None:
    """65 steps in 40 columns: 2 steps a column, whatever the stride. At stride 1 a column holds two
    samples (the one at step 5 makes column 2 hot); at stride 8 one column in four holds a sample and
    the other three are drawn as not sampled, not stretched over."""
    layout = HeatmapLayout(57, name_width=6)
    view = heatmap_view(_stride_change_store(), "grad_norm", layout.cells)
    assert (view.steps_per_col, view.first_step, view.last_step) == (2, 0, 64)
    ok = shade_glyph(int(STAT_SCALES["grad_norm"].codes(np.array([0.1]))[0]))
    hot = shade_glyph(N_BINS - 1)
    # Columns -7..-1 hold no step; 0..8 cover steps 0..17 (sampled 0..16); then a sample every fourth column.
    cells = " " * 7 + ok * 2 + hot + ok * 6 + ("╌╌╌" + ok) * 6
    assert render_heatmap_text(Heatmap(view, layout=layout, color=False), 57) == (
        f" ‖g‖₂ 1e-07 ..░░▒▓▓█ 1e+03  ╌ not sampled                \n"
        # The first label under the first column drawn (was: at the empty left edge).
        f"  layer    value        0         2 steps/col          64\n"
        f"  fc0    1.0e-01 {cells}\n"
    )


def test_unsampled_columns_of_the_health_view_are_dim_dashes_between_coloured_cells() -> None:
    layout = HeatmapLayout(57, name_width=6)
    view = heatmap_view(_stride_change_store(), HEALTH, layout.cells)
    assert render_heatmap_text(Heatmap(view, layout=layout, color=False), 57).splitlines()[2] == (
        "  fc0    1.0e-01 " + " " * 7 + "··+······" + "╌╌╌·" * 6
    )
    text = render_heatmap_text(Heatmap(view, layout=layout, header=False), 57, color_system="truecolor")

    def run(code: int, n: int) -> str:
        return HEALTH_STYLES[code].render(HEALTH_GLYPHS[code] * n, color_system=ColorSystem.TRUECOLOR)

    gap = Style(dim=True).render("╌╌╌", color_system=ColorSystem.TRUECOLOR)
    high = HEALTH_LEVELS - 1  # four decades over the layer's level: the strongest "high"
    expected = run(HEALTH_MID, 2) + run(high, 1) + run(HEALTH_MID, 6) + (gap + run(HEALTH_MID, 1)) * 6
    assert text == "  fc0    1.0e-01 " + " " * 7 + expected + "\n"


def test_a_column_before_the_oldest_sample_is_empty_and_one_after_the_newest_is_not_sampled() -> None:
    """RunSteps newer than the last sample move the right edge: time goes on, nothing was measured."""
    later = RunSteps(3, np.array([2, 3]), np.ones(2), np.ones(2))
    store = store_of([run_start(1), step_stats(0, [0.1]), step_stats(1, [0.1]), later])
    view = heatmap_view(store, "grad_norm", 6)
    ok = int(STAT_SCALES["grad_norm"].codes(np.array([0.1]))[0])
    assert view.codes[0].tolist() == [EMPTY, EMPTY, ok, ok, NO_SAMPLE, NO_SAMPLE]
    assert (view.first_step, view.last_step, view.steps_per_col) == (0, 3, 1)


@pytest.mark.parametrize("stat", [HEALTH, "grad_norm", "mean_abs"])
def test_incremental_view_matches_a_fresh_one_as_the_stride_changes(stat: str) -> None:
    """As the stride goes 1, 8, 3, 32 and back to 1 (the steps between samples as RunSteps), a view
    built from the last frame's columns equals one built from scratch, and unsampled columns show."""
    from gradtui.sources.synthetic import SyntheticRun
    from gradtui.ui.renderables.health import HealthIndex

    run = SyntheticRun("exploding", 10, detail_every=5)
    events: list[Event] = []
    for every, steps in ((1, 60), (8, 200), (3, 90), (32, 500), (1, 80)):
        run.every = every
        for _ in range(0, steps, 7):
            events.extend(run.events(7))
    assert any(isinstance(ev, RunSteps) for ev in events)
    store = RunStore(capacity=64)
    kept = HealthIndex()
    previous = None
    reused = gaps = 0
    for i, ev in enumerate(events):
        store.apply(ev)
        if i % 5 or store.count == 0:
            continue
        view = heatmap_view(store, stat, 40, np.arange(2, 9), health=kept, previous=previous)
        fresh = heatmap_view(store, stat, 40, np.arange(2, 9), health=kept)
        np.testing.assert_array_equal(view.codes, fresh.codes, err_msg=f"event {i}, step {store.last_step}")
        assert (view.first_step, view.last_step, view.steps_per_col) == (
            fresh.first_step,
            fresh.last_step,
            fresh.steps_per_col,
        )
        reused += previous is not None and previous.basis == view.basis
        gaps += view.gaps
        previous = view
    assert reused > 20 and gaps > 20
