"""The layers x steps heatmap as a pure Rich renderable.

`heatmap_view` (in `gradtui.ui.renderables.columns`) turns a `RunStore` into a small matrix
of colour codes (one row per layer, one column per bucket of a fixed number of steps);
`Heatmap` draws it. The health view (the default) colours a cell by how far the layer is
from healthy at that step, the other views by the magnitude of a statistic on a fixed log
scale; a column none of whose steps was sampled is drawn as such. The Textual widget in
`gradtui.ui.widgets.layer_heatmap` reuses `Heatmap.row_segments` line by line, so the
terminal app and the string-rendering tests draw exactly the same thing.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from rich.console import Console, ConsoleOptions, RenderResult
from rich.segment import Segment, Segments
from rich.style import Style

from gradtui.model.store import STAT_LABELS
from gradtui.ui.captures import CAPTURE_GLYPH, CAPTURE_WORD
from gradtui.ui.renderables.buckets import bucket_size
from gradtui.ui.renderables.columns import HeatmapView, heatmap_view
from gradtui.ui.scale import (
    DEAD_CELL,
    EMPTY,
    EMPTY_GLYPH,
    EMPTY_STYLE,
    EXPLODING_CELL,
    FLAG_GLYPHS,
    FLAG_WORDS,
    HEALTH,
    HEALTH_CODES,
    HEALTH_GLYPHS,
    HEALTH_LEVELS,
    HEALTH_MID,
    HEALTH_MONO_GLYPHS,
    HEALTH_SIDE,
    HEALTH_STYLES,
    N_BINS,
    NO_SAMPLE,
    NO_SAMPLE_GLYPH,
    NO_SAMPLE_STYLE,
    NONFINITE,
    NONFINITE_GLYPH,
    NONFINITE_STYLE,
    PALETTE,
    PLAIN_ROLES,
    VANISHING_CELL,
    fmt_value,
    shade_glyph,
    short_names,
)

VALUE_WIDTH = 7
MONO_FLAG_STYLE = Style(bold=True, reverse=True)
"""A flag glyph without colour: NO_COLOR greys a coloured glyph into its background; reverse stays readable."""
MIN_NAME_WIDTH = 6
HEADER_LINES = 2
"""Legend and step axis, drawn above the rows."""
NO_SAMPLE_WORDS = "not sampled"
"""The legend's word for a column of steps none of which was sampled."""

__all__ = [  # the view's model and columns live in `columns`; drawing them, here
    "HEADER_LINES",
    "MIN_NAME_WIDTH",
    "MONO_FLAG_STYLE",
    "NO_SAMPLE_WORDS",
    "VALUE_WIDTH",
    "Heatmap",
    "HeatmapLayout",
    "HeatmapStyles",
    "HeatmapView",
    "bucket_size",
    "heatmap_view",
    "render_heatmap_text",
]


@functools.lru_cache(maxsize=8)
def _fitted(names: tuple[str, ...], width: int) -> tuple[str, ...]:
    """The rows' names as drawn (`short_names`), once per view and width, not once per line."""
    return tuple(short_names(names, width))


