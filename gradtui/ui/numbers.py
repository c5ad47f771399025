"""The viewer's one number format.

Rule: a real-valued statistic (a norm, a ratio, |g|, a loss) shows two significant digits
in scientific notation, "6.3e+02", so that magnitudes that span ten decades line up and
compare at a glance; a count is a whole number with thousands separators, "1,234"; a
fraction of values is a percentage, "12%"; zero is "0", and NaN, ±Inf and "unknown" are
spelled "nan", "inf", "-inf" and "—". A unit or the statistic's name goes next to the
number, separated by a space, never glued to it. A run-wide reading shown on its own
(the header's loss and global norm, a chart's latest value) keeps four significant digits,
"7.693", "1.467e+10": one number read, not a column compared (`fmt_reading`).
"""

from __future__ import annotations

import math

from gradtui.model.layer_stats import LAYER_STATS

SIG_DIGITS = 2
"""Significant digits of a real-valued statistic."""

UNKNOWN = "—"


def fmt_sig(value: float | None, digits: int = SIG_DIGITS) -> str:
    """A real-valued statistic: "6.3e+02", "-1.0e-07", "0", "nan", "inf", "—" (None)."""
    if value is None:
        return UNKNOWN
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if value == 0:
        return "0"
    return f"{value:.{max(1, digits) - 1}e}"


def fmt_count(value: float | None) -> str:
    """A count: "0", "1,234", "—" (None or not finite)."""
    if value is None or not math.isfinite(value):
        return UNKNOWN
    return f"{round(value):,}"


def fmt_percent(value: float | None) -> str:
    """A fraction in [0, 1] as a percentage: "0%", "<0.01%", "3.4%", "12%", ">99%", "100%"
    (only exactly none or all read "0%" or "100%": a dead layer must not hide among the nearly dead)."""
    if value is None or math.isnan(value):
        return UNKNOWN
    pct = 100.0 * value
    if pct <= 0 or pct >= 100:
        return f"{pct:.0f}%"
    if pct < 0.01:
        return "<0.01%"
    if pct >= 99:
        return ">99%"
    return f"{pct:.0f}%" if pct >= 10 else f"{pct:.{SIG_DIGITS}g}%"


def fmt_stat(stat: str, value: float | None) -> str:
    """A per-layer statistic of the store in its own format (see `gradtui.model.store.LAYER_STATS`)."""
    spec = LAYER_STATS.get(stat)
    form = spec.form if spec is not None else "sig"
    return fmt_count(value) if form == "count" else fmt_percent(value) if form == "percent" else fmt_sig(value)


def fmt_reading(value: float | None) -> str:
    """A run-wide reading (header, chart title): 4 significant digits, "7.693", "1.467e+10"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return UNKNOWN
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
        return f"{value:.3e}"
    return f"{value:.4g}"
