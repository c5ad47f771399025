"""Train a tour chapter as `gradtui demo` does and fold its events into the viewer's store."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

import gradtui
from gradtui.demo.scenarios import get
from gradtui.model.commands import Command
from gradtui.model.events import Alert
from gradtui.model.store import RunStore
from gradtui.sources.base import Source


@dataclass
class Watched:
    """What the viewer holds once a chapter's run is over: its store, and the losses the loop saw."""

    store: RunStore
    losses: list[float] = field(default_factory=list)

    def series(self, name: str) -> np.ndarray:
        """A run-wide series the charts draw ("loss", "global_norm", "lr", ...), oldest first."""
        return np.asarray(self.store.series(name), np.float64)

    def norms(self) -> np.ndarray:
        """Per-layer gradient norms as the heatmap draws them: [layers, steps]."""
        return np.asarray(self.store.window("grad_norm"), np.float64).T

    def layer(self, name: str) -> int:
        return [info.name for info in self.store.layers].index(name)

    def raised(self, *kinds: str) -> list[Alert]:
        """Flags raised during the run (of `kinds`, or all)."""
        return [a for a in self.store.alerts if a.active and (not kinds or a.kind in kinds)]

    def flagged(self, kind: str) -> set[str | None]:
        """Units flagged `kind` at the end: the rows the heatmap marks (None: the run as a whole)."""
        return {layer for (layer, k) in self.store.active_flags if k == kind}

    def mean_loss(self, last: int) -> float:
        return float(np.mean(self.losses[-last:]))


Keys = Callable[[int, Watched, Source], Command | None]
"""Called after each step with (step, what the viewer holds so far, its source): a command to send, or None."""


def watch_chapter(
    name: str, steps: int, keys: Keys | None = None, *, stop_after_nonfinite: int | None = None
) -> Watched:
    """Train `name` like the demo worker (its lanes, scheduler and watch options), unpaced, and
    fold every event into a `RunStore` through the viewer's own source, as the viewer does.

    Args:
        name: The chapter's scenario.
        steps: Steps to train (fewer than the chapter's own where its claims show sooner).
        keys: A user at the keys: commands go back through the source.
        stop_after_nonfinite: Stop this many steps after the first non-finite loss.
    """
    scenario = get(name)
    run = scenario.build(0, "cpu")
    # As the worker: the tour's stories are told step by step (every=1), the same on any machine.
    options = {"every": 1, **scenario.watch_options}
    mon = gradtui.watch(
        run.model, run.optimizer, queue=100_000, serve=False, lanes=run.lanes, scheduler=run.scheduler, **options
    )
    run.use_monitor_lanes(mon.lane)
    source = mon.source()
    out = Watched(RunStore())
    left: int | None = None
    with mon:
        for step in range(steps):
            out.losses.append(run.train_step(mon))
            for event in source.poll():
                out.store.apply(event)
            if keys is not None and (cmd := keys(step, out, source)) is not None:
                assert source.send(cmd) is None
            if stop_after_nonfinite is not None:
                if left is None and not math.isfinite(out.losses[-1]):
                    left = stop_after_nonfinite
                elif left is not None:
                    left -= 1
                    if left == 0:
                        break
    for event in source.poll():
        out.store.apply(event)
    assert out.store.dropped_total == 0 and out.store.total_steps == len(out.losses)
    return out
