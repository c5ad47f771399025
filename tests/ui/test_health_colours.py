"""The health view: a cell's colour says whether the layer is healthy, at any scale and in any colour mode.

Runs are built step by step and judged by the real `Detectors` (as the probe does), so a
flag on the screen is one a real run would raise. Colours are judged by their hue and
saturation, not by the palette's own table: "red" is a red a person would call red.
"""

from __future__ import annotations

import colorsys
import math
import re
from dataclasses import replace

import numpy as np
import pytest
from rich.color import ColorSystem
from rich.style import Style
from ui_helpers import run_start, step_stats, store_of

from gradtui.model.detectors import DetectorConfig, Detectors
from gradtui.model.events import Event, RunStart
from gradtui.model.store import RunStore
from gradtui.ui.renderables.health import MEMORY, HealthIndex
from gradtui.ui.renderables.heatmap import Heatmap, HeatmapLayout, heatmap_view, render_heatmap_text
from gradtui.ui.scale import HEALTH, HEALTH_MID, HEATMAP_STATS, HealthScale

DEFAULT = HEATMAP_STATS[0]
"""The view a user sees first: what every picture test below looks at."""
STEPS = 240
LAYERS = 6
WIDTH = 16 + 2 + 7 + 2 + 120  # every step in a column of its own


def detected(start: RunStart, norms: np.ndarray, nonfinite: np.ndarray | None = None) -> RunStore:
    """A store fed the steps of `norms` (steps x layers) and the alerts the real detectors raise on them."""
    det = Detectors([info.name for info in start.layers], numel=[info.numel for info in start.layers])
    events: list[Event] = [start]
    for s, g in enumerate(norms):
        nf = None if nonfinite is None else nonfinite[s]
        # An unknown loss does not hold back the detectors' growth rule.
        ev = step_stats(s, g, nonfinite=nf, loss=float("nan"))
        events.append(ev)
        events.extend(det.update(ev))
    return store_of(events)


def healthy_norms(scale: float, steps: int = STEPS, seed: int = 0) -> np.ndarray:
    """Noisy norms around `scale`, the layers within a factor of 3 of each other."""
    rng = np.random.default_rng(seed)
    base = scale * np.array([1.0, 0.5, 2.0, 0.7, 1.5, 0.4])[:LAYERS]
    return base * np.exp(rng.normal(0.0, 0.25, (steps, LAYERS)))


def cells(store: RunStore, stat: str = DEFAULT, cols: int = 120) -> tuple[Heatmap, HeatmapLayout, list[list[Style]]]:
    """The heatmap of the store, and the style of every cell of every row (oldest column first)."""
    layout = HeatmapLayout(WIDTH, name_width=16)
    hm = Heatmap(heatmap_view(store, stat, min(cols, layout.cells)), layout=layout)
    rows = []
    for r in range(hm.view.rows):
        styles: list[Style] = []
        for seg in hm.cell_segments(hm.view.codes[r], layout.cells):
            styles.extend([seg.style or Style()] * seg.cell_length)
        rows.append(styles)
    return hm, layout, rows


def rgb(style: Style) -> tuple[int, int, int] | None:
    if style.bgcolor is None:
        return None
    t = style.bgcolor.get_truecolor()
    return (t.red, t.green, t.blue)


def hue_class(c: tuple[int, int, int] | None) -> str:
    """What a person would call a background: none, calm (greyish), red, blue, magenta, or other."""
    if c is None:
        return "none"
    r, g, b = (x / 255 for x in c)
    h, lightness, s = colorsys.rgb_to_hls(r, g, b)
    if s * min(lightness, 1 - lightness) * 2 < 0.12:  # chroma: how far from a grey
        return "calm"
    deg = h * 360
    if deg < 20 or deg >= 340:
        return "red"
    if 200 <= deg < 250:
        return "blue"
    if 280 <= deg < 340:
        return "magenta"
    return "other"


def row_classes(row: list[Style]) -> set[str]:
    return {hue_class(rgb(s)) for s in row} - {"none"}


