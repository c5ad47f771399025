"""Layer detail (Enter on a layer): every statistic's history, the histogram of the layer's
gradient values, and the layer's flags and alerts."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from rich.style import Style
from rich.table import Table
from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Static

from gradtui.model.advice import store_facts, suggestions
from gradtui.model.store import LAYER_STATS, STAT_LABELS, RunStore
from gradtui.ui.numbers import fmt_stat
from gradtui.ui.renderables.detail_charts import (
    NONFINITE_GLYPH,
    ZERO_GLYPH,
    DetailStyles,
    HistogramChart,
    HistoryChart,
)
from gradtui.ui.scale import FLAG_COLORS, FLAG_GLYPHS
from gradtui.ui.widgets.alert_log import alert_text

_LINEAR = frozenset({"nonfinite", "zero_frac"})
"""Statistics drawn on a linear scale (counts and fractions); the rest in log10."""
_GO_BAD = frozenset({"grad_norm", "mean_abs", "max_abs"})
"""Statistics that turn NaN when the layer's gradients hold NaN/Inf (drawn ×, not as gaps)."""
_EVERY_STEP = frozenset({"grad_norm", "nonfinite"})
"""Statistics of every sampled step; the others come on detail steps only, and their
history is drawn from the steps that have them (a gap between two is no news)."""

_LAYER = Binding.Group("layer", compact=True)

FOOTER_KEYS_AT = 100
"""Narrower than this, the page's own keys leave the footer (its title names them), so that
the footer still fits the keys of the run."""


