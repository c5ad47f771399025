"""The exploding rule's state over a group of units (the layers, or the run's global norm).

Each group keeps its own ring of log10 norms, because the groups are fed at different
rates: the run's global norm at every step, the layers at sampled steps. `Growth.update`
sets the rule's enter and leave conditions and the level a flag would have at this sample;
`Detectors` turns conditions into flags. The rule is described in README.md (Detectors).
"""

from __future__ import annotations

import copy
import math
from typing import TypeVar

import numpy as np

from gradtui.model.detector_config import DetectorConfig
from gradtui.model.events import ALERT_LEVELS

MIN_SPREAD = 0.05
"""Floor of a robust spread on a log10 scale: a perfectly steady history must not make every wiggle significant."""
MIN_ROWS = 3
"""The baseline holds at least this many samples (the newest), however far apart they are."""
SCREEN_SHARE = 0.5
"""A value this share of the way (on a log scale) from its recent median to the raise threshold
already makes the probe sample its step whole (see `Detectors.run_limits`)."""
INFO, WARNING, CRITICAL = (ALERT_LEVELS.index(x) for x in ("info", "warning", "critical"))

_State = TypeVar("_State")


def copy_state(rule: _State) -> _State:
    """A copy of a rule's state that its updates leave alone: its arrays copied, the rest (numbers,
    the frozen config) shared. A tenth of `copy.deepcopy`'s cost, which the detectors pay every
    `KEEP_STEPS` steps on the publishing thread."""
    new = copy.copy(rule)
    for name, value in vars(rule).items():
        if isinstance(value, np.ndarray):
            setattr(new, name, value.copy())
    return new


