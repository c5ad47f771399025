"""Which views a timer tick redraws: all that changed, unless drawing them all is slow.

A frame's cost is mostly the heatmap and the panels below it (the charts and the alert
log): what they compute, and the lines the compositor then repaints for them. When the
two together took longer than `BUDGET_S` at their last redraws, the timer's ticks let them
take turns (the heatmap on one tick, the panels on the next), so no tick does all the
drawing and a keypress never waits behind a long frame; each still redraws five times a
second at 10 Hz. Calls that are not the timer's (a key, a test's poll) redraw everything
that changed at once.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

BUDGET_S = 0.004
"""Seconds (wall time) the heatmap and the panels may take together before ticks take turns.
At 200x60 their redraw is about a third of a frame (the compositor's repaint of the
lines they change is most of the rest): past 4 ms a frame passes about 12 ms."""

VIEWS: tuple[str, ...] = ("heatmap", "panels")


class Pacer:
    """Tracks which views are stale and what each cost at its last redraw."""

    def __init__(self, budget_s: float = BUDGET_S) -> None:
        self.budget_s = budget_s
        self.cost = dict.fromkeys(VIEWS, 0.0)
        self.stale: set[str] = set()
        self._turn = 0

    def due(self, changed: bool, paced: bool) -> set[str]:
        """The views to redraw now; `changed`: new data since the last call, `paced`: a timer tick."""
        if changed:
            self.stale = set(VIEWS)
        todo = set(self.stale)
        if paced and len(todo) > 1 and sum(self.cost.values()) > self.budget_s:
            todo = {VIEWS[self._turn % len(VIEWS)]}
            self._turn += 1
        self.stale -= todo
        return todo

    @contextmanager
    def timing(self, view: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.cost[view] = time.perf_counter() - t0


__all__ = ["BUDGET_S", "VIEWS", "Pacer"]
