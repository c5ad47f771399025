"""The layers x steps heatmap as a pure Rich renderable.

`heatmap_view` turns a `RunStore` into a small matrix of colour codes (one row per
layer, one column per bucket of steps); `Heatmap` draws it. The health view (the
default) colours a cell by how far the layer is from healthy at that step, the other
views by the magnitude of a statistic on a fixed log scale. The Textual widget in
`gradtui.ui.widgets.layer_heatmap` reuses `Heatmap.row_segments` line by line, so the
terminal app and the string-rendering tests draw exactly the same thing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from rich.console import Console, ConsoleOptions, RenderResult
from rich.segment import Segment, Segments
from rich.style import Style

from gradtui.model.store import STAT_LABELS, RunStore
from gradtui.ui.renderables.buckets import _SPARSE_STATS, _ffill, _ring_block, _row_flags, bucket_size
from gradtui.ui.renderables.health import CELL_FLAGS, HealthIndex, paint_mask, span_rows
from gradtui.ui.scale import (
    DEAD_CELL,
    EMPTY,
    EMPTY_GLYPH,
    EMPTY_STYLE,
    EXPLODING_CELL,
    FLAG_COLORS,
    FLAG_GLYPHS,
    HEALTH,
    HEALTH_CODES,
    HEALTH_GLYPHS,
    HEALTH_LEVELS,
    HEALTH_MID,
    HEALTH_MONO_GLYPHS,
    HEALTH_SIDE,
    HEALTH_STYLES,
    N_BINS,
    NONFINITE,
    NONFINITE_GLYPH,
    NONFINITE_STYLE,
    PALETTE,
    STAT_SCALES,
    VANISHING_CELL,
    LogScale,
    fmt_value,
    shade_glyph,
    truncate_left,
)

VALUE_WIDTH = 7
MONO_FLAG_STYLE = Style(bold=True, reverse=True)
"""A flag glyph without colour: NO_COLOR greys a coloured glyph into its background; reverse stays readable."""
MIN_NAME_WIDTH = 6
HEADER_LINES = 2
"""Legend and step axis, drawn above the rows."""



@dataclass(frozen=True)
class HeatmapView:
    """What the heatmap shows: labels, current values, flags and a grid of colour codes."""

    stat: str
    names: tuple[str, ...]
    values: np.ndarray
    """Current (latest known) value of `stat` per row."""
    flags: tuple[str | None, ...]
    """Most urgent active flag kind per row, or None."""
    codes: np.ndarray
    """(rows, cols) int16: 0..N_BINS-1 colour bin, EMPTY or NONFINITE."""
    first_step: int | None = None
    last_step: int | None = None
    steps_per_col: int = 1
    known: np.ndarray | None = None
    """Per row: the value was ever computed (else it shows as "—"; a NaN that was computed shows "nan")."""
    scale: LogScale = field(default_factory=lambda: STAT_SCALES["grad_norm"])
    last_bucket: int | None = None
    """Absolute bucket number (sample number // steps_per_col) of the last column."""
    basis: _Basis | None = field(default=None, compare=False, repr=False)
    """What the columns were computed from (a later frame reuses them when it matches)."""
    alerts_seen: int = 0
    """Alerts the store held when the view was built."""

    @property
    def rows(self) -> int:
        return len(self.names)

    @property
    def cols(self) -> int:
        return int(self.codes.shape[1]) if self.codes.ndim == 2 else 0


def heatmap_view(
    store: RunStore,
    stat: str,
    cols: int,
    layers: Sequence[int] | np.ndarray | None = None,
    *,
    health: HealthIndex | None = None,
    previous: HeatmapView | None = None,
) -> HeatmapView:
    """Build the view of `stat` for the given layer indices (all by default) in `cols` columns.

    Each column is a bucket of steps; a bucket shows the largest finite value in it (for a
    norm, the worst case), is NON-FINITE only when the layer really had a NaN/Inf gradient
    (a non-finite count, or an infinite value), and EMPTY when it holds no value. The
    health view (`stat` "health") reads the gradient norm and its references from
    `health`, which a caller drawing many frames keeps (a fresh one reads the whole ring).
    With `previous` (the view of the last frame), the columns that cannot have changed are
    copied from it and only the newest are computed.
    """
    source = "grad_norm" if stat == HEALTH else stat
    scale = STAT_SCALES.get(source, STAT_SCALES["grad_norm"])
    idx = np.arange(store.n_layers) if layers is None else np.asarray(layers, dtype=np.intp)
    cols = max(0, cols)
    names = tuple(store.layers[i].name for i in idx)
    latest = store.latest(source)
    values = latest[idx] if latest.size else np.full(idx.size, np.nan)
    seen = store.latest_step(source)
    known = seen[idx] >= 0 if seen.size else np.zeros(idx.size, bool)
    flags = _row_flags(store, names)
    if store.count == 0 or cols == 0 or idx.size == 0:
        codes = np.full((idx.size, cols), EMPTY, np.int16)
        return HeatmapView(stat, names, values, flags, codes, known=known, scale=scale)

    total, count = store.total_steps, store.count
    k = bucket_size(count, cols)
    newest = (total - 1) // k
    first_bucket = newest - cols + 1
    if stat == HEALTH:
        health = health if health is not None else HealthIndex()
        health.sync(store)
    basis = _Basis(store, store.run, stat, idx.tobytes(), k, cols, health.generation if health else -1)
    since = _reusable(previous, basis, store, first_bucket)
    # Buckets before the previous view's newest are final, except those holding the oldest
    # sample or older: the ring drops samples there as it wraps.
    oldest = max(first_bucket, (total - count) // k)
    if since is None or previous is None or oldest + 1 >= since:
        c = _bucket_codes(store, source, stat, idx, k, first_bucket, newest, scale, health)
    else:
        prev_first = since - cols + 1
        c = np.concatenate(
            [
                _bucket_codes(store, source, stat, idx, k, first_bucket, oldest, scale, health),
                previous.codes[:, oldest + 1 - prev_first : since - prev_first],
                _bucket_codes(store, source, stat, idx, k, since, newest, scale, health),
            ],
            axis=1,
        )
    shown = total - max(first_bucket * k, total - count)
    return HeatmapView(
        stat,
        names,
        values,
        flags,
        np.ascontiguousarray(c),
        first_step=int(store.steps(1, skip=shown - 1)[0]),
        last_step=int(store.steps(1)[0]),
        steps_per_col=k,
        known=known,
        scale=scale,
        last_bucket=newest,
        basis=basis,
        alerts_seen=len(store.alerts),
    )


@dataclass(frozen=True)
class _Basis:
    """What a view's columns were computed from: columns of two views with equal bases agree."""

    store: RunStore
    run: object
    stat: str
    rows: bytes
    k: int
    cols: int
    health: int

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, _Basis)
            and self.store is other.store
            and self.run is other.run
            and (self.stat, self.rows, self.k, self.cols, self.health)
            == (other.stat, other.rows, other.k, other.cols, other.health)
        )

    def __hash__(self) -> int:
        return hash((id(self.store), id(self.run), self.stat, self.rows, self.k, self.cols, self.health))


