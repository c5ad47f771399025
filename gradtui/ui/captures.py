"""Deep captures in the viewer: which heatmap views a capture adds, where captures ran, and
their lines in the alert log.

A capture (`gradtui.model.events.Capture`, armed by trouble, by `mon.capture()` or by the
viewer's key) measures each layer's forward output and the optimizer's moments for a few
steps, and names the first module to produce a NaN or Inf (`NonFiniteOrigin`). Pure
functions over the `RunStore` and Rich text: the app, the heatmap and the layer page read
them.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from rich.text import Text

from gradtui.model.events import Capture, NonFiniteOrigin
from gradtui.model.store import RunStore
from gradtui.ui.scale import HEATMAP_STATS, NONFINITE_GLYPH

CAPTURE_VIEWS: tuple[str, ...] = ("act_rms", "act_max", "opt_m1", "opt_m2")
"""The heatmap views `s` adds once a capture measured them: activation rms and max, the optimizer's moments."""
CAPTURE_GLYPH = "━"
"""Drawn on the heatmap's step axis over the steps a capture ran (and in the legend, "━ capture")."""
CAPTURE_WORD = "capture"


class CaptureSpan(NamedTuple):
    """The steps a capture ran: `first` to `last`, both included."""

    first: int
    last: int


def captured(store: RunStore, stat: str) -> bool:
    """Whether a capture measured `stat` on some layer (a finite value came): `s` offers its view and
    the layer page its row only then."""
    latest = store.latest(stat)
    return bool(latest.size) and bool(np.isfinite(latest).any())


def stat_cycle(store: RunStore) -> tuple[str, ...]:
    """The views `s` cycles through: the usual ones, then each capture view a capture measured
    (an optimizer that keeps no moments adds none of its rows)."""
    return HEATMAP_STATS + tuple(stat for stat in CAPTURE_VIEWS if captured(store, stat))


def next_stat(store: RunStore, current: str) -> str:
    """The view after `current` (back to the first after the last; the first when `current` is not offered)."""
    views = stat_cycle(store)
    i = views.index(current) if current in views else -1
    return views[(i + 1) % len(views)]


def capture_spans(store: RunStore) -> tuple[CaptureSpan, ...]:
    """The steps each capture ran, oldest first: an armed one pairs with its `ended` entry, and
    one still running reaches the newest step seen (at most its `steps`)."""
    out: list[CaptureSpan] = []
    open_: list[Capture] = []
    for ev in store.captures:
        if not ev.ended:
            open_.append(ev)
            continue
        match = next((c for c in open_ if c.start == ev.start), None)
        if match is not None:
            open_.remove(match)
        out.append(CaptureSpan(ev.start, max(ev.start, ev.step)))
    for ev in open_:
        last = min(ev.start + max(1, ev.steps) - 1, max(store.last_step, ev.start))
        out.append(CaptureSpan(ev.start, last))
    return tuple(sorted(out))


def log_text(ev: Capture | NonFiniteOrigin) -> Text:
    """The alert log's line for a capture (armed or ended) or for the origin it found."""
    return capture_text(ev) if isinstance(ev, Capture) else origin_text(ev)


def capture_text(ev: Capture) -> Text:
    """A capture's line in the alert log: "step 140 ━ capture armed for 32 steps: <why>", "... ended"."""
    t = Text().append(f"step {ev.step} ", style="muted")
    t.append(f"{CAPTURE_GLYPH} {CAPTURE_WORD} ", style="bold note")
    if ev.ended:
        t.append(f"ended (steps {ev.start}-{ev.step})", style="note")
    else:
        t.append(f"armed for {ev.steps} steps", style="note")
        if ev.reason:
            t.append(f": {ev.reason}")
    return t


def origin_text(ev: NonFiniteOrigin) -> Text:
    """Where the run broke, in the log and on the layer page: "× first non-finite: h.3.attn forward
    output, step 152, Inf; its input max 3.4e+38" (`NonFiniteOrigin.words`, the one wording)."""
    t = Text().append(NONFINITE_GLYPH, style="nonfinite")
    t.append(" " + ev.words(), style="bold")
    if ev.how == "rerun":
        t.append(" (found by re-running the step)", style="muted")
    return t
