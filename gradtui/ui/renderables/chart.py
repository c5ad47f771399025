"""A small bar chart of a run-wide series (loss, global norm, learning rate) with interventions marked.

Pure Rich: drawn with eighth blocks on the shared step axis (`gradtui.ui.renderables.axis`):
each column holds the steps of its bucket and shows the worst value measured there, a
column where nothing was measured stays empty, and the bottom line labels the steps under
it and marks each intervention with a letter at the step where it took effect. A linear
scale starts at zero (halving a value halves its bar); a log scale, for values spanning
decades, says so. A series that never changes is one line: its value and since when.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from rich.console import Console, ConsoleOptions, RenderResult
from rich.segment import Segment
from rich.style import Style

from gradtui.ui.renderables.axis import StepAxis
from gradtui.ui.scale import NONFINITE_GLYPH, NONFINITE_STYLE, fmt_number

BARS = " ▁▂▃▄▅▆▇█"
ZERO_LINE = "┈"
"""Where zero is, in the empty cells of a linear chart whose values cross it."""

_PLAIN = Style()
"""An explicit empty style: Textual's NO_COLOR filter cannot take segments with none."""

MARKER_GLYPHS: dict[str, str] = {
    "set_lr": "L",
    "set_clip": "C",
    "set_paused": "P",
    "rollback": "R",
    "skip": "S",
    "lr_cut": "L",
    "clip": "C",
}
"""Letter drawn on the chart axis for an intervention (or a guard action) of each kind."""
LR_MARKERS: tuple[str, ...] = ("set_lr", "release", "lr_cut")
"""The markers of the learning-rate chart: what changed the learning rate."""
PAIRED_MARKERS: frozenset[str] = frozenset({"lr_cut"})
"""Kinds left off the other charts: a guard's LR cut always comes with its rollback's R."""
UNCHARTED: frozenset[str] = frozenset({"capture"})
"""Kinds on no chart: a deep capture changes nothing in the run (the heatmap's step axis shows where it ran)."""


@dataclass(frozen=True, slots=True)
class ChartMarker:
    """An intervention at `step`, drawn as `glyph`."""

    step: int
    glyph: str


@dataclass(frozen=True)
class ChartStyles:
    """Styles of the chart's parts."""

    bar: Style = Style(color="cyan")
    title: Style = Style(bold=True)
    axis: Style = Style(dim=True)
    marker: Style = Style(color="bright_yellow", bold=True)
    nonfinite: Style = NONFINITE_STYLE
    overlay: Style = Style(color="bright_white", bold=True)


