"""The layer detail page's charts: a statistic's history and the histogram of log2|g|.

Pure Rich, each drawn to an exact width and height. The history marks an exact zero with
its own glyph (a log scale has no place for 0, and a dead layer must not look like a small
healthy one); the histogram has fixed axes (every layer, every step, the same columns), so
paging through layers shows where each one's gradients sit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from rich.console import Console, ConsoleOptions, RenderResult
from rich.segment import Segment
from rich.style import Style

from gradtui.model.events import GRAD_HIST_BUCKETS, GRAD_HIST_HI, GRAD_HIST_LO
from gradtui.ui.numbers import fmt_count, fmt_percent, fmt_sig
from gradtui.ui.renderables.axis import StepAxis
from gradtui.ui.scale import FLAG_GLYPHS, NONFINITE_GLYPH, NONFINITE_STYLE

BARS = " ▁▂▃▄▅▆▇█"
ZERO_GLYPH = FLAG_GLYPHS["dead"]
"""An exact 0 in a log-scale history."""
_PLAIN = Style()
"""An explicit empty style: Textual's NO_COLOR filter cannot take segments with none."""

_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def power_of_two(exponent: int) -> str:
    """"2⁻²⁰" for -20."""
    return "2" + str(exponent).translate(_SUPERSCRIPT)


@dataclass(frozen=True)
class DetailStyles:
    """Styles of the detail charts' parts."""

    bar: Style = Style(color="cyan")
    zero: Style = Style(color="grey62", bold=True)
    nonfinite: Style = NONFINITE_STYLE
    axis: Style = Style(dim=True)


def _level(frac: float, rows: int) -> int:
    """Eighths of bar (0 .. 8 * rows) for a position in [0, 1]; anything above 0 shows."""
    return max(1, min(8 * rows, round(frac * 8 * rows)))


def _bar_rows(levels: list[int], rows: int) -> list[list[str]]:
    """Glyph of each column in each row, top row first, from its level in eighths."""
    out = []
    for r in range(rows - 1, -1, -1):
        out.append([BARS[max(0, min(8, lv - 8 * r))] for lv in levels])
    return out


