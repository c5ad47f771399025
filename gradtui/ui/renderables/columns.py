"""The heatmap's columns: buckets of a fixed number of steps, and the colour code of each cell.

`heatmap_view` turns a `RunStore` into a small matrix of colour codes (one row per layer, one
column per bucket of `steps_per_col` steps, aligned to step numbers). The x axis is steps,
not samples: when the sampling stride changes a column still covers the same number of
steps, and a column whose steps were all left unsampled is `NO_SAMPLE`, not a neighbour
stretched over it. A later frame reuses the columns of the one before that cannot have
changed, and computes only the newest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from gradtui.model.store import RunStore
from gradtui.ui.captures import CaptureSpan, capture_spans
from gradtui.ui.renderables.axis import StepAxis
from gradtui.ui.renderables.buckets import LATE_STATS, SPARSE_STATS, ffill, ring_block, row_flags
from gradtui.ui.renderables.health import CELL_FLAGS, HealthIndex, paint_mask, span_rows
from gradtui.ui.scale import (
    EMPTY,
    HEALTH,
    HEALTH_LEVELS,
    HEALTH_MID,
    NO_SAMPLE,
    NONFINITE,
    STAT_SCALES,
    LogScale,
)

NONFINITE_COUNT: dict[str, str] = {name: "act_nonfinite" for name in ("act_rms", "act_max", "act_kurtosis")}
"""The count that marks a cell of a view non-finite: a layer's forward output for the activation views,
its gradient for the others."""


@dataclass(frozen=True)
class HeatmapView:
    """What the heatmap shows: labels, current values, flags and a grid of colour codes."""

    stat: str
    names: tuple[str, ...]
    values: np.ndarray
    """Current (latest known) value of `stat` per row."""
    flags: tuple[str | None, ...]
    """Most urgent active flag kind per row, or None."""
    codes: np.ndarray
    """(rows, cols) int16: 0..N_BINS-1 colour bin (or a health code), EMPTY, NONFINITE or NO_SAMPLE."""
    axis: StepAxis | None = None
    """The steps of the columns, from the oldest held to the newest seen, sampled or not (None: no data)."""
    known: np.ndarray | None = None
    """Per row: the value was ever computed (else it shows as "—"; a NaN that was computed shows "nan")."""
    scale: LogScale = field(default_factory=lambda: STAT_SCALES["grad_norm"])
    basis: _Basis | None = field(default=None, compare=False, repr=False)
    """What the columns were computed from (a later frame reuses them when it matches)."""
    alerts_seen: int = 0
    """Alerts the store held when the view was built."""
    captures: tuple[CaptureSpan, ...] = ()
    """The steps each deep capture of the run ran (drawn on the step axis)."""

    @property
    def rows(self) -> int:
        return len(self.names)

    @property
    def cols(self) -> int:
        return int(self.codes.shape[1]) if self.codes.ndim == 2 else 0

    @property
    def first_step(self) -> int | None:
        """The first step drawn (in the first column that holds data)."""
        return None if self.axis is None else self.axis.first

    @property
    def last_step(self) -> int | None:
        """The newest step of the run seen (sampled or not): the right edge."""
        return None if self.axis is None else self.axis.last

    @property
    def steps_per_col(self) -> int:
        """Steps each column covers, whatever the sampling stride."""
        return 1 if self.axis is None else self.axis.k

    @property
    def last_bucket(self) -> int | None:
        """Absolute bucket number (step // steps_per_col) of the last column."""
        return None if self.axis is None else self.axis.first_bucket + self.axis.cols - 1

    def capture_columns(self) -> list[int]:
        """The columns on screen whose steps a capture ran in, in order."""
        if self.axis is None:
            return []
        cols: set[int] = set()
        for span in self.captures:
            a = max(0, self.axis.column(max(span.first, self.axis.first)))
            b = min(self.axis.cols - 1, self.axis.column(span.last))
            cols.update(range(a, b + 1))
        return sorted(cols)

    @property
    def gaps(self) -> bool:
        """Some column went unsampled (the legend then says what its cells mean)."""
        return bool((self.codes == NO_SAMPLE).any())


def heatmap_view(
    store: RunStore,
    stat: str,
    cols: int,
    layers: Sequence[int] | np.ndarray | None = None,
    *,
    health: HealthIndex | None = None,
    previous: HeatmapView | None = None,
) -> HeatmapView:
    """Build the view of `stat` for the given layer indices (all by default) in `cols` columns.

    Each column is a bucket of steps (the same number in every column, from the oldest sampled
    step held to the newest step seen); a bucket shows the largest finite value sampled in it
    (for a norm, the worst case), is NON-FINITE only when the layer really had a NaN/Inf
    gradient (a non-finite count, or an infinite value), EMPTY when it holds no value (no
    gradient, or before the oldest step held) and NO_SAMPLE when none of its steps was
    sampled. The health view (`stat` "health") reads the gradient norm and its references
    from `health`, which a caller drawing many frames keeps (a fresh one reads the whole
    ring). With `previous` (the view of the last frame), the columns that cannot have changed
    are copied from it and only the newest are computed.
    """
    source = "grad_norm" if stat == HEALTH else stat
    scale = STAT_SCALES.get(source, STAT_SCALES["grad_norm"])
    idx = np.arange(store.n_layers) if layers is None else np.asarray(layers, dtype=np.intp)
    cols = max(0, cols)
    names = tuple(store.layers[i].name for i in idx)
    latest = store.latest(source)
    values = latest[idx] if latest.size else np.full(idx.size, np.nan)
    seen = store.latest_step(source)
    known = seen[idx] >= 0 if seen.size else np.zeros(idx.size, bool)
    flags = row_flags(store, names)
    if store.count == 0 or cols == 0 or idx.size == 0:
        codes = np.full((idx.size, cols), EMPTY, np.int16)
        return HeatmapView(stat, names, values, flags, codes, known=known, scale=scale)

    steps = store.steps()
    oldest_step = int(steps[0])
    newest_step = max(int(steps[-1]), store.last_step)
    axis = StepAxis.fit(oldest_step, newest_step, cols)
    k, first_bucket = axis.k, axis.first_bucket
    newest = first_bucket + cols - 1
    if stat == HEALTH:
        health = health if health is not None else HealthIndex()
        health.sync(store)
    basis = _Basis(store, store.run, stat, idx.tobytes(), k, cols, health.generation if health else -1)
    since = _reusable(previous, basis, store, first_bucket)
    # Buckets before the previous view's newest are final, except those holding the oldest
    # sample or older: the ring drops samples there as it wraps.
    oldest = max(first_bucket, oldest_step // k)
    cells = _Cells(store, steps, source, stat, idx, k, scale, health)
    if since is None or previous is None or oldest + 1 >= since:
        c = cells.codes(first_bucket, newest)
    else:
        prev_first = since - cols + 1
        c = np.concatenate(
            [
                cells.codes(first_bucket, oldest),
                previous.codes[:, oldest + 1 - prev_first : since - prev_first],
                cells.codes(since, newest),
            ],
            axis=1,
        )
    return HeatmapView(
        stat,
        names,
        values,
        flags,
        np.ascontiguousarray(c),
        axis=axis,
        known=known,
        scale=scale,
        basis=basis,
        alerts_seen=len(store.alerts),
        captures=capture_spans(store),
    )


@dataclass(frozen=True)
class _Basis:
    """What a view's columns were computed from: columns of two views with equal bases agree."""

    store: RunStore
    run: object
    stat: str
    rows: bytes
    k: int
    cols: int
    health: int

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, _Basis)
            and self.store is other.store
            and self.run is other.run
            and (self.stat, self.rows, self.k, self.cols, self.health)
            == (other.stat, other.rows, other.k, other.cols, other.health)
        )

    def __hash__(self) -> int:
        return hash((id(self.store), id(self.run), self.stat, self.rows, self.k, self.cols, self.health))