def _reusable(previous: HeatmapView | None, basis: _Basis, store: RunStore, first_bucket: int) -> int | None:
    """The previous view's newest bucket when its older columns still hold (from it on is recomputed), else None."""
    if previous is None or previous.basis != basis or previous.last_bucket is None:
        return None
    if basis.stat in _SPARSE_STATS:
        return None  # a new empty column carries the last value forward from the ones before
    since = previous.last_bucket
    if not first_bucket <= since < first_bucket + basis.cols or len(store.alerts) < previous.alerts_seen:
        return None
    # An alert about a step before the recomputed buckets would paint a column that is kept.
    held = store.total_steps - store.count
    first_fresh = int(store.steps(1, skip=store.count - 1 - max(0, since * basis.k - held))[0])
    if any(a.step < first_fresh for a in store.alerts[previous.alerts_seen :]):
        return None
    return since


def _bucket_codes(
    store: RunStore,
    source: str,
    stat: str,
    idx: np.ndarray,
    k: int,
    first_bucket: int,
    newest: int,
    scale: LogScale,
    health: HealthIndex | None,
) -> np.ndarray:
    """(rows, buckets) codes of buckets first_bucket..newest (k steps each, aligned to sample numbers)."""
    total, count = store.total_steps, store.count
    cols = newest - first_bucket + 1
    s0 = max(first_bucket * k, total - count)
    end = min(total, (newest + 1) * k)
    m, skip = end - s0, total - end
    offset = s0 - first_bucket * k
    padded = cols * k

    def block(name: str) -> np.ndarray:
        out = np.full((padded, idx.size), np.nan, np.float32)
        out[offset : offset + m] = _ring_block(store, name, m, idx, skip)
        return out.reshape(cols, k, idx.size)

    vals_b = block(source)
    vals = np.fmax.reduce(vals_b, axis=1)
    # NaN (no sample) compares False, so padding never counts as non-finite.
    bad = (block("nonfinite") > 0).any(axis=1)
    bad |= np.isinf(vals_b).any(axis=1)
    if source != "grad_norm":
        bad |= np.isinf(block("grad_norm")).any(axis=1)
    if source in _SPARSE_STATS:
        vals = _ffill(vals)
    if stat == HEALTH:
        window = _Window(m, offset, k, cols, store.steps(m, skip), skip)
        c = _health_codes(store, health if health is not None else HealthIndex(), idx, window)
    else:
        c = scale.codes(vals)
    c[bad] = NONFINITE
    return c.T


