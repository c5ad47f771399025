"""A small bar chart of a run-wide series (loss, global norm) with interventions marked.

Pure Rich: drawn with eighth blocks, one column per bucket of steps (the worst value of
the bucket), a log scale when the values span decades, and a bottom axis where each
intervention shows as a letter at the step where it took effect.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from rich.console import Console, ConsoleOptions, RenderResult
from rich.segment import Segment
from rich.style import Style

from gradtui.ui.renderables.buckets import bucket_size
from gradtui.ui.scale import fmt_number

BARS = " ▁▂▃▄▅▆▇█"

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
    nonfinite: Style = Style(color="bright_white", bgcolor="magenta", bold=True)
    overlay: Style = Style(color="bright_white", bold=True)


class SeriesChart:
    """Rich renderable: a titled bar chart `height` lines high.

    Args:
        steps: Step of each value, oldest first.
        values: The series (NaN/Inf allowed: drawn as a magenta "×" column).
        title: Name shown on the first line with the latest value.
        height: Total lines, title and axis included (at least 3).
        log: Log scale; None picks it when all values are positive and span 2+ decades.
        markers: Interventions to mark on the axis.
        first_index: Absolute sample number of values[0], to keep buckets steady as data arrive.
        styles: Colours.
        overlay: A second series on the same scale, drawn as a line over the bars where it
            differs from them (the learning rate the loop set, under a viewer's override).
        overlay_label: Its name in the title ("loop 0.02").
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
        first_index: int = 0,
        styles: ChartStyles | None = None,
        overlay: np.ndarray | None = None,
        overlay_label: str = "",
    ) -> None:
        self.steps = np.asarray(steps)
        self.values = np.asarray(values, dtype=np.float64)
        self.title = title
        self.height = max(3, height)
        self.log = log
        self.markers = markers
        self.first_index = first_index
        self.styles = styles or ChartStyles()
        self.overlay = None if overlay is None else np.asarray(overlay, dtype=np.float64)
        self.overlay_label = overlay_label

    def _buckets(self, cols: int, values: np.ndarray | None = None) -> _Buckets:
        """Per column: worst and best finite value and any non-finite, over buckets of samples."""
        values = self.values if values is None else values
        n = values.size
        k = bucket_size(n, cols)
        total = self.first_index + n
        newest = (total - 1) // k
        first_bucket = newest - cols + 1
        s0 = max(first_bucket * k, self.first_index)
        offset = s0 - first_bucket * k
        take = total - s0
        padded = np.full(cols * k, np.nan)
        padded[offset : offset + take] = values[n - take :]
        blocks = padded.reshape(cols, k)
        finite = np.isfinite(blocks)
        masked = np.where(finite, blocks, np.nan)
        # One pass each over the samples (the every-step series hold up to `RUN_CAPACITY`).
        worst = np.fmax.reduce(masked, axis=1)
        best = np.fmin.reduce(masked, axis=1)
        bad = ~finite.all(axis=1)
        # A NaN or Inf inside the data is a non-finite value; the padding (NaN) is not: buckets
        # before the data hold none, and the two at its ends are looked at alone.
        first_data = offset // k
        bad[:first_data] = False
        for b in {first_data, cols - 1}:
            a, z = max(offset, b * k), min(offset + take, (b + 1) * k)
            bad[b] = z > a and not bool(np.isfinite(padded[a:z]).all())
        return _Buckets(worst, best, bad, first_bucket, k)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = options.max_width
        height = options.height or self.height
        for line in self.lines(width, height):
            yield from line
            yield Segment.line()

    def lines(self, width: int, height: int) -> list[list[Segment]]:
        """The chart as `height` lines of exactly `width` cells."""
        st = self.styles
        rows = max(1, height - 2)
        out: list[list[Segment]] = []
        cols = max(1, width)
        buckets = self._buckets(cols) if self.values.size else None
        over_all = self._buckets(cols, self.overlay) if self.overlay is not None and self.overlay.size else None
        # The range of every finite value (the overlay's too), from the buckets' extremes.
        ends = [b for b in (buckets, over_all) if b is not None]
        lows = np.concatenate([b.best for b in ends]) if ends else np.zeros(0)
        highs = np.concatenate([b.worst for b in ends]) if ends else np.zeros(0)
        any_finite = bool(np.isfinite(highs).any())
        v_min = float(np.nanmin(lows)) if any_finite else math.nan
        v_max = float(np.nanmax(highs)) if any_finite else math.nan
        last = float(self.values[-1]) if self.values.size else None
        now = "—" if last is None else ("nan" if math.isnan(last) else fmt_number(last))
        # A narrow chart keeps the latest value whole: "global ‖g‖ 0.012", "‖g‖ 0.012", "0.012".
        words = self.title.split()
        heads = [" ".join([*words[i:], now]) for i in range(len(words) + 1)]
        head = next((h for h in heads if len(h) <= width), heads[-1])
        over = self.overlay if self.overlay is not None and self.overlay.size == self.values.size else None
        if over is not None and over.size and last is not None and over[-1] != last and math.isfinite(over[-1]):
            head += f" ({self.overlay_label} {fmt_number(float(over[-1]))})".replace("( ", "(")
        use_log = self.log
        if use_log is None:
            use_log = bool(any_finite and v_min > 0 and v_max / v_min >= 100)
        if any_finite:
            lo_s, hi_s = fmt_number(v_min), fmt_number(v_max)
            # A flat series says so (its bars are all the same height, whatever the value).
            rng = f"  [{lo_s} … {hi_s}{' log' if use_log else ''}]" if lo_s != hi_s else f"  [flat at {lo_s}]"
        else:
            rng = ""
        bad_last = last is not None and not math.isfinite(last)
        title_segs = [Segment(head, st.nonfinite if bad_last else st.title)]
        if len(head) + len(rng) <= width:
            title_segs.append(Segment(rng, st.axis))
        out.append(Segment.adjust_line_length(title_segs, width, style=_PLAIN))
        if buckets is None or width < 2:
            out.extend([Segment(" " * width, _PLAIN)] for _ in range(rows))
            out.append([Segment(" " * width, _PLAIN)])
            return out

        worst, bad, first_bucket, k = buckets.worst, buckets.bad, buckets.first_bucket, buckets.k

        def scaled(x: np.ndarray) -> np.ndarray:
            if not use_log:
                return x
            with np.errstate(divide="ignore", invalid="ignore"):
                return np.log10(np.where(x > 0, x, np.nan))

        vals = scaled(worst)
        over_vals = None
        if over is not None:
            over_vals = scaled(over_all.worst if over_all is not None else self._buckets(width, over).worst)
        fin = np.concatenate([vals, over_vals]) if over_vals is not None else vals
        fin = fin[np.isfinite(fin)]
        lo, hi = (float(fin.min()), float(fin.max())) if fin.size else (0.0, 1.0)
        if hi - lo < 1e-12:
            lo, hi = lo - 1.0, hi + 1.0
        levels = np.zeros(width, np.int64)
        ok = np.isfinite(vals)
        levels[ok] = np.maximum(1, np.round((vals[ok] - lo) / (hi - lo) * rows * 8)).astype(np.int64)
        # The overlay's row per column (-1: none, or it coincides with the bars).
        over_row = np.full(width, -1, np.int64)
        if over_vals is not None:
            oks = np.isfinite(over_vals) & (np.abs(over_vals - vals) > 1e-9 * max(1.0, hi - lo))
            oks &= ~np.isnan(vals) | np.isfinite(over_vals)
            lvl = np.maximum(1, np.round((over_vals - lo) / (hi - lo) * rows * 8))
            over_row[oks] = (rows - 1 - (lvl[oks].astype(np.int64) - 1) // 8).clip(0, rows - 1)

        marks: dict[int, str] = {}
        if self.markers and self.steps.size:
            n = self.steps.size
            for m in self.markers:
                i = int(np.searchsorted(self.steps, m.step))
                if i >= n:
                    # Applied after the last sample we hold: mark the newest column.
                    i = n - 1
                if m.step < self.steps[0]:
                    continue
                col = (self.first_index + i) // k - first_bucket
                if 0 <= col < width:
                    marks[col] = m.glyph if col not in marks or marks[col] == m.glyph else "*"

        # Each row as characters plus a style class per cell, then one segment per run.
        style_of = (_PLAIN, st.bar, st.marker, st.nonfinite, st.axis, st.overlay)
        glyphs = np.array(list(BARS))
        mark_cols = np.array(sorted(marks), dtype=np.intp)
        for r in range(rows):
            fill = np.clip(levels - (rows - 1 - r) * 8, 0, 8)
            chars = glyphs[fill]
            cls = np.where(fill > 0, 1, 0)
            if mark_cols.size:
                free = fill[mark_cols] == 0
                chars[mark_cols[free]] = "│"
                cls[mark_cols[free]] = 2
            on_line = over_row == r
            if on_line.any():
                chars[on_line] = np.where(fill[on_line] == 8, "╪", "─")
                cls[on_line] = 5
            if r == 0 and bad.any():
                chars[bad] = "×"
                cls[bad] = 3
            out.append(_runs_to_segments(chars, cls, style_of))

        chars = np.full(width, "─")
        cls = np.full(width, 4)
        for c, g in marks.items():
            chars[c] = g
            cls[c] = 2
        a, b = str(int(self.steps[0])) if self.steps.size else "", str(int(self.steps[-1])) if self.steps.size else ""
        if len(a) + len(b) + 2 < width and not any(c < len(a) + 1 or c >= width - len(b) - 1 for c in marks):
            chars[: len(a)] = list(a)
            chars[width - len(b) :] = list(b)
        out.append(_runs_to_segments(chars, cls, style_of))
        return out


@dataclass(frozen=True, slots=True)
class _Buckets:
    """A series in a chart's columns (see `SeriesChart._buckets`)."""

    worst: np.ndarray
    """Per column: the largest finite value (NaN: none)."""
    best: np.ndarray
    """Per column: the smallest finite value (NaN: none)."""
    bad: np.ndarray
    """Per column: a NaN or Inf among its values."""
    first_bucket: int
    """Absolute bucket number (sample number // k) of the first column."""
    k: int
    """Samples per column."""


def _runs_to_segments(chars: np.ndarray, cls: np.ndarray, styles: tuple[Style, ...]) -> list[Segment]:
    """One segment per run of cells with the same style class."""
    cuts = np.flatnonzero(np.diff(cls)) + 1
    starts = np.concatenate(([0], cuts)).tolist()
    ends = np.concatenate((cuts, [cls.size])).tolist()
    text = "".join(chars.tolist())
    return [Segment(text[a:b], styles[int(cls[a])]) for a, b in zip(starts, ends, strict=True)]