def median_spread(sorted_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Median and robust standard deviation (IQR / 1.349) of each column of an axis-0-sorted array."""
    n = sorted_rows.shape[0]
    med = 0.5 * (sorted_rows[(n - 1) // 2] + sorted_rows[n // 2])
    iqr = sorted_rows[(3 * (n - 1)) // 4] - sorted_rows[(n - 1) // 4]
    return med, iqr / 1.349


class Growth:
    """The exploding rule over `units` norms fed together (one ring, one head)."""

    def __init__(self, units: int, config: DetectorConfig) -> None:
        c = self.config = config
        self.units = units
        self._log_ratio = math.log10(c.explode_ratio)
        self._grow_floor = max(MIN_SPREAD * c.explode_z, self._log_ratio)
        """Least growth (log10) past the peak that raises a flag: MIN_SPREAD robust deviations, or the ratio."""
        self._log_clear = math.log10(c.explode_clear_ratio)
        self.log_ceiling = math.log10(c.explode_ceiling)
        self._log_warn = math.log10(c.explode_warn_ratio)
        self._log_scale_ratio = math.log10(c.explode_scale_ratio)
        self._log_compound = math.log10(c.explode_compound_ratio)
        self.hist = np.zeros((c.window, units))
        """Ring of log10 norms, kept dense by repeating a unit's last value."""
        self.hist_seen = np.zeros(units, np.int64)
        self.last_x = np.zeros(units)
        """Each unit's last valid log10 norm (the current one after `update`)."""
        self.peak = np.full(units, -np.inf)
        self.scale = np.full(units, -np.inf)
        """The run's scale: the largest window median of each unit's log10 norm so far."""
        self.rise = np.zeros(units, np.int64)
        """Consecutive samples at which the norm grew by explode_compound_ratio or more."""
        self.jump = np.zeros(units)
        self.level = np.zeros(units, np.int8)
        """The level an exploding flag on each unit would have at this sample."""
        self.ceiling_hit = np.zeros(units, bool)
        self.med = np.zeros(units)
        self.grow = np.full(units, np.inf)
        """log10 of the norm past which each unit's flag is raised (before the loss condition)."""
        self.enter = np.zeros(units, bool)
        self.leave = np.zeros(units, bool)
        self._hist_step = np.zeros(c.window, np.int64)
        """The step of each row of `hist`."""
        self._all_seen = False
        self._history = False
        """Every unit has `explode_min_history` samples."""
        self.rows = 0
        self._head = 0

    def update(
        self, step: int, x: np.ndarray, valid: np.ndarray, loss_z: float, loss_in_range: bool, was_on: np.ndarray
    ) -> None:
        """Fold in the sample of `step`: log10 norms `x` (valid where `valid`), the loss's robust
        z-score (NaN when unknown), whether the loss is within the run's range, and which units' flag
        condition held at their previous sample."""
        c = self.config
        # Every unit valid (most samples): the masks below reduce to plain copies.
        whole = np.count_nonzero(valid) == self.units
        if not self._all_seen:
            new = valid & (self.hist_seen == 0)
            if np.count_nonzero(new):
                # A unit seen for the first time starts from a flat history at its first value.
                self.hist[:, new] = x[new]
        np.logical_and(valid, x > self.log_ceiling, out=self.ceiling_hit)
        enter = self.enter
        if self.rows:
            med, spread = median_spread(np.sort(self._recent(step), axis=0))
            steps = max(1, step - int(self._hist_step[self._head - 1]))
            np.maximum(self.peak - c.explode_memory * steps, med, out=self.peak)  # decays per step
            if not self._all_seen:
                self.peak[self.hist_seen == 0] = -np.inf
            # max(spread, MIN_SPREAD) * z, at least the raise ratio: z > 0, so the floor goes after.
            spread *= c.explode_z
            self.grow = self.peak + np.maximum(spread, self._grow_floor, out=spread)
            self.med = med
            enter.fill(False)
            # A gradient jump while the loss holds or falls is a run starting to learn, not a blow-up;
            # an unknown loss does not hold the rule back.
            if not loss_z < c.explode_loss_z:
                np.logical_and(valid, x >= self.grow, out=enter)
                if not self._history:
                    enter &= self.hist_seen >= c.explode_min_history
            enter |= self.ceiling_hit
            self.leave = valid & (x - med <= self._log_clear) & ~self.ceiling_hit
            if self._all_seen:
                np.maximum(self.scale, med, out=self.scale)
            else:
                seen = self.hist_seen > 0
                self.scale[seen] = np.maximum(self.scale[seen], med[seen])
        else:
            enter[:] = self.ceiling_hit
            self.leave = np.zeros(self.units, bool)
        self._severity(x, valid, whole, loss_in_range, was_on)
        if whole:
            self.last_x[:] = x
        else:
            self.last_x[valid] = x[valid]
        self.hist_seen += valid
        if not self._all_seen:
            self._all_seen = np.count_nonzero(self.hist_seen) == self.units
        if not self._history:
            self._history = np.count_nonzero(self.hist_seen >= c.explode_min_history) == self.units
        self.hist[self._head] = self.last_x
        self._hist_step[self._head] = step
        self._head = (self._head + 1) % c.window
        self.rows = min(self.rows + 1, c.window)

    def _recent(self, step: int) -> np.ndarray:
        """The rows of the last `window` steps, or the `MIN_ROWS` newest when fewer: at a sampling
        stride the baseline is the recent past in steps, not a window of samples reaching far back."""
        c = self.config
        rows = self.rows
        hist = self.hist if rows == c.window else self.hist[:rows]
        oldest = int(self._hist_step[self._head if rows == c.window else 0])  # rows come in step order
        if oldest >= step - c.window:
            return hist
        steps = self._hist_step[:rows]
        young = steps >= step - c.window
        if np.count_nonzero(young) < MIN_ROWS:
            young[(self._head - 1 - np.arange(min(MIN_ROWS, rows))) % c.window] = True
        return hist[young]

    def _severity(self, x: np.ndarray, valid: np.ndarray, whole: bool, loss_in_range: bool, was_on: np.ndarray) -> None:
        """The level an exploding flag on each unit has at this sample (`level`).

        The raise rule compares a norm with its recent past, so it fires early; the level compares
        it with the whole run. Measured on long runs (benchmarks/detectors.py), a hard batch on a
        converged run jumps 10x or more over its recent median, with a loss that stays within what
        the run's early batches cost, and returns at the next sample (a memorising LSTM's can reach
        13x the run's scale), while every blow-up either compounds (2x or more per sample, two
        samples in a row, each past the raise threshold) or stays past 10x the run's scale.
        """
        jump = np.subtract(x, self.last_x, out=self.jump)
        # Growth counts only while the norm is still past the raise threshold: a noisy norm near
        # convergence doubles twice in a row now and then on its way back up from a dip.
        grew = self.enter & (jump >= self._log_compound)
        if not self._all_seen:
            grew &= self.hist_seen > 0
        self.rise += grew
        self.rise *= grew if whole else grew | ~valid
        above = x - self.scale
        # One sample with a loss inside the run's range may be a hard batch: judged by its height
        # only if the next sample is still past the raise threshold.
        judged = valid if not loss_in_range else valid & was_on
        level = self.level
        level.fill(INFO)
        level[judged & (above >= self._log_warn)] = WARNING
        critical = (judged & (above >= self._log_scale_ratio)) | (self.rise >= self.config.explode_critical_steps)
        level[critical | self.ceiling_hit] = CRITICAL

    def shift(self, steps: int) -> None:
        """Renumber the history `steps` later (the run was rolled back to where it was taken, and its
        step count went on): its rows stay as recent as they were."""
        self._hist_step[: self.rows] += steps

    def screen(self) -> np.ndarray:
        """Per unit, the norm at or past which its flag might be raised at its next sample: halfway
        (log scale) from its recent median to the growth threshold once the rule applies (the window
        moves before the next comparison: a screen keeps a margin), the ceiling before."""
        c = self.config
        limit = np.full(self.units, c.explode_ceiling)
        if self.rows:
            ready = self.hist_seen >= c.explode_min_history
            with np.errstate(over="ignore"):
                grown = 10.0 ** (self.med + SCREEN_SHARE * (self.grow - self.med))
            np.minimum(limit, grown, out=limit, where=ready)
        return limit

    def threshold(self, u: int, up: bool, escalated: bool) -> float:
        """The threshold unit `u`'s flag crossed at this sample (for an escalation, its new level's)."""
        c = self.config
        if self.ceiling_hit[u] or not self.rows:
            return c.explode_ceiling
        if escalated:
            return float(10.0 ** self.escalation_limit(u))
        limit = self.med[u] + self._log_clear if not up else min(self.grow[u], self.log_ceiling)
        return float(10.0**limit)

    def escalation_limit(self, u: int, level: int | None = None) -> float:
        """log10 of the threshold a flag on `u` crossed to reach its present level."""
        if level == WARNING:
            return float(self.scale[u] + self._log_warn)
        if self.rise[u] >= self.config.explode_critical_steps:
            return float(self.last_x[u] - self.jump[u] + self._log_compound)
        return float(self.scale[u] + self._log_scale_ratio)