def sick_run() -> tuple[RunStore, dict[str, int]]:
    """One layer per failure, beside healthy ones: which row is which, and when each failure starts."""
    names = ["ok0", "explodes", "vanishes", "dies", "nans", "ok1"]
    start = run_start(LAYERS, names=names)
    g = healthy_norms(1.0)
    nf = np.zeros(g.shape, np.int64)
    g[120:, 1] *= 1e8  # far past the detectors' ceiling of 1e6
    g[:, 2] *= 1e-6  # a per-parameter RMS a million times below the largest layer's
    g[100:, 3] = 0.0
    g[180:, 4] = np.nan
    nf[180:, 4] = 5
    return detected(start, g, nf), {name: i for i, name in enumerate(names)}


# ---------------------------------------------------------------- healthy at any scale


@pytest.mark.parametrize("scale", [50.0, 1e-3])
def test_a_healthy_run_is_calm_whatever_its_scale(scale: float) -> None:
    store = detected(run_start(LAYERS), healthy_norms(scale))
    assert store.alerts == []
    _hm, _layout, rows = cells(store)
    for row in rows:
        assert row_classes(row) == {"calm"}, row_classes(row)


def test_the_same_run_at_two_scales_looks_the_same() -> None:
    a = heatmap_view(detected(run_start(LAYERS), healthy_norms(50.0)), DEFAULT, 120)
    b = heatmap_view(detected(run_start(LAYERS), healthy_norms(1e-3)), DEFAULT, 120)
    assert np.array_equal(a.codes, b.codes)
    assert (a.codes == HEALTH_MID).mean() > 0.9


def test_health_is_the_default_view_and_the_magnitudes_stay_one_key_away() -> None:
    assert HEATMAP_STATS[0] == HEALTH
    assert {"grad_norm", "mean_abs", "max_abs", "update_ratio"} <= set(HEATMAP_STATS)
    store = detected(run_start(LAYERS), healthy_norms(50.0))
    # The magnitude view still draws 50 on its fixed log scale, near the hot end.
    _hm, _layout, rows = cells(store, "grad_norm")
    assert "calm" not in row_classes(rows[0])


# ---------------------------------------------------------------- flags


def test_flagged_rows_show_their_flag_from_the_step_it_was_raised() -> None:
    store, row = sick_run()
    raised = {(a.layer, a.kind): a.step for a in store.alerts if a.active}
    assert raised[("explodes", "exploding")] == 120
    assert raised[("vanishes", "vanishing")] == 9  # vanish_steps = 10 samples
    assert raised[("dies", "dead")] == 119  # dead_steps = 20 samples
    assert raised[("nans", "nonfinite")] == 180
    hm, layout, rows = cells(store)
    first = hm.view.first_step
    assert first is not None and hm.view.steps_per_col == 2
    pad = layout.cells - hm.view.cols

    def col(step: int) -> int:
        return pad + (step - first) // hm.view.steps_per_col

    glyphs = [hm.row_segments(r, layout) for r in range(hm.view.rows)]
    text = ["".join(s.text for s in line)[-layout.cells :] for line in glyphs]

    explodes = rows[row["explodes"]]
    assert {hue_class(rgb(s)) for s in explodes[col(120) :]} == {"red"}
    assert "red" not in {hue_class(rgb(s)) for s in explodes[: col(118)]}
    assert set(text[row["explodes"]][col(120) :]) == {"▲"}

    vanishes = rows[row["vanishes"]]
    assert {hue_class(rgb(s)) for s in vanishes[col(10) :]} == {"blue"}
    assert set(text[row["vanishes"]][col(10) :]) == {"▼"}

    assert set(text[row["dies"]][col(120) :]) == {"○"}
    assert set(text[row["nans"]][col(180) :]) == {"×"}
    assert {hue_class(rgb(s)) for s in rows[row["nans"]][col(180) :]} == {"magenta"}
    # Before it died, the dead layer was healthy; the healthy layers never leave the calm middle.
    assert row_classes(rows[row["dies"]][: col(98)]) == {"calm"}
    for name in ("ok0", "ok1"):
        assert row_classes(rows[row[name]]) == {"calm"}, name