@dataclass(frozen=True)
class _Window:
    """Where the held steps sit in the columns: `m` samples from `offset` of `cols` buckets of `k`,
    ending `skip` samples before the newest."""

    m: int
    offset: int
    k: int
    cols: int
    steps: np.ndarray
    skip: int = 0
    """Newest samples held after the window."""


def _health_codes(store: RunStore, health: HealthIndex, idx: np.ndarray, w: _Window) -> np.ndarray:
    """(cols, rows) health codes: each bucket's level furthest from healthy, or the flag that was up."""
    flat = np.full((w.cols * w.k, idx.size), EMPTY, np.int8)
    flat[w.offset : w.offset + w.m] = health.levels(store, w.m, idx, w.skip)
    lv = flat.reshape(w.cols, w.k, idx.size)
    hi = lv.max(axis=1)  # EMPTY (-1) is below every level
    lo = np.where(lv == EMPTY, np.int8(HEALTH_LEVELS), lv).min(axis=1)
    codes: np.ndarray = np.where(hi - HEALTH_MID >= HEALTH_MID - lo, hi, lo).astype(np.int16)
    codes[hi == EMPTY] = EMPTY
    drawn = [(r, span) for r, layer in enumerate(idx.tolist()) for span in health.spans(layer)]
    if drawn:
        rows = np.array([r for r, _ in drawn], np.intp)
        kinds = np.array([CELL_FLAGS[span.kind] for _, span in drawn], np.int16)
        first, past = span_rows(w.steps, [span for _, span in drawn])
        # Step indices to columns: [first, past) covers the buckets of its first to its last step.
        a = (w.offset + first) // w.k
        b = np.where(past > first, (w.offset + past - 1) // w.k + 1, a)
        has_value = codes != EMPTY
        # Least urgent first, so the most urgent flag of a bucket is the one left on it.
        for code in CELL_FLAGS.values():
            sel = kinds == code
            if sel.any():
                codes[paint_mask(a[sel], b[sel], rows[sel], codes.shape) & has_value] = code
    return codes


@dataclass(frozen=True)
class HeatmapStyles:
    """Styles of the non-data parts; the Textual widget fills them from its component classes."""

    label: Style = field(default_factory=Style)
    value: Style = field(default_factory=lambda: Style(dim=False))
    cursor: Style = field(default_factory=lambda: Style(reverse=True))
    axis: Style = field(default_factory=lambda: Style(dim=True))
    flags: dict[str, Style] = field(default_factory=lambda: {k: Style.parse(v) for k, v in FLAG_COLORS.items()})


@dataclass(frozen=True)
class HeatmapLayout:
    """Column widths of a heatmap line: glyph, name, value, then the cells."""

    width: int
    name_width: int

    @classmethod
    def fit(cls, width: int, names: Iterable[str]) -> HeatmapLayout:
        """Give names what they need, up to a third of the width, and the rest to the cells."""
        longest = max((len(n) for n in names), default=MIN_NAME_WIDTH)
        cap = max(MIN_NAME_WIDTH, (width - VALUE_WIDTH - 4) // 3)
        return cls(width, max(MIN_NAME_WIDTH, min(longest, cap)))

    @property
    def label_width(self) -> int:
        return self.value_x + VALUE_WIDTH + 1

    @property
    def value_x(self) -> int:
        """Where the value column starts: after the flag glyph and the name."""
        return 1 + 1 + self.name_width + 1

    @property
    def cells(self) -> int:
        return max(0, self.width - self.label_width)


class Heatmap:
    """Rich renderable: one line per layer (flag glyph, name, current value, coloured cells).

    Args:
        view: What to draw (see `heatmap_view`).
        layout: Column widths; fitted to the console width when None.
        cursor: Row to highlight, if any.
        color: Draw cells as coloured blocks; False draws shade glyphs (NO_COLOR).
        header: Draw the legend and step axis above the rows.
        styles: Styles of labels, values, cursor, axis and flag glyphs.
    """

    def __init__(
        self,
        view: HeatmapView,
        *,
        layout: HeatmapLayout | None = None,
        cursor: int | None = None,
        color: bool = True,
        header: bool = True,
        styles: HeatmapStyles | None = None,
    ) -> None:
        self.view = view
        self.layout = layout
        self.cursor = cursor
        self.color = color
        self.header = header
        self.styles = styles or HeatmapStyles()
        self._value_styles: dict[str, Style] = {}

    def _layout(self, width: int) -> HeatmapLayout:
        return self.layout if self.layout is not None else HeatmapLayout.fit(width, self.view.names)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        layout = self._layout(options.max_width)
        lines: list[list[Segment]] = []
        if self.header:
            lines.append(self.legend_segments(layout))
            lines.append(self.axis_segments(layout))
        for row in range(self.view.rows):
            lines.append(self.row_segments(row, layout, cursor=row == self.cursor))
        if not self.view.rows:
            lines.append([Segment("  (no layers yet)".ljust(layout.width)[: layout.width], self.styles.axis)])
        for line in lines:
            yield from line
            yield Segment.line()

    # ------------------------------------------------------------ lines

    def cell_segments(self, codes: np.ndarray, width: int) -> list[Segment]:
        """Cells of one row, right-aligned in `width` (newest at the right), runs merged."""
        codes = codes[-width:] if width > 0 else codes[:0]
        out: list[Segment] = []
        pad = width - codes.size
        if pad > 0:
            out.append(Segment(EMPTY_GLYPH * pad, EMPTY_STYLE))
        if codes.size == 0:
            return out
        # Drawn for every changed row of every frame: one NumPy pass for the run bounds,
        # and a table lookup (not a call) per run.
        cuts = (np.flatnonzero(codes[1:] != codes[:-1]) + 1).tolist()
        starts = [0, *cuts]
        ends = [*cuts, int(codes.size)]
        table = self._cell_table()
        cell = self._cell
        for a, b, code in zip(starts, ends, codes[starts].tolist(), strict=True):
            glyph_style = table.get(code)
            out.append(cell(code, b - a) if glyph_style is None else Segment(glyph_style[0] * (b - a), glyph_style[1]))
        return out

    def _cell_table(self) -> dict[int, tuple[str, Style]]:
        """Glyph and style of one cell of each code (what `_cell` draws), built once per colour mode and view kind."""
        health = self.view.stat == HEALTH
        table = _CELL_TABLES.get((self.color, health))
        if table is None:
            table = {}
            for code in (NONFINITE, EMPTY, *(HEALTH_CODES if health else range(N_BINS))):
                seg = self._cell(code, 1)
                table[code] = (seg.text, seg.style if seg.style is not None else EMPTY_STYLE)
            _CELL_TABLES[(self.color, health)] = table
        return table

    def _cell(self, code: int, n: int) -> Segment:
        if code == NONFINITE:
            return Segment(NONFINITE_GLYPH * n, NONFINITE_STYLE)
        if code == EMPTY:
            return Segment(EMPTY_GLYPH * n, EMPTY_STYLE)
        if self.view.stat == HEALTH:
            if self.color:
                return Segment(HEALTH_GLYPHS[code] * n, HEALTH_STYLES[code])
            return Segment(HEALTH_MONO_GLYPHS[code] * n, EMPTY_STYLE)
        if self.color:
            return Segment(" " * n, PALETTE[code])
        return Segment(shade_glyph(code) * n, EMPTY_STYLE)

    def label_segments(self, row: int, layout: HeatmapLayout, *, cursor: bool = False) -> list[Segment]:
        """Flag glyph, name and current value of one row."""
        v = self.view
        flag = v.flags[row]
        glyph = FLAG_GLYPHS.get(flag, "?") if flag else " "
        glyph_style = EMPTY_STYLE
        if flag:
            glyph_style = self.styles.flags.get(flag, EMPTY_STYLE) if self.color else MONO_FLAG_STYLE
        name = truncate_left(v.names[row], layout.name_width).ljust(layout.name_width)
        name_style = self.styles.label + self.styles.cursor if cursor else self.styles.label
        value = float(v.values[row]) if row < len(v.values) else float("nan")
        known = bool(v.known[row]) if v.known is not None else not np.isnan(value)
        text = fmt_value(value if known else None, VALUE_WIDTH)
        value_style = self.styles.value
        if flag:
            value_style = self._flag_value_style(flag, glyph_style)
        return [
            Segment(glyph, glyph_style),
            Segment(" ", EMPTY_STYLE),
            Segment(name, name_style),
            Segment(" ", EMPTY_STYLE),
            Segment(text[-VALUE_WIDTH:], value_style),
            Segment(" ", EMPTY_STYLE),
        ]

    def _flag_value_style(self, flag: str, glyph_style: Style) -> Style:
        """The value's style on a flagged row: the flag's colour and attributes over the value style."""
        cache = self._value_styles
        style = cache.get(flag)
        if style is None:
            if self.color:
                style = self.styles.value + glyph_style.without_color + Style(color=glyph_style.color)
            else:
                style = self.styles.value + Style(bold=True)
            cache[flag] = style
        return style

    def row_segments(self, row: int, layout: HeatmapLayout, *, cursor: bool = False) -> list[Segment]:
        """A whole line of the heatmap for one layer."""
        segs = self.label_segments(row, layout, cursor=cursor)
        segs.extend(self.cell_segments(self.view.codes[row], layout.cells))
        return segs

    def legend_segments(self, layout: HeatmapLayout) -> list[Segment]:
        """What the colours mean, in the longest of its forms that fits the width (never cut)."""
        forms = self._health_legends() if self.view.stat == HEALTH else self._scale_legends()
        for segs in forms:
            if sum(seg.cell_length for seg in segs) <= layout.width:
                return _fit(segs, layout.width)
        return _fit(forms[-1], layout.width)

    def _health_legends(self) -> list[list[Segment]]:
        """From "▼ vanishing ▒▒ low ▒ healthy ▒▒ high ▲ exploding × nan/inf ○ dead" down to bare swatches."""
        axis = self.styles.axis
        # Four swatches per side in colour show the ramp; without colour one glyph says it all.
        step = 1 if self.color else HEALTH_SIDE
        low = [self._cell(code, 1) for code in range(0, HEALTH_MID, step)]
        high = [self._cell(code, 1) for code in range(HEALTH_MID + 1, HEALTH_LEVELS, step)]
        mid = self._cell(HEALTH_MID, 1)
        van, exp, dead = (self._cell(c, 1) for c in (VANISHING_CELL, EXPLODING_CELL, DEAD_CELL))
        nan = Segment(NONFINITE_GLYPH, NONFINITE_STYLE)

        def words(*items: tuple[list[Segment], str], sep: str) -> list[Segment]:
            out: list[Segment] = [Segment(" ", axis)]
            for i, (cells, word) in enumerate(items):
                out.extend(cells)
                out.append(Segment((" " + word if word else "") + (sep if i < len(items) - 1 else ""), axis))
            return out

        full = ([van], "vanishing"), (low, "low"), ([mid], "healthy"), (high, "high"), ([exp], "exploding")
        return [
            words(*full, ([nan], "nan/inf"), ([dead], "dead"), sep="   "),
            words(*full, ([nan], "nan/inf"), ([dead], "dead"), sep="  "),
            words(*full, ([nan], "nan/inf"), sep=" "),
            words(([van], "vanish"), (low[:1], "low"), ([mid], "ok"), (high[-1:], "high"), ([exp], "explode"), sep=" "),
            words(([van, *low[:1]], "low"), ([mid], "ok"), ([*high[-1:], exp], "high"), sep=" "),
            words(([van, mid, exp], ""), sep=""),
        ]

    def _scale_legends(self) -> list[list[Segment]]:
        """The stat's name and its colour scale, from cold (vanishing) to hot (exploding), longest first."""
        v = self.view
        axis = self.styles.axis
        name = STAT_LABELS.get(v.stat, v.stat)
        lo = f"{v.scale.value_at(0):.0e}"
        hi = f"{v.scale.value_at(N_BINS):.0e}"
        nan = Segment(NONFINITE_GLYPH, NONFINITE_STYLE)

        def scale(label: str, every: int, tail: str, key: str = "") -> list[Segment]:
            segs = [Segment(" " + label, axis), Segment(lo + " ", axis)]
            segs.extend(self._cell(code, 1) for code in range(0, N_BINS, every))
            segs.append(Segment(" " + hi + ("  " if tail else ""), axis))
            if tail:
                segs.extend([nan, Segment(tail + key, axis)])
            return segs

        key = "   ▼ vanishing  ▲ exploding  ! non-finite  ○ dead"
        return [
            scale(f"{name} (log₁₀)  ", 1, " nan/inf", key),
            scale(f"{name} (log₁₀)  ", 1, " nan/inf"),
            scale(f"{name} ", 2, " nan/inf"),
            scale(f"{name} ", 3, ""),
            scale("", 4, ""),
        ]

    def axis_segments(self, layout: HeatmapLayout) -> list[Segment]:
        """Column heads: "layer", "value", and the steps of the first and last columns."""
        v = self.view
        head = STAT_LABELS["grad_norm"] if v.stat == HEALTH else "value"
        left = f"  {'layer':<{layout.name_width}} {head:>{VALUE_WIDTH}} "
        cells = layout.cells
        axis = ""
        if v.first_step is not None and v.last_step is not None and cells >= 4:
            a, b = f"{v.first_step}", f"{v.last_step}"
            mid = f"{v.steps_per_col} steps/col" if v.steps_per_col > 1 else "step"
            used = min(cells, v.cols)
            span = max(len(a) + len(b) + 2, used)
            if len(a) + len(b) + len(mid) + 4 <= span:
                gap = span - len(a) - len(b) - len(mid)
                body = a + " " * (gap // 2) + mid + " " * (gap - gap // 2) + b
            else:
                body = a + " " * max(1, span - len(a) - len(b)) + b
            axis = body.rjust(cells)[-cells:]
        return _fit([Segment(left[: layout.width], self.styles.axis), Segment(axis, self.styles.axis)], layout.width)


_CELL_TABLES: dict[tuple[bool, bool], dict[int, tuple[str, Style]]] = {}
"""Per colour mode and view kind (health or not): glyph and style of a cell of each code (see `Heatmap._cell_table`)."""


def _fit(segs: list[Segment], width: int) -> list[Segment]:
    """Crop or pad a line of segments to exactly `width` cells."""
    return Segment.adjust_line_length(segs, width, style=EMPTY_STYLE)


def _uncached(style: Style | None) -> Style | None:
    if style is None:
        return None
    copy = style.copy()
    copy._ansi = None  # Rich's per-instance cache of the codes it was last drawn with
    return copy


def render_heatmap_text(renderable: Heatmap, width: int, *, color_system: str | None = None) -> str:
    """Render to a string (ANSI when `color_system` is given); used by tests and benchmarks."""
    console = Console(
        width=width,
        file=None,
        color_system=color_system,  # type: ignore[arg-type]
        force_terminal=color_system is not None,
        legacy_windows=False,
        record=False,
    )
    with console.capture() as cap:
        if color_system in (None, "truecolor"):
            console.print(renderable, end="")
        else:
            # A Rich Style keeps the codes of the first colour system it was drawn in (the
            # app's: truecolor): redraw with fresh styles, so 16 colours are really 16.
            lines = console.render_lines(renderable, console.options.update(width=width), pad=False)
            for line in lines:
                console.print(Segments([Segment(seg.text, _uncached(seg.style)) for seg in line]), end="")
                console.print()
    return cap.get()