class HistoryChart:
    """A statistic's history as bars: `height` rows on the page's step axis.

    Each value sits in the column of its own step (a statistic measured every 50 steps at
    those steps; a column with no value stays blank). A column draws the largest finite
    value in it (log10 scale for `log`, linear from 0 otherwise); one whose known values
    are all exactly 0 draws `ZERO_GLYPH` on a log scale, one holding ±Inf or a value gone
    bad draws `NONFINITE_GLYPH`.

    Args:
        values: The history, oldest first (NaN: not computed at that step).
        steps: The step of each value (0, 1, 2, ... by default).
        span: The first and last step of the axis (the page's rows share one); the
            values' own by default.
        log: Log10 scale (norms and ratios); linear for counts and fractions.
        height: Rows.
        bad: Steps whose NaN is a value gone bad (NaN/Inf gradients), not a gap.
        styles: Colours.
    """

    def __init__(
        self,
        values: np.ndarray,
        *,
        steps: np.ndarray | None = None,
        span: tuple[int, int] | None = None,
        log: bool,
        height: int = 1,
        bad: np.ndarray | None = None,
        styles: DetailStyles | None = None,
    ) -> None:
        self.values = np.asarray(values, np.float64)
        self.steps = np.arange(self.values.size) if steps is None else np.asarray(steps, np.int64)
        if span is None:
            span = (int(self.steps[0]), int(self.steps[-1])) if self.steps.size else (0, 0)
        self.span = span
        self.bad = None if bad is None else np.asarray(bad, bool)
        self.log = log
        self.height = max(1, height)
        self.styles = styles or DetailStyles()

    def cells(self, width: int) -> list[tuple[str, float | None]]:
        """Per column: "bar", "zero", "bad" or "none", and for bars the position in [0, 1]."""
        v = self.values
        known = v[~np.isnan(v)]
        finite = known[np.isfinite(known)]
        pos = finite[finite > 0] if self.log else finite
        if self.log and pos.size:
            lo, hi = float(np.log10(pos.min())), float(np.log10(pos.max()))
        elif pos.size:
            lo, hi = 0.0, float(max(pos.max(), 0.0))
        else:
            lo = hi = 0.0
        out: list[tuple[str, float | None]] = [("none", None)] * width
        if width <= 0 or v.size == 0:
            return out
        axis = StepAxis.fit(self.span[0], self.span[1], width)
        col = axis.columns(self.steps)  # ascending: the steps of a column are one slice
        starts = np.flatnonzero(np.concatenate(([True], col[1:] != col[:-1])))
        ends = np.append(starts[1:], col.size)
        for a, b, c in zip(starts.tolist(), ends.tolist(), col[starts].tolist(), strict=True):
            if not 0 <= c < width:
                continue
            run = v[a:b]
            if np.isinf(run).any() or (self.bad is not None and bool(self.bad[a:b].any())):
                out[c] = ("bad", None)
                continue
            run = run[~np.isnan(run)]
            if run.size == 0:
                continue
            top = float(run.max())
            if self.log and top <= 0:
                out[c] = ("zero", None)
                continue
            x = math.log10(top) if self.log else top
            if hi > lo:
                out[c] = ("bar", (x - lo) / (hi - lo))
            else:
                # A flat log history sits mid-height; a linear one of zeros lies on its floor.
                out[c] = ("bar", 0.5 if self.log or hi > 0 else 0.0)
        return out

    def lines(self, width: int) -> list[list[Segment]]:
        """The chart as `height` lines of exactly `width` cells."""
        cells = self.cells(width)
        rows = self.height
        levels = [_level(p if p is not None else 0.0, rows) if kind == "bar" else 0 for kind, p in cells]
        if not self.log:
            # On a linear scale 0 is the floor: a zero draws the lowest bar, not nothing.
            levels = [max(1, lv) if kind == "bar" else lv for lv, (kind, _) in zip(levels, cells, strict=True)]
        glyphs = _bar_rows(levels, rows)
        st = self.styles
        out = []
        for r, row in enumerate(glyphs):
            segs: list[Segment] = []
            bottom = r == rows - 1
            for (kind, _), g in zip(cells, row, strict=True):
                if kind == "zero":
                    segs.append(Segment(ZERO_GLYPH if bottom else " ", st.zero if bottom else _PLAIN))
                elif kind == "bad":
                    segs.append(Segment(NONFINITE_GLYPH, st.nonfinite))
                elif kind == "none":
                    segs.append(Segment(" ", _PLAIN))
                else:
                    segs.append(Segment(g, st.bar))
            out.append(list(Segment.simplify(segs)))
        return out

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        for line in self.lines(options.max_width):
            yield from line
            yield Segment.line()


class StepLabels:
    """The page's step axis under its histories: the first and last step drawn, at their columns."""

    def __init__(self, span: tuple[int, int], *, style: Style | None = None) -> None:
        self.span = span
        self.style = style or DetailStyles().axis

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        axis = StepAxis.fit(self.span[0], self.span[1], options.max_width)
        mid = f"{axis.k} steps/col" if axis.k > 1 else "step"
        yield Segment(axis.line(mid=mid), self.style)
        yield Segment.line()