def test_a_vivid_colour_always_means_a_raised_flag() -> None:
    # A layer drifting toward the vanishing ratio, never reaching it: "low", ever deeper, but no flag.
    g = healthy_norms(1.0)
    g[:, 5] *= np.logspace(0, -2.0, STEPS)
    store = detected(run_start(LAYERS), g)
    assert not [a for a in store.alerts if a.active]
    hm, _layout, rows = cells(store)
    codes = hm.view.codes[5]
    assert codes[-1] < HEALTH_MID - 2 and codes[10] == HEALTH_MID
    for style in rows[5]:
        c = rgb(style)
        assert c is None or not (max(c) >= 200 and hue_class(c) in ("red", "blue"))


def test_a_jump_well_above_a_layers_own_level_is_high_before_any_flag() -> None:
    # With the loss falling the detectors hold their growth rule back; the colour still shows the jump.
    start = run_start(LAYERS)
    det = Detectors([i.name for i in start.layers], numel=[i.numel for i in start.layers])
    events: list[Event] = [start]
    g = healthy_norms(1.0, seed=3)
    g[150:, 0] *= 30
    for s in range(STEPS):
        ev = step_stats(s, g[s], loss=1.0 / (1 + s))
        events.append(ev)
        events.extend(det.update(ev))
    store = store_of(events)
    assert not [a for a in store.alerts if a.active and a.layer == "fc0"]
    view = heatmap_view(store, DEFAULT, 120)
    assert view.steps_per_col == 2
    assert view.codes[0, 75:77].min() > HEALTH_MID + 2  # steps 150..153
    assert (view.codes[0, :70] <= HEALTH_MID + 1).all()
    # Held for long enough, the new level is the layer's usual one.
    assert (view.codes[0, -5:] <= HEALTH_MID + 1).all()


# ---------------------------------------------------------------- colour systems


def _bg_params(ansi: str) -> list[int]:
    """Background colour numbers of every SGR sequence of a standard-colour rendering."""
    out = []
    for params in re.findall(r"\x1b\[([0-9;]*)m", ansi):
        out.extend(int(p) for p in params.split(";") if p and (40 <= int(p) <= 47 or 100 <= int(p) <= 107))
    return out


def test_sixteen_colours_a_healthy_run_has_no_red_and_a_flagged_one_does() -> None:
    healthy = detected(run_start(LAYERS), healthy_norms(50.0))
    layout = HeatmapLayout(WIDTH, name_width=16)

    def sixteen(store: RunStore) -> str:
        hm = Heatmap(heatmap_view(store, DEFAULT, layout.cells), layout=layout, header=False)
        return render_heatmap_text(hm, WIDTH, color_system="standard")

    bgs = set(_bg_params(sixteen(healthy)))
    assert bgs and not bgs & {41, 101}, bgs  # red, bright red
    assert not bgs & {44, 104}, bgs  # blue, bright blue
    sick, row = sick_run()
    lines = sixteen(sick).splitlines()
    assert set(_bg_params(lines[row["explodes"]])) & {41, 101}
    assert set(_bg_params(lines[row["vanishes"]])) & {44, 104}
    assert not set(_bg_params(lines[row["ok0"]])) & {41, 101, 44, 104}


@pytest.mark.parametrize("system", [ColorSystem.EIGHT_BIT, ColorSystem.STANDARD])
def test_every_health_colour_keeps_its_meaning_when_downgraded(system: ColorSystem) -> None:
    from rich.color import Color
    from rich.color_triplet import ColorTriplet

    from gradtui.ui.scale import DEAD_CELL, EXPLODING_CELL, HEALTH_LEVELS, HEALTH_STYLES, VANISHING_CELL

    def downgraded(code: int) -> str:
        color = HEALTH_STYLES[code].bgcolor
        assert color is not None
        t: ColorTriplet = Color.downgrade(color, system).get_truecolor()
        return hue_class((t.red, t.green, t.blue))

    assert downgraded(HEALTH_MID) == "calm"
    assert downgraded(EXPLODING_CELL) == "red"
    assert downgraded(VANISHING_CELL) == "blue"
    assert downgraded(DEAD_CELL) == "calm"
    for code in range(HEALTH_LEVELS):
        assert downgraded(code) not in ("red", "magenta")


