"""The heatmap's health view, judged once per step as a run streams in.

A health cell compares a layer's gradient with what the detectors compare it with: its
own recent history (exploding is a norm far above it) and the run's largest layer at the
same step (vanishing is a per-parameter RMS far below it). `HealthIndex` follows one
`RunStore`: it judges each new step once, into a ring of levels beside the store's, and
keeps the span of steps each flag was up. It reads only what arrived since it last
looked, so a frame costs the new steps, not the whole history.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gradtui.model.events import Alert, RunStart
from gradtui.model.store import RunStore
from gradtui.ui.scale import DEAD_CELL, EMPTY, EXPLODING_CELL, VANISHING_CELL, HealthScale

MEMORY = 32
"""Samples a layer's recent level remembers (an exponential average; the detectors' window)."""
_SIGMA_PER_MAD = 1.2533
"""A normal spread from a mean absolute deviation."""
_MIN_HISTORY = 3
"""Samples a layer needs before its growth is judged (the detectors need 2 before their growth rule)."""
_CHUNK = 512
_OPEN = int(np.iinfo(np.int64).max)
"""The end step of a span still open."""
_PRUNE_EVERY = 256
"""Alerts between two sweeps for spans that ended before the held steps."""
"""Rows folded at once: the closed-form average's weights grow as (1 - 1/MEMORY)^-rows."""

CELL_FLAGS: dict[str, int] = {"dead": DEAD_CELL, "vanishing": VANISHING_CELL, "exploding": EXPLODING_CELL}
"""Flag kinds drawn on cells, least urgent first (a more urgent flag paints over it), and their codes."""


@dataclass(slots=True)
class Span:
    """The steps one flag was up on one layer: from `start` to before `end` (None while it is up)."""

    kind: str
    start: int
    end: int | None = None