class HistogramChart:
    """A layer's histogram of log2|g| (`StepStats.grad_hist` columns), `height` lines.

    Layout: a y axis (share of the layer's values), then the zero column, the exponent
    columns (merged two or more to a cell when narrow, or widened when there is room) and
    the NaN/Inf column; under them the exponents, and a caption that reads a few powers
    of two in decimal. A column with any value at all shows at least an eighth of a bar.
    """

    Y_AXIS = 5

    def __init__(self, counts: np.ndarray | None, *, height: int = 8, styles: DetailStyles | None = None) -> None:
        self.counts = None if counts is None else np.asarray(counts, np.int64)
        self.height = max(3, height)
        self.styles = styles or DetailStyles()

    def layout(self, width: int) -> tuple[int, int]:
        """(exponent buckets per cell, cells per bucket) for the exponent columns at `width`."""
        room = max(1, width - self.Y_AXIS - 4)  # zero column, nan column, two gaps
        n = GRAD_HIST_BUCKETS - 2
        if room >= n:
            return 1, room // n
        return math.ceil(n / room), 1

    def lines(self, width: int) -> list[list[Segment]]:
        """The chart as `height` lines of exactly `width` cells."""
        st = self.styles
        if self.counts is None or self.counts.size != GRAD_HIST_BUCKETS or self.counts.sum() <= 0:
            note = "no histogram yet: it comes with the next detail step" if self.counts is None else "no values"
            blank = [[Segment(" " * width, _PLAIN)] for _ in range(self.height)]
            blank[self.height // 2] = [Segment(note[:width].center(width), st.axis)]
            return blank
        counts = self.counts
        total = float(counts.sum())
        per, cell = self.layout(width)
        exps = counts[1:-1]
        merged = [int(exps[i : i + per].sum()) for i in range(0, exps.size, per)]
        # Columns: (count, style, cell width) in drawing order, a gap either side of the exponents.
        columns: list[tuple[int | None, Style]] = [(int(counts[0]), st.zero), (None, _PLAIN)]
        for c in merged:
            columns.extend([(c, st.bar)] * cell)
        columns.extend([(None, _PLAIN), (int(counts[-1]), st.nonfinite)])
        rows = self.height - 2
        top = max(c for c, _ in columns if c is not None) / total
        levels = [0 if c is None or c == 0 else _level(c / total / top, rows) for c, _ in columns]
        glyphs = _bar_rows(levels, rows)
        out: list[list[Segment]] = []
        for r, row in enumerate(glyphs):
            label = fmt_percent(top) if r == 0 else ("0%" if r == rows - 1 else "")
            segs = [Segment(label.rjust(self.Y_AXIS - 1)[: self.Y_AXIS - 1] + "│", st.axis)]
            for (_, style), g in zip(columns, row, strict=True):
                segs.append(Segment(g, style if g != " " else _PLAIN))
            out.append(self._fit(segs, width))
        out.append(self._fit([Segment(self._ticks(len(columns), per, cell), st.axis)], width))
        out.append(self._fit([Segment(self._caption(counts, total, width), st.axis)], width))
        return out

    def _ticks(self, n_columns: int, per: int, cell: int) -> str:
        """The x axis: "0" under the zero column, exponents under theirs, "nan" under the last."""
        chars = [" "] * (self.Y_AXIS + n_columns + 4)
        x0 = self.Y_AXIS + 2  # first exponent column

        def put(at: int, text: str) -> None:
            # A label needs a blank cell either side, so that two never run together.
            around = chars[max(0, at - 1) : at + len(text) + 1]
            if at < 0 or at + len(text) > len(chars) or any(c != " " for c in around):
                return
            chars[at : at + len(text)] = list(text)

        put(self.Y_AXIS, "0")
        put(self.Y_AXIS + n_columns - 3, "nan")
        step = 10 if 10 // per * cell >= 5 else 20
        for e in range(-(-GRAD_HIST_LO // step) * step, GRAD_HIST_HI, step):
            put(x0 + (e - GRAD_HIST_LO) // per * cell, power_of_two(e))
        return "".join(chars).rstrip()

    @staticmethod
    def _caption(counts: np.ndarray, total: float, width: int) -> str:
        """What the columns hold, then as many powers of two read in decimal as fit."""
        zero, bad = int(counts[0]), int(counts[-1])
        text = f"{fmt_count(total)} values, {fmt_percent(zero / total)} zero, {fmt_count(bad)} NaN/Inf"
        for e in (-20, 0, -10, 10, -30):
            more = f" · {power_of_two(e)} ≈ {fmt_sig(2.0**e)}"
            if len(text) + len(more) <= width:
                text += more
        return text

    @staticmethod
    def _fit(segs: list[Segment], width: int) -> list[Segment]:
        return list(Segment.simplify(Segment.adjust_line_length(segs, width, style=_PLAIN)))

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        for line in self.lines(options.max_width):
            yield from line
            yield Segment.line()
