"""Colour scales, flag glyphs and number formats shared by the viewer's renderables.

Pure functions over NumPy and Rich styles: no Textual, so the renderables that use
them can be drawn (and tested) on a plain Rich console.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from rich.color import Color
from rich.style import Style

EMPTY = -1
"""Cell code: no value in this column (no gradient, or not computed yet)."""
NONFINITE = -2
"""Cell code: a NaN or Inf in this column."""

N_BINS = 24
"""Colour levels of the heatmap; enough to read a decade apart, few enough to merge runs."""

# Cold (vanishing) through teal/green (healthy) to hot (exploding). Non-finite cells use
# magenta, which is on no part of this scale, plus their own glyph.
_STOPS: tuple[tuple[float, tuple[int, int, int]], ...] = (
    (0.00, (8, 16, 72)),
    (0.18, (24, 72, 170)),
    (0.36, (40, 150, 200)),
    (0.52, (70, 170, 120)),
    (0.64, (150, 200, 80)),
    (0.76, (250, 210, 60)),
    (0.88, (245, 110, 40)),
    (1.00, (215, 20, 30)),
)

SHADES = " ░▒▓█"
"""Cell glyphs by level when there is no colour (NO_COLOR): meaning must survive."""

NONFINITE_GLYPH = "×"
EMPTY_GLYPH = " "

FLAG_GLYPHS: dict[str, str] = {
    "nonfinite": "!",
    "exploding": "▲",
    "vanishing": "▼",
    "dead": "○",
    "loss_spike": "^",
}
"""One glyph per flag kind, so that no meaning depends on colour alone."""

FLAG_COLORS: dict[str, str] = {
    "nonfinite": "bold bright_white on magenta",
    "exploding": "bold red",
    "vanishing": "bold dodger_blue1",
    "dead": "bold grey62",
    "loss_spike": "bold yellow",
}


@dataclass(frozen=True, slots=True)
class LogScale:
    """A log10 range mapped onto the colour bins: values at or below `lo` are coldest."""

    lo: float
    """log10 of the coldest value."""
    hi: float
    """log10 of the hottest value."""

    def codes(self, values: np.ndarray) -> np.ndarray:
        """Bin codes (int16) for values: 0..N_BINS-1, EMPTY for NaN, NONFINITE for +-Inf.

        Zero maps to the coldest bin: a zero gradient has vanished completely.
        """
        v = np.asarray(values, dtype=np.float64)
        out = np.full(v.shape, EMPTY, np.int16)
        finite = np.isfinite(v)
        with np.errstate(divide="ignore", invalid="ignore"):
            logs = np.log10(np.abs(np.where(finite, v, 1.0)))
        pos = (logs - self.lo) / (self.hi - self.lo)
        pos = np.where(np.isneginf(logs), 0.0, pos)
        b = np.clip(np.floor(pos * N_BINS), 0, N_BINS - 1).astype(np.int16)
        out[finite] = b[finite]
        out[np.isinf(v)] = NONFINITE
        return out

    def value_at(self, code: int) -> float:
        """The lower edge value of a bin (for legends)."""
        return float(10 ** (self.lo + (self.hi - self.lo) * code / N_BINS))


STAT_SCALES: dict[str, LogScale] = {
    "grad_norm": LogScale(-7.0, 3.0),
    "mean_abs": LogScale(-9.0, 1.0),
    "max_abs": LogScale(-8.0, 2.0),
    "update_ratio": LogScale(-7.0, 1.0),
    "weight_norm": LogScale(-3.0, 3.0),
    "zero_frac": LogScale(-4.0, 0.0),
}
"""Fixed absolute scales: a vanishing or exploding layer looks the same in every run."""

HEATMAP_STATS: tuple[str, ...] = ("grad_norm", "mean_abs", "max_abs", "update_ratio")
"""The statistics the heatmap cycles through (key `s`)."""


def _lerp(a: tuple[int, int, int], b: tuple[int, int, int], t: float) -> tuple[int, int, int]:
    return (
        round(a[0] + (b[0] - a[0]) * t),
        round(a[1] + (b[1] - a[1]) * t),
        round(a[2] + (b[2] - a[2]) * t),
    )


def palette_rgb(n: int = N_BINS) -> list[tuple[int, int, int]]:
    """The colour of each bin, interpolated between the scale's stops."""
    out = []
    for i in range(n):
        x = (i + 0.5) / n
        for (x0, c0), (x1, c1) in zip(_STOPS, _STOPS[1:], strict=False):
            if x0 <= x <= x1:
                out.append(_lerp(c0, c1, (x - x0) / (x1 - x0)))
                break
    return out


PALETTE: tuple[Style, ...] = tuple(Style(bgcolor=Color.from_rgb(*rgb)) for rgb in palette_rgb())
"""Background style of each colour bin."""

NONFINITE_STYLE = Style(color="bright_white", bgcolor="magenta", bold=True)
EMPTY_STYLE = Style()


def shade_glyph(code: int) -> str:
    """Glyph of a bin when drawing without colour: blank (cold) to full block (hot)."""
    if code == NONFINITE:
        return NONFINITE_GLYPH
    if code < 0:
        return EMPTY_GLYPH
    # Level 0 is a dot rather than blank so a vanished layer is not mistaken for "no data".
    level = min(len(SHADES) - 1, code * len(SHADES) // N_BINS)
    return "." if level == 0 else SHADES[level]


def fmt_value(value: float | None, width: int = 7) -> str:
    """A statistic in a fixed width: "1.2e-03", "nan", "inf", or "—" when unknown."""
    if value is None:
        return "—".rjust(width)
    if math.isnan(value):
        return "nan".rjust(width)
    if math.isinf(value):
        return ("inf" if value > 0 else "-inf").rjust(width)
    if value == 0:
        return "0".rjust(width)
    return f"{value:.1e}".rjust(width)


def fmt_number(value: float | None) -> str:
    """A run-wide number for the header: 4 significant digits, NaN/Inf spelled out."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
        return f"{value:.3e}"
    return f"{value:.4g}"


def fmt_duration(seconds: float) -> str:
    """Elapsed time as H:MM:SS (or M:SS under an hour)."""
    if not math.isfinite(seconds) or seconds < 0:
        return "—"
    s = int(seconds)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def truncate_left(name: str, width: int) -> str:
    """Fit a dotted layer name in `width` cells, keeping its distinguishing tail."""
    if len(name) <= width:
        return name
    if width <= 1:
        return name[-width:] if width > 0 else ""
    return "…" + name[-(width - 1) :]
