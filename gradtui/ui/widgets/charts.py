"""Loss, global-norm and learning-rate charts over time, with interventions marked."""

from __future__ import annotations

from collections.abc import Collection
from typing import ClassVar

from textual.geometry import Region, Size
from textual.strip import Strip
from textual.widget import Widget

from gradtui.model.store import RunStore
from gradtui.ui.renderables.chart import (
    LR_MARKERS,
    MARKER_GLYPHS,
    PAIRED_MARKERS,
    UNCHARTED,
    ChartMarker,
    ChartStyles,
    SeriesChart,
)
from gradtui.ui.widgets.regions import line_runs
from gradtui.ui.widgets.themed import ROLE_CLASSES, Look, role_css

FLAT_CLASS = "-flat"
"""On a chart whose series never changed: it shrinks to its one-line summary (see gradtui.tcss)."""


def chart_markers(store: RunStore, kinds: Collection[str] | None, hidden: Collection[str] = ()) -> list[ChartMarker]:
    """The axis letters of a chart that shows `kinds` of markers (None: all but the paired ones).

    `hidden`: command ids whose acknowledgements stay off the charts (the viewer's own quiet
    commands: the tour holding a chapter while its story is open changed nothing in the run).
    """
    shown = [(r.step, r.kind) for r in store.results if r.ok and r.command_id not in hidden and r.kind not in UNCHARTED]
    shown += [(g.step, g.action) for g in store.guard]
    return [
        ChartMarker(step, MARKER_GLYPHS.get(kind, "*"))
        for step, kind in sorted(shown, key=lambda m: m[0])
        if (kind not in PAIRED_MARKERS if kinds is None else kind in kinds)
    ]


def chart_span(store: RunStore) -> tuple[int, int] | None:
    """The steps every chart spans, so that charts drawn one above the other line up: from the
    oldest step of the every-step ring to the newest step seen."""
    if store.run_count == 0:
        return None
    return int(store.run_steps()[0]), max(int(store.last_step), 0)


class SeriesChartWidget(Widget):
    """A run-wide series of the store drawn as a `SeriesChart` filling the widget."""

    DEFAULT_CSS = (
        role_css("SeriesChartWidget")
        + """
    SeriesChartWidget { height: 8; }
    SeriesChartWidget > .series-chart--bar { color: $accent; }
    SeriesChartWidget > .series-chart--marker { color: $text-warning; text-style: bold; }
    SeriesChartWidget > .series-chart--axis { color: $text-muted; }
    SeriesChartWidget > .series-chart--overlay { color: $text; text-style: bold; }
    """
    )

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "series-chart--bar",
        "series-chart--marker",
        "series-chart--axis",
        "series-chart--overlay",
        *ROLE_CLASSES,
    }

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
        hold: bool = False,
        hidden: Collection[str] = (),
    ) -> None:
        super().__init__(id=id, classes=classes)
        self.look = Look(self)
        self.store = store
        self.series = series
        self.title = title
        self.log_scale = log
        self.overlay = overlay
        """A second series of the store drawn as a line where it differs (the loop's own lr)."""
        self.marker_kinds = markers
        """The intervention kinds marked on the axis (None: all)."""
        self.hold = hold
        """The series is a setting that holds between the steps that report it (see `SeriesChart`)."""
        self.hidden = hidden
        """Command ids kept off the axis (see `chart_markers`); the caller keeps it up to date."""
        self._version = -1
        self._lines: list[Strip] | None = None
        self._styles: ChartStyles | None = None
        self._summary_width = 0

    def refresh_data(self) -> None:
        """Redraw the lines that changed, if the store changed."""
        if self.store.version == self._version:
            return
        self._version = self.store.version
        old = self._lines
        width, height = self.content_region.size
        chart = self.chart(max(3, height))
        needs = chart.summary_width() if chart.flat else 0
        if chart.flat != self.has_class(FLAT_CLASS) or needs != self._summary_width:
            # Shrink to one line (or grow back): a layout pass, only when that changes.
            self._summary_width = needs
            self.set_class(chart.flat, FLAT_CLASS)
            self._lines = None
            self.refresh(layout=True)
            return
        if old is None or not self.is_mounted or len(old) != height or not width:
            self._lines = None
            self.refresh()
            return
        # Most new steps change a few cells at the right: repaint only the lines they touch
        # (a whole chart is about 1 ms of Textual's line rendering a frame).
        new = self._build(width, height, chart)
        self._lines = new
        changed = [y for y in range(height) if new[y] != old[y]]
        for y0, y1 in line_runs(changed):
            self.refresh(Region(0, y0, width, y1 - y0))

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return 1 if self.has_class(FLAT_CLASS) else super().get_content_height(container, viewport, width)

    def get_content_width(self, container: Size, viewport: Size) -> int:
        if self.has_class(FLAT_CLASS):
            return self._summary_width
        return super().get_content_width(container, viewport)

    def on_resize(self) -> None:
        self._lines = None

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self.look.forget()
        self._lines = None
        self._styles = None

    def chart(self, height: int) -> SeriesChart:
        """The renderable for the current data."""
        st = self.store
        if self._styles is None:
            part = self.look.part
            self._styles = ChartStyles(
                bar=part("series-chart--bar"),
                marker=part("series-chart--marker"),
                axis=part("series-chart--axis"),
                overlay=part("series-chart--overlay"),
            )
        # Loss at every step, the global norm at the steps that measured it, the others at
        # sampled steps (see `RunStore.series`): each value at its own step.
        return SeriesChart(
            st.series_steps(self.series),
            st.series(self.series),
            title=self.title,
            height=height,
            log=self.log_scale,
            markers=chart_markers(st, self.marker_kinds, self.hidden),
            styles=self._styles,
            overlay=st.series(self.overlay) if self.overlay is not None else None,
            overlay_label="loop",
            span=chart_span(st),
            hold=self.hold,
        )

    def _build(self, width: int, height: int, chart: SeriesChart | None = None) -> list[Strip]:
        if not width:
            return []
        chart = chart if chart is not None else self.chart(height)
        return [self.look.line(line, width) for line in chart.lines(width, height)]

    def render_line(self, y: int) -> Strip:
        # Line API: the chart's few lines go straight to strips, skipping Rich's console.
        width, height = self.content_region.width, self.content_region.height
        if self._lines is None or len(self._lines) != height or (self._lines and self._lines[0].cell_length != width):
            self._lines = self._build(width, height)
        if 0 <= y < len(self._lines):
            return self._lines[y]
        return self.look.blank(width)


def run_charts(store: RunStore, *, hidden: Collection[str] = ()) -> tuple[SeriesChartWidget, ...]:
    """The main screen's charts: the loss, the global norm, and the learning rate with the loop's
    own drawn over an override (`hidden`: see `chart_markers`)."""
    return (
        SeriesChartWidget(store, "loss", "loss", id="loss", classes="panel", hidden=hidden),
        SeriesChartWidget(store, "global_norm", "global ‖g‖", id="norm", classes="panel", hidden=hidden),
        SeriesChartWidget(
            store,
            "lr",
            "lr",
            id="lr",
            classes="panel",
            overlay="schedule_lr",
            markers=LR_MARKERS,
            hold=True,
            hidden=hidden,
        ),
    )