class LayerDetailScreen(Screen[None]):
    """One layer: its statistics over the held history, its latest histogram of log2|g|,
    its active flags and alerts."""

    # Each key twice: shown in the footer when it is wide enough (the last argument 1), else
    # the same action from a binding the footer leaves out (see `check_action`).
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q", "back(1)", "back", id="detail-back"),
        Binding("j,down", "layer(1, 1)", "next", group=_LAYER, tooltip="Next layer", id="detail-next"),
        Binding("k,up", "layer(-1, 1)", "prev", group=_LAYER, tooltip="Previous layer", id="detail-prev"),
        Binding("escape,q", "back(0)", "back", show=False, id="detail-back-narrow"),
        Binding("j,down", "layer(1, 0)", "next", show=False, id="detail-next-narrow"),
        Binding("k,up", "layer(-1, 0)", "prev", show=False, id="detail-prev-narrow"),
        # The heatmap's keys, on a page without the heatmap: say so instead of acting unseen.
        Binding("s", "heatmap_key('s', 'picks the heatmap statistic')", "stat", show=False, id="detail-stat"),
        Binding("o", "heatmap_key('o', 'switches the log panel')", "output", show=False, id="detail-output"),
    ]

    HORIZONTAL_BREAKPOINTS = [(0, "-detail-narrow"), (110, "-detail-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-detail-short"), (36, "-detail-tall")]

    COMPONENT_CLASSES: ClassVar[set[str]] = {"detail--bar", "detail--zero", "detail--bad", "detail--axis"}

    DEFAULT_CSS = """
    LayerDetailScreen { layout: vertical; }
    LayerDetailScreen > .detail--bar { color: $accent; }
    LayerDetailScreen > .detail--zero { color: $text-muted; text-style: bold; }
    LayerDetailScreen > .detail--bad { color: $text; background: magenta; text-style: bold; }
    LayerDetailScreen > .detail--axis { color: $text-muted; }
    LayerDetailScreen #detail-title { height: auto; padding: 0 1; background: $panel; }
    LayerDetailScreen #detail-body { height: auto; }
    LayerDetailScreen.-detail-narrow #detail-body { layout: vertical; }
    LayerDetailScreen.-detail-wide #detail-body { layout: horizontal; }
    LayerDetailScreen #detail-stats { width: 1fr; height: auto; padding: 1 1 0 1; }
    LayerDetailScreen .stat-row { height: auto; }
    LayerDetailScreen .stat-label { width: 11; color: $text-muted; }
    LayerDetailScreen .stat-values { width: 34; }
    LayerDetailScreen .stat-history { width: 1fr; height: auto; }
    LayerDetailScreen #detail-hist {
        height: auto;
        border: round $primary-muted;
        border-title-color: $text;
        padding: 0 1;
    }
    LayerDetailScreen.-detail-wide #detail-hist { width: 42%; min-width: 44; max-width: 84; margin: 1 1 0 0; }
    LayerDetailScreen.-detail-narrow #detail-hist { width: 1fr; margin: 0 1; }
    LayerDetailScreen #detail-alerts { height: 1fr; padding: 1 1 0 1; }
    """

    def __init__(self, store: RunStore, layer: int) -> None:
        super().__init__()
        self.store = store
        self.layer_index = layer
        self._version = -1
        self._composed = False

    def compose(self) -> ComposeResult:
        yield Static(id="detail-title")
        with Horizontal(id="detail-body"):
            with Vertical(id="detail-stats"):
                for stat in LAYER_STATS:
                    with Horizontal(classes="stat-row"):
                        yield Static(STAT_LABELS.get(stat, stat), classes="stat-label")
                        yield Static("", id=f"values-{stat}", classes="stat-values")
                        yield Static("", id=f"spark-{stat}", classes="stat-history")
            yield Static(id="detail-hist")
        with VerticalScroll(id="detail-alerts"):
            yield Static(id="detail-alert-list")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self._composed = True
        self.refresh_data(force=True)

    def on_resize(self, event: events.Resize) -> None:
        self.refresh_data(force=True)
        self.refresh_bindings()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("back", "layer") and parameters and parameters[-1] == 1:
            return self.size.width >= FOOTER_KEYS_AT
        return True

    def _styles(self) -> DetailStyles:
        get = self.get_component_rich_style
        bad = get("detail--bad", partial=True)
        return DetailStyles(
            bar=get("detail--bar", partial=True),
            zero=get("detail--zero", partial=True),
            nonfinite=bad if bad.bgcolor is not None else Style(reverse=True, bold=True),
            axis=get("detail--axis", partial=True),
        )

    def _rows(self) -> tuple[int, int]:
        """(rows of each statistic's history, rows of the histogram) for the screen's height."""
        tall = self.size.height >= 36
        return (2 if tall else 1), (12 if self.size.height >= 48 else 9 if tall else 7)

    def refresh_data(self, force: bool = False) -> None:
        """Redraw from the store if it changed."""
        st = self.store
        if not self._composed or (not force and st.version == self._version):
            return
        self._version = st.version
        if not (0 <= self.layer_index < st.n_layers):
            self.query_one("#detail-title", Static).update("no such layer")
            return
        styles = self._styles()
        spark_rows, hist_rows = self._rows()
        self.query_one("#detail-title", Static).update(self._title(styles))
        bad = st.layer_history(self.layer_index, "nonfinite") > 0 if st.count else np.zeros(0, bool)
        # The weight norm is finite on every detail step, whatever the gradients hold.
        detail_step = ~np.isnan(st.layer_history(self.layer_index, "weight_norm")) if st.count else bad
        for stat in LAYER_STATS:
            hist = st.layer_history(self.layer_index, stat) if st.count else np.zeros(0)
            self.query_one(f"#values-{stat}", Static).update(self._values(stat, hist))
            went_bad = bad if stat in _GO_BAD else None
            if stat not in _EVERY_STEP:
                keep = detail_step | ~np.isnan(hist)
                hist = hist[keep]
                went_bad = went_bad[keep] & detail_step[keep] if went_bad is not None else None
            chart = HistoryChart(hist, log=stat not in _LINEAR, height=spark_rows, bad=went_bad, styles=styles)
            self.query_one(f"#spark-{stat}", Static).update(chart)
        self._histogram(styles, hist_rows)
        self._alerts()

    def _title(self, styles: DetailStyles) -> Text:
        st = self.store
        info = st.layers[self.layer_index]
        flags = st.layer_flags(info.name)
        title = Text()
        title.append(f"{info.name or '(root)'}", style="bold")
        where = f"layer {self.layer_index + 1} of {st.n_layers}"
        title.append(f"  {info.kind} · {info.numel:,} params · {where}", style="dim")
        latest = st.latest("grad_norm")
        now = float(latest[self.layer_index]) if latest.size else float("nan")
        if flags:
            title.append("  flags:")
            for kind in flags:
                title.append(f" {FLAG_GLYPHS.get(kind, '?')} {kind}", style=FLAG_COLORS.get(kind, "bold red"))
        elif now == 0:
            # The dead flag waits for several samples; a zero gradient is news at once.
            title.append(f"  {FLAG_GLYPHS['dead']} ‖g‖ is exactly 0: no gradient reaches this layer", style="bold")
        else:
            title.append("  no flags", style="green")
        title.append(f"\nhistory of the last {st.count} sampled steps, log₁₀ scale", style="dim")
        title.append(f" · {ZERO_GLYPH}", style=styles.zero)
        title.append(" exactly 0 · ", style="dim")
        title.append(NONFINITE_GLYPH, style=styles.nonfinite)
        title.append(" NaN/Inf · j/k: next/previous layer · Esc: back", style="dim")
        return title

    def _values(self, stat: str, hist: np.ndarray) -> Text:
        st = self.store
        latest, seen = st.latest(stat), st.latest_step(stat)
        v = float(latest[self.layer_index]) if latest.size else float("nan")
        at = int(seen[self.layer_index]) if seen.size else -1
        fin = hist[np.isfinite(hist)]
        text = Text(fmt_stat(stat, v if at >= 0 else None), style="bold")
        text.append(f" @{at}" if at >= 0 else "", style="dim")
        if fin.size:
            text.append(f"  {fmt_stat(stat, float(fin.min()))} … {fmt_stat(stat, float(fin.max()))}", style="dim")
        return text

    def _histogram(self, styles: DetailStyles, rows: int) -> None:
        panel = self.query_one("#detail-hist", Static)
        latest = self.store.latest_hist(self.layer_index)
        counts, step = latest if latest is not None else (None, -1)
        panel.border_title = "gradient values, log₂|g|" + (f" at step {step}" if step >= 0 else "")
        panel.update(HistogramChart(counts, height=rows, styles=styles))

    def _alerts(self) -> None:
        st = self.store
        name = st.layers[self.layer_index].name
        alerts = [a for a in st.alerts if a.layer == name][-50:]
        table = Table.grid()
        table.add_column()
        table.add_row(Text("Alerts on this layer", style="bold"))
        if not alerts:
            table.add_row(Text("none so far", style="dim"))
        for a in reversed(alerts):
            table.add_row(alert_text(a, layer=False))
        kinds = {kind for (layer, kind) in st.active_flags if layer == name}
        for tip in suggestions(store_facts(st)) if kinds else []:
            if tip["kind"] in kinds and name in tip["layers"]:
                table.add_row(Text(f"What to change ({tip['kind']})", style="bold"))
                table.add_row(Text(f"cause: {tip['cause']}"))
                table.add_row(Text(f"cure: {tip['cure']}", style="green"))
        self.query_one("#detail-alert-list", Static).update(table)

    def action_back(self, _shown: int = 1) -> None:
        self.dismiss(None)

    def action_layer(self, delta: int, _shown: int = 1) -> None:
        n = self.store.n_layers
        if n:
            self.layer_index = (self.layer_index + delta) % n
            self.refresh_data(force=True)

    def action_heatmap_key(self, key: str, what: str) -> None:
        self.notify(f"{key} {what}: Esc returns to the heatmap", timeout=3)
