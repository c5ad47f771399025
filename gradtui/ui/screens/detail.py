"""Layer detail (Enter on a layer): every statistic's history and the layer's flags."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Sparkline, Static

from gradtui.model.store import LAYER_STATS, STAT_LABELS, RunStore
from gradtui.ui.scale import FLAG_GLYPHS, fmt_value
from gradtui.ui.widgets.alert_log import alert_text

_LINEAR = frozenset({"nonfinite", "zero_frac"})
"""Statistics drawn on a linear scale (counts and fractions); the rest in log10."""


def spark_data(history: np.ndarray, stat: str) -> list[float]:
    """The finite samples of a history, in log10 for norms (a sparkline cannot draw NaN)."""
    h = np.asarray(history, dtype=np.float64)
    if stat in _LINEAR:
        h = np.nan_to_num(h, nan=np.nan, posinf=np.nan)
        return [float(x) for x in h[np.isfinite(h)]]
    h = h[np.isfinite(h) & (h > 0)]
    return [float(x) for x in np.log10(h)]


class LayerDetailScreen(Screen[None]):
    """One layer: its statistics over the held history, its active flags and alerts."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q", "back", "Back", id="detail-back"),
        Binding("j,down", "layer(1)", "Next layer", id="detail-next"),
        Binding("k,up", "layer(-1)", "Prev layer", id="detail-prev"),
    ]

    DEFAULT_CSS = """
    LayerDetailScreen { layout: vertical; }
    LayerDetailScreen #detail-title { height: auto; padding: 0 1; background: $panel; }
    LayerDetailScreen .stat-row { height: 1; }
    LayerDetailScreen .stat-label { width: 12; color: $text-muted; }
    LayerDetailScreen .stat-values { width: 46; }
    LayerDetailScreen Sparkline { width: 1fr; height: 1; }
    LayerDetailScreen #detail-stats { height: auto; padding: 1 1 0 1; }
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
        with Vertical(id="detail-stats"):
            for stat in LAYER_STATS:
                with Horizontal(classes="stat-row"):
                    yield Static(STAT_LABELS.get(stat, stat), classes="stat-label")
                    yield Static("", id=f"values-{stat}", classes="stat-values")
                    yield Sparkline([], id=f"spark-{stat}")
        with VerticalScroll(id="detail-alerts"):
            yield Static(id="detail-alert-list")
        yield Footer()

    def on_mount(self) -> None:
        self._composed = True
        self.refresh_data(force=True)

    def refresh_data(self, force: bool = False) -> None:
        """Redraw from the store if it changed."""
        st = self.store
        if not self._composed or (not force and st.version == self._version):
            return
        self._version = st.version
        if not (0 <= self.layer_index < st.n_layers):
            self.query_one("#detail-title", Static).update("no such layer")
            return
        info = st.layers[self.layer_index]
        flags = st.layer_flags(info.name)
        title = Text()
        title.append(f"{info.name or '(root)'}", style="bold")
        where = f"layer {self.layer_index + 1} of {st.n_layers}"
        title.append(f"  {info.kind} · {info.numel:,} params · {where}", style="dim")
        if flags:
            title.append("  flags: ")
            for kind in flags:
                title.append(f"{FLAG_GLYPHS.get(kind, '?')} {kind}  ", style="bold red")
        else:
            title.append("  no flags", style="green")
        title.append("\nhistory of the last ", style="dim")
        title.append(f"{st.count} sampled steps", style="dim")
        title.append(" (log₁₀ sparklines; j/k: next/previous layer, Esc: back)", style="dim")
        self.query_one("#detail-title", Static).update(title)

        for stat in LAYER_STATS:
            hist = st.layer_history(self.layer_index, stat) if st.count else np.zeros(0)
            latest = st.latest(stat)
            seen = st.latest_step(stat)
            v = float(latest[self.layer_index]) if latest.size else float("nan")
            at = int(seen[self.layer_index]) if seen.size else -1
            fin = hist[np.isfinite(hist)]
            rng = f"{fmt_value(float(fin.min()), 0)}…{fmt_value(float(fin.max()), 0)}" if fin.size else "—"
            text = Text(fmt_value(v if at >= 0 else None), style="bold")
            text.append(f" @{at}" if at >= 0 else "", style="dim")
            text.append(f"  range {rng}  n={fin.size}", style="dim")
            self.query_one(f"#values-{stat}", Static).update(text)
            self.query_one(f"#spark-{stat}", Sparkline).data = spark_data(hist, stat)

        alerts = [a for a in st.alerts if a.layer == info.name][-50:]
        table = Table.grid()
        table.add_column()
        table.add_row(Text("Alerts on this layer", style="bold"))
        if not alerts:
            table.add_row(Text("none so far", style="dim"))
        for a in reversed(alerts):
            line = alert_text(a)
            if a.message:
                line.append(f"  {a.message}", style="dim")
            table.add_row(line)
        self.query_one("#detail-alert-list", Static).update(table)

    def action_back(self) -> None:
        self.dismiss(None)

    def action_layer(self, delta: int) -> None:
        n = self.store.n_layers
        if n:
            self.layer_index = (self.layer_index + delta) % n
            self.refresh_data(force=True)
