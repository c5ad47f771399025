"""Layer detail (Enter on a layer): every statistic's history, the histogram of the layer's
gradient values, and the layer's flags and alerts."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
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
from gradtui.ui.captures import captured, origin_text
from gradtui.ui.numbers import fmt_stat
from gradtui.ui.renderables.columns import NONFINITE_COUNT
from gradtui.ui.renderables.detail_charts import (
    ZERO_GLYPH,
    DetailStyles,
    HistogramChart,
    HistoryChart,
    StepLabels,
)
from gradtui.ui.scale import FLAG_GLYPHS, FLAG_WORDS, NONFINITE_GLYPH, NONFINITE_STYLE
from gradtui.ui.widgets.alert_log import alert_text
from gradtui.ui.widgets.themed import ROLE_CLASSES, Look, role_css

_LINEAR = frozenset(name for name, spec in LAYER_STATS.items() if spec.form != "sig")
"""Statistics drawn on a linear scale (counts and fractions); the rest in log10."""

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

    COMPONENT_CLASSES: ClassVar[set[str]] = {"detail--bar", "detail--zero", "detail--axis", *ROLE_CLASSES}

    DEFAULT_CSS = role_css("LayerDetailScreen") + """
    LayerDetailScreen { layout: vertical; }
    LayerDetailScreen > .detail--bar { color: $accent; }
    LayerDetailScreen > .detail--zero { color: $text-muted; text-style: bold; }
    LayerDetailScreen > .detail--axis { color: $text-muted; }
    LayerDetailScreen #detail-title { height: auto; padding: 0 1; background: $panel; }
    LayerDetailScreen #detail-body { height: auto; }
    LayerDetailScreen.-detail-narrow #detail-body { layout: vertical; }
    LayerDetailScreen.-detail-wide #detail-body { layout: horizontal; }
    LayerDetailScreen #detail-stats { width: 1fr; height: auto; padding: 1 1 0 1; }
    LayerDetailScreen .stat-row { height: auto; }
    LayerDetailScreen .stat-label { width: 13; color: $text-muted; }
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
        self.look = Look(self)
        self.store = store
        self.layer_index = layer
        self._version = -1
        self._composed = False

    def compose(self) -> ComposeResult:
        yield Static(id="detail-title")
        with Horizontal(id="detail-body"):
            with Vertical(id="detail-stats"):
                for stat in LAYER_STATS:
                    with Horizontal(classes="stat-row", id=f"row-{stat}"):
                        yield Static(STAT_LABELS.get(stat, stat), classes="stat-label")
                        yield Static("", id=f"values-{stat}", classes="stat-values")
                        yield Static("", id=f"spark-{stat}", classes="stat-history")
                # The steps under every history above (they share one axis).
                with Horizontal(classes="stat-row"):
                    yield Static("", classes="stat-label")
                    yield Static("", classes="stat-values")
                    yield Static("", id="spark-axis", classes="stat-history")
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

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self.look.forget()

    def _styles(self) -> DetailStyles:
        part = self.look.part
        return DetailStyles(
            bar=part("detail--bar"),
            zero=part("detail--zero"),
            nonfinite=NONFINITE_STYLE,
            axis=part("detail--axis"),
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
        steps = st.steps() if st.count else np.zeros(0, np.int64)
        span = (int(steps[0]), max(int(steps[-1]), st.last_step)) if steps.size else (0, 0)
        layer = self.layer_index
        # NaN where the layer's gradients held NaN/Inf is a value gone bad (×); elsewhere, not measured.
        went_bad = st.layer_history(layer, "nonfinite") > 0 if st.count else np.zeros(0, bool)
        measured = self._detail_steps(steps.size)
        for stat, spec in LAYER_STATS.items():
            if spec.when == "capture":
                # A capture's row once a capture measured it: none in a run without one, no moments
                # for an optimizer that keeps none, rather than a page of empty rows.
                shown = captured(st, stat)
                self.query_one(f"#row-{stat}").display = shown
                if not shown:
                    continue
            hist = st.layer_history(layer, stat) if st.count else np.zeros(0)
            self.query_one(f"#values-{stat}", Static).update(self._values(stat, hist))
            at = measured if spec.when != "sampled" else True
            bad = went_bad & at & np.isnan(hist)
            if spec.when == "capture":  # an activation's output went NaN/Inf, not its gradient
                count = NONFINITE_COUNT.get(stat)
                bad = st.layer_history(layer, count) > 0 if count else np.zeros(hist.shape, bool)
            chart = HistoryChart(
                hist, steps=steps, span=span, log=stat not in _LINEAR, height=spark_rows, bad=bad, styles=styles
            )
            self.query_one(f"#spark-{stat}", Static).update(chart)
        self.query_one("#spark-axis", Static).update(StepLabels(span, style=styles.axis))
        self._histogram(styles, hist_rows)
        self._alerts()

    def _detail_steps(self, n: int) -> np.ndarray:
        """Which of the `n` sampled steps held measured the statistics of detail steps: this
        layer has one of them, or another layer its zero fraction (this layer's may all be NaN)."""
        st = self.store
        out = np.zeros(n, bool)
        if n == 0:
            return out
        for stat, spec in LAYER_STATS.items():
            if spec.when in ("detail", "update"):
                out |= ~np.isnan(st.layer_history(self.layer_index, stat))
        out |= ~np.isnan(st.window("zero_frac")).all(axis=1)
        return out

    def _title(self, styles: DetailStyles) -> Text:
        st = self.store
        info = st.layers[self.layer_index]
        flags = st.layer_flags(info.name)
        title = Text()
        title.append(f"{info.name or '(root)'}", style="bold")
        where = f"layer {self.layer_index + 1} of {st.n_layers}"
        title.append(f"  {info.kind} · {info.numel:,} params · {where}", style="muted")
        latest = st.latest("grad_norm")
        now = float(latest[self.layer_index]) if latest.size else float("nan")
        if flags:
            title.append("  flags:")
            for kind in flags:
                # The gap unstyled: under NO_COLOR each flag is a reversed chip of its own.
                title.append(" ").append(f"{FLAG_GLYPHS.get(kind, '?')} {FLAG_WORDS.get(kind, kind)}", style=kind)
        elif now == 0:
            # The dead flag waits for several samples; a zero gradient is news at once.
            title.append(f"  {FLAG_GLYPHS['dead']} ‖g‖ is exactly 0: no gradient reaches this layer", style="bold")
        else:
            title.append("  no flags", style="ok")
        scale = "log₁₀ scale (counts and fractions linear)"
        title.append(f"\nsteps {self._span_words()} as sampled, {scale}", style="muted")
        title.append(" · ", style="muted").append(ZERO_GLYPH, style=styles.zero)
        title.append(" exactly 0 · ", style="muted")
        title.append(NONFINITE_GLYPH, style=styles.nonfinite)
        title.append(f" {FLAG_WORDS['nonfinite']} · j/k: next/previous layer · Esc: back", style="muted")
        return self.look.ink(title)

    def _span_words(self) -> str:
        """The steps the histories span: "0–412"."""
        st = self.store
        return f"{int(st.steps()[0])}–{max(st.last_step, 0)}" if st.count else "—"

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
        for origin in st.origins[-3:]:
            # Where the run broke, on every layer's page: this layer's NaN may have come from there.
            line = origin_text(origin)
            if origin.module == name or origin.layer == self.layer_index:
                line.append("  (this layer)", style="bold")
            table.add_row(self.look.ink(line))
        table.add_row(Text("Alerts on this layer", style="bold"))
        if not alerts:
            table.add_row(Text("none so far", style="dim"))
        for a in reversed(alerts):
            table.add_row(alert_text(a, layer=False, roles=self.look.roles))
        kinds = {kind for (layer, kind) in st.active_flags if layer == name}
        for tip in suggestions(store_facts(st)) if kinds else []:
            if tip["kind"] in kinds and name in tip["layers"]:
                table.add_row(Text(f"What to change ({FLAG_WORDS.get(tip['kind'], tip['kind'])})", style="bold"))
                table.add_row(Text(f"cause: {tip['cause']}"))
                table.add_row(self.look.ink(Text(f"cure: {tip['cure']}", style="ok")))
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
