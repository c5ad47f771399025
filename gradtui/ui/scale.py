"""Colour scales, flag glyphs and number formats shared by the viewer's renderables.

Pure functions over NumPy and Rich styles: no Textual, so the renderables that use
them can be drawn (and tested) on a plain Rich console.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from rich.color import Color
from rich.style import Style

from gradtui.model.detectors import DetectorConfig
from gradtui.model.guard import GUARD_SYMBOLS
from gradtui.model.layer_stats import LAYER_STATS
from gradtui.ui.numbers import fmt_reading as fmt_number  # noqa: F401 - re-exported for the renderables
from gradtui.ui.numbers import fmt_sig

EMPTY = -1
"""Cell code: no value in this column (no gradient, or not computed yet)."""
NONFINITE = -2
"""Cell code: a NaN or Inf in this column."""
NO_SAMPLE = -3
"""Cell code: the run went through this column's steps, but none of them was sampled (per-layer
statistics come every few steps when the stride is above 1): drawn as such, never stretched."""

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
NO_SAMPLE_GLYPH = "╌"
"""A column of steps with no sample: a faint dashed line (time went on, nothing was measured)."""

FLAG_GLYPHS: dict[str, str] = {
    "nonfinite": NONFINITE_GLYPH,
    "exploding": "▲",
    "vanishing": "▼",
    "dead": "○",
    "loss_spike": "^",
}
"""One glyph per flag kind, so that no meaning depends on colour alone (a non-finite flag and a
non-finite heatmap cell or chart column are the same "×")."""
FLAG_WORDS: dict[str, str] = {
    "nonfinite": "non-finite",
    "exploding": "exploding",
    "vanishing": "vanishing",
    "dead": "dead",
    "loss_spike": "loss spike",
}
"""What the screen calls each flag kind (the kinds themselves are wire names, kept off screen)."""
FLAG_MEANINGS: dict[str, str] = {
    "nonfinite": "NaN or Inf in the gradient",
    "exploding": "gradient norm far above its own recent level",
    "vanishing": "gradient far below the largest layer's",
    "dead": "gradient exactly zero (no gradient reaches it)",
    "loss_spike": "the loss jumped (run-wide)",
}
"""What each flag says, in a line (the help screen)."""
GUARD_GLYPHS: dict[str, str] = GUARD_SYMBOLS
"""One glyph per guard action (`GuardAction.action`): the header's guard chip, the log, the report."""
GUARD_WORDS: dict[str, str] = {
    "rollback": "rollback",
    "skip": "skip",
    "clip": "clip",
    "lr_cut": "lr cut",
}
"""What the screen calls each guard action."""
GUARD_MEANINGS: dict[str, str] = {
    "rollback": "the guard restored the last good weights (and cut the learning rate)",
    "skip": "the guard left out a step whose loss or gradients were not finite",
    "clip": "the guard clipped the gradient of a step",
    "lr_cut": "the guard cut the learning rate (with a rollback)",
}
"""What each guard action did, in a line (the help screen)."""
END_WORDS: dict[str, str] = {"ok": "finished", "error": "crashed", "interrupted": "was interrupted"}
"""How a run ended (`RunEnd.status`), after "the run": "ok" says only that its process finished,
not that the run went well, so it is never shown as such."""

PLAIN_ROLES: dict[str, Style] = {
    "muted": Style(dim=True),
    "ok": Style(color="green"),
    "warn": Style(color="yellow"),
    "bad": Style(color="red", bold=True),
    "note": Style(color="cyan"),
    "nonfinite": Style(color="bright_white", bgcolor="magenta", bold=True),
    "exploding": Style(color="red", bold=True),
    "vanishing": Style(color="dodger_blue1", bold=True),
    "dead": Style(color="grey62", bold=True),
    "loss_spike": Style(color="yellow", bold=True),
}
"""The colour roles (`gradtui.ui.widgets.themed.ROLES`: words, and a role per flag kind) on a
plain Rich console, with no theme: `gradtui report`, and text built for a widget drawn elsewhere."""


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
    name: LogScale(*spec.log_range) for name, spec in LAYER_STATS.items() if spec.log_range is not None
}
"""Fixed absolute scales (`gradtui.model.layer_stats`): a vanishing or exploding layer looks the same in every run."""

HEALTH = "health"
"""The heatmap's default view: each cell says whether the layer was healthy at that step."""

