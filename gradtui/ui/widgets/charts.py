"""Loss and global-norm charts over time, with interventions marked."""

from __future__ import annotations

from collections.abc import Collection

from rich.style import Style
from textual.geometry import Region
from textual.strip import Strip
from textual.widget import Widget

from gradtui.model.store import RunStore
from gradtui.ui.renderables.chart import MARKER_GLYPHS, PAIRED_MARKERS, ChartMarker, ChartStyles, SeriesChart
from gradtui.ui.widgets.regions import line_runs


def chart_markers(store: RunStore, kinds: Collection[str] | None) -> list[ChartMarker]:
    """The axis letters of a chart that shows `kinds` of markers (None: all but the paired ones)."""
    return [
        ChartMarker(m.step, MARKER_GLYPHS.get(m.kind, "*"))
        for m in store.markers
        if (m.kind not in PAIRED_MARKERS if kinds is None else m.kind in kinds)
    ]


class SeriesChartWidget(Widget):
    """A run-wide series of the store drawn as a `SeriesChart` filling the widget."""

    DEFAULT_CSS = """
    SeriesChartWidget { height: 8; }
    SeriesChartWidget > .series-chart--bar { color: $accent; }
    SeriesChartWidget > .series-chart--marker { color: $warning; text-style: bold; }
    SeriesChartWidget > .series-chart--axis { color: $text-muted; }
    SeriesChartWidget > .series-chart--overlay { color: $text; text-style: bold; }
    """

    COMPONENT_CLASSES = {"series-chart--bar", "series-chart--marker", "series-chart--axis", "series-chart--overlay"}

    def __init__(
        self,
        store: RunStore,
        series: str,
        title: str,
        *,
        log: bool | None = None,
        id: str | None = None,  # noqa: A002
        classes: str | None = None,
        overlay: str | None = None,
        markers: tuple[str, ...] | None = None,
    ) -> None:
        super().__init__(id=id, classes=classes)
        self.store = store
        self.series = series
        self.title = title
        self.log_scale = log
        self.overlay = overlay
        """A second series of the store drawn as a line where it differs (the loop's own lr)."""
        self.marker_kinds = markers
        """The intervention kinds marked on the axis (None: all)."""
        self._version = -1
        self._lines: list[Strip] | None = None
        self._styles: ChartStyles | None = None

    def refresh_data(self) -> None:
        """Redraw the lines that changed, if the store changed."""
        if self.store.version == self._version:
            return
        self._version = self.store.version
        old = self._lines
        width, height = self.content_region.size
        if old is None or not self.is_mounted or len(old) != height or not width:
            self._lines = None
            self.refresh()
            return
        # Most new steps change a few cells at the right: repaint only the lines they touch
        # (a whole chart is about 1 ms of Textual's line rendering a frame).
        new = self._build(width, height)
        self._lines = new
        changed = [y for y in range(height) if new[y] != old[y]]
        for y0, y1 in line_runs(changed):
            self.refresh(Region(0, y0, width, y1 - y0))

    def on_resize(self) -> None:
        self._lines = None

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._lines = None
        self._styles = None

    def chart(self, height: int) -> SeriesChart:
        """The renderable for the current data."""
        st = self.store
        if self._styles is None:
            get = self.get_component_rich_style
            self._styles = ChartStyles(
                bar=get("series-chart--bar", partial=True),
                marker=get("series-chart--marker", partial=True),
                axis=get("series-chart--axis", partial=True),
                overlay=get("series-chart--overlay", partial=True),
            )
        styles = self._styles
        markers = chart_markers(st, self.marker_kinds)
        # Loss and global norm at every step, the others at sampled steps (see `RunStore.series`).
        return SeriesChart(
            st.series_steps(self.series),
            st.series(self.series),
            title=self.title,
            height=height,
            log=self.log_scale,
            markers=markers,
            first_index=st.series_first_index(self.series),
            styles=styles,
            overlay=st.series(self.overlay) if self.overlay is not None else None,
            overlay_label="loop",
        )

    def _build(self, width: int, height: int) -> list[Strip]:
        return [Strip(line, width) for line in self.chart(height).lines(width, height)] if width else []

    def render_line(self, y: int) -> Strip:
        # Line API: the chart's few lines go straight to strips, skipping Rich's console.
        width, height = self.content_region.width, self.content_region.height
        if self._lines is None or len(self._lines) != height or (self._lines and self._lines[0].cell_length != width):
            self._lines = self._build(width, height)
        if 0 <= y < len(self._lines):
            return self._lines[y]
        return Strip.blank(width, Style())