def test_no_color_flags_read_from_glyphs_and_text() -> None:
    sick, row = sick_run()
    layout = HeatmapLayout(WIDTH, name_width=16)
    hm = Heatmap(heatmap_view(sick, DEFAULT, layout.cells), layout=layout, color=False)
    lines = render_heatmap_text(hm, WIDTH).splitlines()
    legend, body = lines[0], lines[2:]
    for word in ("vanishing", "low", "healthy", "high", "exploding", "non-finite", "dead"):
        assert word in legend
    assert body[row["explodes"]].startswith("▲ explodes")
    assert body[row["explodes"]].endswith("▲" * 10)
    assert body[row["vanishes"]].startswith("▼ vanishes") and body[row["vanishes"]].endswith("▼" * 10)
    assert body[row["dies"]].startswith("○ dies") and body[row["dies"]].endswith("○" * 10)
    assert body[row["nans"]].startswith("× nans") and body[row["nans"]].endswith("×" * 10)
    assert body[row["ok0"]].endswith("·" * 100)
    # The flag glyph is drawn reversed, not in a colour NO_COLOR would grey into the background.
    glyph = hm.label_segments(row["explodes"], layout)[0]
    assert glyph.text == "▲" and glyph.style is not None and glyph.style.reverse and glyph.style.color is None


# ---------------------------------------------------------------- legend


@pytest.mark.parametrize("stat", [DEFAULT, "grad_norm"])
def test_the_legend_is_never_cut(stat: str) -> None:
    store, _row = sick_run()
    seen = set()
    for width in range(24, 161):
        layout = HeatmapLayout(width, name_width=6)
        hm = Heatmap(heatmap_view(store, stat, layout.cells), layout=layout)
        legend = render_heatmap_text(hm, width).splitlines()[0].rstrip()
        assert len(legend) <= width
        seen.add(legend)
        if stat == HEALTH:
            # Every form ends with a whole word (or the bare swatches of the narrowest).
            assert re.search(r"(dead|non-finite|explode|high|▼·▲)$", legend), (width, legend)
            if width >= 80:
                assert "vanishing" in legend and "healthy" in legend and "exploding" in legend
        else:
            assert legend.endswith(("1e+03", "non-finite", "dead")), (width, legend)
            if width >= 44:
                assert "‖g‖₂" in legend and "1e-07" in legend and "1e+03" in legend
    assert len(seen) >= 4  # it really does take shorter forms


# ---------------------------------------------------------------- references


def test_incremental_sync_judges_every_step_as_one_sync_does() -> None:
    g = healthy_norms(1.0, steps=300, seed=5)
    g[200:, 2] *= np.logspace(0, 4, 100)
    store = detected(run_start(LAYERS), g)
    once = HealthIndex()
    once.sync(store)
    # The same events, folded a few at a time with a sync after each batch (as frames do).
    start = store.run
    assert start is not None
    live = RunStore()
    index = HealthIndex()
    events: list[Event] = [start]
    det = Detectors([i.name for i in start.layers], numel=[i.numel for i in start.layers])
    for s in range(300):
        ev = step_stats(s, g[s], loss=float("nan"))
        events.append(ev)
        events.extend(det.update(ev))
    for i, ev in enumerate(events):
        live.apply(ev)
        if i % 7 == 0:
            index.sync(live)
    index.sync(live)
    rows = np.arange(LAYERS)
    assert np.array_equal(index.levels(live, 300, rows), once.levels(store, 300, rows))