class HealthIndex:
    """Health levels of every held step and layer, and flag spans, of one run (updated by `sync`).

    Args:
        scale: Thresholds of the levels (the default detector config's when None).
    """

    def __init__(self, scale: HealthScale | None = None) -> None:
        self.scale = scale or HealthScale.from_config()
        self.generation = 0
        """Counts the restarts (`sync` on a new run or a reset store): levels from before one are void."""
        self._run: RunStart | None = None
        self._alerts: list[Alert] | None = None
        self._n_alerts = 0
        self._pruned_at = 0
        self._synced = 0
        self._cap = 0
        self._n_layers = 0
        self._groups: tuple[tuple[int, int], ...] = ()
        self._log_sqrt_numel = np.zeros(0)
        self._levels = np.zeros((0, 0), np.int8)
        self._level = np.zeros(0)
        self._mad = np.zeros(0)
        self._count = np.zeros(0, np.int64)
        self._last = np.zeros(0)
        self._spans: dict[int, list[Span]] = {}
        self._open: dict[tuple[int, str], Span] = {}
        self._index: dict[str, int] = {}
        """Layer name -> row."""
        self._rising: list[tuple[int, Span]] = []
        """Exploding spans that may still cover steps not folded yet (kept out of the references)."""

    # ------------------------------------------------------------ follow

    def _reset(self, store: RunStore) -> None:
        n = store.n_layers
        self.generation += 1
        self._run, self._alerts = store.run, store.alerts
        self._n_alerts = 0
        self._pruned_at = 0
        self._synced = max(0, store.total_steps - store.count)
        self._cap = int(store.capacity or 0)
        self._n_layers = n - store.n_lanes
        # Layers are compared among themselves, lanes (activation gradients) among themselves.
        self._groups = tuple((a, b) for a, b in ((0, self._n_layers), (self._n_layers, n)) if b > a)
        numel = np.array([max(1, info.numel) for info in store.layers], np.float64)
        self._log_sqrt_numel = 0.5 * np.log10(numel) if n else np.zeros(0)
        self._levels = np.full((max(1, self._cap), n), EMPTY, np.int8)
        self._level = np.zeros(n)
        """Per row: its recent log10 norm (an average over about MEMORY samples)."""
        self._count = np.zeros(n, np.int64)
        """Per row: usable samples folded into its level so far."""
        self._mad = np.zeros(n)
        """Per row: the recent mean absolute deviation of its log10 norm from that level."""
        self._last = np.full(n, np.nan)
        self._spans = {}
        self._open = {}
        self._rising = []
        self._index = {info.name: i for i, info in enumerate(store.layers)}

    def sync(self, store: RunStore) -> None:
        """Fold in what the store received since the last call (starts over for a new run or a reset store)."""
        if (
            store.run is not self._run
            or store.alerts is not self._alerts
            or store.total_steps < self._synced
            or len(store.alerts) < self._n_alerts
            or int(store.capacity or 0) != self._cap
        ):
            self._reset(store)
        if len(store.alerts) > self._n_alerts:
            self._fold_alerts(store, store.alerts[self._n_alerts :])
            self._n_alerts = len(store.alerts)
            if store.count and self._n_alerts - self._pruned_at >= _PRUNE_EVERY:
                self._forget_before(int(store.steps(store.count)[0]))
                self._pruned_at = self._n_alerts
        new = min(store.total_steps - self._synced, store.count)
        if new > 0 and store.n_layers:
            steps = store.steps(new)
            grads = store.window("grad_norm", new)
            first = store.total_steps - new
            for a in range(0, new, _CHUNK):
                b = min(new, a + _CHUNK)
                self._fold_steps(grads[a:b], steps[a:b], first + a)
            last = int(steps[-1])
            self._rising = [(i, s) for i, s in self._rising if s.end is None or s.end > last]
        self._synced = store.total_steps

    def _fold_alerts(self, store: RunStore, alerts: list[Alert]) -> None:
        index = self._index
        for a in alerts:
            if a.kind not in CELL_FLAGS or a.layer not in index or (a.active and a.level == "info"):
                # An info-level flag is not a flag on screen (an escalation opens the span).
                continue
            key = (index[a.layer], a.kind)
            span = self._open.get(key)
            if a.active and span is None:
                span = Span(a.kind, a.step)
                self._open[key] = span
                self._spans.setdefault(key[0], []).append(span)
                if a.kind == "exploding":
                    self._rising.append((key[0], span))
            elif not a.active and span is not None:
                span.end = a.step
                del self._open[key]

    def _forget_before(self, step: int) -> None:
        """Drop the spans that ended before `step` (the oldest held): no column can show them again."""
        for row, spans in list(self._spans.items()):
            kept = [s for s in spans if s.end is None or s.end > step]
            if len(kept) != len(spans):
                if kept:
                    self._spans[row] = kept
                else:
                    del self._spans[row]

    def _fold_steps(self, grads: np.ndarray, steps: np.ndarray, first_sample: int) -> None:
        """Judge rows of steps (oldest first) against the references before each, then update those."""
        with np.errstate(divide="ignore", invalid="ignore"):
            logs = np.log10(grads.astype(np.float64))
        finite = np.isfinite(logs)  # zero (-inf), NaN and Inf have no level
        usable = finite.copy()
        if self._rising:
            # An exploding layer would make every other layer look vanishing: the detectors leave it out, so do we.
            layers = np.array([i for i, _ in self._rising], np.intp)
            lo, hi = span_rows(steps, [s for _, s in self._rising])
            usable &= ~paint_mask(lo, hi, layers, logs.shape)
        level, mad = self._follow(logs, usable)
        growth = logs - level
        depth = np.full(logs.shape, np.nan)
        rms = logs - self._log_sqrt_numel
        for a, b in self._groups:
            part = np.where(usable[:, a:b], rms[:, a:b], -np.inf)
            top = part.max(axis=1)
            # As the detectors: with fewer than two layers to compare there is no vanishing.
            top[np.count_nonzero(usable[:, a:b], axis=1) < 2] = np.nan
            depth[:, a:b] = rms[:, a:b] - top[:, None]
        out = self.scale.levels(growth, _SIGMA_PER_MAD * mad, depth)
        # A zero gradient has vanished completely (-inf depth); no gradient at all has no level.
        out[np.isnan(logs) | np.isposinf(logs)] = EMPTY
        self._levels[(first_sample + np.arange(steps.size)) % self._cap] = out

    def _follow(self, logs: np.ndarray, usable: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each row's recent level and spread *before* each step (NaN: too little history), then advance them.

        A layer's first MEMORY samples are averaged evenly (a loop over those few rows, once
        per run); after that an exponential average, in closed form over the rows, where a
        step without a usable value repeats the layer's last one (as the detectors keep
        their window dense).
        """
        k = logs.shape[0]
        before = np.full(logs.shape, np.nan)
        mad_before = np.full(logs.shape, np.nan)
        after_count = self._count + np.cumsum(usable, axis=0)
        warming = np.flatnonzero((usable & (after_count <= MEMORY)).any(axis=1))
        warm_end = int(warming[-1]) + 1 if warming.size else 0
        for r in range(warm_end):
            u = usable[r]
            ready = self._count >= _MIN_HISTORY
            before[r] = np.where(ready, self._level, np.nan)
            mad_before[r] = np.where(ready, self._mad, np.nan)
            n = self._count + u
            w = np.where(u, 1.0 / np.maximum(1, np.minimum(n, MEMORY)), 0.0)
            x = np.where(u, logs[r], 0.0)
            level = np.where(self._count == 0, x, self._level)
            dev = np.where(u & (self._count > 0), np.abs(x - level), 0.0)
            self._level = np.where(u, level + w * (x - level), self._level)
            self._mad = np.where(u, self._mad + w * (dev - self._mad), self._mad)
            self._last = np.where(u, logs[r], self._last)
            self._count = n
        if warm_end == k:
            return before, mad_before
        rest = slice(warm_end, k)
        x = _ffill_rows(np.where(usable[rest], logs[rest], np.nan), self._last)
        a = 1.0 / MEMORY
        decay = (1.0 - a) ** np.arange(1, k - warm_end + 1)[:, None]
        # level_t = (1-a)^(t+1) level_-1 + a * sum_{s<=t} (1-a)^(t-s) x_s: the level after row t.
        after = decay * (self._level + a * np.cumsum(x / decay, axis=0))
        prior = np.vstack([self._level[None, :], after[:-1]])
        dev = np.abs(x - prior)
        mad_after = decay * (self._mad + a * np.cumsum(dev / decay, axis=0))
        mad_prior = np.vstack([self._mad[None, :], mad_after[:-1]])
        ready = self._count >= _MIN_HISTORY
        before[rest] = np.where(ready, prior, np.nan)
        mad_before[rest] = np.where(ready, mad_prior, np.nan)
        self._level = np.where(ready, after[-1], self._level)
        self._mad = np.where(ready, mad_after[-1], self._mad)
        self._last = np.where(np.isnan(x[-1]), self._last, x[-1])
        self._count = self._count + usable[rest].sum(axis=0)
        return before, mad_before

    # ------------------------------------------------------------ read

    def levels(self, store: RunStore, last: int, rows: np.ndarray, skip: int = 0) -> np.ndarray:
        """(last, len(rows)) int8 levels of the `last` steps before the newest `skip`, of the given rows."""
        if last <= 0 or self._cap == 0:
            return np.full((max(0, last), rows.size), EMPTY, np.int8)
        end = store.total_steps - skip
        pos = np.arange(end - last, end) % self._cap
        out: np.ndarray = self._levels[np.ix_(pos, rows)]
        return out

    def spans(self, row: int) -> list[Span]:
        """The drawn flags' spans on one row of the store, in the order they were raised."""
        return self._spans.get(row, [])

    def has_spans(self, row: int) -> bool:
        """Whether a drawn flag was ever up on this row."""
        return row in self._spans


