"""The heatmap widget: draws `Heatmap` rows line by line from cached strips.

Only the visible rows are computed (one NumPy pass over the visible layers when the
data change) and each line is kept as a `Strip` until the data, the width, the
statistic or the cursor on that line changes. So 2,000 layers cost what 40 do.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import ClassVar

import numpy as np
from rich.segment import Segment
from textual import events
from textual.binding import Binding, BindingType
from textual.geometry import Region, Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

from gradtui.model.events import FLAG_PRIORITY
from gradtui.model.store import RunStore
from gradtui.ui.renderables.health import HealthIndex
from gradtui.ui.renderables.heatmap import (
    HEADER_LINES,
    VALUE_WIDTH,
    Heatmap,
    HeatmapLayout,
    HeatmapStyles,
    HeatmapView,
    heatmap_view,
)
from gradtui.ui.scale import HEATMAP_STATS, fmt_value
from gradtui.ui.widgets.regions import line_runs
from gradtui.ui.widgets.themed import ROLE_CLASSES, Look, role_css

VALUE_REFRESH_S = 0.5
"""Least time between two redraws of the value column alone."""


class LayerHeatmap(ScrollView, can_focus=True):
    """One row per layer (model order), the newest steps as columns, with a cursor.

    Keys move the cursor vim-style; Enter posts `LayerHeatmap.LayerSelected`.
    """

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "layer-heatmap--label",
        "layer-heatmap--value",
        "layer-heatmap--cursor",
        "layer-heatmap--axis",
        *ROLE_CLASSES,  # a flag's glyph and value: the flag's role
    }

    DEFAULT_CSS = (
        role_css("LayerHeatmap")
        + """
    LayerHeatmap {
        overflow-x: hidden;
        overflow-y: auto;
        scrollbar-size-vertical: 1;
    }
    LayerHeatmap > .layer-heatmap--cursor { text-style: reverse; }
    LayerHeatmap:focus > .layer-heatmap--cursor { text-style: reverse bold; }
    LayerHeatmap > .layer-heatmap--axis { color: $text-muted; }
    LayerHeatmap > .layer-heatmap--value { color: $text; }
    LayerHeatmap > .layer-heatmap--label { color: $text; }
    """
    )

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("j,down", "cursor_down", "Down", show=False, id="heatmap-down"),
        Binding("k,up", "cursor_up", "Up", show=False, id="heatmap-up"),
        Binding("g,home", "cursor_first", "First layer", show=False, id="heatmap-first"),
        Binding("G,end", "cursor_last", "Last layer", show=False, id="heatmap-last"),
        Binding("ctrl+d,pagedown", "page(1)", "Half page down", show=False, id="heatmap-page-down"),
        Binding("ctrl+u,pageup", "page(-1)", "Half page up", show=False, id="heatmap-page-up"),
        Binding("n", "next_flag(1)", "Next flagged", show=False, id="heatmap-next-flag"),
        Binding("N", "next_flag(-1)", "Previous flagged", show=False, id="heatmap-prev-flag"),
        Binding("f", "toggle_flagged", "Flagged only", show=False, id="heatmap-flagged-only"),
        Binding("enter", "select", "Layer detail", show=False, id="heatmap-select"),
    ]

    stat: reactive[str] = reactive(HEATMAP_STATS[0])
    """View shown: "health" or a statistic (a key of `gradtui.ui.scale.STAT_SCALES`)."""
    cursor: reactive[int] = reactive(0, always_update=True)
    """Position of the highlighted row among the rows shown."""
    flagged_only: reactive[bool] = reactive(False)
    """Show only the layers with an active flag (model order kept)."""
    color: reactive[bool] = reactive(True)
    """Draw coloured cells; False draws shade glyphs (NO_COLOR)."""

    class LayerSelected(Message):
        """Enter (or a double click) on a layer."""

        def __init__(self, layer: int) -> None:
            self.layer = layer
            super().__init__()

    def __init__(self, store: RunStore, *, name: str | None = None, id: str | None = None) -> None:  # noqa: A002
        super().__init__(name=name, id=id)
        self.look = Look(self)
        self.store = store
        self._rows = np.zeros(0, np.intp)
        self._data_version = -1
        self._strips: dict[int, Strip] = {}
        self._view: HeatmapView | None = None
        self._view_key: tuple[object, ...] | None = None
        self._header: list[Strip] = []
        self._dirty_rows: list[int] = []
        self._dirty_spans: dict[int, list[tuple[int, int]]] = {}
        """Per dirty row position whose flag did not change: the (x, width) spans that did."""
        self._values_drawn = 0.0
        """When `_values_due` last ran (monotonic seconds)."""
        self._row_values_drawn: dict[int, float] = {}
        """Per row position: when its value column was last looked at for a redraw."""
        self._legend: tuple[tuple[object, ...], Strip] | None = None
        self._styles_cache_hm: HeatmapStyles | None = None
        self._layout = HeatmapLayout(0, 0)
        self._health = HealthIndex()
        """The health view's references, followed across frames (each frame reads only the new steps)."""
        self._renderable = Heatmap(heatmap_view(store, self.stat, 0, []))
        self._paint: tuple[int, Heatmap, HeatmapLayout, int, int, int] | None = None
        """What `render_line` draws with while `render_lines` paints (else looked up per line)."""

    # ------------------------------------------------------------ data

    @property
    def rows(self) -> np.ndarray:
        """Layer indices of the rows shown, in model order."""
        return self._rows

    @property
    def selected_layer(self) -> int | None:
        """Layer index under the cursor, or None when no row is shown."""
        if self._rows.size == 0:
            return None
        return int(self._rows[min(self.cursor, self._rows.size - 1)])

    def refresh_data(self) -> None:
        """Pick up new events from the store (call when `store.version` changed)."""
        if self.store.version == self._data_version:
            return
        self._data_version = self.store.version
        width = self.scrollable_content_region.width
        if self._update_rows() or self._view is None or width <= 0 or not self.is_mounted:
            self._invalidate()
            return
        # Rebuild the view now and repaint only the lines whose content changed: in a
        # quiet run most rows keep their strip from one frame to the next.
        old_view, old_header, old_key = self._view, self._header, self._view_key
        self._view_key = None
        self._ensure_view(width, previous=(old_view, old_key))
        top = int(self.scroll_y)
        header = [y for y in range(HEADER_LINES) if self._header[y] != old_header[y]]
        # The content's width: a region over the scrollbar would repaint the scrollbar too.
        regions = [Region(0, y0, width, y1 - y0) for y0, y1 in line_runs(header)]
        # A row repaints only what changed (its value, its cells from the first changed one):
        # in a live run that is the newest column or two, a fraction of the line to composite.
        for pos in self._dirty_rows:
            y = HEADER_LINES + pos - top
            spans = self._dirty_spans.get(pos)
            if spans is None:
                regions.append(Region(0, y, width, 1))
            else:
                regions.extend(Region(x, y, min(w, width - x), 1) for x, w in spans if x < width)
        if regions:
            self.refresh(*regions)

    def reset(self) -> None:
        """Start over for a new run (other layers): cursor on the first row, nothing cached."""
        self._rows = np.zeros(0, np.intp)
        self._data_version = -1
        self._view = None
        self._header = []
        self._dirty_rows = []
        self._layout = HeatmapLayout(0, 0)
        self._health = HealthIndex()
        self.set_reactive(LayerHeatmap.cursor, 0)
        self.scroll_to(y=0, animate=False, immediate=True)
        self._invalidate()

    def _update_rows(self) -> bool:
        """Recompute which layers are shown; True when that changed."""
        selected = self.selected_layer
        n = self.store.n_layers
        if self.flagged_only:
            flagged = {name for (name, _kind) in self.store.active_flags if name is not None}
            rows = np.array([i for i, info in enumerate(self.store.layers) if info.name in flagged], np.intp)
        else:
            rows = np.arange(n, dtype=np.intp)
        changed = rows.shape != self._rows.shape or not np.array_equal(rows, self._rows)
        self._rows = rows
        if changed:
            self.virtual_size = Size(self.size.width, int(rows.size) + HEADER_LINES)
            if selected is not None and rows.size:
                pos = int(np.searchsorted(rows, selected))
                self.set_reactive(LayerHeatmap.cursor, min(pos, rows.size - 1))
            else:
                self.set_reactive(LayerHeatmap.cursor, 0)
        return changed

    def _invalidate(self) -> None:
        self._strips.clear()
        self._view_key = None
        self.refresh()

    def watch_stat(self) -> None:
        self._invalidate()

    def watch_color(self) -> None:
        self._styles_cache_hm = None
        self._legend = None
        self._invalidate()

    def watch_flagged_only(self) -> None:
        self._update_rows()
        self._invalidate()
        self.scroll_to(y=0, animate=False)

    def watch_cursor(self, old: int, new: int) -> None:
        self._strips.pop(old, None)
        self._strips.pop(new, None)
        self._ensure_visible(new)
        self.refresh()

    def on_resize(self, event: events.Resize) -> None:
        self.virtual_size = Size(event.size.width, int(self._rows.size) + HEADER_LINES)
        self._invalidate()

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self.look.forget()
        self._strips.clear()
        self._view_key = None
        self._legend = None
        self._styles_cache_hm = None

    # ------------------------------------------------------------ drawing

    def _styles(self) -> HeatmapStyles:
        # Looked up once per style change: a lookup per row costs ~2 ms a frame.
        if self._styles_cache_hm is not None:
            return self._styles_cache_hm
        part = self.look.part
        self._styles_cache_hm = HeatmapStyles(
            label=part("layer-heatmap--label"),
            value=part("layer-heatmap--value"),
            cursor=part("layer-heatmap--cursor"),
            axis=part("layer-heatmap--axis"),
            flags={kind: self.look.roles[kind] for kind in FLAG_PRIORITY},
            capture=self.look.roles["note"],
        )
        return self._styles_cache_hm

    def _visible_range(self) -> tuple[int, int]:
        top = int(self.scroll_y)
        visible = max(0, self.size.height - HEADER_LINES)
        return top, min(int(self._rows.size), top + visible)

    def _ensure_view(
        self,
        width: int,
        previous: tuple[HeatmapView | None, tuple[object, ...] | None] | None = None,
    ) -> tuple[Heatmap, HeatmapLayout, int]:
        """The view of the visible rows (rebuilt when data, size, scroll or options changed).

        With `previous` (the view and key before new data arrived), strips of rows that
        did not change are kept and `_dirty_rows` lists the positions that did.
        """
        a, b = self._visible_range()
        key = (self._data_version, self.stat, a, b, width, self.flagged_only, self.color)
        if self._view_key != key or self._view is None:
            names = [self.store.layers[i].name for i in self._rows[a:b]] if b > a else []
            # One blank column on the right keeps the newest cells apart from the scrollbar.
            layout = HeatmapLayout.fit(width - 1, names or ["layer"])
            old_view, old_key = previous if previous is not None else (None, None)
            view = heatmap_view(
                self.store, self.stat, layout.cells, self._rows[a:b], health=self._health, previous=old_view
            )
            if old_view is not None and old_key is not None and old_key[1:] == key[1:] and layout == self._layout:
                # The value column alone is redrawn at most VALUE_REFRESH_S apart: at 10 Hz a
                # noisy value would otherwise redraw every row of the screen every frame.
                due = self._values_due(a, b)
                dirty = _changed_rows(old_view, view, values=due)
                if not due.all():
                    # Rows not redrawn keep showing the values of the view they were drawn from.
                    view = _keep_values(view, old_view, dirty)
                for local in dirty:
                    self._strips.pop(a + local, None)
                self._dirty_rows = [a + local for local in dirty]
                self._dirty_spans = _changed_spans(old_view, view, dirty, a, layout)
            else:
                self._strips.clear()
                self._dirty_rows = list(range(a, b))
                self._dirty_spans = {}
            self._layout = layout
            self._view = view
            self._view_key = key
            self._renderable = Heatmap(view, layout=layout, color=self.color, styles=self._styles())
            legend_key = (self.stat, layout, self.color, view.gaps, bool(view.capture_columns()))
            if self._legend is None or self._legend[0] != legend_key:
                self._legend = (legend_key, self.look.line(self._renderable.legend_segments(layout), width))
            axis = self.look.line(self._renderable.axis_segments(layout), width)
            self._header = [self._legend[1], axis]
        return self._renderable, self._layout, a

    def _values_due(self, a: int, b: int) -> np.ndarray:
        """Per visible row (positions a..b): whether its value column may be redrawn now.

        Each row's value is looked at again once it is VALUE_REFRESH_S old, but no more
        rows at a time than their share of that period since the last look: in a live run
        the value redraws are spread over the frames (a few rows each) instead of all
        rows landing on one frame every VALUE_REFRESH_S. After a longer pause every stale
        row is due at once.
        """
        now = time.monotonic()
        n = b - a
        elapsed = now - self._values_drawn
        self._values_drawn = now
        seen = self._row_values_drawn
        stale = [i for i in range(n) if now - seen.get(a + i, 0.0) >= VALUE_REFRESH_S]
        budget = n if elapsed >= VALUE_REFRESH_S else max(1, math.ceil(n * elapsed / VALUE_REFRESH_S))
        if len(stale) > budget:
            # The longest-waiting rows first; equal waits in row order.
            stale = sorted(stale, key=lambda i: seen.get(a + i, 0.0))[:budget]
        due = np.zeros(n, bool)
        for i in stale:
            seen[a + i] = now
            due[i] = True
        return due

    def render_lines(self, crop: Region) -> list[Strip]:
        # The width, view, scroll offset and cursor are looked up once per paint, not per line.
        width = self.scrollable_content_region.width
        if width > 0:
            renderable, layout, first = self._ensure_view(width)
            self._paint = (width, renderable, layout, first, int(self.scroll_y), self.cursor)
        try:
            return super().render_lines(crop)
        finally:
            self._paint = None

    def render_line(self, y: int) -> Strip:
        paint = self._paint
        if paint is None:
            width = self.scrollable_content_region.width
            if width <= 0:
                return self.look.blank(0)
            renderable, layout, first = self._ensure_view(width)
            top, cursor = int(self.scroll_y), self.cursor
        else:
            width, renderable, layout, first, top, cursor = paint
        if y < HEADER_LINES:
            return self._header[y]
        pos = top + y - HEADER_LINES
        if pos >= self._rows.size:
            if pos == 0:
                msg = "  no flagged layers (f: show all)" if self.flagged_only else "  waiting for the first step…"
                return self.look.line([Segment(msg, self._styles().axis)], width)
            return self.look.blank(width)
        strip = self._strips.get(pos)
        if strip is None:
            local = pos - first
            if 0 <= local < renderable.view.rows:
                segs = renderable.row_segments(local, layout, cursor=pos == cursor)
            else:
                # Scrolled between the view update and this line: rebuilt on the next frame.
                segs = []
            strip = self.look.line(segs, width)
            self._strips[pos] = strip
        return strip

    # ------------------------------------------------------------ navigation

    def _ensure_visible(self, pos: int) -> None:
        visible = max(1, self.size.height - HEADER_LINES)
        top = int(self.scroll_y)
        if pos < top:
            self.scroll_to(y=pos, animate=False, immediate=True)
        elif pos >= top + visible:
            self.scroll_to(y=pos - visible + 1, animate=False, immediate=True)

    def _move(self, pos: int) -> None:
        if self._rows.size:
            self.cursor = max(0, min(int(self._rows.size) - 1, pos))

    def action_cursor_down(self) -> None:
        self._move(self.cursor + 1)

    def action_cursor_up(self) -> None:
        self._move(self.cursor - 1)

    def action_cursor_first(self) -> None:
        self._move(0)

    def action_cursor_last(self) -> None:
        self._move(int(self._rows.size) - 1)

    def action_page(self, direction: int) -> None:
        self._move(self.cursor + direction * max(1, (self.size.height - HEADER_LINES) // 2))

    def action_next_flag(self, direction: int) -> None:
        """Jump to the next (1) or previous (-1) layer with an active flag, wrapping around."""
        flagged = {name for (name, _kind) in self.store.active_flags if name is not None}
        n = int(self._rows.size)
        if not flagged or n == 0:
            self.notify("No layer is flagged.", timeout=2)
            return
        for step in range(1, n + 1):
            pos = (self.cursor + direction * step) % n
            if self.store.layers[int(self._rows[pos])].name in flagged:
                self._move(pos)
                return

    def action_toggle_flagged(self) -> None:
        self.flagged_only = not self.flagged_only

    def action_select(self) -> None:
        layer = self.selected_layer
        if layer is not None:
            self.post_message(self.LayerSelected(layer))

    def on_click(self, event: events.Click) -> None:
        # The click's offset is the widget's, border included: the rows start inside it.
        at = event.get_content_offset(self)
        if at is None:
            return
        pos = int(self.scroll_y) + at.y - HEADER_LINES
        if at.y >= HEADER_LINES and 0 <= pos < self._rows.size:
            self._move(pos)
            if event.chain >= 2:
                self.action_select()


def _changed_rows(old: HeatmapView, new: HeatmapView, *, values: bool | np.ndarray = True) -> list[int]:
    """Rows whose cells, flag or shown value differ between two views of the same rows.

    `values`: compare the shown values of every row (True), of none (False), or of the
    rows where this boolean array is True.
    """
    if old.rows != new.rows or old.codes.shape != new.codes.shape or old.names != new.names:
        return list(range(new.rows))
    differs = (old.codes != new.codes).any(axis=1)
    if isinstance(values, bool):
        check = [values] * new.rows
    else:
        check = values.tolist()
    out = []
    for i in range(new.rows):
        if differs[i] or old.flags[i] != new.flags[i]:
            out.append(i)
            continue
        if check[i] and not _same_value(old, new, i):
            out.append(i)
    return out


def _changed_spans(
    old: HeatmapView, new: HeatmapView, rows: list[int], first: int, layout: HeatmapLayout
) -> dict[int, list[tuple[int, int]]]:
    """Row position -> the (x, width) spans of it that changed, for rows whose flag did not change:
    the value column if its text changed, and the cells from the first changed one on."""
    if not rows or old.codes.shape != new.codes.shape or old.names != new.names:
        return {}
    out: dict[int, list[tuple[int, int]]] = {}
    sel = np.asarray(rows, np.intp)
    shown = min(layout.cells, new.cols)
    differs = old.codes[sel, new.cols - shown :] != new.codes[sel, new.cols - shown :]
    start = layout.label_width + layout.cells - shown  # cells are right-aligned
    for i, row in enumerate(rows):
        if old.flags[row] != new.flags[row]:
            continue
        spans = [] if _same_value(old, new, row) else [(layout.value_x, VALUE_WIDTH)]
        cols = np.flatnonzero(differs[i])
        if cols.size:
            x = start + int(cols[0])
            spans.append((x, layout.width - x))
        out[first + row] = spans
    return out


def _same_value(old: HeatmapView, new: HeatmapView, row: int) -> bool:
    """Whether a row shows the same value text in both views."""
    known_a = old.known is None or bool(old.known[row])
    known_b = new.known is None or bool(new.known[row])
    return known_a == known_b and fmt_value(float(old.values[row])) == fmt_value(float(new.values[row]))


def _keep_values(new: HeatmapView, old: HeatmapView, redrawn: list[int]) -> HeatmapView:
    """`new` with the values of `old` on the rows that are not redrawn now."""
    keep = np.ones(new.rows, bool)
    keep[redrawn] = False
    values = np.where(keep, old.values, new.values)
    known = None
    if new.known is not None and old.known is not None:
        known = np.where(keep, old.known, new.known)
    return dataclasses.replace(new, values=values, known=known)
