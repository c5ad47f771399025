"""Ring-buffer history of a run: layers x sampled steps for every statistic, and the
run-wide loss and global norm at every step.

Preallocated NumPy arrays, written one step (one row) at a time in O(layers) with no
`np.roll`; reads put the ring back in order only when a view asks for it. Two rings: the
sampled one (a `StepStats` per row: per-layer statistics and the settings of that step)
and the every-step one (loss and global norm of every step, from `StepStats` and
`RunSteps` alike), so the charts show every step whatever the sampling stride.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np

from gradtui.model.events import (
    GRAD_HIST_BUCKETS,
    Alert,
    BadBatch,
    Capture,
    CaptureStats,
    CommandResult,
    Dropped,
    Event,
    GuardAction,
    LayerInfo,
    LogLine,
    NonFiniteOrigin,
    RunEnd,
    RunStart,
    RunSteps,
    StepStats,
    UpdateStats,
)
from gradtui.model.layer_stats import CAPTURE_STATS, LAYER_STATS

STAT_LABELS: dict[str, str] = {name: spec.label for name, spec in LAYER_STATS.items()}
"""Each per-layer statistic's name on screen (`gradtui.model.layer_stats`)."""

STEP_SERIES: tuple[str, ...] = ("loss", "global_norm")
LAST_NORM_LOOKBACK = 64
"""Steps back the header looks for the newest measured global norm (a sampled step is at most 32 away)."""
"""Run-wide series kept at every step (from `StepStats` and `RunSteps`), in a ring of their own."""
SAMPLED_SERIES: tuple[str, ...] = ("time", "clipped_norm", "clip_factor", "lr", "schedule_lr", "steps_per_sec")
"""Run-wide series known at sampled steps only (rows of the per-layer ring)."""
RUN_SERIES: tuple[str, ...] = STEP_SERIES + SAMPLED_SERIES
"""Every run-wide series `RunStore.series` reads."""

RUN_CAPACITY = 16384
"""Steps the every-step ring keeps by default (24 bytes a step): at the budget's widest stride
(32) a quarter of what the sampled ring spans, at stride 1 four times as much."""


