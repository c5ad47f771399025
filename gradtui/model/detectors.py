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
from collections import deque
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from gradtui.model.detector_config import DetectorConfig
from gradtui.model.detector_words import Change, FirstNonfinite, Severity, message, rolled_back_message
from gradtui.model.events import ALERT_LEVELS, FLAG_PRIORITY, OVERFLOW_NORM, VERDICTS, Alert, StepStats
from gradtui.model.explode import CRITICAL as _CRITICAL
from gradtui.model.explode import INFO as _INFO
from gradtui.model.explode import WARNING as _WARNING
from gradtui.model.explode import Growth, copy_state
from gradtui.model.loss_spike import LossSpike

# Rows of the state matrices, in flag priority order, so the first active row is the verdict.
_KINDS: tuple[str, ...] = FLAG_PRIORITY
_NONFINITE, _EXPLODING, _VANISHING, _DEAD, _SPIKE = (
    _KINDS.index(k) for k in ("nonfinite", "exploding", "vanishing", "dead", "loss_spike")
)

_WEIGHT_RULE_GAP = -1.0
"""The gradient-to-weight vanishing rule also needs the layer 10x (log10: 1) below the largest layer."""
_AMP_SKIPS_TOLERATED = 30
"""Consecutive GradScaler-skipped samples ignored; beyond that their non-finite gradients count."""
KEEP_STEPS = 16
"""Steps between two kept copies of the detectors' state (see `Detectors.rolled_back`)."""
KEPT = 8
"""Copies kept: 128 steps back (the guard's snapshots are 25 healthy steps apart; a copy is about
40 KB at 100 layers)."""
_KIND_LEVEL = np.array([_CRITICAL, _INFO, _WARNING, _WARNING, _WARNING], np.int8)
"""Level of a raised flag by kind (rows of `_KINDS`); exploding and loss spikes are judged per sample instead."""


class Baselines(NamedTuple):
    """The detectors' state at some step (what `Detectors.rolled_back` restores)."""

    step: int
    """The step it was taken at."""
    state: tuple[Any, ...]