HEATMAP_STATS: tuple[str, ...] = (HEALTH, "grad_norm", "mean_abs", "max_abs", "update_ratio")
"""The views the heatmap cycles through (key `s`): health first, then raw magnitudes."""


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

NONFINITE_STYLE = Style(color="#ffffff", bgcolor="#a3169a", bold=True)
"""A magenta on no part of either scale, dark enough for its white "×" to read (AA) in any theme."""
EMPTY_STYLE = Style()
NO_SAMPLE_STYLE = Style(dim=True)


# ------------------------------------------------------------ health view
# A cell of the health view is a level of a diverging scale (calm in the middle, "low"
# below, "high" above) or a flag the detectors raised at that step. Levels never reach
# the flag colours: red and vivid blue mean "the detector says so", nothing less.

HEALTH_SIDE = 4
"""Levels of "low" (and of "high") between healthy and the vanishing (exploding) threshold."""
HEALTH_MID = HEALTH_SIDE
"""Cell code of a healthy cell; codes below are "low", above (up to HEALTH_LEVELS-1) "high"."""
HEALTH_LEVELS = 2 * HEALTH_SIDE + 1
VANISHING_CELL = HEALTH_LEVELS
"""Cell code: the vanishing flag was up at this step."""
EXPLODING_CELL = HEALTH_LEVELS + 1
"""Cell code: the exploding flag was up at this step."""
DEAD_CELL = HEALTH_LEVELS + 2
"""Cell code: the dead flag was up at this step."""
HEALTH_CODES: tuple[int, ...] = tuple(range(DEAD_CELL + 1))

# Chosen so that Rich's downgrades keep the meaning: in 256 colours the calm middle is a
# grey, and in 16 colours (TERM=screen) healthy and mild levels are grey, strong "low" blue,
# strong "high" yellow, flags bright blue and bright red: never red for a healthy run.
_HEALTH_RGB: tuple[tuple[int, int, int], ...] = (
    (20, 62, 160),  # low 4: at the vanishing threshold
    (44, 84, 150),
    (58, 88, 128),
    (64, 80, 100),
    (66, 74, 80),  # healthy
    (100, 88, 66),
    (140, 110, 40),
    (176, 120, 36),
    (206, 124, 36),  # high 4: at the exploding ratio
)
_FLAG_CELL_STYLES: dict[int, Style] = {
    VANISHING_CELL: Style(color="#ffffff", bgcolor="#2e5cff", bold=True),
    EXPLODING_CELL: Style(color="#ffffff", bgcolor="#c62828", bold=True),  # white "▲" at AA contrast
    DEAD_CELL: Style(color="#c8c8c8", bgcolor="#181818", bold=True),
}
HEALTH_STYLES: dict[int, Style] = {
    **{i: Style(bgcolor=Color.from_rgb(*rgb)) for i, rgb in enumerate(_HEALTH_RGB)},
    **_FLAG_CELL_STYLES,
}
"""Style of each health cell code in colour."""
HEALTH_GLYPHS: dict[int, str] = {
    **{i: " " for i in range(HEALTH_LEVELS)},
    VANISHING_CELL: FLAG_GLYPHS["vanishing"],
    EXPLODING_CELL: FLAG_GLYPHS["exploding"],
    DEAD_CELL: FLAG_GLYPHS["dead"],
}
"""Glyph of each health cell code in colour: flagged cells carry their flag's glyph too."""
HEALTH_MONO_GLYPHS: dict[int, str] = {
    **{i: "-" for i in range(HEALTH_MID)},
    HEALTH_MID: "·",
    **{i: "+" for i in range(HEALTH_MID + 1, HEALTH_LEVELS)},
    VANISHING_CELL: FLAG_GLYPHS["vanishing"],
    EXPLODING_CELL: FLAG_GLYPHS["exploding"],
    DEAD_CELL: FLAG_GLYPHS["dead"],
}
"""Glyph of each health cell code without colour (NO_COLOR)."""