def default_capacity(n_layers: int) -> int:
    """Steps kept: about 2M cells per statistic, between 256 and 4096 steps."""
    return int(min(4096, max(256, 2_000_000 // max(1, n_layers))))


@dataclass
class Marker:
    """An intervention on the record, drawn on the charts at `step`."""

    step: int
    kind: str
    message: str


@dataclass
class RunStore:
    """Everything a viewer or report needs to know about one run."""

    capacity: int | None = None
    run_capacity: int | None = None
    """Steps the every-step ring keeps (`RUN_CAPACITY`, or `capacity` when that is larger, by default)."""
    run: RunStart | None = None
    end: RunEnd | None = None
    layers: tuple[LayerInfo, ...] = ()
    n_lanes: int = 0
    """Trailing rows of `layers` that are lanes (activation gradients), not layers."""
    count: int = 0
    """Steps held (at most capacity)."""
    total_steps: int = 0
    """Sampled steps seen since the start (including those that left the ring)."""
    last: StepStats | None = None
    """The newest sampled step."""
    last_step: int = -1
    """The newest step seen, sampled or not (-1 before any)."""
    run_count: int = 0
    """Steps held in the every-step ring (at most run_capacity)."""
    run_total: int = 0
    """Steps folded into the every-step ring since the start (including those that left it)."""
    stride: int = 1
    """Steps between the last two sampled steps (the effective sampling when a budget sets it)."""
    version: int = 0
    """Bumped on every change; views cache on it."""
    dropped_total: int = 0
    first_nonfinite_step: int | None = None
    first_nonfinite_layers: tuple[str, ...] = ()
    markers: list[Marker] = field(default_factory=list)
    results: list[CommandResult] = field(default_factory=list)
    guard: list[GuardAction] = field(default_factory=list)
    """What the guard did (skips, rollbacks, clips, learning-rate cuts)."""
    guard_counts: dict[str, int] = field(default_factory=dict)
    """How many of each guard action (for the header, which must not count a long list a frame)."""
    bad_batches: list[BadBatch] = field(default_factory=list)
    captures: list[Capture] = field(default_factory=list)
    """Deep captures, as armed and (a second entry, `ended`) as they ended."""
    origins: list[NonFiniteOrigin] = field(default_factory=list)
    """Where the run first produced a NaN or Inf, each time a capture or a re-run found it."""
    first_weight_norm: np.ndarray | None = None
    """Per-layer weight norms at the first detail step (the init, for the advice)."""
    alerts: list[Alert] = field(default_factory=list)
    active_flags: dict[tuple[str | None, str], Alert] = field(default_factory=dict)
    """Flags up now at warning or critical level, by (layer, kind): the last alert that raised each."""
    info_flags: dict[tuple[str | None, str], Alert] = field(default_factory=dict)
    """Flags up now at info level (kept apart: not flags on screen)."""
    logs: list[LogLine] = field(default_factory=list)
    max_logs: int = 2000
    _head: int = 0
    _stats: dict[str, np.ndarray] = field(default_factory=dict)
    _series: dict[str, np.ndarray] = field(default_factory=dict)
    _steps: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    _latest: dict[str, np.ndarray] = field(default_factory=dict)
    _latest_step: dict[str, np.ndarray] = field(default_factory=dict)
    _hist: np.ndarray = field(default_factory=lambda: np.zeros((0, GRAD_HIST_BUCKETS), np.int64))
    _hist_step: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    _run_head: int = 0
    _run_steps: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    _run_series: dict[str, np.ndarray] = field(default_factory=dict)
    _run_measured: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    """Per step of the every-step ring: its global norm was measured."""

    # ------------------------------------------------------------ ingest

    def apply(self, event: Event) -> None:
        """Fold one event into the store."""
        if isinstance(event, StepStats):
            self._add_step(event)
        elif isinstance(event, RunSteps):
            self._add_run_steps(event)
        elif isinstance(event, UpdateStats):
            self._add_update(event)
        elif isinstance(event, CaptureStats):
            self._add_capture(event)
        elif isinstance(event, Capture):
            self.captures.append(event)
            if not event.ended:
                self.markers.append(Marker(event.start, "capture", event.reason))
        elif isinstance(event, NonFiniteOrigin):
            self.origins.append(event)
        elif isinstance(event, RunStart):
            self._start(event)
        elif isinstance(event, Alert):
            self.alerts.append(event)
            key = (event.layer, event.kind)
            # An info-level flag is on the record and in the log, but not a flag on screen (or in
            # a verdict) unless it escalates.
            if event.active and event.level != "info":
                self.active_flags[key] = event
                self.info_flags.pop(key, None)
            elif event.active:
                self.info_flags[key] = event
            else:
                self.active_flags.pop(key, None)
                self.info_flags.pop(key, None)
        elif isinstance(event, CommandResult):
            self.results.append(event)
            if event.ok:
                self.markers.append(Marker(event.step, event.kind, event.message))
        elif isinstance(event, BadBatch):
            self.bad_batches.append(event)
        elif isinstance(event, GuardAction):
            self.guard.append(event)
            self.guard_counts[event.action] = self.guard_counts.get(event.action, 0) + 1
            self.markers.append(Marker(event.step, event.action, event.detail))
        elif isinstance(event, Dropped):
            self.dropped_total = max(self.dropped_total + event.count, event.total)
        elif isinstance(event, LogLine):
            self.logs.append(event)
            if len(self.logs) > self.max_logs:
                del self.logs[: len(self.logs) - self.max_logs]
        elif isinstance(event, RunEnd):
            self.end = event
        self.version += 1

    def _start(self, ev: RunStart) -> None:
        self.run = ev
        # Lanes (activation gradients) are shown as extra rows below the layers.
        self.n_lanes = len(ev.lanes)
        self.layers = ev.layers + tuple(LayerInfo(name, "lane", 0) for name in ev.lanes)
        n = len(self.layers)
        cap = self.capacity or default_capacity(n)
        self.capacity = cap
        self._stats = {s: np.full((cap, n), np.nan, np.float32) for s in LAYER_STATS}
        self._series = {s: np.full(cap, np.nan, np.float64) for s in RUN_SERIES}
        self._steps = np.full(cap, -1, np.int64)
        self._latest = {s: np.full(n, np.nan, np.float64) for s in LAYER_STATS}
        self._latest_step = {s: np.full(n, -1, np.int64) for s in LAYER_STATS}
        self._hist = np.zeros((len(ev.layers), GRAD_HIST_BUCKETS), np.int64)
        self._hist_step = np.full(len(ev.layers), -1, np.int64)
        self._head = 0
        self.count = 0
        self.total_steps = 0
        self.last = None
        self.stride = max(1, ev.every)
        self.end = None
        self._start_run_ring(cap)

    def _start_run_ring(self, cap: int) -> None:
        run_cap = self.run_capacity or max(RUN_CAPACITY, cap)
        self.run_capacity = run_cap
        self._run_steps = np.full(run_cap, -1, np.int64)
        self._run_series = {s: np.full(run_cap, np.nan, np.float64) for s in STEP_SERIES}
        self._run_measured = np.zeros(run_cap, bool)
        self._run_head = 0
        self.run_count = 0
        self.run_total = 0
        self.last_step = -1

    def _ensure_started(self, n_layers: int) -> None:
        if self.run is None or len(self.layers) - self.n_lanes != n_layers:
            # A stream joined mid-run (or a record missing its start): name layers by index.
            infos = tuple(LayerInfo(f"layer{i}", "?", 0) for i in range(n_layers))
            self._start(
                RunStart(
                    run="?",
                    pid=0,
                    started=0.0,
                    layers=infos,
                    lrs=(),
                    clip_mode="off",
                    clip_threshold=1.0,
                    every=1,
                    detail_every=1,
                    device="?",
                )
            )

    def _add_step(self, ev: StepStats) -> None:
        n = len(ev.grad_norm)
        self._ensure_started(n)
        cap = self._steps.shape[0]
        row = self._head
        self._head = (row + 1) % cap
        self.count = min(self.count + 1, cap)
        self.total_steps += 1
        if self.first_weight_norm is None and ev.weight_norm is not None:
            self.first_weight_norm = np.asarray(ev.weight_norm, np.float64)
        self._steps[row] = ev.step
        self._add_run_step(ev.step, ev.loss, ev.global_norm)
        s = self._series
        s["time"][row] = ev.time
        s["clipped_norm"][row] = ev.clipped_norm
        s["clip_factor"][row] = ev.clip_factor
        s["lr"][row] = ev.lrs[0] if ev.lrs else np.nan
        # What the loop set (the same as `lr` unless a viewer's override is in force).
        s["schedule_lr"][row] = ev.schedule_lrs[0] if ev.schedule_lrs else s["lr"][row]
        s["steps_per_sec"][row] = ev.steps_per_sec
        arrays = {
            "grad_norm": ev.grad_norm,
            "nonfinite": ev.nonfinite,
            "mean_abs": ev.mean_abs,
            "max_abs": ev.max_abs,
            "weight_norm": ev.weight_norm,
            "zero_frac": ev.zero_frac,
            "update_ratio": None,
        }
        has_grad = ev.has_grad
        if self.n_lanes:
            lanes = ev.lanes if ev.lanes is not None and len(ev.lanes) == self.n_lanes else None
            pad = np.full(self.n_lanes, np.nan)
            arrays = {k: None if v is None else np.concatenate([v, pad]) for k, v in arrays.items()}
            if lanes is not None:
                arrays["grad_norm"] = np.concatenate([ev.grad_norm, lanes])
                arrays["nonfinite"] = np.concatenate([ev.nonfinite, (~np.isfinite(lanes) & ~np.isnan(lanes)) * 1])
            seen = np.zeros(self.n_lanes, bool) if lanes is None else ~np.isnan(lanes)
            has_grad = np.concatenate([ev.has_grad, seen])
        for name, values in arrays.items():
            dest = self._stats[name]
            if values is None:
                dest[row] = np.nan
            else:
                dest[row] = values
                got = has_grad if LAYER_STATS[name].per_gradient else slice(None)
                self._latest[name][got] = values[got]
                self._latest_step[name][got] = ev.step
        self._add_hist(ev)
        # Non-finite values: counted, or a NaN norm (which finite values never sum to). A norm that
        # overflowed to +inf over finite values is no NaN (`OVERFLOW_NORM`).
        if self.first_nonfinite_step is None and (ev.nonfinite.any() or np.isnan(ev.global_norm)):
            self.first_nonfinite_step = ev.step
            bad = np.flatnonzero(ev.nonfinite > 0)
            self.first_nonfinite_layers = tuple(self.layers[i].name for i in bad)
        if self.last is not None and ev.step > self.last.step:
            self.stride = ev.step - self.last.step
        self.last = ev

    def _add_run_step(self, step: int, loss: float, global_norm: float) -> None:
        """One step into the every-step ring (a step not after the newest one is a repeat: left out)."""
        if step <= self.last_step:
            return
        row = self._run_head
        cap = self._run_steps.shape[0]
        self._run_head = (row + 1) % cap
        self.run_count = min(self.run_count + 1, cap)
        self.run_total += 1
        self._run_steps[row] = step
        self._run_series["loss"][row] = loss
        self._run_series["global_norm"][row] = global_norm
        self._run_measured[row] = True
        self.last_step = step

    def _add_run_steps(self, ev: RunSteps) -> None:
        """A batch of unsampled steps: at most two slice writes into the every-step ring."""
        if self._run_steps.shape[0] == 0:
            self._start_run_ring(default_capacity(0))  # a stream that joined mid-run
        steps = np.asarray(ev.steps).ravel()
        loss = np.asarray(ev.loss).ravel()
        measured = ev.global_norm is not None
        norm = np.asarray(ev.global_norm).ravel() if measured else np.full(loss.size, np.nan)
        n = min(steps.size, loss.size, norm.size)
        if n == 0 or steps.dtype.kind not in "iu" or loss.dtype.kind not in "fiu" or norm.dtype.kind not in "fiu":
            return
        steps, loss, norm = steps[:n].astype(np.int64), loss[:n].astype(np.float64), norm[:n].astype(np.float64)
        if not bool(np.all(steps[1:] > steps[:-1])) or steps[0] <= self.last_step:
            # Out of order or repeating steps already held (a damaged or foreign record): keep the new ones.
            keep = steps > np.maximum.accumulate(np.concatenate([[self.last_step], steps[:-1]]))
            steps, loss, norm = steps[keep], loss[keep], norm[keep]
            n = steps.size
            if n == 0:
                return
        if self.first_nonfinite_step is None and measured:
            bad = np.flatnonzero(~np.isfinite(norm))
            if bad.size:
                self.first_nonfinite_step = int(steps[bad[0]])
                self.first_nonfinite_layers = ()
        cap = self._run_steps.shape[0]
        if n > cap:
            steps, loss, norm = steps[-cap:], loss[-cap:], norm[-cap:]
        take = steps.size
        head = self._run_head
        first = min(take, cap - head)
        rings = ((self._run_steps, steps), (self._run_series["loss"], loss), (self._run_series["global_norm"], norm))
        for dest, values in rings:
            dest[head : head + first] = values[:first]
            dest[: take - first] = values[first:]
        self._run_measured[head : head + first] = measured
        self._run_measured[: take - first] = measured
        self._run_head = (head + take) % cap
        self.run_count = min(self.run_count + take, cap)
        self.run_total += n
        self.last_step = int(steps[-1])

    def _add_hist(self, ev: StepStats) -> None:
        h = ev.grad_hist
        # A histogram of another shape (a damaged or foreign record) is left out, not fatal.
        if h is None or not isinstance(h, np.ndarray) or h.shape != self._hist.shape or h.dtype.kind not in "iu":
            return
        got = np.asarray(ev.has_grad, bool)
        self._hist[got] = h[got]
        self._hist_step[got] = ev.step

    def _add_update(self, ev: UpdateStats) -> None:
        if self.count == 0 or len(ev.update_ratio) != len(self.layers) - self.n_lanes:
            return
        if self.n_lanes:
            ev = UpdateStats(ev.step, np.concatenate([ev.update_ratio, np.full(self.n_lanes, np.nan)]))
        row = self._row_of(ev.step)
        if row is not None:
            self._stats["update_ratio"][row] = ev.update_ratio
        self._latest["update_ratio"][:] = ev.update_ratio
        self._latest_step["update_ratio"][:] = ev.step

    def _row_of(self, step: int) -> int | None:
        """The sampled ring's row of `step` among the newest few (None: not there)."""
        cap = self._steps.shape[0]
        for back in range(1, min(self.count, 8) + 1):
            row = (self._head - back) % cap
            if self._steps[row] == step:
                return int(row)
        return None

    def _add_capture(self, ev: CaptureStats) -> None:
        """A capture step's per-layer arrays, into the row of its `StepStats` (every capture step is sampled)."""
        n = len(self.layers) - self.n_lanes
        arrays = {name: np.asarray(getattr(ev, name), np.float64) for name in CAPTURE_STATS}
        if self.count == 0 or any(a.shape != (n,) for a in arrays.values()):
            return  # a damaged or foreign record's event is left out, not fatal
        pad = np.full(self.n_lanes, np.nan)
        row = self._row_of(ev.step)
        for name, values in arrays.items():
            full = np.concatenate([values, pad]) if self.n_lanes else values
            if row is not None:
                self._stats[name][row] = full
            self._latest[name][:] = full
            self._latest_step[name][:] = ev.step

    # ------------------------------------------------------------ read

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    def _order(self, last: int | None = None, skip: int = 0) -> np.ndarray:
        """Ring rows of the `last` steps before the newest `skip`, oldest first."""
        skip = max(0, min(skip, self.count))
        n = self.count - skip if last is None else max(0, min(last, self.count - skip))
        if n == 0:
            return np.zeros(0, np.intp)
        cap = self._steps.shape[0]
        head = self._head - skip
        order: np.ndarray = (np.arange(head - n, head) % cap).astype(np.intp)
        return order

    def steps(self, last: int | None = None, skip: int = 0) -> np.ndarray:
        """Step numbers held, oldest first (the `last` before the newest `skip`)."""
        return _ring_read(self._steps, self._head, self.count, last, skip)

    def window(self, stat: str, last: int | None = None, layers: np.ndarray | None = None, skip: int = 0) -> np.ndarray:
        """(steps, layers) float32 matrix of `stat` over the newest `last` steps, oldest first.

        Args:
            stat: one of `LAYER_STATS`.
            last: the newest steps to take (all held by default).
            layers: indices of the layer columns to take (all by default). Sorted
                contiguous indices and a window that does not wrap are read with slices,
                so a view copies only the cells it shows.
            skip: leave out this many of the newest steps (`last` counts back from before them).
        """
        data = self._stats.get(stat)
        skip = max(0, min(skip, self.count))
        n = self.count - skip if last is None else max(0, min(last, self.count - skip))
        cols: slice | np.ndarray = slice(None) if layers is None else np.asarray(layers, np.intp)
        if data is None or n == 0:
            width = len(self.layers) if layers is None else len(np.asarray(layers))
            return np.full((n, width), np.nan, np.float32)
        if isinstance(cols, np.ndarray) and cols.size:
            first, final = int(cols[0]), int(cols[-1])
            if cols.size == final - first + 1 and bool(np.all(np.diff(cols) == 1)):
                cols = slice(first, final + 1)
        head = self._head - skip
        rows: slice | np.ndarray = slice(head - n, head) if head >= n else self._order(n, skip)
        if isinstance(rows, np.ndarray) and isinstance(cols, np.ndarray):
            return np.asarray(data[np.ix_(rows, cols)])
        out: np.ndarray = np.asarray(data[rows][:, cols] if isinstance(rows, np.ndarray) else data[rows, cols])
        return out

    def reset(self) -> None:
        """Forget everything (a replay seek starts over); `version` keeps counting up."""
        version = self.version
        fresh = RunStore(capacity=None, max_logs=self.max_logs)
        for f in fields(self):
            setattr(self, f.name, getattr(fresh, f.name))
        self.version = version + 1

    def run_steps(self, last: int | None = None) -> np.ndarray:
        """The steps of the every-step ring (every step seen, sampled or not), oldest first."""
        return _ring_read(self._run_steps, self._run_head, self.run_count, last)

    def series(self, name: str, last: int | None = None) -> np.ndarray:
        """A run-wide series over its newest `last` entries, oldest first: loss and global_norm
        at every step (`run_steps`), the others (lr, clipped_norm, ...) at sampled steps (`steps`)."""
        if name in STEP_SERIES:
            if not self._run_series:
                return np.zeros(0)
            values = _ring_read(self._run_series[name], self._run_head, self.run_count, last)
            return values[self._measured(last)] if name == "global_norm" else values
        return _ring_read(self._series[name], self._head, self.count, last) if self._series else np.zeros(0)

    def series_steps(self, name: str, last: int | None = None) -> np.ndarray:
        """The step of each value of `series(name, last)`."""
        if name == "global_norm":
            steps: np.ndarray = self.run_steps(last)[self._measured(last)]
            return steps
        return self.run_steps(last) if name in STEP_SERIES else self.steps(last)

    def _measured(self, last: int | None) -> np.ndarray:
        """Which of the newest `last` steps of the every-step ring had their global norm measured
        (the others, canaries only: `RunSteps.global_norm` None)."""
        return _ring_read(self._run_measured, self._run_head, self.run_count, last)

    def _newest(self, name: str) -> float:
        if self.run_count == 0:
            return float("nan")
        return float(self._run_series[name][(self._run_head - 1) % self._run_steps.shape[0]])

    @property
    def last_loss(self) -> float:
        """The loss of the newest step seen, sampled or not (NaN: none, unknown or not finite)."""
        return self._newest("loss")

    @property
    def last_global_norm(self) -> float:
        """The global gradient norm of the newest step that measured it, sampled or not (NaN: none yet)."""
        norms = self.series("global_norm", LAST_NORM_LOOKBACK)
        return float(norms[-1]) if norms.size else float("nan")

    def layer_history(self, layer: int, stat: str, last: int | None = None) -> np.ndarray:
        """One layer's history of `stat`, oldest first."""
        out: np.ndarray = self._stats[stat][self._order(last), layer]
        return out

    def latest(self, stat: str) -> np.ndarray:
        """Per-layer most recent known value of `stat` (NaN where never computed)."""
        return self._latest.get(stat, np.zeros(0))

    def latest_step(self, stat: str) -> np.ndarray:
        """Per-layer step of the most recent value of `stat` (-1 where never computed)."""
        return self._latest_step.get(stat, np.zeros(0, np.int64))

    def latest_hist(self, layer: int) -> tuple[np.ndarray, int] | None:
        """A layer's newest histogram of log2|g| (`StepStats.grad_hist`'s columns) and its step;
        None before the first (a lane, a record made before histograms, no detail step yet)."""
        if not 0 <= layer < len(self._hist_step) or self._hist_step[layer] < 0:
            return None
        return self._hist[layer].copy(), int(self._hist_step[layer])

    def layer_flags(self, layer: str) -> list[str]:
        """Kinds of the flags currently raised on a layer."""
        return [kind for (name, kind) in self.active_flags if name == layer]


def _ring_read(ring: np.ndarray, head: int, count: int, last: int | None = None, skip: int = 0) -> np.ndarray:
    """A copy of the `last` entries of a 1-D ring before its newest `skip`, oldest first (one or
    two slices: no index arithmetic)."""
    skip = max(0, min(skip, count))
    n = count - skip if last is None else max(0, min(last, count - skip))
    end = head - skip
    if end >= n:
        return ring[end - n : end].copy()
    cap = ring.shape[0]
    if end <= 0:
        return ring[cap + end - n : cap + end].copy()
    return np.concatenate((ring[cap - (n - end) :], ring[:end]))
