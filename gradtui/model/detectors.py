"""Gradient-health detectors: vanishing, exploding, non-finite, dead layers and loss spikes.

Pure NumPy, run by the probe on every sampled step (so alerts are on the record even with
no viewer) and by `gradtui report` over a record. Every detector is a per-unit state
machine with hysteresis: a flag is raised once its enter condition has held for a minimum
number of consecutive samples, and cleared once its stricter leave condition has held for
`clear_steps` samples. Between the two thresholds nothing moves, so a value hovering at a
threshold cannot make a flag flicker. `update()` is vectorised over layers and keeps only
fixed-size ring buffers: its cost per call and its memory stay flat however long the run.
The rules and their defaults are described in README.md (Detectors).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from gradtui.model.detector_config import DetectorConfig
from gradtui.model.events import ALERT_LEVELS, FLAG_PRIORITY, VERDICTS, Alert, StepStats

# Rows of the state matrices, in flag priority order, so the first active row is the verdict.
_KINDS: tuple[str, ...] = FLAG_PRIORITY
_NONFINITE, _EXPLODING, _VANISHING, _DEAD, _SPIKE = (_KINDS.index(k) for k in (
    "nonfinite", "exploding", "vanishing", "dead", "loss_spike"))

_MIN_SPREAD = 0.05
"""Floor of a robust spread on a log10 scale: a perfectly steady history must not make every wiggle significant."""
_WEIGHT_RULE_GAP = -1.0
"""The gradient-to-weight vanishing rule also needs the layer 10x (log10: 1) below the largest layer."""
_LOSS_MIN_HISTORY = 5
"""Finite losses needed before the loss can hold back the exploding growth rule."""
_AMP_SKIPS_TOLERATED = 30
"""Consecutive GradScaler-skipped samples ignored; beyond that their non-finite gradients count."""
_INFO, _WARNING, _CRITICAL = (ALERT_LEVELS.index(x) for x in ("info", "warning", "critical"))
_KIND_LEVEL = np.array([_CRITICAL, _INFO, _WARNING, _WARNING, _WARNING], np.int8)
"""Level of a raised flag by kind (rows of `_KINDS`); exploding and loss spikes are judged per sample instead."""


def _median_spread(sorted_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Median and robust standard deviation (IQR / 1.349) of each column of an axis-0-sorted array."""
    n = sorted_rows.shape[0]
    med = 0.5 * (sorted_rows[(n - 1) // 2] + sorted_rows[n // 2])
    iqr = sorted_rows[(3 * (n - 1)) // 4] - sorted_rows[(n - 1) // 4]
    return med, iqr / 1.349


class Detectors:
    """Online detectors over a stream of `StepStats`.

    Args:
        layers: Layer names, in the order of the per-layer arrays of `StepStats`.
        config: Thresholds; the defaults when None.
        numel: Parameter count of each layer. Vanishing compares per-parameter RMS
            (norm / sqrt(numel)) across layers when given, plain norms otherwise.
    """

    def __init__(
        self, layers: Sequence[str], config: DetectorConfig | None = None, *, numel: Sequence[int] | None = None
    ) -> None:
        self.layers = tuple(layers)
        self.config = config or DetectorConfig()
        c = self.config
        n = self._n = len(self.layers)
        if numel is not None and len(numel) != n:
            raise ValueError(f"numel has {len(numel)} entries for {n} layers")
        sizes = np.ones(n) if numel is None else np.maximum(np.asarray(numel, np.float64), 1.0)
        self._log_sqrt_numel = 0.5 * np.log10(sizes)
        self._names: tuple[str | None, ...] = (*self.layers, None)
        units = n + 1  # every layer, then the run itself (global norm, loss)
        shape = (len(_KINDS), units)
        self._active = np.zeros(shape, bool)
        self._level = np.zeros(shape, np.int8)
        """Level of each active flag (an index into ALERT_LEVELS)."""
        self._on = np.zeros(shape, np.int64)
        self._off = np.zeros(shape, np.int64)
        self._min_on = np.array([1, 1, c.vanish_steps, c.dead_steps, 1], np.int64)[:, None]
        self._enter = np.zeros(shape, bool)
        self._leave = np.zeros(shape, bool)
        self._seen = np.zeros(shape, bool)
        self._clear_steps = c.clear_steps
        self._by_weight = np.zeros(n, bool)
        self._ceiling_hit = np.zeros(units, bool)
        self._weight_norm = np.full(n, np.nan)
        self._log_vanish = math.log10(c.vanish_ratio)
        self._log_vanish_clear = math.log10(c.vanish_clear_ratio)
        self._log_ratio = math.log10(c.explode_ratio)
        self._log_clear = math.log10(c.explode_clear_ratio)
        self._log_ceiling = math.log10(c.explode_ceiling)
        self._log_warn = math.log10(c.explode_warn_ratio)
        self._log_scale_ratio = math.log10(c.explode_scale_ratio)
        self._log_compound = math.log10(c.explode_compound_ratio)
        # Exploding: ring of log10 norms (layers, then global), kept dense by repeating a unit's last value.
        self._hist = np.zeros((c.window, units))
        self._hist_seen = np.zeros(units, np.int64)
        self._last_x = np.zeros(units)
        self._peak = np.full(units, -np.inf)
        self._scale = np.full(units, -np.inf)
        """Per unit: the run's scale, the largest window median of its log10 norm so far."""
        self._rise = np.zeros(units, np.int64)
        """Per unit: consecutive samples at which the norm grew by explode_compound_ratio or more."""
        self._jump = np.zeros(units)
        self._xlevel = np.zeros(units, np.int8)
        """Per unit: the level an exploding flag would have at this sample."""
        self._x = np.zeros(units)
        self._valid = np.zeros(units, bool)
        self._all_seen = False
        self._rows = 0
        self._head = 0
        # This step's intermediates, read back only for the few units whose flag changes.
        self._gn = np.zeros(n)
        self._counts = np.zeros(n, np.int64)
        self._glob = math.nan
        self._rel = np.zeros(n)
        self._gw = np.zeros(n)
        self._med = np.zeros(units)
        self._grow = np.zeros(units)
        self._spike = (math.nan, math.nan)
        self._loss_scale = -math.inf
        """The run's loss scale: the largest median of the loss window so far."""
        self._spike_level = _INFO
        self._loss_in_range = False
        """This sample's loss is known and at most the run's loss scale (before this sample)."""
        # Loss spike: ring of finite losses.
        self._loss = np.zeros(c.window)
        self._log_loss = np.zeros(c.window)
        self._loss_nonpositive = 0
        """Entries of the loss ring that are <= 0 (then the log scale does not apply)."""
        self._loss_rows = 0
        self._loss_head = 0
        self._amp_skips = 0
        self.first_nonfinite: tuple[int, str] | None = None
        """(step, layer) of the first non-finite gradient seen, or None."""
        self.samples = 0
        """Number of `update` calls so far."""

    # ------------------------------------------------------------------ update

    def update(self, stats: StepStats) -> list[Alert]:
        """Fold one sampled step in.

        Returns:
            An `Alert` for every flag raised (`active=True`) or cleared (`active=False`) at this step.
        """
        n = self._n
        gn = np.asarray(stats.grad_norm, np.float64)
        if gn.shape != (n,):
            raise ValueError(f"StepStats has per-layer arrays of shape {gn.shape}, the detectors watch {n} layers")
        self.samples += 1
        self._enter.fill(False)
        self._leave.fill(False)
        self._seen.fill(False)
        # NaN and zero norms are expected here; every comparison below masks them.
        with np.errstate(all="ignore"):
            loss_z = self._loss_spike(float(stats.loss))
            # A GradScaler overflow is routine (the scaler skips the step and lowers its scale): such a
            # step says nothing about the gradients. A long run of them does.
            self._amp_skips = self._amp_skips + 1 if stats.amp_skipped else 0
            if not 0 < self._amp_skips <= _AMP_SKIPS_TOLERATED:
                self._gradients(stats, gn, loss_z)
        return self._transitions(stats.step)

    def _gradients(self, stats: StepStats, gn: np.ndarray, loss_z: float) -> None:
        n = self._n
        enter, leave, seen = self._enter, self._leave, self._seen
        has = np.asarray(stats.has_grad, bool)
        finite = np.isfinite(gn)
        ok = has & finite
        if stats.weight_norm is not None:
            self._weight_norm[:] = stats.weight_norm
        self._gn = gn

        # Non-finite: NaN/Inf values, or a norm that overflowed although every value was finite.
        counts = self._counts = np.asarray(stats.nonfinite)
        bad = has & ((counts > 0) | ~finite)
        enter[_NONFINITE, :n] = bad
        leave[_NONFINITE, :n] = ok & (counts == 0)
        seen[_NONFINITE, :n] = has
        if self.first_nonfinite is None and bad.any():
            self.first_nonfinite = (stats.step, self.layers[int(np.argmax(bad))])

        # Dead: a gradient exactly zero.
        np.logical_and(ok, gn == 0.0, out=enter[_DEAD, :n])
        pos = ok & (gn > 0.0)
        leave[_DEAD, :n] = pos
        seen[_DEAD, :n] = ok

        log_gn = np.log10(gn)
        glob = float(stats.global_norm)
        self._glob = glob
        self._vanishing(pos, gn, log_gn)
        self._exploding(pos, log_gn, math.log10(glob) if glob > 0 and math.isfinite(glob) else math.nan, loss_z)

    def _vanishing(self, pos: np.ndarray, gn: np.ndarray, log_gn: np.ndarray) -> None:
        c = self.config
        n = self._n
        # An exploding layer would make every other layer look vanishing: it is no reference.
        ref_ok = pos & ~self._active[_EXPLODING, :n]
        if np.count_nonzero(ref_ok) < 2:
            return
        log_rms = log_gn - self._log_sqrt_numel
        rel = self._rel = log_rms - np.max(log_rms, where=ref_ok, initial=-np.inf)
        gw = self._gw = gn / self._weight_norm
        by_weight = pos & (gw < c.vanish_weight_ratio) & (rel < _WEIGHT_RULE_GAP)
        by_depth = pos & (rel < self._log_vanish)
        np.logical_or(by_depth, by_weight, out=self._enter[_VANISHING, :n])
        self._leave[_VANISHING, :n] = pos & (rel > self._log_vanish_clear) & ~by_weight
        self._seen[_VANISHING, :n] = pos
        np.logical_and(by_weight, ~by_depth, out=self._by_weight)

    def _exploding(self, pos: np.ndarray, log_gn: np.ndarray, log_glob: float, loss_z: float) -> None:
        c = self.config
        n = self._n
        x, valid = self._x, self._valid
        x[:n] = log_gn
        x[n] = log_glob
        valid[:n] = pos
        valid[n] = math.isfinite(log_glob)
        if not self._all_seen:
            new = valid & (self._hist_seen == 0)
            if new.any():
                # A unit seen for the first time starts from a flat history at its first value.
                self._hist[:, new] = x[new]
        np.logical_and(valid, x > self._log_ceiling, out=self._ceiling_hit)
        if self._rows:
            hist = self._hist if self._rows == c.window else self._hist[: self._rows]
            med, spread = _median_spread(np.sort(hist, axis=0))
            np.maximum(spread, _MIN_SPREAD, out=spread)
            np.maximum(self._peak - c.explode_memory, med, out=self._peak)
            if not self._all_seen:
                self._peak[self._hist_seen == 0] = -np.inf
            spread *= c.explode_z
            grow = self._grow = self._peak + np.maximum(spread, self._log_ratio, out=spread)
            self._med = med
            enter = self._enter[_EXPLODING]
            # A gradient jump while the loss holds or falls is a run starting to learn, not a blow-up;
            # an unknown loss does not hold the rule back.
            if not loss_z < c.explode_loss_z:
                np.logical_and(valid, x >= grow, out=enter)
                enter &= self._hist_seen >= c.explode_min_history
            enter |= self._ceiling_hit
            self._leave[_EXPLODING] = valid & (x - med <= self._log_clear) & ~self._ceiling_hit
            if self._all_seen:
                np.maximum(self._scale, med, out=self._scale)
            else:
                seen = self._hist_seen > 0
                self._scale[seen] = np.maximum(self._scale[seen], med[seen])
        else:
            self._enter[_EXPLODING] = self._ceiling_hit
        self._seen[_EXPLODING] = valid
        self._severity(x, valid)
        self._last_x[valid] = x[valid]
        self._hist_seen += valid
        if not self._all_seen:
            self._all_seen = bool(self._hist_seen.all())
        self._hist[self._head] = self._last_x
        self._head = (self._head + 1) % c.window
        self._rows = min(self._rows + 1, c.window)

    def _severity(self, x: np.ndarray, valid: np.ndarray) -> None:
        """The level an exploding flag on each unit has at this sample (`_xlevel`).

        The raise rule compares a norm with its recent past, so it fires early; the level compares
        it with the whole run. Measured on long runs (benchmarks/detectors.py), a hard batch on a
        converged run jumps 10x or more over its recent median, with a loss that stays within what
        the run's early batches cost, and returns at the next sample (a memorising LSTM's can reach
        13x the run's scale), while every blow-up either compounds (2x or more per sample, two
        samples in a row, each past the raise threshold) or stays past 10x the run's scale.
        """
        jump = np.subtract(x, self._last_x, out=self._jump)
        # Growth counts only while the norm is still past the raise threshold: a noisy norm near
        # convergence doubles twice in a row now and then on its way back up from a dip.
        grew = self._enter[_EXPLODING] & (self._hist_seen > 0) & (jump >= self._log_compound)
        self._rise += grew
        self._rise *= grew | ~valid
        above = x - self._scale
        # One sample with a loss inside the run's range may be a hard batch: judged by its height
        # only if the next sample is still past the raise threshold.
        judged = valid if not self._loss_in_range else valid & (self._on[_EXPLODING] > 0)
        level = self._xlevel
        level.fill(_INFO)
        level[judged & (above >= self._log_warn)] = _WARNING
        critical = (judged & (above >= self._log_scale_ratio)) | (self._rise >= self.config.explode_critical_steps)
        level[critical | self._ceiling_hit] = _CRITICAL

    def _loss_spike(self, loss: float) -> float:
        """Update the loss-spike state; return the loss's robust z-score in its window (NaN if unknown)."""
        c = self.config
        n = self._n
        self._loss_in_range = False
        if not math.isfinite(loss):
            return math.nan
        z = math.nan
        rows = self._loss_rows
        if rows >= _LOSS_MIN_HISTORY:
            # Positive losses are compared on a log scale: their noise grows with their size (near zero a
            # batch can cost 10x the median with nothing wrong).
            log_scale = loss > 0 and self._loss_nonpositive == 0
            ring = self._log_loss if log_scale else self._loss
            med_a, spread_a = _median_spread(np.sort(ring if rows == c.window else ring[:rows]))
            cur = math.log10(loss) if log_scale else loss
            med = float(med_a)
            spread = max(float(spread_a), _MIN_SPREAD if log_scale else 1e-3 * abs(med), 1e-12)
            z = (cur - med) / spread
            # As for the gradients: a loss that jumps but stays within where the run has been is info.
            self._loss_in_range = loss <= self._loss_scale
            self._spike_level = _INFO if self._loss_in_range else _WARNING
            self._loss_scale = max(self._loss_scale, 10.0**med if log_scale else med)
            if rows >= c.spike_min_history:
                limit = med + c.spike_z * spread
                if log_scale:
                    limit = max(limit, med + math.log10(c.spike_ratio))
                back = med + c.spike_clear_z * spread
                self._enter[_SPIKE, n] = cur > limit
                self._leave[_SPIKE, n] = cur <= back
                self._seen[_SPIKE, n] = True
                edge = back if self._active[_SPIKE, n] else limit
                self._spike = (loss, 10.0**edge if log_scale else edge)
        head = self._loss_head
        if rows == c.window and self._loss[head] <= 0:
            self._loss_nonpositive -= 1
        self._loss[head] = loss
        self._log_loss[head] = math.log10(loss) if loss > 0 else -math.inf
        self._loss_nonpositive += loss <= 0
        self._loss_head = (head + 1) % c.window
        self._loss_rows = min(rows + 1, c.window)
        return z

    def _transitions(self, step: int) -> list[Alert]:
        # Consecutive counts (enter and leave imply seen): an observed sample that misses the condition
        # resets its count, an unobserved one (no gradient for that layer, a skipped AMP step) keeps it.
        unseen = ~self._seen
        self._on += self._enter
        self._on *= self._enter | unseen
        self._off += self._leave
        self._off *= self._leave | unseen
        active, level = self._active, self._level
        raised = ~active & (self._on >= self._min_on)
        cleared = active & (self._off >= self._clear_steps)
        # A flag that is up is raised again when its level rises (a hard-batch jump that keeps growing).
        escalated = np.zeros_like(raised)
        escalated[_EXPLODING] = active[_EXPLODING] & ~cleared[_EXPLODING] & (self._xlevel > level[_EXPLODING])
        n = self._n
        escalated[_SPIKE, n] = active[_SPIKE, n] & ~cleared[_SPIKE, n] & (self._spike_level > level[_SPIKE, n])
        changed = raised | cleared | escalated
        if not changed.any():
            return []
        alerts: list[Alert] = []
        for k, u in zip(*np.nonzero(changed), strict=True):
            up = not cleared[k, u]
            if up:
                level[k, u] = (
                    self._xlevel[u] if k == _EXPLODING else self._spike_level if k == _SPIKE else _KIND_LEVEL[k]
                )
            value, threshold = self._value_threshold(int(k), int(u), up, bool(escalated[k, u]))
            alerts.append(
                Alert(
                    step=step,
                    layer=self._names[u],
                    kind=_KINDS[k],
                    active=up,
                    value=value,
                    threshold=threshold,
                    message=self._message(int(k), int(u), up, value, threshold, bool(escalated[k, u])),
                    level=ALERT_LEVELS[level[k, u]],
                )
            )
        active |= raised
        active &= ~cleared
        level[cleared] = _INFO
        return alerts

    def _value_threshold(self, k: int, u: int, up: bool, escalated: bool = False) -> tuple[float, float]:
        """The value that tripped (or released) flag `k` on unit `u` at this step, and the threshold it
        crossed (for an escalation: the one of its new level)."""
        c = self.config
        if k == _SPIKE:
            return self._spike
        if k == _EXPLODING:
            v = self._glob if u == self._n else float(self._gn[u])
            if self._ceiling_hit[u] or not self._rows:
                return v, c.explode_ceiling
            if escalated:
                return v, float(10.0 ** self._escalation_limit(u))
            limit = self._med[u] + self._log_clear if not up else min(self._grow[u], self._log_ceiling)
            return v, float(10.0**limit)
        if k == _VANISHING:
            if self._by_weight[u]:
                return float(self._gw[u]), c.vanish_weight_ratio
            return float(10.0 ** self._rel[u]), c.vanish_ratio if up else c.vanish_clear_ratio
        if k == _NONFINITE:
            count = int(self._counts[u])
            return (float(count) if count > 0 else float(self._gn[u])), 0.0
        return float(self._gn[u]), 0.0

    def _escalation_limit(self, u: int) -> float:
        """log10 of the threshold an exploding flag on `u` crossed to reach its present level."""
        if self._level[_EXPLODING, u] == _WARNING:
            return float(self._scale[u] + self._log_warn)
        if self._rise[u] >= self.config.explode_critical_steps:
            return float(self._last_x[u] - self._jump[u] + self._log_compound)
        return float(self._scale[u] + self._log_scale_ratio)

    def _severity_words(self, u: int) -> str:
        """Why an exploding flag on `u` has its level: "; critical: ..." (nothing for a ceiling hit)."""
        c = self.config
        level = int(self._level[_EXPLODING, u])
        if self._ceiling_hit[u] or not self._rows:
            return ""
        scale = 10.0 ** float(self._scale[u])
        times = 10.0 ** float(self._last_x[u] - self._scale[u])  # the norm now, or the last one seen
        if level == _CRITICAL and self._rise[u] >= c.explode_critical_steps:
            return f"; critical: grown {c.explode_compound_ratio:g}x or more at {int(self._rise[u])} samples in a row"
        if level == _CRITICAL:
            return f"; critical: {times:.3g}x the run's scale {scale:.3g}"
        if level == _WARNING:
            return f"; warning: {times:.3g}x the run's scale {scale:.3g}"
        return f"; info: within {c.explode_warn_ratio:g}x of the run's scale {scale:.3g}, as a hard batch is"

    def _message(self, k: int, u: int, up: bool, v: float, t: float, escalated: bool = False) -> str:
        c = self.config
        norm = "global gradient norm" if u == self._n else "gradient norm"
        if escalated and k == _SPIKE:
            return f"loss {v:.4g} above its recent range" + self._spike_words()
        if escalated:
            return f"{norm} {v:.3g} past {t:.3g}" + self._severity_words(u)
        if not up:
            return {
                _NONFINITE: "gradient finite again",
                _EXPLODING: f"{norm} {v:.3g} back within {c.explode_clear_ratio:g}x of its recent median",
                _VANISHING: f"gradient RMS back to {v:.2g}x the largest layer's",
                _DEAD: f"gradient nonzero again ({v:.3g})",
                _SPIKE: f"loss {v:.4g} back within its recent range",
            }[k]
        if k == _NONFINITE:
            what = f"{v:.0f} non-finite gradient values" if v >= 1 else f"gradient norm {v}"
            first = self.first_nonfinite
            return what + (f"; first in the run: layer {first[1]!r} at step {first[0]}" if first else "")
        if k == _EXPLODING:
            if self._ceiling_hit[u]:
                return f"{norm} {v:.3g} above the ceiling {c.explode_ceiling:g}"
            return f"{norm} {v:.3g} jumped past {t:.3g}, over {c.explode_ratio:g}x its recent level" + (
                self._severity_words(u)
            )
        if k == _VANISHING:
            if self._by_weight[u]:
                return f"||g||/||w|| = {v:.2g}, below {t:g}, for {c.vanish_steps} samples"
            return f"gradient RMS {v:.2g}x the largest layer's, below {t:g}, for {c.vanish_steps} samples"
        if k == _DEAD:
            return f"gradient exactly zero for {c.dead_steps} samples"
        return f"loss {v:.4g} above {t:.4g}, far above its recent range" + self._spike_words()

    def _spike_words(self) -> str:
        scale = f"{self._loss_scale:.4g}"
        if self._level[_SPIKE, self._n] == _INFO:
            return f"; info: within the run's earlier range (up to {scale})"
        return f"; warning: above the run's earlier range (up to {scale})"

    # ------------------------------------------------------------------ state

    def verdicts(self) -> dict[str, str]:
        """Layer name -> healthy | vanishing | exploding | nonfinite | dead: flags now (info-level
        ones aside), by priority."""
        a = self._active[: _DEAD + 1, : self._n] & (self._level[: _DEAD + 1, : self._n] > _INFO)
        # Rows are in priority order, so the first active row is the verdict.
        first = np.where(a.any(axis=0), np.argmax(a, axis=0), -1)
        return {name: (_KINDS[k] if k >= 0 else "healthy") for name, k in zip(self.layers, first.tolist(), strict=True)}

    def active(self) -> list[tuple[str | None, str, str]]:
        """(layer, or None for the run, kind and level) of every flag raised now."""
        return [
            (self._names[u], _KINDS[k], ALERT_LEVELS[self._level[k, u]])
            for k, u in zip(*np.nonzero(self._active), strict=True)
        ]


__all__ = ["VERDICTS", "DetectorConfig", "Detectors"]