class Limits(NamedTuple):
    """Screens for a step whose per-layer statistics are not sampled (`Detectors.run_limits`)."""

    global_norm: float
    loss: float
    layers: np.ndarray
    """Per layer, a gradient L2 norm."""


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
        """Layers vanishing by the gradient-to-weight rule alone (their value is ||g||/||w||)."""
        self._weight_norm = np.full(n, np.nan)
        """Each layer's weight norm at the last detail step (NaN before the first)."""
        self._log_vanish = math.log10(c.vanish_ratio)
        self._log_vanish_clear = math.log10(c.vanish_clear_ratio)
        self._layer_growth = Growth(n, c)
        """The exploding rule over the layers' norms (fed at sampled steps)."""
        self._run_growth = Growth(1, c)
        """... and over the global norm (fed at every step)."""
        self._run_inputs = (np.zeros(1), np.zeros(1, bool), np.zeros(1, bool))
        """Its inputs at a step (log10 norm, valid, flag condition held before), filled in place."""
        self._canary = np.zeros(0, np.int64)
        """The canary layers: measured at every step where the rest are not (`update_run`)."""
        self._is_canary = np.zeros(n, bool)
        self._canary_list: list[int] = []
        """`_canary` as a list: compared at every step, where a list costs a tenth of `np.array_equal`."""
        self._canary_growth = Growth(0, c)
        """The exploding rule over the canary layers (fed at every step, in place of `_layer_growth`)."""
        self._explode_level = np.zeros(units, np.int8)
        """The level an exploding flag on each unit would have at this sample (from the two `Growth`s)."""
        self._loss_spike = LossSpike(c)
        # This step's intermediates, read back only for the few units whose flag changes.
        self._grad_norm = np.zeros(n)
        """Each layer's gradient norm."""
        self._nonfinite_counts = np.zeros(n, np.int64)
        """Each layer's count of non-finite gradient values."""
        self._global_norm = math.nan
        self._overflow = False
        """This sampled step's global norm overflowed over finite values (it stands at OVERFLOW_NORM)."""
        self._overflowed = np.zeros(n, bool)
        """... and the layers whose norm did."""
        self._no_layers = np.zeros(n, bool)
        """No layer: what `_overflowed` and the non-finite layers are on most steps (never written)."""
        self._log_rms_gap = np.zeros(n)
        """log10 of each layer's gradient RMS over the largest layer's (vanishing by depth)."""
        self._grad_to_weight = np.zeros(n)
        """Each layer's ||g|| / ||w|| (vanishing by weight; NaN before the first detail step)."""
        self._amp_skips = 0
        """GradScaler-skipped samples in a row."""
        self._kept: deque[Baselines] = deque(maxlen=KEPT)
        """Copies of the state every `KEEP_STEPS` steps, newest last (what a rollback restores)."""
        self.first_nonfinite: FirstNonfinite | None = None
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
        self._keep(stats.step)
        self._begin()
        # NaN and zero norms are expected here; every comparison below masks them.
        with np.errstate(all="ignore"):
            # A GradScaler overflow is routine (the scaler skips the step and lowers its scale): such a
            # step says nothing about the gradients. A long run of them does.
            self._amp_skips = self._amp_skips + 1 if stats.amp_skipped else 0
            judge = not 0 < self._amp_skips <= _AMP_SKIPS_TOLERATED
            total = float(stats.global_norm)
            # +inf only: a sum of squares of finite values can pass float32's max, never be NaN.
            self._overflow = total == math.inf and not np.any(stats.nonfinite)
            if self._overflow:
                total = OVERFLOW_NORM  # an overflow of the norm over finite values: at least this
            loss_z = self._run(stats.step, float(stats.loss), total, judge, sampled=True)
            if judge:
                self._gradients(stats, gn, loss_z)
        return self._transitions(stats.step)

    def update_run(
        self, step: int, loss: float, global_norm: float | None, canary: tuple[np.ndarray, np.ndarray] | None = None
    ) -> list[Alert]:
        """Fold in a step whose per-layer statistics were not sampled: its loss (NaN when unknown),
        global gradient norm (None where not measured) and `canary`, (layers, their gradient norms)
        where it measured some. A canary layer's exploding rule is fed at every step from then on
        (sampled ones included). Returns the alerts raised or cleared at `step`, as `update`."""
        self._keep(step)
        self._begin()
        with np.errstate(all="ignore"):
            if global_norm is None:
                loss_z = self._run(step, float(loss), self._global_norm, False, sampled=False)
            else:
                loss_z = self._run(step, float(loss), float(global_norm), True, sampled=False)
            if canary is not None:
                layers, norms = canary
                self._set_canaries(np.asarray(layers, np.int64))
                self._canaries(step, np.asarray(norms, np.float64), loss_z)
        return self._transitions(step)

    def _set_canaries(self, layers: np.ndarray) -> None:
        if layers.tolist() == self._canary_list:
            return
        ok = layers.ndim == 1 and (layers.size == 0 or (0 <= layers.min() and layers.max() < self._n))
        if not ok or not np.array_equal(layers, np.unique(layers)):
            raise ValueError(f"canary layers {layers.tolist()} are not layers of the {self._n} watched")
        self._canary = layers.copy()
        self._is_canary[:] = False
        self._is_canary[layers] = True
        self._canary_growth = Growth(layers.size, self.config)
        self._canary_list = self._canary.tolist()

    def _canaries(self, step: int, norms: np.ndarray, loss_z: float) -> None:
        """The exploding rule on the canary layers at `step` (their norms, in `_canary` order)."""
        units = self._canary
        x = np.log10(norms)
        valid = np.isfinite(x)
        growth = self._canary_growth
        # Row, then columns: `a[k][units]` costs a fifth of `a[k, units]` on a few units (every step).
        was_on = self._on_since[_EXPLODING][units] >= 0
        growth.update(step, x, valid, loss_z, self._loss_spike.in_range, was_on)
        self._enter[_EXPLODING][units] = growth.enter
        self._leave[_EXPLODING][units] = growth.leave
        self._seen[_EXPLODING][units] = valid
        self._explode_level[units] = growth.level

    def rolled_back(self, to_step: int, step: int) -> list[Alert]:
        """The run was rolled back to `to_step` at `step` (the guard): the detectors go back to the
        newest copy of their state kept at or before it (every `KEEP_STEPS` steps). Returns the
        alerts that clear the flags raised since (none when no copy reaches back that far)."""
        kept = self._kept
        while kept and kept[-1].step > to_step:
            kept.pop()
        return self._restore(kept[-1], step) if kept else []

    def _keep(self, step: int) -> None:
        """A copy of the state before `step`, every `KEEP_STEPS` steps (for `rolled_back`)."""
        kept = self._kept
        if not kept or step - kept[-1].step >= KEEP_STEPS:
            kept.append(self._baselines(step))

    def _baselines(self, step: int) -> Baselines:
        """A copy of the detectors' state at `step` (the norms' and the loss's recent history, and
        the flags), for `_restore` after the run is rolled back to it."""
        rules = (self._layer_growth, self._run_growth, self._canary_growth, self._loss_spike)
        flags = (self._active, self._level, self._on_since, self._off_since)
        return Baselines(step, (*map(copy_state, rules), self._canary.copy(), *(flag.copy() for flag in flags)))

    def _restore(self, saved: Baselines, step: int) -> list[Alert]:
        """The detectors as `saved` had them: the run was rolled back to its step, so what came after
        (a blow-up's norms, its flags) is no longer the run's past. It goes on at `step`, that history
        as recent as it was then. Returns an alert clearing each flag raised since (a relapse raises
        it again, and only then does the guard act again)."""
        growth, run, canary_growth, spike = (copy_state(rule) for rule in saved.state[:4])
        canary = saved.state[4].copy()  # copies: a kept state may be restored again
        shift = step - saved.step
        for rule in (growth, run, canary_growth):
            rule.shift(shift)
        self._layer_growth, self._run_growth, self._loss_spike = growth, run, spike
        self._canary, self._canary_growth = canary, canary_growth
        self._canary_list = canary.tolist()
        self._is_canary[:] = False
        self._is_canary[canary] = True
        was_active, _, on_since, off_since = saved.state[5:]
        keep = self._active & was_active  # up then and still up; one cleared since stays cleared
        cleared = self._active & ~keep
        alerts = [
            Alert(
                step=step,
                layer=self._names[u],
                kind=_KINDS[k],
                active=False,
                value=math.nan,
                threshold=math.nan,
                message=rolled_back_message(saved.step),
                level=ALERT_LEVELS[self._level[k, u]],
            )
            for k, u in zip(*np.nonzero(cleared), strict=True)
        ]
        self._active = keep
        self._level[cleared] = _INFO
        self._on_since = np.where(on_since >= 0, on_since + shift, -1)
        self._off_since = np.where(off_since >= 0, off_since + shift, -1)
        return alerts

    def run_limits(self) -> Limits:
        """What makes the probe sample a step whole: a value that might raise an alarm. Halfway (log
        scale) from the recent median to the raise thresholds: a screen, not the rule (the detectors
        judge the step); the ceiling, or inf for the loss, where no rule applies yet."""
        layers = self._layer_growth.screen()
        layers[self._canary] = self._canary_growth.screen()
        return Limits(float(self._run_growth.screen()[0]), self._loss_spike.screen, layers)

    def _begin(self) -> None:
        self.steps += 1
        self._overflow = False
        self._overflowed = self._no_layers
        self._enter.fill(False)
        self._leave.fill(False)
        self._seen.fill(False)

    def _run(self, step: int, loss: float, global_norm: float, judge: bool, sampled: bool) -> float:
        """The run-wide rules at one step; returns the loss's robust z-score (NaN if unknown)."""
        n = self._n
        spike = self._loss_spike
        loss_z = spike.update(loss)
        if spike.judged:
            self._enter[_SPIKE, n] = spike.enter
            self._leave[_SPIKE, n] = spike.leave
            self._seen[_SPIKE, n] = True
        self._global_norm = global_norm
        if not judge:
            return loss_z
        x = math.log10(global_norm) if global_norm > 0 and math.isfinite(global_norm) else math.nan
        valid = math.isfinite(x)
        growth = self._run_growth
        run_x, run_valid, run_was_on = self._run_inputs
        run_x[0], run_valid[0], run_was_on[0] = x, valid, self._on_since[_EXPLODING, n] >= 0
        growth.update(step, run_x, run_valid, loss_z, spike.in_range, run_was_on)
        self._enter[_EXPLODING, n] = growth.enter[0]
        self._leave[_EXPLODING, n] = growth.leave[0]
        self._seen[_EXPLODING, n] = valid
        self._explode_level[n] = growth.level[0]
        if not sampled:
            # At a sampled step the layers carry non-finite values (by layer); here only the run can.
            finite = math.isfinite(global_norm)
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

        # Non-finite: NaN/Inf values, counted. A norm that overflowed although every value was finite
        # (a float32 sum, older records) is a norm of at least OVERFLOW_NORM: the exploding rule's.
        counts = self._nonfinite_counts = np.asarray(stats.nonfinite)
        if np.count_nonzero(counts) == 0 and np.count_nonzero(finite) == n:  # most steps
            bad = self._no_layers
            self._overflowed = self._no_layers
        else:
            bad = has & ((counts > 0) | np.isnan(gn))
            over = self._overflowed = has & (gn == math.inf) & (counts == 0)
            if np.count_nonzero(over):
                gn = np.where(over, OVERFLOW_NORM, gn)
                finite = np.isfinite(gn)
                ok = has & finite
        self._grad_norm = gn
        enter[_NONFINITE, :n] = bad
        leave[_NONFINITE, :n] = ok if bad is self._no_layers else ok & (counts == 0)
        seen[_NONFINITE, :n] = has
        if self.first_nonfinite is None and np.count_nonzero(bad):
            self.first_nonfinite = FirstNonfinite(stats.step, self.layers[int(np.argmax(bad))])

        # Dead: a gradient exactly zero.
        np.logical_and(ok, gn == 0.0, out=enter[_DEAD, :n])
        pos = ok & (gn > 0.0)
        leave[_DEAD, :n] = pos
        seen[_DEAD, :n] = ok

        log_gn = np.log10(gn)
        self._vanishing(pos, gn, log_gn)
        growth = self._layer_growth
        was_on = self._on_since[_EXPLODING, :n] >= 0
        judged = pos & ~self._is_canary
        growth.update(stats.step, log_gn, judged, loss_z, self._loss_spike.in_range, was_on)
        enter[_EXPLODING, :n] = growth.enter
        leave[_EXPLODING, :n] = growth.leave
        seen[_EXPLODING, :n] = judged
        self._explode_level[:n] = growth.level
        if self._canary.size:
            self._canaries(stats.step, np.where(has, gn, np.nan)[self._canary], loss_z)

    def _vanishing(self, pos: np.ndarray, gn: np.ndarray, log_gn: np.ndarray) -> None:
        c = self.config
        n = self._n
        # An exploding layer would make every other layer look vanishing: it is no reference.
        ref_ok = pos & ~self._active[_EXPLODING, :n]
        if np.count_nonzero(ref_ok) < 2:
            return
        log_rms = log_gn - self._log_sqrt_numel
        gap = self._log_rms_gap = log_rms - log_rms[ref_ok].max()  # a quarter of `np.max(where=)`'s cost
        to_weight = self._grad_to_weight = gn / self._weight_norm
        by_weight = pos & (to_weight < c.vanish_weight_ratio) & (gap < _WEIGHT_RULE_GAP)
        by_depth = pos & (gap < self._log_vanish)
        np.logical_or(by_depth, by_weight, out=self._enter[_VANISHING, :n])
        self._leave[_VANISHING, :n] = pos & (gap > self._log_vanish_clear) & ~by_weight
        self._seen[_VANISHING, :n] = pos
        np.logical_and(by_weight, ~by_depth, out=self._by_weight)

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
        raised = ~active & (on >= 0) & (on <= step + 1 - self._min_on)
        cleared = active & (off >= 0) & (off <= step + 1 - self._clear_steps)
        # A flag that is up is raised again when its level rises (a hard-batch jump that keeps growing).
        explode = active[_EXPLODING] & ~cleared[_EXPLODING] & (self._explode_level > level[_EXPLODING])
        explode &= seen[_EXPLODING]
        n = self._n
        spike_level = self._loss_spike.level
        spike = bool(
            active[_SPIKE, n] and not cleared[_SPIKE, n] and spike_level > level[_SPIKE, n] and seen[_SPIKE, n]
        )
        changed = raised | cleared
        # Counted, not `.any()`: this runs at every step, and on a handful of values the count is cheaper.
        if not (np.count_nonzero(changed) or np.count_nonzero(explode) or spike):
            return []
        escalated = np.zeros_like(raised)
        escalated[_EXPLODING] = explode
        escalated[_SPIKE, n] = spike
        changed |= escalated
        alerts: list[Alert] = []
        for k, u in zip(*np.nonzero(changed), strict=True):
            up = not cleared[k, u]
            if up:
                level[k, u] = (
                    self._explode_level[u] if k == _EXPLODING else spike_level if k == _SPIKE else _KIND_LEVEL[k]
                )
            change = self._change(int(k), int(u), up, bool(escalated[k, u]))
            alerts.append(
                Alert(
                    step=step,
                    layer=change.layer,
                    kind=change.kind,
                    active=up,
                    value=change.value,
                    threshold=change.threshold,
                    message=message(change, self.config),
                    level=change.level,
                )
            )
        active |= raised
        active &= ~cleared
        level[cleared] = _INFO
        return alerts

    def _growth(self, u: int) -> tuple[Growth, int]:
        """The exploding rule's state holding unit `u`, and its index there."""
        if u == self._n:
            return self._run_growth, 0
        if self._is_canary[u]:
            return self._canary_growth, int(np.searchsorted(self._canary, u))
        return self._layer_growth, u

    def _change(self, k: int, u: int, up: bool, escalated: bool) -> Change:
        """Flag `k` on unit `u` moved at this step: the facts of its alert (read before `_active` moves)."""
        value, threshold = self._value_threshold(k, u, up, escalated)
        change = Change(
            kind=_KINDS[k],
            layer=self._names[u],
            up=up,
            escalated=escalated,
            value=value,
            threshold=threshold,
            level=ALERT_LEVELS[self._level[k, u]],
        )
        if k == _EXPLODING:
            growth, j = self._growth(u)
            ceiling_hit = bool(growth.ceiling_hit[j])
            severity = None
            if not ceiling_hit and growth.rows:
                severity = Severity(
                    scale=10.0 ** float(growth.scale[j]),
                    times=10.0 ** float(growth.last_x[j] - growth.scale[j]),  # the norm now, or the last one seen
                    rise=int(growth.rise[j]),
                )
            overflow = self._overflow if u == self._n else bool(self._overflowed[u])
            return change._replace(ceiling_hit=ceiling_hit, severity=severity, overflow=overflow)
        if k == _VANISHING:
            return change._replace(by_weight=bool(self._by_weight[u]))
        if k == _SPIKE:
            return change._replace(loss_scale=self._loss_spike.scale)
        if k == _NONFINITE:
            return change._replace(first_nonfinite=self.first_nonfinite)
        return change

    def _value_threshold(self, k: int, u: int, up: bool, escalated: bool) -> tuple[float, float]:
        """The value that tripped (or released) flag `k` on unit `u` at this step, and the threshold it
        crossed (for an escalation: the one of its new level)."""
        c = self.config
        if k == _SPIKE:
            spike = self._loss_spike
            return spike.loss, spike.threshold(bool(self._active[_SPIKE, u]))
        run = u == self._n
        if k == _EXPLODING:
            growth, j = self._growth(u)
            # A canary layer's norm may be of an unsampled step: its rule holds the latest.
            if run:
                v = self._global_norm
            else:
                v = float(10.0 ** growth.last_x[j]) if self._is_canary[u] else float(self._grad_norm[u])
            if escalated and not (growth.ceiling_hit[j] or not growth.rows):
                return v, float(10.0 ** growth.escalation_limit(j, int(self._level[k, u])))
            return v, growth.threshold(j, up, False)
        if k == _VANISHING:
            if self._by_weight[u]:
                return float(self._grad_to_weight[u]), c.vanish_weight_ratio
            return float(10.0 ** self._log_rms_gap[u]), c.vanish_ratio if up else c.vanish_clear_ratio
        if k == _NONFINITE:
            if run:
                return self._global_norm, 0.0
            count = int(self._nonfinite_counts[u])
            return (float(count) if count > 0 else float(self._grad_norm[u])), 0.0
        return float(self._grad_norm[u]), 0.0

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
