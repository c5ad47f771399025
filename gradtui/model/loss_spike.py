"""The loss-spike rule's state: a ring of the run's last `window` finite losses, each new loss
judged against it (on a log scale where the losses are positive). `Detectors` turns what it
finds into the run's loss_spike flag."""

from __future__ import annotations

import math

import numpy as np

from gradtui.model.detector_config import DetectorConfig
from gradtui.model.explode import INFO as _INFO
from gradtui.model.explode import MIN_SPREAD as _MIN_SPREAD
from gradtui.model.explode import SCREEN_SHARE, median_spread
from gradtui.model.explode import WARNING as _WARNING

MIN_HISTORY = 5
"""Finite losses needed before the loss can hold back the exploding growth rule."""


class LossSpike:
    """The loss-spike rule: a ring of the run's last `window` finite losses, and each new loss judged
    against it. `update` sets the rule's enter and leave conditions; `Detectors` turns them into the
    run's flag."""

    def __init__(self, config: DetectorConfig) -> None:
        c = self.config = config
        self._ring = np.zeros(c.window)
        self._log_ring = np.zeros(c.window)
        """The ring's losses on a log10 scale (-inf where not positive)."""
        self._nonpositive = 0
        """Entries of the ring that are <= 0 (then the log scale does not apply)."""
        self._rows = 0
        self._head = 0
        self.scale = -math.inf
        """The run's loss scale: the largest median of the ring so far."""
        self.in_range = False
        """This loss is known and at most the run's loss scale (before this loss)."""
        self.level = _INFO
        """The level a spike flag has at this loss: info within the run's loss scale, else warning."""
        self.screen = math.inf
        """A loss at or above this makes the probe sample its step (see `Detectors.run_limits`)."""
        self.judged = False
        """The rule applied to this loss (it is finite and `spike_min_history` losses are known)."""
        self.enter = False
        self.leave = False
        self.loss = math.nan
        """The last judged loss."""
        self._limit = self._back = math.nan
        """Where that loss would raise a spike (above `_limit`) or clear one (at or below `_back`) ..."""
        self._log_scale = False
        """... on a log10 scale when this is set."""

    def update(self, loss: float) -> float:
        """Fold in a loss (NaN when unknown); return its robust z-score in the ring (NaN if unknown)."""
        c = self.config
        self.in_range = False
        self.judged = False
        if not math.isfinite(loss):
            return math.nan
        z = math.nan
        rows = self._rows
        if rows >= MIN_HISTORY:
            # Positive losses are compared on a log scale: their noise grows with their size (near zero a
            # batch can cost 10x the median with nothing wrong).
            log_scale = loss > 0 and self._nonpositive == 0
            ring = self._log_ring if log_scale else self._ring
            med_a, spread_a = median_spread(np.sort(ring if rows == c.window else ring[:rows]))
            cur = math.log10(loss) if log_scale else loss
            med = float(med_a)
            spread = max(float(spread_a), _MIN_SPREAD if log_scale else 1e-3 * abs(med), 1e-12)
            z = (cur - med) / spread
            # As for the gradients: a loss that jumps but stays within where the run has been is info.
            self.in_range = loss <= self.scale
            self.level = _INFO if self.in_range else _WARNING
            self.scale = max(self.scale, 10.0**med if log_scale else med)
            if rows >= c.spike_min_history:
                limit = med + c.spike_z * spread
                if log_scale:
                    limit = max(limit, med + math.log10(c.spike_ratio))
                back = med + c.spike_clear_z * spread
                self.judged = True
                self.enter = cur > limit
                self.leave = cur <= back
                self.loss = loss
                self._limit, self._back, self._log_scale = limit, back, log_scale
                screen = med + SCREEN_SHARE * (limit - med)
                self.screen = 10.0**screen if log_scale else screen
        head = self._head
        if rows == c.window and self._ring[head] <= 0:
            self._nonpositive -= 1
        self._ring[head] = loss
        self._log_ring[head] = math.log10(loss) if loss > 0 else -math.inf
        self._nonpositive += loss <= 0
        self._head = (head + 1) % c.window
        self._rows = min(rows + 1, c.window)
        return z

    def threshold(self, active: bool) -> float:
        """The loss past which the last judged loss raised a spike, or (`active`) would clear it."""
        edge = self._back if active else self._limit
        return 10.0**edge if self._log_scale else edge


__all__ = ["LossSpike"]