class SeriesChart:
    """Rich renderable: a titled bar chart `height` lines high.

    Args:
        steps: Step of each value, ascending.
        values: The series (NaN/Inf allowed: drawn as a "×" on top of its column).
        title: Name shown on the first line with the latest value.
        height: Total lines, title and axis included (at least 3).
        log: Log scale; None picks it when all values are positive and span 2+ decades.
        markers: Interventions to mark on the axis.
        styles: Colours.
        overlay: A second series at the same steps and on the same scale, drawn as a line
            over the bars where it differs from them (the learning rate the loop set, under
            a viewer's override).
        overlay_label: Its name in the title ("loop 0.02").
        span: The first and last step of the x axis (charts drawn one above the other share
            it); the series' own by default.
        hold: A setting (the learning rate): it holds from one measured step to the next, so
            a column without a measurement shows the last value, not a gap.
    """

    def __init__(
        self,
        steps: np.ndarray,
        values: np.ndarray,
        *,
        title: str,
        height: int = 6,
        log: bool | None = None,
        markers: Sequence[ChartMarker] = (),
        styles: ChartStyles | None = None,
        overlay: np.ndarray | None = None,
        overlay_label: str = "",
        span: tuple[int, int] | None = None,
        hold: bool = False,
    ) -> None:
        self.steps = np.asarray(steps, np.int64)
        self.values = np.asarray(values, dtype=np.float64)
        self.title = title
        self.height = max(3, height)
        self.log = log
        self.markers = markers
        self.styles = styles or ChartStyles()
        over = None if overlay is None else np.asarray(overlay, dtype=np.float64)
        self.overlay = over if over is not None and over.size == self.values.size else None
        self.overlay_label = overlay_label
        if span is None and self.steps.size:
            span = (int(self.steps[0]), int(self.steps[-1]))
        self.span = span
        self.hold = hold

    def axis(self, width: int) -> StepAxis | None:
        """The step axis at `width` columns (None before any step)."""
        if self.span is None:
            return None
        return StepAxis.fit(self.span[0], self.span[1], width)

    @property
    def flat(self) -> bool:
        """The series holds one value throughout (as shown), finite, unmarked: no news to draw."""
        v = self.values
        if v.size == 0 or self.markers or not bool(np.isfinite(v).all()):
            return False
        if self.overlay is not None and not np.array_equal(self.overlay, v):
            return False
        return fmt_number(float(v.min())) == fmt_number(float(v.max()))

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = options.max_width
        height = options.height or self.height
        for line in self.lines(width, height):
            yield from line
            yield Segment.line()

    def _head(self, width: int) -> str:
        """The title with the latest value, shortened to keep the value whole: "global ‖g‖ 0.012",
        "‖g‖ 0.012", "0.012"; with the overlay's latest where it differs."""
        last = float(self.values[-1]) if self.values.size else None
        now = "—" if last is None else ("nan" if math.isnan(last) else fmt_number(last))
        words = self.title.split()
        heads = [" ".join([*words[i:], now]) for i in range(len(words) + 1)]
        head = next((h for h in heads if len(h) <= width), heads[-1])
        over = self.overlay
        if over is not None and over.size and last is not None and over[-1] != last and math.isfinite(over[-1]):
            head += f" ({self.overlay_label} {fmt_number(float(over[-1]))})".replace("( ", "(")
        return head

    def summary(self, width: int = 1 << 16) -> list[Segment]:
        """The one line of a flat series, the longest form that fits `width` cells: "lr 0.1  flat
        since step 0", "lr 0.1  flat", "lr 0.1"."""
        st = self.styles
        head = self._head(width)
        since = f" since step {int(self.steps[0])}" if self.steps.size else ""
        for tail in (f"  flat{since}", "  flat", ""):
            if len(head) + len(tail) <= width:
                return [Segment(head, st.title), Segment(tail, st.axis)]
        return [Segment(head, st.title)]

    def summary_width(self) -> int:
        """Cells of the summary's short form ("lr 0.1  flat"): what a chart that stands in a row needs."""
        return len(self._head(1 << 16)) + len("  flat")

    def lines(self, width: int, height: int) -> list[list[Segment]]:
        """The chart as `height` lines of exactly `width` cells."""
        st = self.styles
        rows = max(1, height - 2)
        blank = [Segment(" " * width, _PLAIN)]
        if self.flat:
            line = Segment.adjust_line_length(self.summary(width), width, style=_PLAIN)
            return [line, *(list(blank) for _ in range(height - 1))]
        axis = self.axis(max(1, width))
        buckets = _columns(axis, self.steps, self.values, self.hold) if axis is not None else None
        over_b = _columns(axis, self.steps, self.overlay, self.hold) if axis and self.overlay is not None else None
        scale = _Scale.of([b for b in (buckets, over_b) if b is not None], self.log)
        head = self._head(width)
        last = float(self.values[-1]) if self.values.size else None
        bad_last = last is not None and not math.isfinite(last)
        title_segs = [Segment(head, st.nonfinite if bad_last else st.title)]
        rng = scale.words()
        if rng and len(head) + 2 + len(rng) <= width:
            title_segs.append(Segment("  " + rng, st.axis))
        out = [Segment.adjust_line_length(title_segs, width, style=_PLAIN)]
        if buckets is None or axis is None or width < 2:
            out.extend(list(blank) for _ in range(rows + 1))
            return out

        levels = scale.levels(buckets.worst, rows)
        # The overlay's row per column (-1: none, or it coincides with the bars).
        over_row = np.full(width, -1, np.int64)
        if over_b is not None:
            differs = np.isfinite(over_b.worst) & ~np.isclose(over_b.worst, buckets.worst, rtol=1e-9, atol=0)
            lvl = scale.levels(over_b.worst, rows)
            over_row[differs] = (rows - 1 - (lvl[differs] - 1) // 8).clip(0, rows - 1)
        zero_row = scale.zero_row(rows)

        marks: dict[int, str] = {}
        for m in self.markers:
            if m.step < axis.first:
                continue
            # Applied after the newest step shown: the newest column.
            col = min(axis.column(m.step), width - 1)
            if 0 <= col < width:
                marks[col] = m.glyph if col not in marks or marks[col] == m.glyph else "*"

        # Each row as characters plus a style class per cell, then one segment per run.
        style_of = (_PLAIN, st.bar, st.marker, st.nonfinite, st.axis, st.overlay)
        glyphs = np.array(list(BARS))
        mark_cols = np.array(sorted(marks), dtype=np.intp)
        bad = buckets.bad
        for r in range(rows):
            fill = np.clip(levels - (rows - 1 - r) * 8, 0, 8)
            chars = glyphs[fill]
            cls = np.where(fill > 0, 1, 0)
            if r == zero_row:
                empty = fill == 0
                chars[empty] = ZERO_LINE
                cls[empty] = 4
            if mark_cols.size:
                free = fill[mark_cols] == 0
                chars[mark_cols[free]] = "│"
                cls[mark_cols[free]] = 2
            on_line = over_row == r
            if on_line.any():
                chars[on_line] = np.where(fill[on_line] == 8, "╪", "─")
                cls[on_line] = 5
            if r == 0 and bad.any():
                chars[bad] = NONFINITE_GLYPH
                cls[bad] = 3
            out.append(_runs_to_segments(chars, cls, style_of))

        chars = np.array(list(axis.line("─", avoid=marks)))
        cls = np.full(width, 4)
        for c, g in marks.items():
            chars[c] = g
            cls[c] = 2
        out.append(_runs_to_segments(chars, cls, style_of))
        return out


@dataclass(frozen=True, slots=True)
class _Buckets:
    """A series in a chart's columns (see `_columns`)."""

    worst: np.ndarray
    """Per column: the largest finite value (NaN: none)."""
    best: np.ndarray
    """Per column: the smallest finite value (NaN: none)."""
    bad: np.ndarray
    """Per column: a NaN or Inf among its values."""


def _columns(axis: StepAxis, steps: np.ndarray, values: np.ndarray, hold: bool) -> _Buckets:
    """Each value in the column of its step: per column the worst and best finite value and
    whether any was not finite; with `hold`, a column after the first with none keeps the last."""
    cols = axis.cols
    worst = np.full(cols, np.nan)
    best = np.full(cols, np.nan)
    bad = np.zeros(cols, bool)
    col = axis.columns(steps)
    inside = (col >= 0) & (col < cols)
    if not bool(inside.all()):
        col, values = col[inside], values[inside]
    if col.size == 0:
        return _Buckets(worst, best, bad)
    if col.size > 1 and bool((col[1:] < col[:-1]).any()):
        order = np.argsort(col, kind="stable")
        col, values = col[order], values[order]
    # One pass each over the samples (the every-step series hold up to `RUN_CAPACITY`).
    starts = np.flatnonzero(np.concatenate(([True], col[1:] != col[:-1])))
    at = col[starts]
    finite = np.isfinite(values)
    masked = np.where(finite, values, np.nan)
    worst[at] = np.fmax.reduceat(masked, starts)
    best[at] = np.fmin.reduceat(masked, starts)
    bad[at] = np.logical_or.reduceat(~finite, starts)
    if hold:
        seen = np.full(cols, -1, np.intp)
        seen[at] = at
        np.maximum.accumulate(seen, out=seen)
        carry = seen >= 0
        worst[carry] = worst[seen[carry]]
        best[carry] = best[seen[carry]]
    return _Buckets(worst, best, bad)


@dataclass(frozen=True, slots=True)
class _Scale:
    """The y axis: linear from zero (or through it, for values below zero), or log10."""

    log: bool
    lo: float
    """The bottom of the axis (log10 on a log scale)."""
    hi: float
    """The top of the axis."""
    v_min: float
    """The smallest finite value drawn (NaN: none)."""
    v_max: float

    @classmethod
    def of(cls, buckets: list[_Buckets], log: bool | None) -> _Scale:
        lows = np.concatenate([b.best for b in buckets]) if buckets else np.zeros(0)
        highs = np.concatenate([b.worst for b in buckets]) if buckets else np.zeros(0)
        if not bool(np.isfinite(highs).any()):
            return cls(bool(log), 0.0, 1.0, math.nan, math.nan)
        v_min, v_max = float(np.nanmin(lows)), float(np.nanmax(highs))
        if log is None:
            log = v_min > 0 and v_max / v_min >= 100
        if log:
            pos = lows[lows > 0]
            lo = math.log10(float(pos.min())) if pos.size else 0.0
            hi = math.log10(v_max) if v_max > 0 else lo + 1.0
        else:
            # Bars rise from zero: halving a value halves its bar (not: drops to the floor).
            lo, hi = min(0.0, v_min), max(0.0, v_max)
        if hi - lo < 1e-12:
            lo, hi = lo - 1.0, hi + 1.0
        return cls(bool(log), lo, hi, v_min, v_max)

    def words(self) -> str:
        """The range drawn: "[0.2 … 0.9]", "[1e-3 … 4.2 log]"."""
        if math.isnan(self.v_min):
            return ""
        lo, hi = fmt_number(self.v_min), fmt_number(self.v_max)
        return f"[{lo} … {hi}{' log' if self.log else ''}]"

    def levels(self, values: np.ndarray, rows: int) -> np.ndarray:
        """Eighths of bar per column (0: nothing drawn); any finite value shows at least one."""
        x = values
        if self.log:
            with np.errstate(divide="ignore", invalid="ignore"):
                x = np.log10(np.where(values > 0, values, np.nan))
        out = np.zeros(values.size, np.int64)
        ok = np.isfinite(x)
        out[ok] = np.maximum(1, np.round((x[ok] - self.lo) / (self.hi - self.lo) * rows * 8)).astype(np.int64)
        return out

    def zero_row(self, rows: int) -> int:
        """The row that zero lies in, where the values cross it (-1: none)."""
        if self.log or not self.lo < 0 < self.hi:
            return -1
        eighths = int(round(-self.lo / (self.hi - self.lo) * rows * 8))
        return int(np.clip(rows - 1 - eighths // 8, 0, rows - 1))


def _runs_to_segments(chars: np.ndarray, cls: np.ndarray, styles: tuple[Style, ...]) -> list[Segment]:
    """One segment per run of cells with the same style class."""
    cuts = np.flatnonzero(np.diff(cls)) + 1
    starts = np.concatenate(([0], cuts)).tolist()
    ends = np.concatenate((cuts, [cls.size])).tolist()
    text = "".join(chars.tolist())
    return [Segment(text[a:b], styles[int(cls[a])]) for a, b in zip(starts, ends, strict=True)]
