"""How the main screen shares its rows: the heatmap first, the charts and the log the rest.

The heatmap is the reason to open the viewer, so it takes every row its layers need while
that leaves the panels below a useful minimum (the latest alert, and charts with a bar
row or two); with more layers than that it scrolls, and the panels keep a share. The charts stand one above another
only where each gets a few rows; else they stand side by side, as on a narrow screen.
"""

from __future__ import annotations

from typing import NamedTuple

from textual.geometry import Size

from gradtui.ui.renderables.heatmap import HEADER_LINES
from gradtui.ui.tour_switch import WIDE_AT
from gradtui.ui.widgets.layer_heatmap import LayerHeatmap
from gradtui.ui.widgets.status import COMPACT_BELOW

FOOTER_LINES = 1
BANNER_LINES = 2
"""The tour's banner above the heatmap on a narrow screen."""
PANELS_MIN = 6
"""Rows the panels under the heatmap keep at least: a chart's title, two bar rows and its axis,
in its border; the log's last lines."""
PANELS_SHARE = 4
"""... and a quarter of a tall screen when the heatmap scrolls anyway (more layers than rows)."""
STACKED_MIN = 18
"""Rows from which the three charts stand one above another (six each, borders included)."""
CHARTS_ROW_CLASS = "-charts-row"
"""On the screen: the charts side by side (see gradtui.tcss)."""


class Plan(NamedTuple):
    """Where the main screen's rows go."""

    heatmap_max: int
    """The most rows the heatmap may take, its border, legend and axis included."""
    heatmap: int
    """The rows it takes: all its layers need, up to `heatmap_max` (more scroll)."""
    panels: int
    """Rows left to the charts and the log."""
    charts_in_row: bool
    """The charts side by side (too few rows to stack them)."""


def plan(width: int, height: int, rows: int, *, tour: bool = False) -> Plan:
    """The rows of a `width` x `height` screen whose heatmap shows `rows` layers."""
    wide = width >= WIDE_AT
    header = 1 if width < COMPACT_BELOW else 2
    banner = BANNER_LINES if tour and not wide else 0
    body = max(0, height - header - FOOTER_LINES - banner)
    need = max(1, rows) + HEADER_LINES + (2 if wide else 0)
    heatmap_max = max(0, body - PANELS_MIN)
    if need > heatmap_max:
        # It scrolls whatever it gets: the panels keep a share of a tall screen.
        heatmap_max = body - min(body, max(PANELS_MIN, height // PANELS_SHARE))
    heatmap = min(heatmap_max, need)
    panels = body - heatmap
    return Plan(heatmap_max, heatmap, panels, not wide or panels < STACKED_MIN)


class ScreenRows:
    """Keeps the main screen's rows shared by `plan` as its size and the heatmap's rows change."""

    def __init__(self, heatmap: LayerHeatmap, *, tour: bool) -> None:
        self.heatmap = heatmap
        self.tour = tour
        self.plan: Plan | None = None

    def fit(self, size: Size) -> None:
        """Apply the plan for a screen of `size` (a style change only when the plan changes)."""
        p = plan(size.width, size.height, int(self.heatmap.rows.size), tour=self.tour)
        if p == self.plan:
            return
        self.plan = p
        self.heatmap.styles.max_height = p.heatmap_max
        self.heatmap.screen.set_class(p.charts_in_row, CHARTS_ROW_CLASS)