def _reusable(previous: HeatmapView | None, basis: _Basis, store: RunStore, first_bucket: int) -> int | None:
    """The previous view's newest bucket when its older columns still hold (from it on is recomputed), else None."""
    if previous is None or previous.basis != basis or previous.last_bucket is None:
        return None
    if basis.stat in LATE_STATS:
        return None  # a new empty column carries the last value forward, or a late value fills an older one
    since = previous.last_bucket
    if not first_bucket <= since < first_bucket + basis.cols or len(store.alerts) < previous.alerts_seen:
        return None
    # An alert about a step before the recomputed buckets would paint a column that is kept.
    first_fresh = since * basis.k
    if any(a.step < first_fresh for a in store.alerts[previous.alerts_seen :]):
        return None
    return since


@dataclass(frozen=True)
class _Cells:
    """Computes the codes of a range of buckets of one view (`codes`)."""

    store: RunStore
    steps: np.ndarray
    """The steps of every sample held, oldest first."""
    source: str
    stat: str
    idx: np.ndarray
    k: int
    scale: LogScale
    health: HealthIndex | None

    def codes(self, first_bucket: int, newest: int) -> np.ndarray:
        """(rows, buckets) codes of buckets first_bucket..newest (k steps each, aligned to step numbers)."""
        store, steps, idx, k, source = self.store, self.steps, self.idx, self.k, self.source
        cols = newest - first_bucket + 1
        out = np.full((cols, idx.size), NO_SAMPLE, np.int16)
        # Columns wholly before the oldest sample held hold nothing, sampled or not.
        before = min(cols, max(0, int(steps[0]) // k - first_bucket))
        out[:before] = EMPTY
        lo = int(np.searchsorted(steps, first_bucket * k, "left"))
        hi = int(np.searchsorted(steps, (newest + 1) * k, "left"))
        m, skip = hi - lo, steps.size - hi
        if m <= 0:
            return out.T
        col = steps[lo:hi] // k - first_bucket
        groups = _Groups.of(col)

        def block(name: str) -> np.ndarray:
            return ring_block(store, name, m, idx, skip)

        def any_in(mask: np.ndarray) -> np.ndarray:
            return groups.reduce(np.logical_or, mask, False)

        vals_b = block(source)
        vals = groups.reduce(np.fmax, vals_b, np.nan)
        counted = NONFINITE_COUNT.get(source, "nonfinite")
        bad = any_in(block(counted) > 0) | any_in(np.isinf(vals_b))
        if source != "grad_norm" and counted == "nonfinite":
            bad |= any_in(np.isinf(block("grad_norm")))
        if source in SPARSE_STATS:
            vals = ffill(vals)
        if self.stat == HEALTH:
            health = self.health if self.health is not None else HealthIndex()
            c = _health_codes(store, health, idx, steps[lo:hi], groups, skip)
        else:
            c = self.scale.codes(vals)
        c[bad] = NONFINITE
        out[col[groups.starts]] = c
        return out.T


@dataclass(frozen=True)
class _Groups:
    """Consecutive samples grouped by column (at least one each): reduces a (samples, ...) block to
    (groups, ...). Where every group but the end ones has the same size (one sample a step, or a
    stride that divides the column) a padded reshape does it, as fast as columns of samples were;
    else `reduceat`."""

    starts: np.ndarray
    """Index of each group's first sample."""
    m: int
    """Samples."""
    size: int
    """Samples in a full group (0: groups of uneven sizes, reduced with `reduceat`)."""
    front: int
    """Samples missing from the first group (padding before the first sample)."""

    @classmethod
    def of(cls, col: np.ndarray) -> _Groups:
        m = int(col.size)
        change = col[1:] != col[:-1]
        if change.all():  # a sample a column (a frame's newest column, or a stride wider than it)
            return cls(np.arange(m), m, 1, 0)
        starts = np.flatnonzero(change) + 1
        starts = np.concatenate(([0], starts))
        lengths = np.diff(starts, append=m)
        size = int(lengths.max())
        if starts.size > 2 and not bool((lengths[1:-1] == size).all()):
            return cls(starts, m, 0, 0)
        return cls(starts, m, size, size - int(lengths[0]))

    def reduce(self, ufunc: np.ufunc, block: np.ndarray, fill: object) -> np.ndarray:
        """`ufunc` over each group's rows of `block` (`fill`: the ufunc's identity, for the padding)."""
        if self.size == 1:
            return block
        if self.size == 0:
            out: np.ndarray = ufunc.reduceat(block, self.starts, axis=0)
            return out
        n = self.starts.size
        padded = np.full((n * self.size, *block.shape[1:]), fill, block.dtype)
        padded[self.front : self.front + self.m] = block
        reduced: np.ndarray = ufunc.reduce(padded.reshape(n, self.size, *block.shape[1:]), axis=1)
        return reduced


def _health_codes(
    store: RunStore, health: HealthIndex, idx: np.ndarray, steps: np.ndarray, groups: _Groups, skip: int
) -> np.ndarray:
    """(sampled buckets, rows) health codes of the samples at `steps` (the newest `skip` left out),
    grouped into buckets by `groups`: each bucket's level furthest from healthy, or the flag that was up."""
    m = steps.size
    starts = groups.starts
    lv = health.levels(store, m, idx, skip)
    hi = groups.reduce(np.maximum, lv, EMPTY)  # EMPTY (-1) is below every level
    lo = groups.reduce(np.minimum, np.where(lv == EMPTY, np.int8(HEALTH_LEVELS), lv), HEALTH_LEVELS)
    codes: np.ndarray = np.where(hi - HEALTH_MID >= HEALTH_MID - lo, hi, lo).astype(np.int16)
    codes[hi == EMPTY] = EMPTY
    drawn = [(r, span) for r, layer in enumerate(idx.tolist()) for span in health.spans(layer)]
    if drawn:
        rows = np.array([r for r, _ in drawn], np.intp)
        kinds = np.array([CELL_FLAGS[span.kind] for _, span in drawn], np.int16)
        first, past = span_rows(steps, [span for _, span in drawn])
        # Samples to sampled buckets: [first, past) covers the buckets of its first to its last sample.
        bucket_of = np.zeros(m + 1, np.intp)
        bucket_of[starts[1:]] = 1
        bucket_of = np.cumsum(bucket_of)
        bucket_of[m] = starts.size
        a = bucket_of[first]
        b = np.where(past > first, bucket_of[np.maximum(past - 1, 0)] + 1, a)
        has_value = codes != EMPTY
        # Least urgent first, so the most urgent flag of a bucket is the one left on it.
        for code in CELL_FLAGS.values():
            sel = kinds == code
            if sel.any():
                codes[paint_mask(a[sel], b[sel], rows[sel], codes.shape) & has_value] = code
    return codes