@dataclass(frozen=True, slots=True)
class HealthScale:
    """Where a gradient sits between healthy and a detector threshold, as a level of the health view.

    Two log10 distances, each against the reference the detectors judge by. `growth`: the
    norm over the layer's own recent level (exploding is a jump far above a layer's
    history), in units that widen with the layer's own noise as the detectors' z-score
    does. `depth`: the per-parameter RMS under the run's largest layer's at that step
    (vanishing is a depth past a ratio). A healthy run is calm whatever its scale: a
    norm of 50 or of 1e-3 at its usual level is in the middle.
    """

    usual: float
    """Growth (log10) still healthy however steady the layer: the detectors clear an exploding flag within it."""
    high_to: float
    """Growth of the strongest "high" for a steady layer (the exploding ratio)."""
    z_from: float
    """For a noisy layer, "high" starts this many spreads above its level ..."""
    z_to: float
    """... and is strongest at this many (the detectors' z threshold)."""
    low_from: float
    """Depth (log10, negative) where "low" starts: halfway to the vanishing ratio."""
    low_to: float
    """Depth of the strongest "low" (the vanishing ratio)."""

    @classmethod
    def from_config(cls, config: DetectorConfig | None = None) -> HealthScale:
        """The scale of a detector config (the defaults when None)."""
        c = config or DetectorConfig()
        low_to = math.log10(c.vanish_ratio)
        return cls(
            usual=math.log10(c.explode_clear_ratio),
            high_to=math.log10(c.explode_ratio),
            z_from=c.explode_z / 2,
            z_to=c.explode_z,
            low_from=low_to / 2,
            low_to=low_to,
        )

    def levels(self, growth: np.ndarray, spread: np.ndarray, depth: np.ndarray) -> np.ndarray:
        """Level codes (int8, 0..HEALTH_LEVELS-1) of log10 growth (with its spread) and depth; NaN is healthy.

        The larger of the two departures wins; any departure past a start is at least one level.
        """
        with np.errstate(invalid="ignore"):
            start = np.maximum(self.usual, self.z_from * spread)
            full = np.maximum(self.high_to, self.z_to * spread)
            up = (growth - start) / np.maximum(full - start, 1e-9)
            down = (self.low_from - depth) / max(1e-9, self.low_from - self.low_to)
            up_l = np.ceil(np.clip(np.nan_to_num(up, nan=0.0), 0.0, 1.0) * HEALTH_SIDE)
            down_l = np.ceil(np.clip(np.nan_to_num(down, nan=0.0), 0.0, 1.0) * HEALTH_SIDE)
        out: np.ndarray = np.where(up_l >= down_l, HEALTH_MID + up_l, HEALTH_MID - down_l).astype(np.int8)
        return out


def shade_glyph(code: int) -> str:
    """Glyph of a bin when drawing without colour: blank (cold) to full block (hot)."""
    if code == NONFINITE:
        return NONFINITE_GLYPH
    if code == NO_SAMPLE:
        return NO_SAMPLE_GLYPH
    if code < 0:
        return EMPTY_GLYPH
    # Level 0 is a dot rather than blank so a vanished layer is not mistaken for "no data".
    level = min(len(SHADES) - 1, code * len(SHADES) // N_BINS)
    return "." if level == 0 else SHADES[level]


def fmt_value(value: float | None, width: int = 7) -> str:
    """A statistic in a fixed width, by the one rule (`gradtui.ui.numbers.fmt_sig`): "1.2e-03"."""
    return fmt_sig(value).rjust(width)


def fmt_duration(seconds: float) -> str:
    """Elapsed time as H:MM:SS (or M:SS under an hour)."""
    if not math.isfinite(seconds) or seconds < 0:
        return "—"
    s = int(seconds)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def truncate_left(name: str, width: int) -> str:
    """Fit a dotted layer name in `width` cells, keeping its distinguishing tail (one name; a
    column of them goes through `short_names`, which keeps them apart)."""
    if len(name) <= width:
        return name
    if width <= 1:
        return name[-width:] if width > 0 else ""
    return "…" + name[-(width - 1) :]


def short_names(names: Sequence[str], width: int) -> list[str]:
    """Layer names fitted in `width` cells, each keeping its end (`…h.1.attn.c_proj`), and still
    told apart: names that share their last `width - 1` characters keep as much of their start
    as tells them apart (`a.…attn.c_proj`, `b.…attn.c_proj`). The one rule for a column of layer
    names, in the viewer's heatmap and in `gradtui report`."""
    out = [truncate_left(name, width) for name in names]
    groups: dict[str, list[int]] = {}
    for i, short in enumerate(out):
        groups.setdefault(short, []).append(i)
    for rows in groups.values():
        if len({names[i] for i in rows}) < 2 or width < 3:
            continue
        for head in range(1, width - 1):
            tail = width - 1 - head
            tried = [names[i][:head] + "…" + (names[i][-tail:] if tail else "") for i in rows]
            if len(set(tried)) == len({names[i] for i in rows}):
                for i, text in zip(rows, tried, strict=True):
                    out[i] = text
                break
    return out
