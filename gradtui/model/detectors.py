"""Gradient-health detectors: vanishing, exploding, non-finite, dead layers and loss spikes.

Pure NumPy, run by the probe on every step (the run-wide rules) and every sampled step (the
per-layer ones), so alerts are on the record even with no viewer, and by `gradtui report`
over a record. Every detector is a per-unit state machine with hysteresis: a flag is raised
once its enter condition has held for a minimum number of steps, and cleared once its
stricter leave condition has held for `clear_steps` steps. Between the two thresholds
nothing moves, so a value hovering at a threshold cannot make a flag flicker. `update()` is
vectorised over layers and keeps only fixed-size ring buffers: its cost per call and its
memory stay flat however long the run.
The rules and their defaults are described in README.md (Detectors).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from gradtui.model.detector_config import DetectorConfig
from gradtui.model.events import ALERT_LEVELS, FLAG_PRIORITY, VERDICTS, Alert, StepStats
from gradtui.model.explode import CRITICAL as _CRITICAL
from gradtui.model.explode import INFO as _INFO
from gradtui.model.explode import MIN_SPREAD as _MIN_SPREAD
from gradtui.model.explode import SCREEN_SHARE, Growth, median_spread
from gradtui.model.explode import WARNING as _WARNING

# Rows of the state matrices, in flag priority order, so the first active row is the verdict.
_KINDS: tuple[str, ...] = FLAG_PRIORITY
_NONFINITE, _EXPLODING, _VANISHING, _DEAD, _SPIKE = (_KINDS.index(k) for k in (
    "nonfinite", "exploding", "vanishing", "dead", "loss_spike"))

_WEIGHT_RULE_GAP = -1.0
"""The gradient-to-weight vanishing rule also needs the layer 10x (log10: 1) below the largest layer."""
_LOSS_MIN_HISTORY = 5
"""Finite losses needed before the loss can hold back the exploding growth rule."""
_AMP_SKIPS_TOLERATED = 30
"""Consecutive GradScaler-skipped samples ignored; beyond that their non-finite gradients count."""
_KIND_LEVEL = np.array([_CRITICAL, _INFO, _WARNING, _WARNING, _WARNING], np.int8)
"""Level of a raised flag by kind (rows of `_KINDS`); exploding and loss spikes are judged per sample instead."""


class Detectors:
    """Online detectors over a run's steps: `update_run` for a step whose per-layer statistics were
    not sampled (its loss and global norm), `update` for a sampled step (`StepStats`, which carries
    both). The run-wide rules (loss spike, the global norm's exploding flag, a non-finite global
    norm) see every step they are given; the per-layer rules see the sampled ones. Persistence
    (`vanish_steps`, `dead_steps`, `clear_steps`) counts steps, whatever the sampling stride.

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
        self._on_since = np.full(shape, -1, np.int64)
        """Step from which each flag's enter condition has held at every observation (-1: it does not)."""
        self._off_since = np.full(shape, -1, np.int64)
        self._min_on = np.array([1, 1, c.vanish_steps, c.dead_steps, 1], np.int64)[:, None]
        self._enter = np.zeros(shape, bool)
        self._leave = np.zeros(shape, bool)
        self._seen = np.zeros(shape, bool)
        self._clear_steps = c.clear_steps
        self._by_weight = np.zeros(n, bool)
        self._weight_norm = np.full(n, np.nan)
        self._log_vanish = math.log10(c.vanish_ratio)
        self._log_vanish_clear = math.log10(c.vanish_clear_ratio)
        self._layer_growth = Growth(n, c)
        """The exploding rule over the layers' norms (fed at sampled steps)."""
        self._run_growth = Growth(1, c)
        """... and over the global norm (fed at every step)."""
        self._xlevel = np.zeros(units, np.int8)
        self._valid_layers = np.zeros(n, bool)
        # This step's intermediates, read back only for the few units whose flag changes.
        self._gn = np.zeros(n)
        self._counts = np.zeros(n, np.int64)
        self._glob = math.nan
        self._rel = np.zeros(n)
        self._gw = np.zeros(n)
        self._spike = (math.nan, math.nan)
        self._loss_scale = -math.inf
        """The run's loss scale: the largest median of the loss window so far."""
        self._spike_level = _INFO
        self._loss_in_range = False
        """This sample's loss is known and at most the run's loss scale (before this sample)."""
        self._loss_screen = math.inf
        """A loss at or above this makes the probe sample its step (see `run_limits`)."""
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
        """Number of `update` calls (sampled steps) so far."""
        self.steps = 0
        """Number of steps folded in (`update` and `update_run` calls)."""

    # ------------------------------------------------------------------ update

    def update(self, stats: StepStats) -> list[Alert]:
        """Fold one sampled step in (its run-wide values and its per-layer statistics).

        Returns:
            An `Alert` for every flag raised (`active=True`) or cleared (`active=False`) at this step.
        """
        n = self._n
        gn = np.asarray(stats.grad_norm, np.float64)
        if gn.shape != (n,):
            raise ValueError(f"StepStats has per-layer arrays of shape {gn.shape}, the detectors watch {n} layers")
        self.samples += 1
        self._begin()
        # NaN and zero norms are expected here; every comparison below masks them.
        with np.errstate(all="ignore"):
            # A GradScaler overflow is routine (the scaler skips the step and lowers its scale): such a
            # step says nothing about the gradients. A long run of them does.
            self._amp_skips = self._amp_skips + 1 if stats.amp_skipped else 0
            judge = not 0 < self._amp_skips <= _AMP_SKIPS_TOLERATED
            loss_z = self._run(stats.step, float(stats.loss), float(stats.global_norm), judge, sampled=True)
            if judge:
                self._gradients(stats, gn, loss_z)
        return self._transitions(stats.step)

    def update_run(self, step: int, loss: float, global_norm: float) -> list[Alert]:
        """Fold in a step whose per-layer statistics were not sampled: its loss (NaN when unknown)
        and global gradient norm. Returns the alerts raised or cleared at `step`, as `update`."""
        self._begin()
        with np.errstate(all="ignore"):
            self._run(step, float(loss), float(global_norm), True, sampled=False)
        return self._transitions(step)

    def run_limits(self) -> tuple[float, float]:
        """(global norm, loss): a step whose value reaches either may raise a run-wide alarm, so the
        probe samples it whole. Halfway (log scale) from the recent median to the raise thresholds:
        a screen, not the rule (the detectors judge the step); inf where no rule applies yet."""
        return self._run_growth.raise_limit(0), self._loss_screen

    def _begin(self) -> None:
        self.steps += 1
        self._enter.fill(False)
        self._leave.fill(False)
        self._seen.fill(False)

    def _run(self, step: int, loss: float, glob: float, judge: bool, sampled: bool) -> float:
        """The run-wide rules at one step; returns the loss's robust z-score (NaN if unknown)."""
        n = self._n
        loss_z = self._loss_spike(loss)
        self._glob = glob
        if not judge:
            return loss_z
        x = math.log10(glob) if glob > 0 and math.isfinite(glob) else math.nan
        valid = math.isfinite(x)
        growth = self._run_growth
        was_on = np.array([self._on_since[_EXPLODING, n] >= 0])
        growth.update(step, np.array([x]), np.array([valid]), loss_z, self._loss_in_range, was_on)
        self._enter[_EXPLODING, n] = growth.enter[0]
        self._leave[_EXPLODING, n] = growth.leave[0]
        self._seen[_EXPLODING, n] = valid
        self._xlevel[n] = growth.level[0]
        if not sampled:
            # At a sampled step the layers carry non-finite values (by layer); here only the run can.
            finite = math.isfinite(glob)
            self._enter[_NONFINITE, n] = not finite
            self._leave[_NONFINITE, n] = finite
            self._seen[_NONFINITE, n] = True
        return loss_z

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
        self._vanishing(pos, gn, log_gn)
        growth = self._layer_growth
        was_on = self._on_since[_EXPLODING, :n] >= 0
        growth.update(stats.step, log_gn, pos, loss_z, self._loss_in_range, was_on)
        enter[_EXPLODING, :n] = growth.enter
        leave[_EXPLODING, :n] = growth.leave
        seen[_EXPLODING, :n] = pos
        self._xlevel[:n] = growth.level

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
            med_a, spread_a = median_spread(np.sort(ring if rows == c.window else ring[:rows]))
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
                screen = med + SCREEN_SHARE * (limit - med)
                self._loss_screen = 10.0**screen if log_scale else screen
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
        # Persistence in steps (enter and leave imply seen): an observed sample that misses the condition
        # ends its run, an unobserved one (no gradient for that layer, a skipped AMP step, a step whose
        # layers were not sampled) keeps it.
        seen, enter, leave = self._seen, self._enter, self._leave
        on, off = self._on_since, self._off_since
        on[enter & (on < 0)] = step
        on[seen & ~enter] = -1
        off[leave & (off < 0)] = step
        off[seen & ~leave] = -1
        active, level = self._active, self._level
        raised = ~active & (on >= 0) & (step - on + 1 >= self._min_on)
        cleared = active & (off >= 0) & (step - off + 1 >= self._clear_steps)
        # A flag that is up is raised again when its level rises (a hard-batch jump that keeps growing).
        escalated = np.zeros_like(raised)
        escalated[_EXPLODING] = active[_EXPLODING] & ~cleared[_EXPLODING] & (self._xlevel > level[_EXPLODING])
        n = self._n
        escalated[_SPIKE, n] = active[_SPIKE, n] & ~cleared[_SPIKE, n] & (self._spike_level > level[_SPIKE, n])
        escalated &= seen
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

    def _growth(self, u: int) -> tuple[Growth, int]:
        """The exploding rule's state holding unit `u`, and its index there."""
        return (self._run_growth, 0) if u == self._n else (self._layer_growth, u)

    def _value_threshold(self, k: int, u: int, up: bool, escalated: bool = False) -> tuple[float, float]:
        """The value that tripped (or released) flag `k` on unit `u` at this step, and the threshold it
        crossed (for an escalation: the one of its new level)."""
        c = self.config
        if k == _SPIKE:
            return self._spike
        run = u == self._n
        if k == _EXPLODING:
            v = self._glob if run else float(self._gn[u])
            growth, j = self._growth(u)
            if escalated and not (growth.ceiling_hit[j] or not growth.rows):
                return v, float(10.0 ** growth.escalation_limit(j, int(self._level[k, u])))
            return v, growth.threshold(j, up, False)
        if k == _VANISHING:
            if self._by_weight[u]:
                return float(self._gw[u]), c.vanish_weight_ratio
            return float(10.0 ** self._rel[u]), c.vanish_ratio if up else c.vanish_clear_ratio
        if k == _NONFINITE:
            if run:
                return self._glob, 0.0
            count = int(self._counts[u])
            return (float(count) if count > 0 else float(self._gn[u])), 0.0
        return float(self._gn[u]), 0.0

    def _severity_words(self, u: int) -> str:
        """Why an exploding flag on `u` has its level: "; critical: ..." (nothing for a ceiling hit)."""
        c = self.config
        level = int(self._level[_EXPLODING, u])
        growth, j = self._growth(u)
        if growth.ceiling_hit[j] or not growth.rows:
            return ""
        scale = 10.0 ** float(growth.scale[j])
        times = 10.0 ** float(growth.last_x[j] - growth.scale[j])  # the norm now, or the last one seen
        if level == _CRITICAL and growth.rise[j] >= c.explode_critical_steps:
            return f"; critical: grown {c.explode_compound_ratio:g}x or more at {int(growth.rise[j])} samples in a row"
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
            if u == self._n:
                return f"global gradient norm {v} at a step whose layers were not sampled"
            what = f"{v:.0f} non-finite gradient values" if v >= 1 else f"gradient norm {v}"
            first = self.first_nonfinite
            return what + (f"; first in the run: layer {first[1]!r} at step {first[0]}" if first else "")
        if k == _EXPLODING:
            growth, j = self._growth(u)
            if growth.ceiling_hit[j]:
                return f"{norm} {v:.3g} above the ceiling {c.explode_ceiling:g}"
            return f"{norm} {v:.3g} jumped past {t:.3g}, over {c.explode_ratio:g}x its recent level" + (
                self._severity_words(u)
            )
        if k == _VANISHING:
            if self._by_weight[u]:
                return f"||g||/||w|| = {v:.2g}, below {t:g}, for {c.vanish_steps} steps"
            return f"gradient RMS {v:.2g}x the largest layer's, below {t:g}, for {c.vanish_steps} steps"
        if k == _DEAD:
            return f"gradient exactly zero for {c.dead_steps} steps"
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