def test_recent_level_follows_an_exponential_average_after_a_plain_one() -> None:
    """An independent loop: the mean of the first MEMORY samples, then x' = x + (v - x) / MEMORY."""
    rng = np.random.default_rng(1)
    logs = rng.normal(0.0, 0.3, (100, 2))
    g = 10.0**logs
    g[40:50, 1] = np.nan  # no gradient: the level waits
    start = replace(run_start(2), layers=tuple(replace(i, numel=1) for i in run_start(2).layers))
    store = store_of([start, *(step_stats(s, g[s]) for s in range(100))])
    index = HealthIndex(HealthScale(usual=0.0, high_to=1e-9, z_from=0.0, z_to=1e-9, low_from=-99, low_to=-100))
    index.sync(store)
    for layer in range(2):
        level, n, expected = 0.0, 0, []
        last = math.nan
        for s in range(100):
            v = logs[s, layer]
            usable = not math.isnan(g[s, layer])
            expected.append(level if n >= 3 else math.nan)
            if n < MEMORY:
                if usable:
                    n += 1
                    level += (v - level) / n
                    last = v
            else:
                v = v if usable else last
                level += (v - level) / MEMORY
                last = v
        # Levels are judged against the recent level: growth above it is "high" here at once.
        lv = index.levels(store, 100, np.array([layer]))[:, 0]
        growth = logs[:, layer] - np.array(expected)
        known = ~np.isnan(growth) & ~np.isnan(g[:, layer])
        assert np.array_equal(lv[known] > HEALTH_MID, growth[known] > 1e-9)


def test_the_scale_ends_at_the_detectors_thresholds() -> None:
    c = DetectorConfig()
    scale = HealthScale.from_config(c)
    nan = np.nan
    growth = np.log10([2.9, 3.1, 10.0, 1e4, 1.0])
    levels = scale.levels(growth, np.zeros(5), np.full(5, nan)).tolist()
    assert levels == [HEALTH_MID, HEALTH_MID + 1, HEALTH_MID + 4, HEALTH_MID + 4, HEALTH_MID]
    depth = np.log10([math.sqrt(c.vanish_ratio) * 1.01, math.sqrt(c.vanish_ratio) / 1.01, c.vanish_ratio, 1e-9])
    assert scale.levels(np.full(4, nan), np.zeros(4), depth).tolist() == [HEALTH_MID, HEALTH_MID - 1, 0, 0]
    # A noisy layer's "high" starts further up: 2 and 4 of its spreads (the detectors' z is 4).
    assert scale.levels(np.array([0.9]), np.array([0.5]), np.array([nan])).tolist() == [HEALTH_MID]
    assert scale.levels(np.array([2.0]), np.array([0.5]), np.array([nan])).tolist() == [HEALTH_MID + 4]


def test_lanes_are_compared_with_lanes_not_with_layers() -> None:
    start = replace(run_start(3), lanes=("h[t=0]", "h[t=1]"))
    g = healthy_norms(1.0, steps=80)[:, :3]
    events: list[Event] = [start]
    for s in range(80):
        ev = replace(step_stats(s, g[s]), lanes=np.array([1e-6, 2e-6]) * (1 + 0.1 * (s % 3)))
        events.append(ev)
    view = heatmap_view(store_of(events), HEALTH, 80)
    assert view.names[-2:] == ("h[t=0]", "h[t=1]")
    # A millionth of the layers' norm, but as large as the other lane: healthy.
    assert (view.codes[3:] == HEALTH_MID).all()


def test_a_reset_store_starts_the_references_over() -> None:
    store = detected(run_start(LAYERS), healthy_norms(1.0))
    index = HealthIndex()
    index.sync(store)
    store.reset()
    for ev in [run_start(2), *(step_stats(s, [1e-3, 1e-3]) for s in range(10))]:
        store.apply(ev)
    index.sync(store)
    assert index.levels(store, 10, np.arange(2)).tolist() == [[HEALTH_MID, HEALTH_MID]] * 10