@dataclass(frozen=True)
class HeatmapStyles:
    """Styles of the non-data parts; the Textual widget fills them from its component classes."""

    label: Style = field(default_factory=Style)
    value: Style = field(default_factory=lambda: Style(dim=False))
    cursor: Style = field(default_factory=lambda: Style(reverse=True))
    axis: Style = field(default_factory=lambda: Style(dim=True))
    flags: dict[str, Style] = field(default_factory=lambda: {k: PLAIN_ROLES[k] for k in FLAG_GLYPHS})
    capture: Style = field(default_factory=lambda: PLAIN_ROLES["note"])
    """The span of steps a deep capture ran, on the step axis."""


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
            for code in (NONFINITE, EMPTY, NO_SAMPLE, *(HEALTH_CODES if health else range(N_BINS))):
                seg = self._cell(code, 1)
                table[code] = (seg.text, seg.style if seg.style is not None else EMPTY_STYLE)
            _CELL_TABLES[(self.color, health)] = table
        return table

    def _cell(self, code: int, n: int) -> Segment:
        if code == NONFINITE:
            return Segment(NONFINITE_GLYPH * n, NONFINITE_STYLE)
        if code == EMPTY:
            return Segment(EMPTY_GLYPH * n, EMPTY_STYLE)
        if code == NO_SAMPLE:
            return Segment(NO_SAMPLE_GLYPH * n, NO_SAMPLE_STYLE)
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
        name = _fitted(v.names, layout.name_width)[row].ljust(layout.name_width)
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
        axis = self.styles.axis
        if self.view.gaps:
            # Unsampled columns on screen: say what they are while the width allows.
            gap = [Segment("  ", axis), self._cell(NO_SAMPLE, 1), Segment(" " + NO_SAMPLE_WORDS, axis)]
            forms = [[*segs, *gap] for segs in forms[:-1]] + forms
        if self.view.capture_columns():
            # A capture on screen: its mark on the step axis, named while the width allows.
            mark = [Segment("  ", axis), Segment(CAPTURE_GLYPH, self.styles.capture), Segment(" " + CAPTURE_WORD, axis)]
            forms = [[*segs, *mark] for segs in forms[:-1]] + forms
        for segs in forms:
            if sum(seg.cell_length for seg in segs) <= layout.width:
                return _fit(segs, layout.width)
        return _fit(forms[-1], layout.width)

    def _health_legends(self) -> list[list[Segment]]:
        """From "▼ vanishing ▒▒ low ▒ healthy ▒▒ high ▲ exploding × non-finite ○ dead" down to bare swatches."""
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

        w = FLAG_WORDS
        full = ([van], w["vanishing"]), (low, "low"), ([mid], "healthy"), (high, "high"), ([exp], w["exploding"])
        bad = ([nan], w["nonfinite"])
        short = ([van], "vanish"), (low[:1], "low"), ([mid], "ok"), (high[-1:], "high"), ([exp], "explode")
        return [
            words(*full, bad, ([dead], w["dead"]), sep="   "),
            words(*full, bad, ([dead], w["dead"]), sep="  "),
            words(*full, bad, sep=" "),
            words(*short, bad, sep=" "),
            words(*short, sep=" "),
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

        bad = " " + FLAG_WORDS["nonfinite"]
        key = "".join(f"  {FLAG_GLYPHS[k]} {FLAG_WORDS[k]}" for k in ("vanishing", "exploding", "dead"))
        return [
            scale(f"{name} (log₁₀)  ", 1, bad, " " + key),
            scale(f"{name} (log₁₀)  ", 1, bad),
            scale(f"{name} ", 2, bad),
            scale(f"{name} ", 3, ""),
            scale("", 4, ""),
        ]

    def axis_segments(self, layout: HeatmapLayout) -> list[Segment]:
        """Column heads: "layer", "value", and the first step drawn and the newest, under their columns."""
        v = self.view
        head = STAT_LABELS["grad_norm"] if v.stat == HEALTH else "value"
        left = f"  {'layer':<{layout.name_width}} {head:>{VALUE_WIDTH}} "
        cells = layout.cells
        axis = ""
        if v.axis is not None and cells >= 4:
            # The cells are right-aligned: the axis is the view's columns, under them.
            mid = f"{v.steps_per_col} steps/col" if v.steps_per_col > 1 else "step"
            axis = v.axis.line(mid=mid).rjust(cells)[-cells:]
        segs = [Segment(left[: layout.width], self.styles.axis)]
        segs.extend(self._capture_marks(axis, cells))
        return _fit(segs, layout.width)

    def _capture_marks(self, axis: str, cells: int) -> list[Segment]:
        """The step axis with each capture's columns marked (`CAPTURE_GLYPH` where no label is)."""
        v = self.view
        marked = v.capture_columns() if v.axis is not None and len(axis) == cells else []
        if not marked:
            return [Segment(axis, self.styles.axis)]
        shift = cells - v.axis.cols if v.axis is not None else 0  # right-aligned: column c is character c + shift
        chars = list(axis)
        on = [False] * len(chars)
        for c in marked:
            x = c + shift
            if 0 <= x < len(chars) and chars[x] == " ":
                chars[x] = CAPTURE_GLYPH
                on[x] = True
        out: list[Segment] = []
        start = 0
        for x in range(1, len(chars) + 1):
            if x == len(chars) or on[x] != on[start]:
                out.append(Segment("".join(chars[start:x]), self.styles.capture if on[start] else self.styles.axis))
                start = x
        return out


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
