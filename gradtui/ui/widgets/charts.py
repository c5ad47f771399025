"""Loss and global-norm charts over time, with interventions marked."""

from __future__ import annotations

from textual.app import RenderResult
from textual.widget import Widget

from gradtui.core.store import RunStore
from gradtui.ui.renderables.chart import MARKER_GLYPHS, ChartMarker, ChartStyles, SeriesChart


class SeriesChartWidget(Widget):
    """A run-wide series of the store drawn as a `SeriesChart` filling the widget."""

    DEFAULT_CSS = """
    SeriesChartWidget { height: 8; }
    SeriesChartWidget > .series-chart--bar { color: $accent; }
    SeriesChartWidget > .series-chart--marker { color: $warning; text-style: bold; }
    SeriesChartWidget > .series-chart--axis { color: $text-muted; }
    """

    COMPONENT_CLASSES = {"series-chart--bar", "series-chart--marker", "series-chart--axis"}

    def __init__(
        self,
        store: RunStore,
        series: str,
        title: str,
        *,
        log: bool | None = None,
        id: str | None = None,  # noqa: A002
        classes: str | None = None,
    ) -> None:
        super().__init__(id=id, classes=classes)
        self.store = store
        self.series = series
        self.title = title
        self.log_scale = log
        self._version = -1

    def refresh_data(self) -> None:
        """Redraw if the store changed."""
        if self.store.version != self._version:
            self._version = self.store.version
            self.refresh()

    def render(self) -> RenderResult:
        st = self.store
        get = self.get_component_rich_style
        styles = ChartStyles(
            bar=get("series-chart--bar", partial=True),
            marker=get("series-chart--marker", partial=True),
            axis=get("series-chart--axis", partial=True),
        )
        markers = [ChartMarker(m.step, MARKER_GLYPHS.get(m.kind, "*")) for m in st.markers]
        return SeriesChart(
            st.steps(),
            st.series(self.series),
            title=self.title,
            height=self.content_region.height,
            log=self.log_scale,
            markers=markers,
            first_index=st.total_steps - st.count,
            styles=styles,
        )
