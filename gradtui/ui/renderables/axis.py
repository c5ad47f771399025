"""The step axis shared by the heatmap, the charts and the layer page: which steps each
column holds, and the labels under them.

Columns are buckets of `k` steps aligned to step numbers (bucket `step // k`), the newest
step in the last column, so a column keeps its steps as a run grows. A value is drawn in
the column of its own step: a statistic measured every 50 steps sits at those steps, and
a column no value fell in stays empty. The labels name the steps under them: the first
one starts under the first column drawn, not at an empty left edge.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from gradtui.ui.renderables.buckets import bucket_size


class Tick(NamedTuple):
    """A label of the axis: `text` starting at column `col`."""

    col: int
    text: str


@dataclass(frozen=True, slots=True)
class StepAxis:
    """`cols` columns of `k` steps each; column `c` holds steps `(first_bucket + c) * k` to
    `(first_bucket + c + 1) * k - 1`, and the last column holds `last`."""

    first: int
    """The oldest step drawn (the first column may start before it: buckets keep to step numbers)."""
    last: int
    """The newest step: the right edge."""
    cols: int
    k: int
    """Steps per column."""
    first_bucket: int
    """Absolute bucket number (step // k) of column 0."""

    @classmethod
    def fit(cls, first: int, last: int, cols: int) -> StepAxis:
        """Steps `first` to `last` in `cols` columns, by the coarse ladder of `bucket_size`
        (a step of the ladder moves every column, so it changes rarely as a run grows)."""
        cols = max(1, cols)
        last = max(first, last)
        k = bucket_size(last - first + 1, cols)
        first_bucket = last // k - cols + 1
        # Aligned to step numbers, column 0 may start after `first`: its step leaves the screen.
        return cls(max(first, first_bucket * k), last, cols, k, first_bucket)

    def columns(self, steps: np.ndarray) -> np.ndarray:
        """The column of each step (outside 0..cols-1: not on screen)."""
        out: np.ndarray = np.asarray(steps, np.int64) // self.k - self.first_bucket
        return out

    def column(self, step: int) -> int:
        return step // self.k - self.first_bucket

    @property
    def start(self) -> int:
        """The first column drawn: the one holding `first` (those before it hold no step)."""
        return max(0, self.column(self.first))

    def ticks(self, mid: str = "") -> list[Tick]:
        """The first step under the first column drawn, the last step ending under the last
        column, and `mid` centred between them where the room allows (a label never touches
        another)."""
        a, b = str(self.first), str(self.last)
        span = self.cols - self.start
        if len(b) > self.cols:
            return []
        right = Tick(self.cols - len(b), b)
        if self.first == self.last or len(a) + 1 + len(b) > span:
            return [right]
        left = Tick(self.start, a)
        gap = span - len(a) - len(b)
        if not mid or len(mid) + 2 > gap:
            return [left, right]
        return [left, Tick(self.start + len(a) + (gap - len(mid)) // 2, mid), right]

    def line(self, fill: str = " ", mid: str = "", avoid: Collection[int] = ()) -> str:
        """The axis as `cols` characters of `fill` with its labels; a label that would touch a
        column of `avoid` (a marker there) is left out."""
        chars = [fill] * self.cols
        for tick in self.ticks(mid):
            end = tick.col + len(tick.text)
            if any(tick.col - 1 <= c <= end for c in avoid):
                continue
            chars[tick.col : end] = tick.text
        return "".join(chars)
