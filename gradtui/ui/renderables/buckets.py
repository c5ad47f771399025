"""Buckets of steps: how many steps a heatmap or chart column holds, and reading them from the ring."""

from __future__ import annotations

import numpy as np

from gradtui.model.events import FLAG_PRIORITY, primary_flag
from gradtui.model.layer_stats import LAYER_STATS
from gradtui.model.store import RunStore

# Detail statistics arrive every `detail_every` sampled steps: a sampled column without one shows
# the last known value instead of a gap (a column with no sample at all stays "not sampled").
# grad_norm is never filled: NaN there means "no gradient".
SPARSE_STATS = frozenset(name for name, spec in LAYER_STATS.items() if spec.when in ("detail", "update"))
# A capture's statistics exist only over the steps it ran: outside them a column stays empty, never
# filled. Like the update ratio they may land after their step's row was drawn: never reused.
LATE_STATS = frozenset(name for name, spec in LAYER_STATS.items() if spec.when != "sampled")


def bucket_size(count: int, cols: int) -> int:
    """Steps per column: the smallest of 1, 2, 3, 4, 6, 8, 12, 16, ... that fits `count` in `cols`.

    A coarse ladder changes rarely as a run grows (and buckets are aligned to step numbers:
    `gradtui.ui.renderables.axis`), so columns shift by one whole column as steps arrive instead
    of reshuffling every frame; steps of at most 1.5x keep at least two thirds of the width used.
    """
    cols = max(1, cols)
    k = 1
    while k * cols < count:
        k = k * 3 // 2 if k & (k - 1) == 0 and k >= 2 else (k * 4 // 3 if k > 2 else k + 1)
    return k


def ring_block(store: RunStore, stat: str, last: int, layers: np.ndarray, skip: int = 0) -> np.ndarray:
    """(last, len(layers)) float32 block of the ring before its newest `skip` steps, oldest first."""
    if last <= 0 or layers.size == 0:
        return np.full((max(0, last), layers.size), np.nan, np.float32)
    block = store.window(stat, last, layers, skip)
    if block.shape[0] < last:  # fewer steps held than asked for: pad the old end
        pad = np.full((last - block.shape[0], layers.size), np.nan, np.float32)
        block = np.concatenate([pad, block])
    return block


def ffill(values: np.ndarray) -> np.ndarray:
    """Carry the last finite value forward down axis 0 (time) where a value is NaN."""
    valid = np.isfinite(values)
    idx = np.where(valid, np.arange(values.shape[0])[:, None], 0)
    np.maximum.accumulate(idx, axis=0, out=idx)
    filled = np.take_along_axis(values, idx, axis=0)
    # Cells before the first valid value (idx 0 but row 0 invalid) stay as they were.
    seen = np.maximum.accumulate(valid, axis=0)
    return np.where(seen & ~valid & ~np.isinf(values), filled, values)


def row_flags(store: RunStore, names: tuple[str, ...]) -> tuple[str | None, ...]:
    """The most urgent active flag of each named row (looked up per shown row: a blow-up can hold
    a flag on every one of thousands of layers)."""
    active = store.active_flags
    if len(active) <= len(names):
        by_layer: dict[str | None, list[str]] = {}
        for layer, kind in active:
            by_layer.setdefault(layer, []).append(kind)
        return tuple(primary_flag(by_layer[n]) if n in by_layer else None for n in names)
    return tuple(next((k for k in FLAG_PRIORITY if (n, k) in active), None) for n in names)