def span_rows(steps: np.ndarray, spans: list[Span]) -> tuple[np.ndarray, np.ndarray]:
    """Per span: the first and past-the-last index into `steps` (sorted) of the steps it covers."""
    starts = np.array([s.start for s in spans], np.int64)
    ends = np.array([_OPEN if s.end is None else s.end for s in spans], np.int64)
    return np.searchsorted(steps, starts, "left"), np.searchsorted(steps, ends, "left")


def paint_mask(lo: np.ndarray, hi: np.ndarray, cols: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A (rows, cols) mask, True on rows [lo, hi) of column `cols` for each interval (one pass for all)."""
    delta = np.zeros((shape[0] + 1, shape[1]), np.int32)
    keep = hi > lo
    np.add.at(delta, (lo[keep], cols[keep]), 1)
    np.add.at(delta, (hi[keep], cols[keep]), -1)
    out: np.ndarray = np.cumsum(delta, axis=0)[:-1] > 0
    return out


def _ffill_rows(x: np.ndarray, start: np.ndarray) -> np.ndarray:
    """NaN cells of `x` (rows: time) replaced by the last non-NaN above them, else by `start`."""
    valid = ~np.isnan(x)
    idx = np.where(valid, np.arange(1, x.shape[0] + 1)[:, None], 0)
    np.maximum.accumulate(idx, axis=0, out=idx)
    padded = np.vstack([start[None, :], x])
    return np.take_along_axis(padded, idx, axis=0)
